"""The out-of-distribution guard in answers (no HTTP here; over HTTP see test_ood_http.py).

A model directory whose manifest has ``ood`` makes the runtime read the graph's extra output; the
answer shaper turns its per-image score into ``ood_score`` / ``out_of_distribution``, a referral with
the ``out_of_distribution`` reason first, and, under the ``reject`` policy, a 422-mapped error that names
each flagged image.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from schemas.manifest import Manifest, OutOfDistribution
from service.answers import REASON_OOD, AnswerShaper, ReferralRule
from service.decoder import DecodedImage
from service.inputs import InvalidInputError
from service.outputs import ImageOutput, ModelOutput
from service.runtime import manifest_extra_outputs


def _manifest(model_dir: Path, with_guard: bool) -> Manifest:
    m = Manifest.model_validate_json((model_dir / "manifest.json").read_bytes())
    m = m.model_copy(update={"ood": OutOfDistribution(
        output="ood_score", method="test", threshold=1.0, description="test guard", fitted_on="test")
        if with_guard else None})
    return m


def _image(i: int) -> DecodedImage:
    return DecodedImage(id=f"img{i}", pixels=np.zeros((4, 4, 3), np.uint8))


def _shaper(model_dir: Path, policy: str = "flag", with_guard: bool = True,
            threshold: float | None = None) -> AnswerShaper:
    m = _manifest(model_dir, with_guard)
    return AnswerShaper(m, ReferralRule.resolve(m), "CPUExecutionProvider", policy, threshold)


def test_extra_output_named_by_the_manifest(model_dir: Path):
    assert manifest_extra_outputs(_manifest(model_dir, True)) == ("ood_score",)
    assert manifest_extra_outputs(_manifest(model_dir, False)) == ()


def test_flagged_image_is_referred_with_the_ood_reason_first(model_dir: Path):
    shaper = _shaper(model_dir)
    probs = np.array([0.01, 0.01, 0.02, 0.01, 0.02, 0.92, 0.01], np.float32)  # confident nv, benign
    inside = shaper.prediction(0, _image(0), ImageOutput(probs, {"ood_score": 0.4}))
    assert inside.ood_score == pytest.approx(0.4) and not inside.out_of_distribution
    assert not inside.referral_recommended and inside.referral_reasons == []
    outside = shaper.prediction(1, _image(1), ImageOutput(probs, {"ood_score": 3.5}))
    assert outside.out_of_distribution and outside.ood_score == pytest.approx(3.5)
    assert outside.referral_recommended and outside.referral_reasons[0] == REASON_OOD
    at = shaper.prediction(2, _image(2), ImageOutput(probs, {"ood_score": 1.0}))
    assert not at.out_of_distribution, "flagged only strictly above the threshold"


def test_model_without_guard_answers_as_before(model_dir: Path):
    shaper = _shaper(model_dir, with_guard=False)
    probs = np.array([0.01, 0.01, 0.02, 0.01, 0.02, 0.92, 0.01], np.float32)
    p = shaper.prediction(0, _image(0), ImageOutput(probs, {}))
    assert p.ood_score is None and p.out_of_distribution is False
    assert shaper.model_info().ood is None


def test_reject_policy_names_each_flagged_image(model_dir: Path):
    probs = np.tile(np.array([0.01, 0.01, 0.02, 0.01, 0.02, 0.92, 0.01], np.float32), (3, 1))
    output = ModelOutput(probs, {"ood_score": np.array([0.2, 5.0, 7.5], np.float32)})
    images = [_image(i) for i in range(3)]
    _shaper(model_dir, "flag").check_in_distribution(images, output)  # flag: no error
    with pytest.raises(InvalidInputError) as err:
        _shaper(model_dir, "reject").check_in_distribution(images, output)
    detail = err.value.detail
    assert [d["index"] for d in detail] == [1, 2] and [d["id"] for d in detail] == ["img1", "img2"]
    assert all(d["reason"] == REASON_OOD for d in detail)
    _shaper(model_dir, "reject").check_in_distribution(images[:1], output.take([0]))  # all inside: no error
    info = json.loads(_shaper(model_dir, "reject").model_info().model_dump_json())
    assert info["ood"]["policy"] == "reject" and info["ood"]["threshold"] == 1.0


def test_site_threshold_replaces_the_manifest_threshold(model_dir: Path):
    from pydantic import ValidationError

    from service.settings import Settings

    probs = np.array([0.01, 0.01, 0.02, 0.01, 0.02, 0.92, 0.01], np.float32)
    out = ImageOutput(probs, {"ood_score": 1.3})
    assert _shaper(model_dir).prediction(0, _image(0), out).out_of_distribution
    site = _shaper(model_dir, threshold=1.5)
    assert not site.prediction(0, _image(0), out).out_of_distribution
    assert site.prediction(1, _image(1), ImageOutput(probs, {"ood_score": 1.6})).out_of_distribution
    info = site.model_info().ood
    assert info.threshold == 1.5 and info.threshold_source == "settings"
    assert _shaper(model_dir).model_info().ood.threshold_source == "manifest"
    assert _shaper(model_dir, with_guard=False, threshold=1.5).model_info().ood is None
    pinned = Settings(_env_file=None, ood_threshold="1.5", ood_threshold_model_version="2.2.0").referral
    assert (pinned.ood_threshold, pinned.ood_threshold_model_version) == (1.5, "2.2.0")
    for bad in ("0", "-1", "inf", "nan"):  # infinity would switch the guard off (and is not valid JSON)
        with pytest.raises(ValidationError, match="ood_threshold"):
            Settings(_env_file=None, ood_threshold=bad, ood_threshold_model_version="2.2.0")
        with pytest.raises(ValueError, match="ood_threshold"):  # the shaper checks values given directly too
            _shaper(model_dir, threshold=float(bad))


def test_site_threshold_is_pinned_to_the_model_version_it_was_measured_on(model_dir: Path):
    """A site threshold is on one model's ood_score scale: it needs the version it was measured on, and a
    different served version refuses it (start-up fails) instead of carrying it over to an upgrade."""
    from pydantic import ValidationError

    from service.settings import Settings

    for half in ({"ood_threshold": "1.5"}, {"ood_threshold_model_version": "2.2.0"}):
        with pytest.raises(ValidationError, match="go together"):
            Settings(_env_file=None, **half)
    for blank in ("", "  "):
        with pytest.raises(ValidationError, match="at least 1 character"):
            Settings(_env_file=None, ood_threshold="1.5", ood_threshold_model_version=blank)
    spaced = Settings(_env_file=None, ood_threshold="1.5", ood_threshold_model_version=" 2.2.0 ").referral
    assert spaced.ood_threshold_model_version == "2.2.0"
    import asyncio

    from service.components import load_model
    from service.runtime import ModelLoadError

    version = _manifest(model_dir, True).version
    same = Settings(_env_file=None, model_dir=model_dir, max_batch_size=1, ood_threshold="1.5",
                    ood_threshold_model_version=version)
    assert asyncio.run(load_model(same)).manifest.version == version
    other = Settings(_env_file=None, model_dir=model_dir, max_batch_size=1, ood_threshold="1.5",
                     ood_threshold_model_version="0.0.1")
    with pytest.raises(ModelLoadError, match="measured on model version '0.0.1'") as err:
        asyncio.run(load_model(other))
    assert version in str(err.value)


def test_referral_target_sensitivity_picks_the_manifest_operating_point(model_dir: Path):
    from schemas.manifest import OperatingPoint

    m = _manifest(model_dir, True)
    ref = m.referral.model_copy(update={"operating_points": [
        OperatingPoint(target_sensitivity=0.9, malignant_probability_threshold=0.21, sensitivity=0.9, specificity=0.7),
        OperatingPoint(target_sensitivity=0.95, malignant_probability_threshold=0.12, sensitivity=0.95,
                       specificity=0.55)]})
    m = m.model_copy(update={"referral": ref})
    assert ReferralRule.resolve(m, target_sensitivity=0.95).malignant_threshold == 0.12
    assert ReferralRule.resolve(m, target_sensitivity=0.95).source == "settings"
    assert ReferralRule.resolve(m, malignant_threshold=0.4, target_sensitivity=0.95).malignant_threshold == 0.4
    assert ReferralRule.resolve(m).malignant_threshold == m.referral.malignant_probability_threshold
    with pytest.raises(ValueError, match="no referral operating point"):
        ReferralRule.resolve(m, target_sensitivity=0.5)
