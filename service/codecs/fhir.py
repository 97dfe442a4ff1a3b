"""Predictions -> an HL7 FHIR R4 ``Bundle`` (pure: plain data in, JSON-able dict out, no HTTP).

Built and validated with the **fhir.resources** R4B models (``fhir.resources.R4B``, FHIR 4.3.0:
the only R4-family package that fhir.resources 8.3.0 ships; its default package is R5). Every
element used here exists unchanged in R4 (4.0.1): ``Bundle`` (type, timestamp, identifier,
entry.fullUrl/resource), ``DiagnosticReport`` (status, code, subject, issued, imagingStudy,
result, conclusion), ``Observation`` (identifier, status, category, code, subject, issued,
value[x], note, method, device, derivedFrom, component), ``Device`` (deviceName, version, type),
so the output is valid R4 as well. fhir.resources checks structure and data types, not code
bindings or reference targets; ``tests/test_fhir_codec.py`` checks those that matter here.

The shape (one call per answer):

- ``Bundle`` of type ``collection`` (not ``transaction``): the answer is a set of results for the
  caller to store as it sees fit; a transaction would ask the receiving server to create a
  ``Device`` and the results on every call and needs per-entry ``request`` semantics that depend
  on the hospital's server. Entries are linked by ``urn:uuid:`` full URLs.
- One ``DiagnosticReport``: status ``preliminary``; ``subject`` a *logical* reference to the
  Patient by identifier (the DICOM PatientID, with IssuerOfPatientID as ``assigner.display``),
  only when images carry one (images naming different patients are refused; an Observation gets
  the subject only if its own image named the patient); ``imagingStudy`` logical references by
  StudyInstanceUID; ``result`` -> every Observation; a short ``conclusion`` saying decision
  support, not diagnosis.
- One ``Observation`` per image: ``valueCodeableConcept`` = the top class (SNOMED CT where a
  verified concept exists, see :data:`SNOMED_BY_CLASS`, plus the HAM10000 class code); one
  ``component`` per class probability, the malignant probability, the referral flag, one per
  referral reason, and the out-of-distribution flag/score when given; ``method`` and ``device``
  name the model and its version; ``derivedFrom`` the imaging study and the image (SOP Instance
  UID as ``urn:oid:``) by logical reference. DICOM UIDs that are not valid OIDs (e.g. a leading
  zero in a component) are left out of the FHIR output; they are still echoed in the JSON answer.
- One ``Device``: the model (name, version).

Identifiers for DICOM UIDs follow the FHIR ImagingStudy convention: system ``urn:dicom:uid``,
value ``urn:oid:<uid>``.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.device import Device
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.observation import Observation

FHIR_VERSION = "4.3.0"  #: of the models used (R4B); the output uses only elements unchanged since R4 4.0.1

SNOMED_SYSTEM = "http://snomed.info/sct"
UCUM_SYSTEM = "http://unitsofmeasure.org"
DICOM_UID_SYSTEM = "urn:dicom:uid"
OBSERVATION_CATEGORY_SYSTEM = "http://terminology.hl7.org/CodeSystem/observation-category"
#: Default base for dermserve's own code systems. ``.example`` is reserved (RFC 2606): a
#: deployment that publishes its CodeSystems passes its canonical base as ``canonical_base``.
DEFAULT_CANONICAL_BASE = "https://dermserve.example/fhir"

DISCLAIMER = (
    "Decision support, not a diagnosis: these preliminary results must be reviewed by a qualified "
    "clinician together with the patient's history and a full examination."
)

#: HAM10000 class code -> display name (the dataset's own names).
HAM10000_NAMES: dict[str, str] = {
    "akiec": "Actinic keratoses and intraepithelial carcinoma / Bowen's disease",
    "bcc": "Basal cell carcinoma",
    "bkl": "Benign keratosis-like lesions (solar lentigo, seborrheic keratosis, lichen planus-like keratosis)",
    "df": "Dermatofibroma",
    "mel": "Melanoma",
    "nv": "Melanocytic nevi",
    "vasc": "Vascular lesions (angioma, angiokeratoma, pyogenic granuloma, haemorrhage)",
}

REFERRAL_REASON_TEXT: dict[str, str] = {
    "malignant_probability_at_or_above_threshold": "Malignant probability at or above the referral threshold",
    "top_probability_below_minimum": "Top-1 probability below the minimum for a confident answer",
    "out_of_distribution": "Image outside the model's training distribution (out-of-distribution guard)",
}


@dataclass(frozen=True)
class SnomedConcept:
    """One SNOMED CT concept and where its identity was checked."""

    code: str
    display: str
    source: str


#: HAM10000 class -> SNOMED CT concept, **only where the concept id was verified** against a
#: terminology source that renders SNOMED CT itself (not a third-party mapping table). ``None``
#: means "no verified concept": the Observation then carries the HAM10000 class code and text
#: only. A wrong SNOMED code in a hospital record is worse than none; see the notes per class.
SNOMED_BY_CLASS: dict[str, SnomedConcept | None] = {
    # 93655004 |Malignant melanoma of skin (disorder)|. Source: HL7 mCODE STU2 ValueSet
    # mcode-primary-cancer-disorder-vs, expansion generated by a terminology server from SNOMED CT
    # US Edition 2021-09-01 ("http://snomed.info/sct#93655004 'Malignant melanoma of skin'").
    # NOT 372130007, which several sources name |Malignant neoplasm of skin (disorder)| (any skin
    # malignancy), nor 372244006 |Malignant melanoma (disorder)| (any site).
    "mel": SnomedConcept("93655004", "Malignant melanoma of skin",
                         "HL7 mCODE STU2 ValueSet expansion (SNOMED CT US 2021-09-01)"),
    # 254701007 |Basal cell carcinoma of skin (disorder)|. Sources: OHDSI concept-set export of the
    # Athena vocabulary (CONCEPT_CODE 254701007, CONCEPT_NAME "Basal cell carcinoma of skin",
    # VOCABULARY_ID SNOMED, standard, valid); MONDO:0005341 "skin basal cell carcinoma" xref
    # snomedct/254701007 (EBI OLS); tx.fhir.org browser: 716274007 |Nodular basal cell carcinoma
    # of skin| "Is a" Basal cell carcinoma of skin.
    "bcc": SnomedConcept("254701007", "Basal cell carcinoma of skin",
                         "OHDSI Athena concept export; MONDO:0005341 xref"),
    # 201101007 |Actinic keratosis (disorder)|. Source: DICOM PS3.16 CID 4405 "Skin Disorder"
    # (as FHIR ValueSet dicom-cid-4405-SkinDisorder): "http://snomed.info/sct#201101007 Actinic
    # keratosis". HAM10000's akiec also holds intraepithelial carcinoma (Bowen's disease); AK is
    # the class's principal entity, and no single concept covers both.
    "akiec": SnomedConcept("201101007", "Actinic keratosis", "DICOM PS3.16 CID 4405 Skin Disorder"),
    # 400096001 |Melanocytic nevus (disorder)|. Source: HL7 FHIR terminology server's SNOMED CT
    # browser (UK edition 2023-04-12): FSN "Melanocytic nevus (disorder)", synonyms "Melanocytic
    # naevus", "Mole". (400010006 |Melanocytic naevus of skin| is more specific but was only seen
    # in a third-party table, so the verified parent concept is used.)
    "nv": SnomedConcept("400096001", "Melanocytic nevus", "tx.fhir.org SNOMED CT browser (UK 2023-04-12)"),
    # bkl: NOT VERIFIED. Candidates seen only in third-party tables, contradicting each other:
    # 254708003, 65126008, 400010006 (that is melanocytic naevus of skin), 201160009, 400083001.
    # Verified 2026-12-06 but too narrow for the class (seborrhoeic keratosis + solar lentigo +
    # lichen-planus-like keratosis): 72100002 |Solar lentigo (disorder)| (SNOMED International browser
    # export, Global Patient Set 2022) and 25499005 |Seborrheic keratosis| -- a *morphologic
    # abnormality*, not a disorder (HL7 Europe eHDSI MorphologicAbnormality value set 8.1.0).
    "bkl": None,
    # df: NOT VERIFIED. Candidates: 254713009, 253008, 254788002, 254677009, 109836006, 72464004
    # (coding.health), 427186000 (VisualDx page); none confirmed by a SNOMED rendering.
    "df": None,
    # vasc: not coded. 400210000 is verified as |Hemangioma| (DICOM PS3.16 CID 6030/6031, "angioma" in
    # CID 3810 Vascular Morphology; pydicom.sr._concepts_dict), but HAM10000's vasc class also holds
    # angiokeratomas, pyogenic granulomas and haemorrhage (Tschandl et al. 2018), so coding every vasc
    # answer as a haemangioma would put a wrong diagnosis into some records.
    "vasc": None,
}


class FhirBuildError(ValueError):
    """The predictions cannot be put into one report (e.g. images of different patients).

    Attributes:
        reason: machine-readable code (``fhir_conflicting_patients``, ``fhir_invalid_input``).
        detail: a sentence free of patient data.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


# --------------------------------------------------------------------------------------------
# public
# --------------------------------------------------------------------------------------------
def build_fhir_bundle(
    predictions: Sequence[Mapping[str, Any]],
    *,
    model_name: str,
    model_version: str,
    dicom_refs: Sequence[Any | None] | None = None,
    issued: datetime | None = None,
    patient_identifier_system: str | None = None,
    canonical_base: str = DEFAULT_CANONICAL_BASE,
    id_factory: Callable[[], str] | None = None,
) -> dict[str, Any]:
    """Build a FHIR R4 ``collection`` Bundle for the predictions of one request or job.

    Args:
        predictions: one mapping per image, shaped like ``schemas.api.Prediction.model_dump()``:
            ``index``, ``id``, ``label``, ``label_name``, ``probability``, ``probabilities``
            (class -> p), ``malignant_probability``, ``referral_recommended``,
            ``referral_reasons``; optionally ``out_of_distribution`` (bool) and
            ``ood_score`` (float), reported when a guard gave a score (``ood_score`` not None).
        model_name: the manifest's model name (-> ``Device.deviceName``, ``Observation.method``).
        model_version: the manifest's model version.
        dicom_refs: per image (same order), ``None`` for a non-DICOM image, or an object/mapping
            with ``study_instance_uid``, ``series_instance_uid``, ``sop_instance_uid``,
            ``patient_id``, ``patient_id_issuer`` (e.g. :class:`service.codecs.dicom.DicomRefs`).
        issued: report time (default: now, UTC).
        patient_identifier_system: the hospital's URI for PatientIDs, if known (FHIR
            ``Identifier.system``); DICOM does not carry one.
        canonical_base: base URL of dermserve's own CodeSystems (class codes, component codes).
        id_factory: returns the UUID strings used in ``urn:uuid:`` full URLs (default uuid4).

    Returns:
        The Bundle as a JSON-able ``dict`` (``resourceType: Bundle``), validated by fhir.resources.

    Raises:
        FhirBuildError: no predictions, mismatched ``dicom_refs`` length, or images carrying
            different PatientIDs (one report is about one patient).
    """
    refs_list = _checked_refs(predictions, dicom_refs)
    instant = _instant(issued)
    new_id = id_factory or (lambda: str(uuid.uuid4()))
    class_system = f"{canonical_base.rstrip('/')}/CodeSystem/ham10000-class"
    result_system = f"{canonical_base.rstrip('/')}/CodeSystem/dermserve-result"

    subject = _subject(refs_list, patient_identifier_system)
    device_url = f"urn:uuid:{new_id()}"
    report_url = f"urn:uuid:{new_id()}"
    device_ref = {"reference": device_url, "display": f"{model_name} {model_version}"}

    observations: list[tuple[str, dict[str, Any]]] = []
    for pos, (pred, refs) in enumerate(zip(predictions, refs_list)):
        obs = _observation(pred, refs, pos, subject=subject, instant=instant, device_ref=device_ref,
                           model_name=model_name, model_version=model_version,
                           class_system=class_system, result_system=result_system)
        observations.append((f"urn:uuid:{new_id()}", obs))

    report = _report(predictions, refs_list, observations, subject=subject, instant=instant,
                     model_name=model_name, model_version=model_version, result_system=result_system)
    device = _device(model_name, model_version)
    return _bundle_json(report_url, report, observations, device_url, device, instant=instant, new_id=new_id)


# --------------------------------------------------------------------------------------------
# internals
# --------------------------------------------------------------------------------------------
_OID_RE = re.compile(r"^[0-2](\.(0|[1-9][0-9]*))+$")


def _get(refs: Any, key: str) -> str | None:
    if refs is None:
        return None
    value = refs.get(key) if isinstance(refs, Mapping) else getattr(refs, key, None)
    if value is None:
        return None
    s = str(value).strip()
    return s or None


def _unique(values: Any) -> list[str]:
    seen: list[str] = []
    for v in values:
        if v and v not in seen:
            seen.append(v)
    return seen


def _uid_identifier(uid: str) -> dict[str, str]:
    return {"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{uid}"}


def _study_ref(uid: str) -> dict[str, Any]:
    return {"type": "ImagingStudy", "identifier": _uid_identifier(uid), "display": "DICOM study"}


def _subject(refs_list: Sequence[Any], system: str | None) -> dict[str, Any] | None:
    """A logical Patient reference from the PatientIDs, or None; conflicting IDs refuse."""
    patients = _unique(
        f"{_get(r, 'patient_id')}\x00{_get(r, 'patient_id_issuer') or ''}" for r in refs_list if _get(r, "patient_id")
    )
    if not patients:
        return None
    if len(patients) > 1:
        raise FhirBuildError(
            "fhir_conflicting_patients",
            f"the images carry {len(patients)} different patient identifiers; one report is about one patient",
        )
    patient_id, issuer = patients[0].split("\x00", 1)
    identifier: dict[str, Any] = {"value": patient_id}
    if system:
        identifier["system"] = system
    if issuer:
        identifier["assigner"] = {"display": issuer}
    return {"type": "Patient", "identifier": identifier}


def _quantity(p: float) -> dict[str, Any]:
    return {"value": round(float(p), 6), "unit": "probability", "system": UCUM_SYSTEM, "code": "1"}


def _checked_refs(predictions: Sequence[Mapping[str, Any]], dicom_refs: Sequence[Any | None] | None) -> list[Any]:
    """The per-image DICOM references as a list as long as ``predictions``; else raises FhirBuildError."""
    if not predictions:
        raise FhirBuildError("fhir_invalid_input", "no predictions to report")
    refs_list = list(dicom_refs) if dicom_refs is not None else [None] * len(predictions)
    if len(refs_list) != len(predictions):
        raise FhirBuildError("fhir_invalid_input",
                             f"{len(refs_list)} DICOM reference entries for {len(predictions)} predictions")
    return refs_list


def _instant(issued: datetime | None) -> str:
    """The report time (default now) as a FHIR instant in UTC with milliseconds and ``Z``."""
    when = (issued or datetime.now(UTC)).astimezone(UTC)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _conclusion(predictions: Sequence[Mapping[str, Any]], model_name: str, model_version: str) -> str:
    """The DiagnosticReport's conclusion text (decision support, referral count and image indexes)."""
    referred = [int(p.get("index", i)) for i, p in enumerate(predictions) if p.get("referral_recommended")]
    return (
        f"Decision support, not a diagnosis. {len(predictions)} image(s) classified by {model_name} "
        f"{model_version}; referral recommended for {len(referred)} of {len(predictions)}"
        + (f" (image index {', '.join(map(str, referred))})" if referred else "")
        + ". Preliminary: to be reviewed by a qualified clinician."
    )


def _report(
    predictions: Sequence[Mapping[str, Any]], refs_list: Sequence[Any],
    observations: Sequence[tuple[str, dict[str, Any]]], *, subject: dict[str, Any] | None, instant: str,
    model_name: str, model_version: str, result_system: str,
) -> dict[str, Any]:
    """The DiagnosticReport resource as plain (not yet validated) data."""
    studies = _unique(u for u in (_get(r, "study_instance_uid") for r in refs_list) if u and _OID_RE.match(u))
    conclusion = _conclusion(predictions, model_name, model_version)
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "status": "preliminary",
        "code": {
            "coding": [{"system": result_system, "code": "skin-lesion-ai-report",
                        "display": "AI decision-support report on dermoscopic images"}],
            "text": "AI decision-support report on dermoscopic skin-lesion images",
        },
        "issued": instant,
        "result": [{"reference": url, "display": f"image {int(o['_index'])}"} for url, o in observations],
        "conclusion": conclusion,
    }
    if subject is not None:
        report["subject"] = subject
    if studies:
        report["imagingStudy"] = [_study_ref(uid) for uid in studies]
    return report


def _device(model_name: str, model_version: str) -> dict[str, Any]:
    """The Device resource naming the model, as plain (not yet validated) data."""
    return {
        "resourceType": "Device",
        "deviceName": [{"name": model_name, "type": "model-name"}],
        "version": [{"value": model_version}],
        "type": {"text": "Dermoscopic image classifier (decision-support software, dermserve)"},
        "note": [{"text": DISCLAIMER}],
    }


def _bundle_json(
    report_url: str, report: dict[str, Any], observations: Sequence[tuple[str, dict[str, Any]]],
    device_url: str, device: dict[str, Any], *, instant: str, new_id: Callable[[], str],
) -> dict[str, Any]:
    """The validated ``collection`` Bundle (report, observations, device) as a JSON-able dict."""
    entries = [{"fullUrl": report_url, "resource": _validated(DiagnosticReport, report)}]
    for url, obs in observations:
        obs.pop("_index")
        entries.append({"fullUrl": url, "resource": _validated(Observation, obs)})
    entries.append({"fullUrl": device_url, "resource": _validated(Device, device)})
    bundle = Bundle.model_validate({
        "resourceType": "Bundle",
        "identifier": {"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{new_id()}"},
        "type": "collection",
        "timestamp": instant,
        "entry": entries,
    })
    return json.loads(bundle.model_dump_json())


def _observation(
    pred: Mapping[str, Any], refs: Any, pos: int, *, subject: dict[str, Any] | None, instant: str,
    device_ref: dict[str, str], model_name: str, model_version: str, class_system: str, result_system: str,
) -> dict[str, Any]:
    """One image's Observation as plain data, with an ``_index`` key to remove before validation."""
    index, label, probabilities, malignant, referral = _parsed_prediction(pred, pos)
    components = _components(pred, label, probabilities, malignant, referral, result_system)
    value = _value_concept(pred, label, probabilities, class_system)

    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "_index": index,  # removed before validation; used for the report's result display
        "status": "preliminary",
        "category": [{"coding": [{"system": OBSERVATION_CATEGORY_SYSTEM, "code": "imaging", "display": "Imaging"}]}],
        "code": {
            "coding": [{"system": result_system, "code": "skin-lesion-classification",
                        "display": "Dermoscopic skin lesion classification (AI)"}],
            "text": "Dermoscopic skin lesion classification (AI decision support)",
        },
        "issued": instant,
        "valueCodeableConcept": value,
        "note": [{"text": DISCLAIMER}],
        "method": {
            "coding": [{"system": result_system, "code": "cnn-classifier",
                        "display": "Convolutional neural network classifier"}],
            "text": f"Convolutional neural network {model_name} version {model_version}, "
                    "temperature-calibrated softmax over the 7 HAM10000 classes",
        },
        "device": device_ref,
        "component": components,
    }
    obs["identifier"] = _identifiers(pred, index)
    if subject is not None and _get(refs, "patient_id"):
        obs["subject"] = subject  # only where this image's own DICOM header named the patient
    derived = _derived_from(refs)
    if derived:
        obs["derivedFrom"] = derived
    return obs


def _parsed_prediction(pred: Mapping[str, Any], pos: int) -> tuple[int, str, dict[str, float], float, bool]:
    """(index, label, probabilities, malignant probability, referral flag); else raises FhirBuildError."""
    try:
        index = int(pred.get("index", pos))
        label = str(pred["label"])
        probabilities = {str(k): float(v) for k, v in dict(pred["probabilities"]).items()}
        malignant = float(pred["malignant_probability"])
        referral = bool(pred["referral_recommended"])
    except (KeyError, TypeError, ValueError) as exc:
        raise FhirBuildError("fhir_invalid_input", f"prediction {pos} lacks {exc}") from None
    if label not in probabilities:
        raise FhirBuildError("fhir_invalid_input", f"prediction {pos}: label {label!r} is not among its classes")
    return index, label, probabilities, malignant, referral


def _component(result_system: str, code: str, display: str, **value: Any) -> dict[str, Any]:
    """One Observation component coded in dermserve's result system, with the given value[x]."""
    return {"code": {"coding": [{"system": result_system, "code": code, "display": display}], "text": display},
            **value}


def _class_name(pred: Mapping[str, Any], label: str, code: str) -> str:
    """The display name of a class: the prediction's ``label_name`` for its label, else the HAM10000 name."""
    if code == label and pred.get("label_name"):
        return str(pred["label_name"])
    return HAM10000_NAMES.get(code, code)


def _components(
    pred: Mapping[str, Any], label: str, probabilities: Mapping[str, float], malignant: float, referral: bool,
    result_system: str,
) -> list[dict[str, Any]]:
    """The Observation components: class and malignant probabilities, referral, reasons, OOD flag/score."""
    def comp(code: str, display: str, **value: Any) -> dict[str, Any]:
        return _component(result_system, code, display, **value)

    components = [
        comp(f"probability-{code}", f"Calibrated probability: {_class_name(pred, label, code)} ({code})",
             valueQuantity=_quantity(p))
        for code, p in probabilities.items()
    ]
    components.append(comp("malignant-probability", "Malignant probability (melanoma + basal cell carcinoma + "
                                                    "actinic keratosis/intraepithelial carcinoma)",
                           valueQuantity=_quantity(malignant)))
    components.append(comp("referral-recommended", "Referral recommended", valueBoolean=referral))
    for reason in pred.get("referral_reasons") or []:
        components.append(comp("referral-reason", "Referral reason", valueCodeableConcept={
            "coding": [{"system": result_system, "code": str(reason),
                        "display": REFERRAL_REASON_TEXT.get(str(reason), str(reason))}],
            "text": REFERRAL_REASON_TEXT.get(str(reason), str(reason)),
        }))
    # the guard's verdict only where a guard ran (it gave a score): a model without one says nothing, since
    # its predictions carry out_of_distribution=false by default
    if pred.get("ood_score") is not None or pred.get("out_of_distribution"):
        components.append(comp("out-of-distribution", "Image outside the model's training distribution",
                               valueBoolean=bool(pred.get("out_of_distribution"))))
    if pred.get("ood_score") is not None:
        components.append(comp("out-of-distribution-score", "Out-of-distribution score",
                               valueQuantity={"value": round(float(pred["ood_score"]), 6)}))
    return components


def _value_concept(
    pred: Mapping[str, Any], label: str, probabilities: Mapping[str, float], class_system: str,
) -> dict[str, Any]:
    """The Observation's valueCodeableConcept: the top class (SNOMED CT where verified, HAM10000 code) and p."""
    top_p = float(pred.get("probability", probabilities[label]))
    value_codings = []
    snomed = SNOMED_BY_CLASS.get(label)
    if snomed is not None:
        value_codings.append({"system": SNOMED_SYSTEM, "code": snomed.code, "display": snomed.display})
    value_codings.append({"system": class_system, "code": label, "display": HAM10000_NAMES.get(label, label)})
    return {"coding": value_codings, "text": f"{_class_name(pred, label, label)} (p = {top_p:.3f})"}


def _identifiers(pred: Mapping[str, Any], index: int) -> list[dict[str, Any]]:
    """The Observation's secondary identifiers: image position and, if given, the client's image id."""
    identifiers = [{"use": "secondary", "type": {"text": "image position in the request"}, "value": str(index)}]
    if pred.get("id"):
        identifiers.append({"use": "secondary", "type": {"text": "client image id"}, "value": str(pred["id"])})
    return identifiers


def _derived_from(refs: Any) -> list[dict[str, Any]]:
    """The derivedFrom references (imaging study, DICOM instance) whose UIDs are valid OIDs; may be empty."""
    derived = []
    study, series, sop = (_get(refs, k) for k in ("study_instance_uid", "series_instance_uid", "sop_instance_uid"))
    if study and _OID_RE.match(study):
        derived.append(_study_ref(study))
    if sop and _OID_RE.match(sop):
        series_text = f" (series {series})" if series and _OID_RE.match(series) else ""
        derived.append({"type": "Media", "identifier": _uid_identifier(sop), "display": f"DICOM instance{series_text}"})
    return derived


def _validated(model: type, data: dict[str, Any]) -> dict[str, Any]:
    """Validate one resource with its fhir.resources model; return it as FHIR JSON data."""
    return json.loads(model.model_validate(data).model_dump_json())


__all__ = [
    "DEFAULT_CANONICAL_BASE",
    "DICOM_UID_SYSTEM",
    "DISCLAIMER",
    "FHIR_VERSION",
    "HAM10000_NAMES",
    "SNOMED_BY_CLASS",
    "SNOMED_SYSTEM",
    "FhirBuildError",
    "SnomedConcept",
    "build_fhir_bundle",
]
