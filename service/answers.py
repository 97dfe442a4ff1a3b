"""Shaping answers: one image's model output -> a :class:`~schemas.api.Prediction` (with the referral
rule), and the ``GET /model`` summary. No HTTP, no model calls.

Referral rule (documented in :class:`schemas.api.Prediction` as well)::

    malignant_probability = sum of calibrated P(c) for c in manifest referral.malignant_classes
                            (= P(mel) + P(bcc) + P(akiec) for HAM10000)
    referral_recommended  = malignant_probability >= malignant_threshold
                            OR top-1 probability  <  min_top_probability

Both thresholds come from ``manifest.json`` (``referral.malignant_probability_threshold``,
``referral.min_top_probability``), overridable by the ``referral`` settings group.

Out-of-distribution guard (a model whose manifest has ``ood``): the graph's extra output
``ood.output`` is the image's score; above ``ood.threshold`` the image is flagged
(``out_of_distribution``), referred, and ``out_of_distribution`` leads its referral reasons. The
``ood_threshold`` setting, when set, replaces the manifest's threshold (a site's own recalibration).
With the ``reject`` policy :meth:`AnswerShaper.check_in_distribution` refuses such requests.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from schemas.api import ClassOut, InputOut, ModelInfo, ModelRef, OODOut, Prediction, ReferralOut
from schemas.manifest import Manifest
from service.decoder import DecodedImage
from service.inputs import InvalidInputError
from service.outputs import ImageOutput, ModelOutput

REASON_MALIGNANT = "malignant_probability_at_or_above_threshold"
REASON_UNCERTAIN = "top_probability_below_minimum"
REASON_OOD = "out_of_distribution"


def referral_decision(
    probabilities: dict[str, float], malignant_classes: Sequence[str], malignant_threshold: float,
    min_top_probability: float,
) -> tuple[float, bool, list[str]]:
    """Apply the referral rule to one image's calibrated probabilities.

    Args:
        probabilities: calibrated probability per class code (sums to 1).
        malignant_classes: codes counted as malignant (manifest ``referral.malignant_classes``).
        malignant_threshold: refer when the malignant probability is >= this (0..1).
        min_top_probability: refer when the top-1 probability is < this (0..1).

    Returns:
        ``(malignant_probability, referral_recommended, reasons)`` where ``reasons`` holds
        ``"malignant_probability_at_or_above_threshold"`` and/or ``"top_probability_below_minimum"``.
    """
    malignant = float(sum(probabilities.get(c, 0.0) for c in malignant_classes))
    malignant = min(1.0, max(0.0, malignant))
    top = max(probabilities.values())
    reasons: list[str] = []
    if malignant >= malignant_threshold:
        reasons.append(REASON_MALIGNANT)
    if top < min_top_probability:
        reasons.append(REASON_UNCERTAIN)
    return malignant, bool(reasons), reasons


@dataclass(frozen=True)
class ReferralRule:
    """The thresholds in force and where they came from (``manifest`` or ``settings``)."""

    malignant_classes: tuple[str, ...]
    malignant_threshold: float
    min_top_probability: float
    source: str

    @classmethod
    def resolve(cls, manifest: Manifest, malignant_threshold: float | None = None,
                min_top_probability: float | None = None, target_sensitivity: float | None = None) -> ReferralRule:
        """The manifest's thresholds, each replaced by its override when that is not None.

        ``target_sensitivity`` picks the manifest's operating point for that sensitivity
        (``referral.operating_points``) as the malignant threshold, unless ``malignant_threshold`` is given.

        Raises:
            ValueError: no operating point in the manifest for ``target_sensitivity``.
        """
        r = manifest.referral
        if target_sensitivity is not None and malignant_threshold is None:
            points = {round(p.target_sensitivity, 4): p for p in r.operating_points}
            if round(target_sensitivity, 4) not in points:
                raise ValueError(f"the model has no referral operating point for sensitivity {target_sensitivity}; "
                                 f"it has {sorted(points)}")
            malignant_threshold = points[round(target_sensitivity, 4)].malignant_probability_threshold
        overridden = malignant_threshold is not None or min_top_probability is not None
        return cls(tuple(r.malignant_classes),
                   r.malignant_probability_threshold if malignant_threshold is None else malignant_threshold,
                   r.min_top_probability if min_top_probability is None else min_top_probability,
                   "settings" if overridden else "manifest")

    def decide(self, probabilities: dict[str, float]) -> tuple[float, bool, list[str]]:
        """:func:`referral_decision` with these thresholds."""
        return referral_decision(probabilities, self.malignant_classes, self.malignant_threshold,
                                 self.min_top_probability)


class AnswerShaper:
    """Builds the per-image answers and the model summary of one served model.

    Args:
        manifest: the served model's manifest (class order and names, version, metrics).
        referral: the referral thresholds in force.
        provider: the active onnxruntime execution provider (for :meth:`model_info`).
        ood_policy: ``flag`` or ``reject`` (setting ``ood_policy``).
        ood_threshold: replaces the manifest's ``ood.threshold`` when not None (setting ``ood_threshold``);
            dimensionless, on the scale of the model's ``ood_score`` (a ratio of Mahalanobis distances).

    Raises:
        ValueError: ``ood_threshold`` is not a finite number above 0. (That a site threshold belongs to the
            served model version is checked at start-up: :func:`service.components.load_model`.)
    """

    def __init__(self, manifest: Manifest, referral: ReferralRule, provider: str, ood_policy: str = "flag",
                 ood_threshold: float | None = None) -> None:
        self.manifest = manifest
        self.referral = referral
        self.provider = provider
        self.ood = manifest.ood
        self.ood_policy = ood_policy
        if ood_threshold is not None and not (math.isfinite(ood_threshold) and ood_threshold > 0):
            raise ValueError(f"ood_threshold must be a finite number above 0, got {ood_threshold!r}")
        self.ood_threshold_source = "manifest" if ood_threshold is None else "settings"
        #: the threshold in force (None for a model without a guard)
        self.ood_threshold = None if self.ood is None else (self.ood.threshold if ood_threshold is None
                                                            else float(ood_threshold))
        self.codes = manifest.class_codes
        self.names = {c.code: c.name for c in manifest.classes}
        self.model_ref = ModelRef(name=manifest.name, version=manifest.version)

    def prediction(self, index: int, image: DecodedImage, output: ImageOutput) -> Prediction:
        """One image's :class:`Prediction` from its calibrated probabilities ``float32 (K,)`` and, for a
        model with a guard, its out-of-distribution score (``output.extras[ood.output]``).

        ``image.metadata`` (e.g. DICOM UIDs) arrives here per image as well: the DICOM UIDs are echoed
        (``image.uids()``; never the patient fields).
        """
        probs = output.probabilities
        p = {code: float(v) for code, v in zip(self.codes, probs)}
        top = int(np.argmax(probs))
        malignant, refer, reasons = self.referral.decide(p)
        score, ood = self.ood_flag(output)
        if ood:
            refer, reasons = True, [REASON_OOD, *reasons]
        return Prediction(
            id=image.id, index=index, label=self.codes[top], label_name=self.names[self.codes[top]],
            **image.uids(),
            probability=float(probs[top]), probabilities=p, malignant_probability=malignant,
            referral_recommended=refer, referral_reasons=reasons,  # type: ignore[arg-type]
            out_of_distribution=ood, ood_score=score,
        )

    def ood_flag(self, output: ImageOutput) -> tuple[float | None, bool]:
        """``(ood_score, out_of_distribution)`` of one image; ``(None, False)`` for a model without a guard."""
        if self.ood is None or self.ood.output not in output.extras:
            return None, False
        score = float(output.extras[self.ood.output])
        return score, bool(score > self.ood_threshold)

    def guard_outputs(self, output: ModelOutput, n: int) -> tuple[list[float | None], list[bool], float] | None:
        """``(ood_scores, out_of_distribution flags, threshold)`` of a batch of ``n`` images for the V2 codec;
        None for a model without a guard."""
        if self.ood is None:
            return None
        flags = [self.ood_flag(output.image(i)) for i in range(n)]
        return [s for s, _ in flags], [f for _, f in flags], self.ood_threshold

    def check_in_distribution(self, images: Sequence[DecodedImage], output: ModelOutput) -> None:
        """Under the ``reject`` policy, refuse the request if the guard flags any of its images.

        Raises:
            InvalidInputError: ``detail`` names each flagged image with reason ``out_of_distribution``.
        """
        if self.ood_policy != "reject" or self.ood is None:
            return
        bad = []
        for i, image in enumerate(images):
            score, ood = self.ood_flag(output.image(i))
            if ood:
                bad.append({"index": i, "id": image.id, "reason": REASON_OOD,
                            "message": f"not recognised as a dermoscopic image (out-of-distribution score "
                                       f"{score:.4g} > threshold {self.ood_threshold:.4g})"})
        if bad:
            raise InvalidInputError(f"{len(bad)} of {len(images)} images were not recognised as dermoscopic images "
                                    "and this server rejects them (DERMSERVE_OOD_POLICY=reject)", bad)

    def model_info(self) -> ModelInfo:
        """Summary of the manifest plus the thresholds in force and the execution provider."""
        m, r = self.manifest, self.referral
        metrics = m.metrics.get("test", m.metrics) if isinstance(m.metrics, dict) else {}
        return ModelInfo(
            name=m.name, version=m.version, created_at=m.created_at.isoformat(), sha256=m.sha256,
            classes=[ClassOut(code=c.code, name=c.name, malignant=c.code in r.malignant_classes) for c in m.classes],
            input=InputOut(height=m.input.height, width=m.input.width, channels=m.input.channels,
                           dtype=m.input.dtype, color_order=m.input.color_order, resize_method=m.input.resize_method),
            calibration_temperature=m.calibration.temperature,
            referral=ReferralOut(malignant_classes=list(r.malignant_classes),
                                 malignant_probability_threshold=r.malignant_threshold,
                                 min_top_probability=r.min_top_probability, source=r.source),  # type: ignore[arg-type]
            metrics=metrics,
            ood=None if self.ood is None else OODOut(
                method=self.ood.method, description=self.ood.description, threshold=self.ood_threshold,
                threshold_source=self.ood_threshold_source,  # type: ignore[arg-type]
                fitted_on=self.ood.fitted_on, policy=self.ood_policy,  # type: ignore[arg-type]
                evaluation={"threshold": self.ood.threshold, **self.ood.evaluation}),
            execution_provider=self.provider,
        )
