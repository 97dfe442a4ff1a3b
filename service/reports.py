"""FHIR reports: the predictions of one ``/predict`` request or one job -> the FHIR R4 ``Bundle`` of
:func:`service.codecs.fhir.build_fhir_bundle`, serialised, with the ``fhir`` settings (canonical
base of dermserve's code systems, the hospital's patient identifier system). No HTTP.

The FHIR codec (fhir.resources, ~0.1 s to import) is imported on first use;
:meth:`FhirReports.load` does it at start-up.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

from schemas.api import ModelRef, Prediction
from service.inputs import RequestError
from service.settings import FhirSettings

#: The FHIR JSON media type (``Accept`` to ask for a report) and the Content-Type of a report.
FHIR_JSON = "application/fhir+json"
FHIR_CONTENT_TYPE = "application/fhir+json; fhirVersion=4.0"


class ReportError(RequestError):
    """The predictions cannot go into one FHIR report (the images name different patients); ``detail``
    holds ``{"reason", "message"}`` (free of patient data)."""


def _codec() -> ModuleType:
    from service.codecs import fhir

    return fhir


class FhirReports:
    """Builds FHIR Bundles with the deployment's FHIR settings.

    Args:
        settings: the ``fhir`` settings group.
    """

    def __init__(self, settings: FhirSettings | None = None) -> None:
        self.settings = settings or FhirSettings()

    @staticmethod
    def load() -> None:
        """Import the FHIR codec now (blocking; start-up)."""
        _codec()

    def bundle(self, predictions: Sequence[Prediction], dicom_refs: Sequence[Any | None], model: ModelRef) -> bytes:
        """The Bundle (JSON bytes) reporting ``predictions`` (blocking: run it off the event loop).

        Args:
            predictions: one per image, in order.
            dicom_refs: per image, its :class:`~service.codecs.dicom.DicomRefs` (or a mapping with the
                same keys) when it came from DICOM, else None; the PatientID there becomes the subject.
            model: the model that answered (the Device and each Observation's method).

        Raises:
            ReportError: the images name different patients (one report is about one patient).
        """
        fhir = _codec()
        try:
            bundle = fhir.build_fhir_bundle(
                [p.model_dump() for p in predictions], model_name=model.name, model_version=model.version,
                dicom_refs=list(dicom_refs), patient_identifier_system=self.settings.patient_identifier_system,
                canonical_base=self.settings.canonical_base)
        except fhir.FhirBuildError as exc:
            raise ReportError(f"no FHIR report: {exc.detail}",
                              detail=[{"reason": exc.reason, "message": exc.detail}]) from None
        return json.dumps(bundle, ensure_ascii=False, separators=(",", ":")).encode()


def stored_refs(prediction: Prediction, patient: tuple[str, str | None] | None) -> Mapping[str, Any] | None:
    """The DICOM references of a stored job result: its echoed UIDs plus the stored patient, or None
    for an image that was not DICOM."""
    uids = {k: getattr(prediction, k) for k in ("study_instance_uid", "series_instance_uid", "sop_instance_uid")}
    if not any(uids.values()) and patient is None:
        return None
    pid, issuer = patient if patient is not None else (None, None)
    return {**uids, "patient_id": pid, "patient_id_issuer": issuer}


#: JSON schema of the FHIR answer in the OpenAPI document (the full structure is FHIR's own).
BUNDLE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "FHIR R4 Bundle",
    "description": "HL7 FHIR R4 `Bundle` of type `collection` (built and validated with fhir.resources): one "
                   "`DiagnosticReport` (status `preliminary`; `subject` = the DICOM PatientID as a logical "
                   "Patient identifier when the images carry one; `imagingStudy` by StudyInstanceUID; `result` -> "
                   "the Observations; a short `conclusion`), one `Observation` per image (top class as "
                   "`valueCodeableConcept`, SNOMED CT where verified plus the HAM10000 code; `component`s for every "
                   "class probability, the malignant probability, the referral flag and reasons; `method`/`device` "
                   "name the model; `derivedFrom` the DICOM study and instance), and one `Device` (the model). "
                   "Entries are linked by `urn:uuid:` full URLs.",
    "required": ["resourceType", "type", "entry"],
    "properties": {"resourceType": {"type": "string", "enum": ["Bundle"]},
                   "type": {"type": "string", "enum": ["collection"]},
                   "entry": {"type": "array", "items": {"type": "object"}}},
}


def example_bundle() -> dict[str, Any]:
    """A real Bundle for the OpenAPI example: one DICOM image (fixed ids and time, made-up UIDs and
    PatientID)."""
    from datetime import UTC, datetime

    fhir = _codec()
    probs = {"akiec": 0.021, "bcc": 0.034, "bkl": 0.081, "df": 0.007, "mel": 0.112, "nv": 0.739, "vasc": 0.006}
    study = "1.2.826.0.1.3680043.8.498.1"
    prediction = Prediction(id="lesion-1.dcm", index=0, study_instance_uid=study, series_instance_uid=f"{study}.1",
                            sop_instance_uid=f"{study}.1.1", label="nv", label_name="Melanocytic nevi",
                            probability=0.739, probabilities=probs, malignant_probability=0.167,
                            referral_recommended=False, referral_reasons=[])
    refs = {**{k: getattr(prediction, k) for k in ("study_instance_uid", "series_instance_uid", "sop_instance_uid")},
            "patient_id": "PAT-0001", "patient_id_issuer": None}
    ids = iter(f"00000000-0000-4000-8000-00000000000{i}" for i in range(10))
    return fhir.build_fhir_bundle([prediction.model_dump()], model_name="mobilenetv2-ham10000", model_version="1.1.0",
                                  dicom_refs=[refs], issued=datetime(2026, 11, 24, 1, 30, 26, tzinfo=UTC),
                                  id_factory=lambda: next(ids))
