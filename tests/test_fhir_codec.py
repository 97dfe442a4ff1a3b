"""FHIR builder (service/codecs/fhir.py) without HTTP.

The Bundle parses back with fhir.resources (R4B models), every literal reference resolves inside
the Bundle, reference targets are the types R4 allows, the top class is SNOMED CT-coded where a
verified concept exists (and never with an unverified code), components cover every class, and
patient/study/instance identifiers land where they should.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.observation import Observation

from schemas.api import Prediction
from service.codecs.dicom import DicomRefs
from service.codecs.fhir import (
    DICOM_UID_SYSTEM,
    SNOMED_BY_CLASS,
    SNOMED_SYSTEM,
    FhirBuildError,
    build_fhir_bundle,
)

CLASSES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
MODEL = {"model_name": "mobilenetv2-ham10000", "model_version": "1.1.0"}
ISSUED = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)

#: Reference targets R4 (4.0.1) allows for the elements used (from the resource definitions).
ALLOWED_TARGETS = {
    ("DiagnosticReport", "result"): {"Observation"},
    ("DiagnosticReport", "subject"): {"Patient", "Group", "Device", "Location"},
    ("DiagnosticReport", "imagingStudy"): {"ImagingStudy"},
    ("Observation", "subject"): {"Patient", "Group", "Device", "Location"},
    ("Observation", "device"): {"Device", "DeviceMetric"},
    ("Observation", "derivedFrom"): {"DocumentReference", "ImagingStudy", "Media", "QuestionnaireResponse",
                                     "Observation", "MolecularSequence"},
}


def prediction(label: str, index: int = 0, *, referral_reasons: list[str] | None = None,
               image_id: str | None = None, **extra: Any) -> dict[str, Any]:
    """A prediction dumped from the API's own Prediction model (the builder's input contract)."""
    probs = {c: 0.02 for c in CLASSES}
    probs[label] = 1.0 - 0.02 * (len(CLASSES) - 1)
    reasons = referral_reasons or []
    dumped = Prediction(
        id=image_id, index=index, label=label, label_name=label.upper(), probability=probs[label],
        probabilities=probs, malignant_probability=sum(probs[c] for c in ("mel", "bcc", "akiec")),
        referral_recommended=bool(reasons), referral_reasons=reasons,  # type: ignore[arg-type]
    ).model_dump()
    dumped.update(extra)
    return dumped


def refs(n: int, patient: str | None = "PID-777", issuer: str | None = "HOSP-A") -> DicomRefs:
    study = "1.2.826.0.1.3680043.8.498.1"
    return DicomRefs(study_instance_uid=study, series_instance_uid=f"{study}.{n}", sop_instance_uid=f"{study}.{n}.1",
                     sop_class_uid="1.2.840.10008.5.1.4.1.1.77.1.4", modality="XC",
                     patient_id=patient, patient_id_issuer=issuer)


def resources(bundle: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == kind]


def all_references(node: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], dict[str, Any]]]:
    """Every Reference-shaped object (has 'reference', or 'type' + 'identifier') with its path."""
    found = []
    if isinstance(node, dict):
        if "reference" in node or ("type" in node and "identifier" in node and isinstance(node["type"], str)):
            found.append((path, node))
        for key, value in node.items():
            found += all_references(value, path + (key,))
    elif isinstance(node, list):
        for value in node:
            found += all_references(value, path)
    return found


def verhoeff_ok(number: str) -> bool:
    """SNOMED CT identifiers end in a Verhoeff check digit."""
    d = [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 2, 3, 4, 0, 6, 7, 8, 9, 5], [2, 3, 4, 0, 1, 7, 8, 9, 5, 6],
         [3, 4, 0, 1, 2, 8, 9, 5, 6, 7], [4, 0, 1, 2, 3, 9, 5, 6, 7, 8], [5, 9, 8, 7, 6, 0, 4, 3, 2, 1],
         [6, 5, 9, 8, 7, 1, 0, 4, 3, 2], [7, 6, 5, 9, 8, 2, 1, 0, 4, 3], [8, 7, 6, 5, 9, 3, 2, 1, 0, 4],
         [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]]
    p = [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 5, 7, 6, 2, 8, 3, 0, 9, 4], [5, 8, 0, 3, 7, 9, 6, 1, 4, 2],
         [8, 9, 1, 6, 0, 4, 3, 5, 2, 7], [9, 4, 5, 3, 1, 2, 6, 8, 7, 0], [4, 2, 8, 6, 5, 7, 3, 9, 0, 1],
         [2, 7, 9, 3, 8, 0, 6, 4, 1, 5], [7, 0, 4, 6, 9, 1, 3, 2, 5, 8]]
    c = 0
    for i, ch in enumerate(reversed(number)):
        c = d[c][p[i % 8][int(ch)]]
    return c == 0


@pytest.fixture
def bundle() -> dict[str, Any]:
    preds = [
        prediction("nv", 0, image_id="lesion-a"),
        prediction("mel", 1, referral_reasons=["malignant_probability_at_or_above_threshold"],
                   out_of_distribution=False, ood_score=0.12),
        prediction("df", 2, referral_reasons=["malignant_probability_at_or_above_threshold",
                                              "top_probability_below_minimum"]),
    ]
    return build_fhir_bundle(preds, dicom_refs=[refs(0), refs(1), None], issued=ISSUED, **MODEL)


# --------------------------------------------------------------------------------------------
def test_bundle_parses_back_with_fhir_resources(bundle):
    parsed = Bundle.model_validate(bundle)
    assert parsed.type == "collection"
    reparsed = Bundle.model_validate_json(json.dumps(bundle))
    assert json.loads(reparsed.model_dump_json()) == bundle  # stable round trip
    kinds = [e["resource"]["resourceType"] for e in bundle["entry"]]
    assert kinds == ["DiagnosticReport", "Observation", "Observation", "Observation", "Device"]
    for entry in bundle["entry"]:
        kind = entry["resource"]["resourceType"]
        model = {"DiagnosticReport": DiagnosticReport, "Observation": Observation}.get(kind)
        if model:
            model.model_validate(entry["resource"])


def test_every_literal_reference_resolves_inside_the_bundle(bundle):
    full_urls = [e["fullUrl"] for e in bundle["entry"]]
    assert len(set(full_urls)) == len(full_urls)
    for url in full_urls:
        assert url.startswith("urn:uuid:") and uuid.UUID(url[len("urn:uuid:"):])
    by_url = {e["fullUrl"]: e["resource"] for e in bundle["entry"]}
    literal = 0
    for entry in bundle["entry"]:
        kind = entry["resource"]["resourceType"]
        for path, ref in all_references(entry["resource"]):
            element = path[0]
            target = by_url[ref["reference"]]["resourceType"] if "reference" in ref else ref["type"]
            if "reference" in ref:
                literal += 1
                assert ref["reference"] in by_url, f"{kind}.{element} -> {ref['reference']} not in the Bundle"
            assert target in ALLOWED_TARGETS[(kind, element)], f"{kind}.{element} may not point at {target}"
    assert literal == 3 + 3  # report.result x3, observation.device x3


def test_report_and_observations_are_preliminary_decision_support(bundle):
    (report,) = resources(bundle, "DiagnosticReport")
    assert report["status"] == "preliminary"
    assert "not a diagnosis" in report["conclusion"] and "referral recommended for 2 of 3" in report["conclusion"]
    assert report["issued"].startswith("2026-11-02T09:30:00")
    for obs in resources(bundle, "Observation"):
        assert obs["status"] == "preliminary"
        assert obs["category"][0]["coding"][0]["code"] == "imaging"
        assert "not a diagnosis" in obs["note"][0]["text"].lower()


def test_top_class_is_snomed_coded_where_verified(bundle):
    observations = resources(bundle, "Observation")
    nv, mel, df = (o["valueCodeableConcept"] for o in observations)
    assert {"system": SNOMED_SYSTEM, "code": "400096001", "display": "Melanocytic nevus"} in nv["coding"]
    assert {"system": SNOMED_SYSTEM, "code": "93655004", "display": "Malignant melanoma of skin"} in mel["coding"]
    assert not any(c["system"] == SNOMED_SYSTEM for c in df["coding"]), "df has no verified SNOMED CT concept"
    assert any(c["code"] == "df" for c in df["coding"]) and df["text"]


@pytest.mark.parametrize("label", CLASSES)
def test_each_class_codes_only_verified_snomed_concepts(label):
    out = build_fhir_bundle([prediction(label)], issued=ISSUED, **MODEL)
    (obs,) = resources(out, "Observation")
    snomed = [c for c in obs["valueCodeableConcept"]["coding"] if c["system"] == SNOMED_SYSTEM]
    expected = SNOMED_BY_CLASS[label]
    assert snomed == ([] if expected is None else [{"system": SNOMED_SYSTEM, "code": expected.code,
                                                    "display": expected.display}])


def test_snomed_table_identifiers_are_well_formed():
    assert set(SNOMED_BY_CLASS) == set(CLASSES)
    verified = {k: v for k, v in SNOMED_BY_CLASS.items() if v is not None}
    assert set(verified) == {"mel", "bcc", "akiec", "nv"}  # bkl, df, vasc: not verified (see fhir.py)
    for concept in verified.values():
        assert concept.code.isdigit() and 6 <= len(concept.code) <= 18
        assert verhoeff_ok(concept.code), concept.code
        assert concept.code[-3:-1] == "00", "partition identifier 00 = a concept id"
        assert concept.source
    assert SNOMED_BY_CLASS["mel"].code != "372130007"  # that is |Malignant neoplasm of skin|, any type


def test_components_cover_every_class_and_the_referral(bundle):
    observations = resources(bundle, "Observation")
    for obs, label in zip(observations, ["nv", "mel", "df"]):
        comps: dict[str, list[dict[str, Any]]] = {}
        for comp in obs["component"]:
            comps.setdefault(comp["code"]["coding"][0]["code"], []).append(comp)
        for cls in CLASSES:
            (comp,) = comps[f"probability-{cls}"]
            expected = 0.88 if cls == label else 0.02
            assert comp["valueQuantity"]["value"] == pytest.approx(expected)
            quantity = comp["valueQuantity"]
            assert quantity["system"] == "http://unitsofmeasure.org" and quantity["code"] == "1"
        assert sum(c[0]["valueQuantity"]["value"] for k, c in comps.items() if k.startswith("probability-")) \
            == pytest.approx(1.0)
        (malignant,) = comps["malignant-probability"]
        assert malignant["valueQuantity"]["value"] == pytest.approx(0.92 if label == "mel" else 0.06)
        (flag,) = comps["referral-recommended"]
        assert flag["valueBoolean"] is (label != "nv")
    reasons = [[c["valueCodeableConcept"]["coding"][0]["code"] for c in o["component"]
                if c["code"]["coding"][0]["code"] == "referral-reason"] for o in observations]
    assert reasons == [[], ["malignant_probability_at_or_above_threshold"],
                       ["malignant_probability_at_or_above_threshold", "top_probability_below_minimum"]]
    ood = [[c for c in o["component"] if c["code"]["coding"][0]["code"].startswith("out-of-distribution")]
           for o in observations]
    assert ood[0] == [] and ood[2] == []
    assert [c["code"]["coding"][0]["code"] for c in ood[1]] == ["out-of-distribution", "out-of-distribution-score"]
    assert ood[1][0]["valueBoolean"] is False and ood[1][1]["valueQuantity"]["value"] == pytest.approx(0.12)


def test_device_and_method_name_the_model(bundle):
    (device,) = resources(bundle, "Device")
    assert device["deviceName"] == [{"name": "mobilenetv2-ham10000", "type": "model-name"}]
    assert device["version"] == [{"value": "1.1.0"}]
    for obs in resources(bundle, "Observation"):
        assert "mobilenetv2-ham10000" in obs["method"]["text"] and "1.1.0" in obs["method"]["text"]
        assert obs["device"]["display"] == "mobilenetv2-ham10000 1.1.0"


def test_subject_study_and_instance_identifiers(bundle):
    (report,) = resources(bundle, "DiagnosticReport")
    assert report["subject"] == {"type": "Patient",
                                 "identifier": {"value": "PID-777", "assigner": {"display": "HOSP-A"}}}
    assert report["imagingStudy"] == [{"type": "ImagingStudy", "display": "DICOM study", "identifier": {
        "system": DICOM_UID_SYSTEM, "value": "urn:oid:1.2.826.0.1.3680043.8.498.1"}}]
    obs = resources(bundle, "Observation")
    for i in (0, 1):
        assert obs[i]["subject"] == report["subject"]
        derived = {d["type"]: d["identifier"]["value"] for d in obs[i]["derivedFrom"]}
        assert derived == {"ImagingStudy": "urn:oid:1.2.826.0.1.3680043.8.498.1",
                           "Media": f"urn:oid:1.2.826.0.1.3680043.8.498.1.{i}.1"}
    assert "subject" not in obs[2] and "derivedFrom" not in obs[2]  # the JPEG named no patient
    assert {"use": "secondary", "type": {"text": "client image id"}, "value": "lesion-a"} in obs[0]["identifier"]


def test_patient_identifier_system_when_the_hospital_names_one():
    out = build_fhir_bundle([prediction("nv")], dicom_refs=[refs(0, issuer=None)], issued=ISSUED,
                            patient_identifier_system="urn:oid:2.16.840.1.113883.19.5", **MODEL)
    (report,) = resources(out, "DiagnosticReport")
    assert report["subject"]["identifier"] == {"system": "urn:oid:2.16.840.1.113883.19.5", "value": "PID-777"}


def test_no_dicom_no_subject_no_study():
    out = build_fhir_bundle([prediction("bcc")], issued=ISSUED, **MODEL)
    (report,) = resources(out, "DiagnosticReport")
    assert "subject" not in report and "imagingStudy" not in report
    Bundle.model_validate(out)


def test_images_of_different_patients_are_refused():
    with pytest.raises(FhirBuildError) as info:
        build_fhir_bundle([prediction("nv"), prediction("nv", 1)], dicom_refs=[refs(0, "P-1"), refs(1, "P-2")],
                          **MODEL)
    assert info.value.reason == "fhir_conflicting_patients"
    assert "P-1" not in str(info.value) and "P-2" not in str(info.value)


def test_invalid_input_is_refused():
    with pytest.raises(FhirBuildError):
        build_fhir_bundle([], **MODEL)
    with pytest.raises(FhirBuildError):
        build_fhir_bundle([prediction("nv")], dicom_refs=[None, None], **MODEL)
    with pytest.raises(FhirBuildError):
        build_fhir_bundle([{"label": "nv"}], **MODEL)


def test_non_oid_uids_are_left_out_of_fhir():
    legacy = {"study_instance_uid": "1.2.840.0010.5", "sop_instance_uid": "1.2.3.04", "patient_id": None}
    out = build_fhir_bundle([prediction("nv")], dicom_refs=[legacy], issued=ISSUED, **MODEL)
    (report,) = resources(out, "DiagnosticReport")
    (obs,) = resources(out, "Observation")
    assert "imagingStudy" not in report and "derivedFrom" not in obs


def test_deterministic_with_fixed_ids_and_time():
    counter = iter(range(1000))

    def ids() -> str:
        return str(uuid.UUID(int=next(counter)))

    a = build_fhir_bundle([prediction("akiec")], issued=ISSUED, id_factory=ids, **MODEL)
    counter = iter(range(1000))
    b = build_fhir_bundle([prediction("akiec")], issued=ISSUED, id_factory=ids, **MODEL)
    assert a == b
