"""The cross-validated ensemble: folds, augmentation, choices, OOD detector, and the whole path
(2-fold tiny members -> trainer.ensemble -> export.ensemble with parity -> the service serves it).

The end-to-end part trains two members on a few dozen real HAM10000 images at 64 px for one epoch: it
proves the path works, not that the model is good (see trainer/results/ensemble/REPORT.md for that).
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import _repo_relative, require, run_module

HAS_TF = importlib.util.find_spec("tensorflow") is not None and importlib.util.find_spec("tf2onnx") is not None
needs_tf = pytest.mark.skipif(not HAS_TF and os.environ.get("CI") != "true",
                              reason="training extra not installed (pip install -e '.[train,cpu]')")


def test_lesion_folds_keep_each_lesion_in_one_fold_and_stratify():
    from trainer.folds import lesion_folds

    rng = np.random.default_rng(0)
    rows = []
    for lesion in range(400):
        label = "nv" if lesion % 4 else "mel"
        for _ in range(int(rng.integers(1, 4))):
            rows.append({"lesion_id": f"L{lesion}", "label": label})
    fold = lesion_folds(rows, 4, seed=1)
    assert set(fold.tolist()) == {0, 1, 2, 3}
    by_lesion: dict[str, set[int]] = {}
    for r, f in zip(rows, fold):
        by_lesion.setdefault(r["lesion_id"], set()).add(int(f))
    assert all(len(v) == 1 for v in by_lesion.values())
    mel_share = [np.mean([r["label"] == "mel" for r, f in zip(rows, fold) if f == k]) for k in range(4)]
    assert max(mel_share) - min(mel_share) < 0.08
    with pytest.raises(ValueError):
        lesion_folds(rows, 1, seed=1)


def test_portable_path_records_repository_and_shared_paths_relatively(monkeypatch, tmp_path):
    from trainer import config
    from trainer.config import REPO_ROOT, _repo_path, portable_path
    from trainer.ensemble import resolve_member

    member = REPO_ROOT / "trainer/results/cv/fold0"
    monkeypatch.chdir(REPO_ROOT)
    assert portable_path(member) == "trainer/results/cv/fold0" == portable_path("trainer/results/cv/fold0")
    assert resolve_member(portable_path(member)) == member
    shared = REPO_ROOT.parent / "shared" / "data" / "ham10000"
    assert portable_path(shared) == "../shared/data/ham10000"
    assert _repo_path(portable_path(shared)) == shared.resolve()
    # a relative path is relative to the working directory, as the command line reads it
    monkeypatch.chdir(tmp_path)
    assert portable_path("out/fold0") == str((tmp_path / "out/fold0").resolve())
    # data and weights moved by DERMSERVE_DATA_DIR / DERMSERVE_WEIGHTS_DIR are recorded at their documented places
    monkeypatch.setattr(config, "DEFAULT_DATA_DIR", tmp_path / "isic/ham")
    monkeypatch.setattr(config, "DEFAULT_WEIGHTS_DIR", tmp_path / "w")
    assert portable_path(tmp_path / "isic/ham") == "../shared/data/ham10000"
    assert portable_path(tmp_path / "w/m.h5") == "../shared/weights/m.h5"
    assert config.local_path(portable_path(tmp_path / "w/m.h5")) == tmp_path / "w/m.h5"


def test_recorded_member_paths_resolve_on_this_machine(monkeypatch, tmp_path):
    """member.json records ``../shared/...`` and repository paths; reading them back re-roots the shared ones
    at the data/weights defaults (so DERMSERVE_DATA_DIR / DERMSERVE_WEIGHTS_DIR move them) and the rest at the
    repository root, whatever the working directory; absolute paths stay."""
    from trainer import config

    recorded = config.portable_config({
        "data_dir": str(config.REPO_ROOT.parent / "shared/data/ham10000"),
        "weights": str(config.REPO_ROOT.parent / "shared/weights/w.h5"),
        "output_dir": str(config.REPO_ROOT / "trainer/results/cv/fold0"), "cache_dir": ".cache/images",
        "image_size": 160})
    assert recorded == {"data_dir": "../shared/data/ham10000", "weights": "../shared/weights/w.h5",
                        "output_dir": "trainer/results/cv/fold0", "cache_dir": ".cache/images",
                        "image_size": 160}
    monkeypatch.setattr(config, "DEFAULT_DATA_DIR", tmp_path / "elsewhere/ham")
    monkeypatch.setattr(config, "DEFAULT_WEIGHTS_DIR", tmp_path / "w")
    monkeypatch.chdir(tmp_path)
    local = config.local_config(recorded)
    assert local["data_dir"] == tmp_path / "elsewhere/ham"
    assert local["weights"] == tmp_path / "w/w.h5"
    assert local["output_dir"] == config.REPO_ROOT / "trainer/results/cv/fold0"
    assert local["cache_dir"] == config.REPO_ROOT / ".cache/images"
    assert config.local_path("/abs/data") == Path("/abs/data")
    assert config.local_path("../shared/weights/../data/ham10000") == tmp_path / "elsewhere/ham"


def test_committed_members_record_no_machine_paths():
    """Every committed member names its data and weights the portable way (no ``/work/...``)."""
    from trainer.config import REPO_ROOT

    members = sorted((REPO_ROOT / "trainer/results").glob("**/fold*/member.json"))
    assert members
    for m in members:
        cfg = json.loads(m.read_text())["config"]
        for key in ("data_dir", "weights", "output_dir"):
            assert cfg[key] is None or not Path(cfg[key]).is_absolute(), (m, key, cfg[key])


@needs_tf
def test_batch_dihedral_matches_numpy_views():
    import tensorflow as tf

    from trainer.augment import dihedral
    from trainer.cv import VIEWS, apply_view

    x = np.arange(2 * 5 * 5 * 3, dtype=np.float32).reshape(2, 5, 5, 3)
    for k, flip in VIEWS:
        got = dihedral(tf.constant(x), tf.constant([k, k], tf.int32), tf.constant([flip, flip])).numpy()
        np.testing.assert_array_equal(got, apply_view(x, k, flip))
    assert len({apply_view(x, k, f).tobytes() for k, f in VIEWS}) == 8


@needs_tf
def test_batch_augment_keeps_range_shape_and_is_reproducible():
    import tensorflow as tf

    from trainer.augment import make_batch_augment

    x = tf.constant(np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype(np.float32))
    aug = make_batch_augment(seed=3)
    a, _ = aug(tf.constant(5, tf.int64), x, None)
    b, _ = aug(tf.constant(5, tf.int64), x, None)
    c, _ = aug(tf.constant(6, tf.int64), x, None)
    assert a.shape == x.shape and float(tf.reduce_min(a)) >= 0 and float(tf.reduce_max(a)) <= 255
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert not np.allclose(a.numpy(), c.numpy())


@needs_tf
def test_hue_rotation_changes_only_hue():
    """The optional hue jitter keeps each pixel's HSV value and saturation and moves its hue."""
    import tensorflow as tf

    from trainer.augment import make_batch_augment

    x = tf.constant(np.random.default_rng(1).uniform(30, 220, (4, 16, 16, 3)).astype(np.float32))
    step = tf.constant(2, tf.int64)
    plain, _ = make_batch_augment(seed=3, brightness=0, contrast=0, saturation=0)(step, x, None)
    hued, _ = make_batch_augment(seed=3, brightness=0, contrast=0, saturation=0, hue=0.2)(step, x, None)
    hsv_plain = tf.image.rgb_to_hsv(plain / 255.0).numpy()
    hsv_hued = tf.image.rgb_to_hsv(hued / 255.0).numpy()
    np.testing.assert_allclose(hsv_hued[..., 1:], hsv_plain[..., 1:], atol=2e-3)
    shift = np.mod(hsv_hued[..., 0] - hsv_plain[..., 0] + 0.5, 1.0) - 0.5  # signed, per pixel
    per_image = shift.reshape(4, -1)
    assert np.all(np.abs(per_image) <= 0.2 + 1e-3)
    assert np.all(per_image.std(axis=1) < 5e-3), "one hue rotation per image"
    assert np.abs(per_image.mean(axis=1)).max() > 0.01


@needs_tf
def test_sharpness_jitter_softens_or_sharpens_each_image_and_keeps_flat_ones():
    """The optional sharpness jitter scales each image's fine detail (here measured as the variance of its
    Laplacian) up or down within the set range, keeps its mean, and leaves a flat image as it is."""
    import tensorflow as tf

    from trainer.augment import make_batch_augment

    rng = np.random.default_rng(2)
    x = tf.constant(rng.uniform(100, 155, (16, 24, 24, 3)).astype(np.float32))
    step = tf.constant(4, tf.int64)
    off = {"brightness": 0, "contrast": 0, "saturation": 0}
    plain, _ = make_batch_augment(seed=5, **off)(step, x, None)
    sharp, _ = make_batch_augment(seed=5, sharpness=0.8, **off)(step, x, None)

    def laplacian_var(a):
        a = a.numpy()[:, 1:-1, 1:-1] * 4 - a.numpy()[:, :-2, 1:-1] - a.numpy()[:, 2:, 1:-1] \
            - a.numpy()[:, 1:-1, :-2] - a.numpy()[:, 1:-1, 2:]
        return a.reshape(len(a), -1).var(axis=1)

    ratio = laplacian_var(sharp) / laplacian_var(plain)
    assert ratio.min() < 0.8 and ratio.max() > 1.2, ratio  # both directions occur in a batch of 16
    assert ratio.max() < 1.8 ** 2 + 0.1 and ratio.min() > 0.2 ** 2 - 0.02, ratio
    np.testing.assert_allclose(sharp.numpy().mean(axis=(1, 2, 3)), plain.numpy().mean(axis=(1, 2, 3)), atol=0.5)
    flat = tf.fill((2, 24, 24, 3), 120.0)
    out, _ = make_batch_augment(seed=5, min_area=1.0, sharpness=0.8, **off)(step, flat, None)
    np.testing.assert_allclose(out.numpy(), 120.0, atol=1e-3)


@needs_tf
def test_shades_of_gray_member_ignores_white_balance_and_exposure():
    """A member built with colour constancy answers the same under a global per-channel gain (no clipping);
    without it the answer moves. Both have the same weights, so ``weights.npz`` files load either way."""
    import keras

    from trainer.model import build_model, shades_of_gray

    rng = np.random.default_rng(4)
    x = rng.uniform(20, 180, (3, 48, 48, 3)).astype(np.float32)
    shifted = x * np.array([1.2, 1.0, 0.85], np.float32) * 1.1  # warm cast + brighter, max 238 < 255
    y = np.asarray(shades_of_gray(keras.ops.convert_to_tensor(x)))
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 255
    np.testing.assert_allclose(np.asarray(shades_of_gray(keras.ops.convert_to_tensor(shifted))), y, rtol=1e-4, atol=1e-2)

    keras.utils.set_random_seed(0)
    plain, _ = build_model("simple_cnn", 48, 7, dropout=0.0)  # the layer sits before any backbone
    sog, _ = build_model("simple_cnn", 48, 7, dropout=0.0, colour_constancy="shades_of_gray")
    sog.set_weights(plain.get_weights())
    a, b = sog.predict(x, verbose=0), sog.predict(shifted, verbose=0)
    assert np.abs(a).max() > 1e-3
    np.testing.assert_allclose(a, b, atol=1e-3 * np.abs(a).max())
    moved = np.abs(plain.predict(x, verbose=0) - plain.predict(shifted, verbose=0)).max()
    assert moved > 10 * np.abs(a - b).max()
    with pytest.raises(ValueError, match="colour_constancy"):
        build_model("simple_cnn", 48, 7, colour_constancy="grey_world")


def test_referral_decisions_follow_the_rule_the_manifest_states():
    """trainer.ensemble.referral_decisions is the rule the exporter writes: the malignant threshold alone, or,
    with the low-confidence reason kept, the threshold chosen for the pair plus top-1 < 0.5."""
    from trainer.ensemble import CLASS_CODES, referral_decisions

    k = len(CLASS_CODES)
    mel, nv = CLASS_CODES.index("mel"), CLASS_CODES.index("nv")
    probs = np.full((3, k), 0.0)
    probs[0, [mel, nv]] = [0.3, 0.7]       # P(malignant) 0.3, confident
    probs[1, [mel, nv]] = [0.1, 0.9]       # P(malignant) 0.1, confident
    probs[2, :] = 1.0 / k                  # P(malignant) 3/7, top-1 1/7 < 0.5
    rule = {"malignant_probability_threshold": 0.25, "keep_low_confidence_reason": False,
            "with_low_confidence_reason": {"malignant_probability_threshold": 0.5}}
    assert referral_decisions(rule, probs).tolist() == [True, False, True]
    assert referral_decisions(rule | {"keep_low_confidence_reason": True}, probs).tolist() == [False, False, True]


def test_evaluator_compares_the_served_referral_when_the_manifest_records_it():
    """export.evaluate reads the served-referral figures from a manifest's intervals and prints them beside its
    own; an older manifest without them leaves the column empty."""
    from export.evaluate import _recorded, format_table

    est = lambda v: {"estimate": v}
    metrics = {"test": {"n": 10}, "confidence_intervals": {
        "referral_sensitivity": est(0.9), "referral_specificity": est(0.75), "ood_flagged_share": est(0.03),
        "served_referral_sensitivity": est(0.92), "served_referral_specificity": est(0.7)}}
    rec = _recorded(metrics)
    assert rec["served_referral_sensitivity"] == 0.92 and rec["served_referral_specificity"] == 0.7
    old = _recorded({"test": {"n": 10}, "confidence_intervals": {"referral_sensitivity": est(0.9)}})
    assert "served_referral_sensitivity" not in old and _recorded({}) is None
    result = {"model": "m", "version": "1", "split": "test", "n": 10, "model_file": "model.onnx",
              "metrics": {"per_class": {}}, "ood": None, "manifest_metrics": rec,
              "referral": {"malignant_referred": 2, "malignant": 2, "sensitivity": 1.0, "benign_referred": 2,
                           "benign": 8, "specificity": 0.75, "served_sensitivity": 1.0, "served_specificity": 0.625}}
    assert "| 1.0000 / 0.6250 | 0.9200 / 0.7000 |" in format_table(result)
    result["manifest_metrics"] = old
    assert "| 1.0000 / 0.6250 | |" in format_table(result)


def test_top1_agreement_leaves_out_only_near_ties():
    """The parity check's top-class comparison (export.parity.top1_agreement): a swap of a near-tie inside the band
    is not counted, a swap of a clearer decision is, and a band holding every image compares nothing (NaN, which
    the check fails)."""
    from export.parity import top1_agreement

    ref = np.array([[0.5005, 0.4995, 0.0], [0.6, 0.4, 0.0], [0.2, 0.3, 0.5], [0.1, 0.1, 0.8]])
    near_tie_swapped = ref.copy()
    near_tie_swapped[0] = [0.4995, 0.5005, 0.0]          # margin 0.001 in the reference
    assert top1_agreement(ref, near_tie_swapped) == (0.75, 0)
    assert top1_agreement(ref, near_tie_swapped, 2e-3) == (1.0, 1)
    clear_swapped = ref.copy()
    clear_swapped[2] = [0.2, 0.5, 0.3]                   # margin 0.2 in the reference
    assert top1_agreement(ref, clear_swapped, 2e-3) == (2 / 3, 1)
    agreement, in_band = top1_agreement(ref[:1], ref[:1], 2e-3)
    assert np.isnan(agreement) and in_band == 1


def test_threshold_for_sensitivity_and_bootstrap():
    from trainer.metrics import bootstrap_ci, sensitivity_specificity, threshold_for_sensitivity

    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05])
    positive = np.array([1, 1, 0, 1, 0, 1, 0, 0, 1, 0], bool)
    t = threshold_for_sensitivity(scores, positive, 0.8)
    assert t == 0.4  # four of five positives are >= 0.4
    sens, spec = sensitivity_specificity(scores >= t, positive)
    assert sens == 0.8 and spec == 0.6
    groups = np.repeat(np.arange(50), 2)
    values = np.r_[np.zeros(50), np.ones(50)]
    ci = bootstrap_ci(lambda i: float(values[i].mean()), groups, n_resamples=200, seed=0)
    assert ci["low"] < ci["estimate"] < ci["high"] and ci["resamples"] == 200


def _family(name: str, n_members: int, logits: np.ndarray, y: np.ndarray):
    from trainer.families import Members

    return Members(root=Path(name), dirs=[Path(name) / f"fold{i}" for i in range(n_members)], configs=[],
                   oof_logits=logits, oof_labels=y, oof_fold=np.arange(len(y)) % n_members,
                   oof_ids=[str(i) for i in range(len(y))], test_logits=np.zeros((n_members, 8, 0, 3)),
                   test_labels=np.zeros(0, int), test_ids=[])


def test_weights_and_views_are_chosen_jointly_within_the_budget():
    """Rule 0: the lowest OOF NLL among the (weights, views) pairs within the budget. Two families with
    independent errors: mixing them beats either alone; a tighter budget costs views, then members."""
    from trainer.ensemble import choose_weights_and_views

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 600)
    onehot = np.eye(3)[y]
    # each image's error is mostly shared by its views (as for a real network), partly view-specific
    good_err, weak_err = rng.normal(0, 1.5, (600, 3)), rng.normal(0, 1.5, (600, 3))
    good = np.stack([2 * onehot + good_err + rng.normal(0, 1, (600, 3)) for _ in range(8)]).astype(np.float32)
    weak = np.stack([1 * onehot + weak_err + rng.normal(0, 1, (600, 3)) for _ in range(8)]).astype(np.float32)
    fams = [_family("costly", 4, good, y), _family("cheap", 1, weak, y)]
    macs = {"costly": 100_000_000, "cheap": 100_000_000}  # 0.4 and 0.1 GMAC per view
    w, views, grid = choose_weights_and_views(y, fams, macs, budget_gmacs=100.0)
    assert len(grid) == 5 * 4 and (w, views) == ((0.75, 0.25), 8)
    best = min(grid, key=lambda g: g["nll"])
    assert (tuple(best["weights"]), best["views"]) == (w, views)
    w, views, _ = choose_weights_and_views(y, fams, macs, budget_gmacs=3.2)  # 8 views of both: 4.0 GMAC
    assert (w, views) == ((0.75, 0.25), 4)
    w, views, _ = choose_weights_and_views(y, fams, macs, budget_gmacs=0.3)  # only the cheap family fits
    assert (w, views) == ((0.0, 1.0), 2)
    w, views, _ = choose_weights_and_views(y, fams, macs, budget_gmacs=0.05)  # nothing fits: the cheapest
    assert (w, views) == ((0.0, 1.0), 1)


def test_guard_prefers_the_heaviest_family_without_colour_constancy(tmp_path: Path):
    from trainer.cv import MemberConfig
    from trainer.ensemble import choose_guard
    from trainer.families import Members

    def family(name: str, cc: str) -> Members:
        cfg = MemberConfig(colour_constancy=cc, weights=None)
        z = np.zeros((0,))
        return Members(tmp_path / name, [tmp_path / name / "fold0"], [cfg], z, z, z, [], z, z, [])

    sog, plain, plain2 = family("sog", "shades_of_gray"), family("plain", "none"), family("plain2", "none")
    assert choose_guard([(sog, 0.75), (plain, 0.25)]) is plain
    assert choose_guard([(plain, 0.5), (plain2, 0.5)]) is plain  # ties: the first given
    assert choose_guard([(plain, 0.25), (plain2, 0.5), (sog, 0.25)]) is plain2
    assert choose_guard([(sog, 1.0)]) is sog  # only colour-constant families served: guard with them


def test_mahalanobis_detector_separates_far_points():
    from trainer.ood import MahalanobisDetector

    rng = np.random.default_rng(0)
    means = rng.normal(0, 3, (3, 16))
    labels = rng.integers(0, 3, 600)
    feats = means[labels] + rng.normal(0, 1, (600, 16))
    det = MahalanobisDetector.fit(feats, labels, 3)
    held = means[rng.integers(0, 3, 200)] + rng.normal(0, 1, (200, 16))
    det.calibrate(held, keep=0.95)
    assert 0.9 <= float((det.ratio(held) <= 1.0).mean()) <= 1.0
    far = rng.normal(0, 1, (50, 16)) + 20.0
    assert (det.ratio(far) > 1.0).all()
    # the Cholesky form equals the textbook distance
    prec = det.chol.astype(np.float64) @ det.chol.T.astype(np.float64)
    mu = np.linalg.solve(det.chol.T.astype(np.float64), det.means_proj.T.astype(np.float64)).T
    direct = min(float((held[0] - m) @ prec @ (held[0] - m)) for m in mu)
    assert abs(direct - float(det.distance(held[:1])[0])) / direct < 1e-3


def test_ood_set_is_built_by_code_and_large_enough():
    pytest.importorskip("skimage")
    from trainer.oodset import build_ood_set

    images = build_ood_set()
    assert len(images) >= 40
    assert len({i.name for i in images}) == len(images)
    cats = {i.category for i in images}
    assert {"photo", "ct", "mr", "ultrasound", "document", "screenshot", "blank", "noise", "test_pattern"} <= cats
    assert all(i.png[:8] == b"\x89PNG\r\n\x1a\n" for i in images)


# ------------------------------------------------------------------ end to end (real data, slow)
WEIGHTS = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.5_224_no_top.h5"
LITE0 = "efficientnet_lite0_imagenet.npz"


@pytest.fixture(scope="module")
def tiny_ensemble(tmp_path_factory, ham_dir: Path) -> Path:
    """Two families of two folds each (MobileNetV2 alpha 0.5 with Shades-of-Gray colour constancy and weight
    averaging, and EfficientNet-Lite0; 64 px, one or two epochs) -> trainer.ensemble (family weights, views, tau, T, guard) -> export.ensemble with float16 weights."""
    require(HAS_TF, "training extra not installed (pip install -e '.[train,cpu]')")
    weights_dir = _repo_relative(os.environ.get("DERMSERVE_WEIGHTS_DIR", "../shared/weights"))
    for f in (WEIGHTS, LITE0):
        require((weights_dir / f).is_file(), f"ImageNet weights {f} not found in {weights_dir} (set DERMSERVE_WEIGHTS_DIR)")
    work = tmp_path_factory.mktemp("cv")
    common = [f"data_dir={ham_dir}", "image_size=64", "limit_per_split=40", "finetune_epochs=1", "batch_size=16",
              "cache_dir=" + str(work / "cache")]
    # the MobileNetV2 family is also trained with stochastic weight averaging (2 epochs, the last averaged)
    families = {"members": [f"weights={weights_dir / WEIGHTS}", "colour_constancy=shades_of_gray",
                            "finetune_epochs=2", "swa_epochs=1", "swa_every_steps=1"],
                "members_lite0": ["arch=efficientnet_lite0", f"weights={weights_dir / LITE0}", "freeze_blocks=3"]}
    for family, extra in families.items():
        for fold in (0, 1):
            run_module(["-m", "trainer.cv", "--fold", str(fold), "--folds", "2",
                        "--output-dir", str(work / family / f"fold{fold}"), "--set", *common, *extra], timeout=600)
    run_module(["-m", "trainer.ensemble", "--members", str(work / "members"), "--members", str(work / "members_lite0"),
                "--out", str(work / "ensemble"), "--resamples", "100"], timeout=600)
    run_module(["-m", "export.ensemble", "--ensemble-dir", str(work / "ensemble"), "--output", str(work / "model"),
                "--name", "cv-smoke", "--version", "0.0.1-test", "--data-dir", str(ham_dir), "--parity-images", "40",
                "--float16-weights"], timeout=600)
    return work


@pytest.mark.slow
def test_members_write_oof_views_and_weights(tiny_ensemble: Path):
    for fold in (0, 1):
        d = tiny_ensemble / "members" / f"fold{fold}"
        info = json.loads((d / "member.json").read_text())
        assert info["fold"] == fold and info["folds"] == 2
        # weight averaging: no epoch chosen on the held-out fold; one snapshot per step of the last epoch
        # (batches of 16, swa_every_steps=1); the last epoch's own figure comes from the history
        assert info["best_epoch"] is None and info["swa_snapshots"] == -(-info["n_train"] // 16)
        history = json.loads((d / "history.json").read_text())
        assert info["held_out_balanced_accuracy_last_epoch"] == history[-1]["val_balanced_accuracy"]
        oof = np.load(d / "oof.npz")
        assert oof["logits"].shape == (8, info["n_held_out"], 7)
        assert (d / "weights.npz").stat().st_size > 100_000
    a = set(np.load(tiny_ensemble / "members/fold0/oof.npz")["image_ids"])
    b = set(np.load(tiny_ensemble / "members/fold1/oof.npz")["image_ids"])
    assert a and b and not a & b


@pytest.mark.slow
def test_report_has_cv_table_ablation_and_intervals(tiny_ensemble: Path):
    report = json.loads((tiny_ensemble / "ensemble" / "report.json").read_text())
    assert set(report["cv"]["families"]) == {"members", "members_lite0"}
    assert all(len(f["folds"]) == 2 for f in report["cv"]["families"].values())
    assert all(f["folds"] == 2 for f in report["choices"]["families"])
    # one single-model row per family, the OOF cross-family ensemble, + TTA, + logit adjustment
    assert len(report["oof"]["ablation"]) == 5 and len(report["test"]["ablation"]) == 4
    grid = report["oof"]["weights_views_grid"]
    assert len(grid) == 5 * 4 and all(abs(sum(g["weights"]) - 1) < 1e-9 for g in grid)
    choices = report["choices"]
    # the chosen (weights, views) is the lowest-NLL pair within the per-image budget
    affordable = [g for g in grid if g["gmacs_per_image"] <= report["oof"]["budget_gmacs_per_image"]]
    chosen = next(g for g in grid if g["weights"] == [f["weight"] for f in choices["families"]]
                  and g["views"] == len(choices["view_indices"]))
    assert chosen in affordable and chosen["nll"] <= min(g["nll"] for g in affordable) + 1e-4
    kept = [f for f in choices["families"] if f["weight"] > 0]
    assert len(choices["members"]) == sum(f["members"] for f in kept) == len(choices["member_weights"])
    assert abs(sum(choices["member_weights"]) - 1) < 1e-9
    # the guard is the heaviest served family without colour constancy ("members" has it), and the report
    # names the same members
    assert [choices["members"][i] for i in choices["ood_members"]] == report["ood"]["members"]
    plain = [f for f in kept if not f["dir"].endswith("/members")]
    heaviest = max(plain or kept, key=lambda f: f["weight"])
    assert all(m.startswith(heaviest["dir"] + "/") for m in report["ood"]["members"])
    ci = report["test"]["confidence_intervals"]["balanced_accuracy"]
    assert ci["resamples"] == 100 and ci["low"] <= ci["high"]
    assert report["ood"]["n_ood_images"] >= 40
    # the referral as the service answers it: OOD-flagged test images are referred too; the images referred
    # for that reason alone account exactly for the difference from the probability rule
    ref, cis = report["test"]["referral"], report["test"]["confidence_intervals"]
    served = ref["served"]
    assert ref["malignant"] + ref["benign"] == report["test"]["n"]
    assert served["specificity"] * ref["benign"] == pytest.approx(
        ref["specificity"] * ref["benign"] - served["ood_referred_benign"])
    assert served["sensitivity"] * ref["malignant"] == pytest.approx(
        ref["sensitivity"] * ref["malignant"] + served["ood_referred_malignant"])
    assert served["ood_referred_benign"] + served["ood_referred_malignant"] <= round(
        cis["ood_flagged_share"]["estimate"] * report["test"]["n"])
    assert cis["served_referral_specificity"]["estimate"] == served["specificity"]
    assert cis["referral_specificity"]["estimate"] == ref["specificity"]
    md = (tiny_ensemble / "ensemble" / "REPORT.md").read_text()
    assert "Cross-validation" in md and "95 % CI" in md and "As the service answers" in md


@pytest.mark.slow
def test_exported_ensemble_has_guard_parity_and_is_served(tiny_ensemble: Path, server_factory, test_images,
                                                          ham_dir: Path):
    from service.runtime import sha256_file

    model = tiny_ensemble / "model"
    manifest = json.loads((model / "manifest.json").read_text())
    assert manifest["sha256"] == sha256_file(model / "model.onnx")
    assert manifest["ood"]["output"] == "ood_score" and manifest["ood"]["threshold"] == 1.0
    choices = json.loads((tiny_ensemble / "ensemble" / "choices.json").read_text())
    assert manifest["ensemble"]["members"] == len(choices["members"])
    assert manifest["ensemble"]["member_weights"] == choices["member_weights"]
    served = {Path(f["dir"]).name for f in choices["families"] if f["weight"] > 0}
    assert set(manifest["training"]["families"]) == served
    # paths beside the repository are recorded relative to it (../shared/...), not as this machine's /work/...
    from trainer.config import portable_path

    weights_dir = _repo_relative(os.environ.get("DERMSERVE_WEIGHTS_DIR", "../shared/weights"))
    from trainer.config import REPO_ROOT

    configs = manifest["ensemble"]["member_configs"]
    recorded = {c["weights"] for c in configs}
    assert recorded and recorded <= {portable_path(weights_dir / f) for f in (WEIGHTS, LITE0)}
    assert {c["data_dir"] for c in configs} == {portable_path(ham_dir)}
    if weights_dir.resolve().is_relative_to(REPO_ROOT.parent):  # the documented layout: ../shared beside the repo
        assert not any(Path(r).is_absolute() for r in recorded), recorded
    storage = manifest["export"]["storage"]
    assert storage["conv_weights"].startswith("float16") and storage["initializers"] > 10
    assert storage["bytes_after"] < storage["bytes_before"]
    parity = manifest["export"]["parity"]
    assert parity["images"] == 40 and parity["max_abs_diff"] <= 0.01
    # float16 weights: near-ties of these near-uniform tiny members may swap; clearer decisions must agree, and
    # the band must leave images to compare
    assert parity["top1_tie_band"] == 2e-3 and parity["top1_agreement_outside_tie_band"] >= 0.995
    assert parity["images_in_top1_tie_band"] < parity["images"]
    assert parity["ood_max_rel_diff"] <= 2e-2 and parity["ood_flag_agreement"] >= 0.995
    server = server_factory(model=model)
    paths = test_images(2)
    r = httpx.post(server.base_url + "/predict", timeout=60,
                   files=[("images", (p.name, p.read_bytes(), "image/jpeg")) for p in paths])
    assert r.status_code == 200, r.text
    assert r.json()["model"] == {"name": "cv-smoke", "version": "0.0.1-test"}


@needs_tf
def test_efficientnet_lite0_reproduces_the_reference_imagenet_predictions():
    """The weights README's check: chelsea -> Egyptian_cat 0.385, coffee -> espresso 0.940 (224 px,
    centre square crop, bicubic)."""
    import skimage
    from PIL import Image

    from trainer.efficientnet_lite import build_backbone, imagenet_classifier

    npz = _repo_relative(os.environ.get("DERMSERVE_WEIGHTS_DIR", "../shared/weights")) / "efficientnet_lite0_imagenet.npz"
    require(npz.is_file(), f"EfficientNet-Lite0 weights not found at {npz} (set DERMSERVE_WEIGHTS_DIR)")
    assert build_backbone(160).count_params() == 3_413_024
    model = imagenet_classifier(npz)
    names = json.loads((npz.parent / "imagenet_class_names.json").read_text())
    for fname, want, p_want in (("chelsea.png", "Egyptian_cat", 0.385), ("coffee.png", "espresso", 0.940)):
        img = Image.open(Path(skimage.__file__).parent / "data" / fname).convert("RGB")
        w, h = img.size
        s = min(w, h)
        img = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)).resize((224, 224), Image.BICUBIC)
        logits = model.predict(np.asarray(img, np.float32)[None], verbose=0)[0]
        p = np.exp(logits - logits.max())
        p /= p.sum()
        assert names[str(int(p.argmax()))] == want
        assert abs(float(p.max()) - p_want) < 0.005


@needs_tf
def test_mobilenet_v1_member_loads_its_imagenet_weights():
    """``arch=mobilenet`` (MobileNet v1 alpha 0.25) builds at 160 px with the shared no-top weights loaded
    (its first convolution equals the file's), at ~0.43x the multiply-accumulates of the MobileNetV2 alpha 0.5
    member, and its logits leave the model ``float32 (B, 7)``."""
    import h5py

    from trainer.families import count_macs
    from trainer.model import build_model

    h5 = _repo_relative(os.environ.get("DERMSERVE_WEIGHTS_DIR", "../shared/weights")) / "mobilenet_2_5_224_tf_no_top.h5"
    require(h5.is_file(), f"MobileNet v1 weights not found at {h5} (set DERMSERVE_WEIGHTS_DIR)")
    model, backbone = build_model("mobilenet", 160, 7, 0.25, h5, 0.2)
    with h5py.File(h5) as f:
        kernel = f["conv1/conv1/kernel:0"][()]
    assert np.array_equal(backbone.get_layer("conv1").get_weights()[0], kernel)
    assert count_macs(model) == 20_804_992
    out = model.predict(np.zeros((2, 160, 160, 3), np.float32), verbose=0)
    assert out.shape == (2, 7) and out.dtype == np.float32
    with pytest.raises(FileNotFoundError):
        build_model("mobilenet", 160, 7, 0.25, h5.with_name("missing.h5"), 0.2)
