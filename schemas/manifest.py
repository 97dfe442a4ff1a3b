"""The model-directory contract: ``manifest.json`` next to ``model.onnx``.

The exporter writes it, the service reads it and never guesses: class order, input size,
colour order, value range, resize method, calibration temperature, referral thresholds and the
sha256 of the ONNX file all come from here.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: HAM10000 ``dx`` codes with their display names (Tschandl et al., Sci. Data 5, 180161, 2018).
HAM10000_CLASSES: dict[str, str] = {
    "akiec": "Actinic keratoses / intraepithelial carcinoma",
    "bcc": "Basal cell carcinoma",
    "bkl": "Benign keratosis-like lesions",
    "df": "Dermatofibroma",
    "mel": "Melanoma",
    "nv": "Melanocytic nevi",
    "vasc": "Vascular lesions",
}

#: The classes usually counted as malignant in HAM10000 (melanoma, basal cell carcinoma,
#: actinic keratosis / Bowen's disease).
MALIGNANT_CLASSES: tuple[str, ...] = ("mel", "bcc", "akiec")


class ClassInfo(BaseModel):
    """One output class: its HAM10000 ``dx`` code and a display name."""

    code: str
    name: str


class InputSpec(BaseModel):
    """What the ONNX graph's image input expects."""

    name: str = Field(description="ONNX input tensor name")
    height: int = Field(gt=0, description="pixels")
    width: int = Field(gt=0, description="pixels")
    channels: Literal[3] = 3
    layout: Literal["NHWC"] = "NHWC"
    dtype: Literal["uint8", "float32"] = Field(description="element type of the input tensor")
    color_order: Literal["RGB"] = "RGB"
    value_range: tuple[float, float] = Field(
        (0.0, 255.0), description="range of pixel values the graph expects; normalisation is inside the graph"
    )
    resize_method: Literal["bilinear", "bicubic", "nearest", "lanczos"] = "bilinear"


class OutputSpec(BaseModel):
    """What the ONNX graph's output holds."""

    name: str = Field(description="ONNX output tensor name")
    kind: Literal["logits"] = Field(
        "logits", description="unnormalised scores; probabilities = softmax(logits / temperature)"
    )


class Calibration(BaseModel):
    """Temperature scaling (Guo et al., 'On Calibration of Modern Neural Networks', ICML 2017)."""

    method: Literal["temperature", "none"] = "temperature"
    temperature: float = Field(1.0, gt=0)
    fitted_on: str = Field("val", description="the split the temperature was fitted on")


class OperatingPoint(BaseModel):
    """One malignant-probability threshold and what it did where it was chosen."""

    target_sensitivity: float = Field(ge=0, le=1)
    malignant_probability_threshold: float = Field(ge=0, le=1)
    sensitivity: float = Field(ge=0, le=1, description="malignant sensitivity where it was chosen")
    specificity: float = Field(ge=0, le=1, description="benign specificity where it was chosen")


class Referral(BaseModel):
    """Thresholds of the referral rule (see ``service.answers.referral_decision``)."""

    malignant_classes: list[str] = Field(default_factory=lambda: list(MALIGNANT_CLASSES))
    malignant_probability_threshold: float = Field(
        0.3, ge=0, le=1, description="refer when P(mel)+P(bcc)+P(akiec) is at or above this"
    )
    min_top_probability: float = Field(
        0.5, ge=0, le=1, description="refer when the calibrated top-1 probability is below this (uncertain); "
        "0 disables this reason"
    )
    chosen_on: str | None = Field(None, description="the predictions the threshold was chosen on (e.g. out-of-fold)")
    target_sensitivity: float | None = Field(None, description="malignant sensitivity the threshold was chosen for")
    validation_sensitivity: float | None = Field(None, description="malignant sensitivity where it was chosen")
    validation_specificity: float | None = Field(None, description="specificity (benign not referred) where it was chosen")
    operating_points: list[OperatingPoint] = Field(
        default_factory=list, description="thresholds for other target sensitivities, chosen the same way "
        "(the service's referral_target_sensitivity setting picks one)")


class OutOfDistribution(BaseModel):
    """The out-of-distribution guard carried by the model: a second graph output, higher = less like
    the training images (see ``trainer/ood.py`` for the method and its source)."""

    output: str = Field("ood_score", description="name of the float32 (B,) ONNX output")
    method: str = Field(description="how the score is computed")
    threshold: float = Field(description="an image is flagged out_of_distribution when ood_score > threshold")
    description: str = Field(description="what the score means, in words")
    fitted_on: str = Field(description="the images the detector was fitted and thresholded on")
    evaluation: dict[str, Any] = Field(default_factory=dict, description="measured AUROC and flagged shares")


class Manifest(BaseModel):
    """``manifest.json``: everything the service must know about a model directory."""

    model_config = ConfigDict(protected_namespaces=())

    schema_version: Literal[1] = 1
    name: str
    version: str
    created_at: datetime
    model_file: str = "model.onnx"
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of model_file")
    classes: list[ClassInfo]
    input: InputSpec
    output: OutputSpec
    calibration: Calibration = Calibration()
    referral: Referral = Referral()
    ood: OutOfDistribution | None = Field(None, description="the out-of-distribution guard; None = the model has none")
    ensemble: dict[str, Any] | None = Field(
        None, description="members, test-time views and logit adjustment inside the graph (None = one model)")
    metrics: dict[str, Any] = Field(default_factory=dict, description="test-split metrics from the trainer")
    training: dict[str, Any] = Field(default_factory=dict, description="the trainer config the model ran with")
    export: dict[str, Any] = Field(default_factory=dict, description="exporter versions and parity-check results")

    @model_validator(mode="after")
    def _check_classes(self) -> "Manifest":
        """Class codes are unique and the referral's malignant classes are among them.

        Raises:
            ValueError: duplicate codes, or a malignant class that is not an output class (a typo
                there would silently count as probability 0 and miss referrals).
        """
        codes = [c.code for c in self.classes]
        if len(set(codes)) != len(codes):
            raise ValueError(f"duplicate class codes in {codes}")
        unknown = set(self.referral.malignant_classes) - set(codes)
        if unknown:
            raise ValueError(f"referral.malignant_classes {sorted(unknown)} are not output classes {codes}")
        return self

    @property
    def class_codes(self) -> list[str]:
        """Class codes in output order."""
        return [c.code for c in self.classes]
