"""Request and response bodies of the dermserve HTTP API (shared by service, tests and clients).

Two families:

- the dermserve API: :class:`PredictRequest` -> :class:`PredictResponse` on ``POST /predict``,
  :class:`ModelInfo` on ``GET /model``, :class:`HealthStatus` on ``GET /health/*``, and the one
  error shape :class:`ErrorResponse` for every non-2xx answer;
- the Open Inference Protocol V2 (KServe ``inference_rest.md``): :class:`InferenceRequest` ->
  :class:`InferenceResponse` on ``POST /v2/models/{name}/infer`` plus the metadata bodies.

Everything here is plain pydantic (no FastAPI, no onnxruntime), so clients can import it cheaply.
The models carry ``json_schema_extra`` examples that ``/docs`` shows.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

#: Sentence attached to every prediction response.
DISCLAIMER = (
    "Decision support, not a diagnosis. The output of this model must be reviewed by a qualified "
    "clinician together with the patient's history and a full examination; it is not approved for "
    "autonomous diagnostic use."
)

# A 1x1 white JPEG is too small for the service (16 px minimum side); the examples below use a
# shortened placeholder because a real dermoscopic JPEG is ~10 kB of base64.
_B64_EXAMPLE = "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAAgGBgcGBQgHBwcJCQgKDBQNDAsLDBkSEw8UHR..."

_PROBS_EXAMPLE = {"akiec": 0.021, "bcc": 0.034, "bkl": 0.081, "df": 0.007, "mel": 0.112, "nv": 0.739, "vasc": 0.006}


# --------------------------------------------------------------------------------------------
# dermserve API
# --------------------------------------------------------------------------------------------
class ImageInput(BaseModel):
    """One image in a JSON :class:`PredictRequest`."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(
        None, max_length=256, description="optional client-chosen identifier, echoed back in the prediction"
    )
    data: str = Field(
        description="the encoded image file (JPEG, PNG, ..., or DICOM Part 10) in standard base64 (RFC 4648 §4); a "
        "`data:image/...;base64,` prefix is accepted and ignored (`data:application/dicom;base64,` marks DICOM)",
        examples=[_B64_EXAMPLE],
    )


class PredictRequest(BaseModel):
    """JSON body of ``POST /predict``: one or more base64-encoded images."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"images": [{"id": "lesion-1", "data": _B64_EXAMPLE}, {"data": _B64_EXAMPLE}]}]
        },
    )

    images: list[ImageInput] = Field(
        min_length=1,
        description="images to classify, answered in the same order; at most `max_images_per_request` "
        "(setting, default 64) or the request is refused with 413",
    )


class ModelRef(BaseModel):
    """Which model answered (from ``manifest.json``)."""

    model_config = ConfigDict(protected_namespaces=())

    name: str = Field(description="manifest `name`")
    version: str = Field(description="manifest `version`")


class Prediction(BaseModel):
    """The classification of one image.

    ``probabilities`` are temperature-calibrated softmax outputs (``softmax(logits / T)``, ``T``
    from the manifest, fitted on the validation split) keyed by HAM10000 class code; they sum to 1.

    Referral rule: ``referral_recommended`` is true when ``malignant_probability`` (P(mel) +
    P(bcc) + P(akiec)) is at or above the malignant threshold, OR the top-1 probability is below
    the minimum top-1 probability. Both thresholds come from the manifest and may be overridden by
    the settings ``referral_malignant_threshold`` / ``referral_min_top_probability``.
    ``referral_reasons`` lists which conditions fired: ``malignant_probability_at_or_above_threshold``
    and/or ``top_probability_below_minimum``.

    Out-of-distribution guard (models whose manifest has ``ood``): ``ood_score`` says how unlike the
    dermoscopic training images the image is (higher = less alike; see ``GET /model`` ``ood`` for the
    method and threshold). Above the threshold ``out_of_distribution`` is true, ``referral_recommended``
    is true and ``referral_reasons`` starts with ``out_of_distribution``: the image was not recognised
    as a dermoscopic image and the class probabilities do not apply to it.
    """

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "lesion-1",
                    "index": 0,
                    "label": "nv",
                    "label_name": "Melanocytic nevi",
                    "probability": 0.739,
                    "probabilities": _PROBS_EXAMPLE,
                    "malignant_probability": 0.167,
                    "referral_recommended": False,
                    "referral_reasons": [],
                    "out_of_distribution": False,
                    "ood_score": 0.41,
                }
            ]
        }
    )

    id: str | None = Field(None, description="the client's id for this image (JSON `id`, multipart filename)")
    index: int = Field(ge=0, description="0-based position of the image in the request")
    study_instance_uid: str | None = Field(None, description="DICOM images: the object's Study Instance UID")
    series_instance_uid: str | None = Field(None, description="DICOM images: the object's Series Instance UID")
    sop_instance_uid: str | None = Field(None, description="DICOM images: the object's SOP Instance UID")
    label: str = Field(description="HAM10000 code of the most probable class")
    label_name: str = Field(description="display name of `label`")
    probability: float = Field(ge=0, le=1, description="calibrated probability of `label` (top-1)")
    probabilities: dict[str, float] = Field(description="calibrated probability per class code; sums to 1")
    malignant_probability: float = Field(
        ge=0, le=1,
        description="P(mel) + P(bcc) + P(akiec): the classes listed in the manifest's `referral.malignant_classes`",
    )
    referral_recommended: bool = Field(
        description="true if malignant_probability >= malignant threshold OR probability < minimum top-1 probability"
    )
    referral_reasons: list[Literal["out_of_distribution", "malignant_probability_at_or_above_threshold",
                                   "top_probability_below_minimum"]] = (
        Field(default_factory=list, description="which referral conditions fired (empty when not referred)")
    )
    out_of_distribution: bool = Field(
        False, description="true when ood_score is above the model's threshold: the image was not recognised as "
        "a dermoscopic image, so the class probabilities do not apply (always false for a model without a guard)")
    ood_score: float | None = Field(
        None, description="out-of-distribution score, higher = less like the dermoscopic training images; flagged "
        "above `GET /model` `ood.threshold` (null for a model without a guard)")


class PredictResponse(BaseModel):
    """Answer of ``POST /predict``: one :class:`Prediction` per input image, in input order."""

    model_config = ConfigDict(
        protected_namespaces=(),
        json_schema_extra={
            "examples": [
                {
                    "model": {"name": "mobilenetv2-ham10000", "version": "1.0.0"},
                    "predictions": [Prediction.model_config["json_schema_extra"]["examples"][0]],  # type: ignore[index]
                    "disclaimer": DISCLAIMER,
                }
            ]
        },
    )

    model: ModelRef
    predictions: list[Prediction]
    disclaimer: str = Field(DISCLAIMER, description="this output supports, and does not replace, a clinician")


class ImageError(BaseModel):
    """Why one image of a request could not be used."""

    index: int = Field(ge=0, description="0-based position of the image in the request")
    id: str | None = Field(None, description="the client's id for this image, if it gave one")
    reason: str = Field(
        description="machine-readable code: empty, not_an_image, truncated, too_many_pixels, too_small, "
        "bad_aspect_ratio, unsupported_mode, invalid_base64, not_a_file, bad_tensor; for DICOM objects "
        "dicom_invalid, dicom_no_pixel_data, dicom_unsupported_modality, dicom_unsupported_transfer_syntax, "
        "dicom_not_colour, dicom_unsupported_pixel_format, dicom_multiframe"
    )
    message: str = Field(description="human-readable explanation")


class ErrorResponse(BaseModel):
    """The body of every non-2xx answer (including Open Inference Protocol errors)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "error": "1 of 2 images could not be decoded",
                    "detail": [
                        {"index": 1, "id": "lesion-2", "reason": "truncated",
                         "message": "the image data is truncated or corrupt"}
                    ],
                    "request_id": "3f2c9d0e8a5b4c1d9e7f6a5b4c3d2e1f",
                }
            ]
        }
    )

    error: str = Field(description="what went wrong, in one sentence")
    detail: list[dict[str, Any]] | None = Field(
        None,
        description="per-item details: for image errors a list of ImageError objects (index, id, reason, message); "
        "for malformed bodies the validation errors (loc, msg, type)",
    )
    request_id: str | None = Field(None, description="the X-Request-ID of this request (also in the response header)")


class HealthStatus(BaseModel):
    """Answer of ``GET /health/live`` and ``GET /health/ready``."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"status": "ready"}]})

    status: Literal["alive", "ready", "not_ready", "shutting_down"]


class ClassOut(BaseModel):
    """One output class."""

    code: str = Field(description="HAM10000 dx code")
    name: str = Field(description="display name")
    malignant: bool = Field(description="counted in malignant_probability")


class InputOut(BaseModel):
    """The model input the service resizes every image to."""

    height: int = Field(description="pixels")
    width: int = Field(description="pixels")
    channels: int = 3
    dtype: str = Field(description="element type of the ONNX input tensor")
    color_order: str = "RGB"
    resize_method: str


class ReferralOut(BaseModel):
    """The referral thresholds in force (manifest values unless overridden by settings)."""

    malignant_classes: list[str]
    malignant_probability_threshold: float = Field(description="refer when malignant_probability >= this")
    min_top_probability: float = Field(description="refer when the top-1 probability < this")
    source: Literal["manifest", "settings"] = Field(description="where the thresholds came from")


class OODOut(BaseModel):
    """The served model's out-of-distribution guard."""

    method: str = Field(description="how ood_score is computed")
    description: str = Field(description="what ood_score means")
    threshold: float = Field(description="out_of_distribution is true when ood_score > threshold")
    threshold_source: Literal["manifest", "settings"] = Field(
        description="where the threshold came from: the model's manifest (1.0: 95 % of the guarding "
        "members' held-out images below it) or the site's setting DERMSERVE_OOD_THRESHOLD (valid only for the "
        "model version named by DERMSERVE_OOD_THRESHOLD_MODEL_VERSION: the server does not start with another)")
    fitted_on: str = Field(description="the images the detector was fitted and thresholded on")
    policy: Literal["flag", "reject"] = Field(
        description="flag: answer with out_of_distribution=true and a referral; reject: 422 naming each such image "
        "(setting DERMSERVE_OOD_POLICY)")
    evaluation: dict[str, Any] = Field(default_factory=dict, description="measured AUROC and flagged shares "
                                       "(from the manifest), holding at the manifest's threshold `threshold` "
                                       "(not at a site's DERMSERVE_OOD_THRESHOLD)")


class ModelInfo(BaseModel):
    """Answer of ``GET /model``: a summary of the served model directory's manifest."""

    model_config = ConfigDict(
        protected_namespaces=(),
        json_schema_extra={
            "examples": [
                {
                    "name": "mobilenetv2-ham10000",
                    "version": "1.0.0",
                    "created_at": "2026-11-24T01:30:26Z",
                    "sha256": "920a1d1ae801b6dc86e465f5b7d963d48081ce8b2ad23d3085a4ce3a21a54c60",
                    "classes": [{"code": "mel", "name": "Melanoma", "malignant": True}],
                    "input": {"height": 160, "width": 160, "channels": 3, "dtype": "uint8",
                              "color_order": "RGB", "resize_method": "bilinear"},
                    "calibration_temperature": 1.42,
                    "referral": {"malignant_classes": ["mel", "bcc", "akiec"],
                                 "malignant_probability_threshold": 0.3, "min_top_probability": 0.5,
                                 "source": "manifest"},
                    "metrics": {"accuracy": 0.82, "balanced_accuracy": 0.71},
                    "execution_provider": "CPUExecutionProvider",
                    "disclaimer": DISCLAIMER,
                }
            ]
        },
    )

    name: str
    version: str
    created_at: str = Field(description="ISO 8601 time the model directory was written")
    sha256: str = Field(description="verified sha256 of the ONNX file")
    classes: list[ClassOut] = Field(description="in model output order")
    input: InputOut
    calibration_temperature: float = Field(description="T in softmax(logits / T), fitted on the validation split")
    referral: ReferralOut
    metrics: dict[str, Any] = Field(description="test-split metrics reported by the trainer (manifest `metrics.test`)")
    ood: OODOut | None = Field(None, description="the out-of-distribution guard; null when the model has none")
    execution_provider: str = Field(description="the onnxruntime execution provider in use")
    disclaimer: str = DISCLAIMER


# --------------------------------------------------------------------------------------------
# asynchronous jobs (POST /jobs, GET /jobs/{id}, DELETE /jobs/{id})
# --------------------------------------------------------------------------------------------
JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]

_JOB_ID_EXAMPLE = "5f0c2b7e9d4a4f3c8e1b2a6d7c9e0f11"


class JobCreateRequest(BaseModel):
    """JSON body of ``POST /jobs``: the images of ``POST /predict`` plus an optional reference."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"reference": "study-2024-118", "images": [{"id": "lesion-1", "data": _B64_EXAMPLE}]}]
        },
    )

    images: list[ImageInput] = Field(
        min_length=1,
        description="images to classify, answered in the same order; at most `max_images_per_job` "
        "(setting, default 1000) or the request is refused with 413",
    )
    reference: str | None = Field(
        None, max_length=256, description="optional client reference (e.g. a study id), stored and echoed back"
    )


class JobAccepted(BaseModel):
    """Answer of ``POST /jobs`` (202 Accepted; ``Location: /jobs/{id}``): the job's receipt."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"id": _JOB_ID_EXAMPLE, "status": "queued", "total": 120,
                                         "reference": "study-2024-118"}]}
    )

    id: str = Field(description="job id; poll `GET /jobs/{id}`")
    status: JobState = Field(description="always `queued` in this answer")
    total: int = Field(ge=1, description="number of images in the job")
    reference: str | None = Field(None, description="the client's reference, if it gave one")


class JobStatus(BaseModel):
    """Answer of ``GET /jobs/{id}`` (and ``DELETE /jobs/{id}``).

    ``results`` is present once the job has ``succeeded``: one :class:`Prediction` per image (the
    same shape as ``POST /predict`` answers), in input order. Times are ISO 8601 UTC.
    """

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"id": _JOB_ID_EXAMPLE, "status": "running", "done": 40, "total": 120,
                 "reference": "study-2024-118", "created_at": "2026-11-24T01:30:26.120Z", "finished_at": None,
                 "error": None},
                {"id": _JOB_ID_EXAMPLE, "status": "succeeded", "done": 1, "total": 1,
                 "reference": "study-2024-118", "created_at": "2026-11-24T01:30:26.120Z",
                 "finished_at": "2026-11-24T01:30:31.870Z", "error": None,
                 "model": {"name": "mobilenetv2-ham10000", "version": "1.0.0"},
                 "results": [Prediction.model_config["json_schema_extra"]["examples"][0]],  # type: ignore[index]
                 "disclaimer": DISCLAIMER},
            ]
        },
    )

    id: str
    status: JobState = Field(description="queued | running | succeeded | failed | cancelled")
    done: int = Field(ge=0, description="images whose result is stored")
    total: int = Field(ge=1, description="images in the job")
    reference: str | None = Field(None, description="the client's reference, if it gave one")
    created_at: str = Field(description="when the job was accepted (ISO 8601 UTC)")
    finished_at: str | None = Field(None, description="when it succeeded, failed or was cancelled (ISO 8601 UTC)")
    error: str | None = Field(None, description="why the job failed (status `failed` only)")
    model: ModelRef | None = Field(None, description="the model that answered (with `results`)")
    results: list[Prediction] | None = Field(
        None, description="per-image predictions in input order; only when status is `succeeded`"
    )
    disclaimer: str | None = Field(None, description="with `results`: this output supports, and does not replace, "
                                   "a clinician")


# --------------------------------------------------------------------------------------------
# Open Inference Protocol V2 (KServe specification/protocol/inference_rest.md)
# --------------------------------------------------------------------------------------------
Datatype = Literal["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
                   "FP16", "FP32", "FP64", "BYTES"]


class ServerMetadataResponse(BaseModel):
    """``GET /v2``."""

    name: str
    version: str
    extensions: list[str] = Field(default_factory=list)


class LiveResponse(BaseModel):
    """``GET /v2/health/live``."""

    live: bool


class ReadyResponse(BaseModel):
    """``GET /v2/health/ready`` and ``GET /v2/models/{name}/ready``."""

    ready: bool


class MetadataTensor(BaseModel):
    """One tensor in model metadata; ``-1`` in ``shape`` is a variable dimension."""

    name: str
    datatype: Datatype
    shape: list[int]
    parameters: dict[str, Any] | None = None


class ModelMetadataResponse(BaseModel):
    """``GET /v2/models/{name}``."""

    name: str
    versions: list[str] = Field(default_factory=list)
    platform: str
    inputs: list[MetadataTensor]
    outputs: list[MetadataTensor]
    parameters: dict[str, Any] | None = None


class RequestInput(BaseModel):
    """One input tensor of an inference request.

    ``data`` is the row-major flattened (or nested) tensor content; for ``BYTES`` it is a list of
    base64 strings (each one an encoded image). With the binary tensor data extension,
    ``parameters.binary_data_size`` replaces ``data`` and the bytes follow the JSON header.
    """

    name: str
    shape: list[int]
    datatype: Datatype
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class RequestOutput(BaseModel):
    """An output the client asks for (``binary_data`` selects the binary tensor data extension)."""

    name: str
    parameters: dict[str, Any] | None = None


class InferenceRequest(BaseModel):
    """``POST /v2/models/{name}/infer`` body (JSON part)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "req-1",
                    "inputs": [{"name": "images", "shape": [1], "datatype": "BYTES", "data": [_B64_EXAMPLE]}],
                    "outputs": [{"name": "probabilities"}],
                }
            ]
        }
    )

    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    """One output tensor of an inference response."""

    name: str
    shape: list[int]
    datatype: Datatype
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferenceResponse(BaseModel):
    """``POST /v2/models/{name}/infer`` answer: ``probabilities`` FP32 ``[N, 7]`` (calibrated)."""

    model_config = ConfigDict(
        protected_namespaces=(),
        json_schema_extra={
            "examples": [
                {
                    "model_name": "mobilenetv2-ham10000",
                    "model_version": "1.0.0",
                    "id": "req-1",
                    "outputs": [{"name": "probabilities", "shape": [1, 7], "datatype": "FP32",
                                 "parameters": {"classes": "akiec,bcc,bkl,df,mel,nv,vasc"},
                                 "data": list(_PROBS_EXAMPLE.values())}],
                }
            ]
        },
    )

    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[ResponseOutput]
