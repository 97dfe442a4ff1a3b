"""Export the cross-validated ensemble as ONE ONNX graph (``python -m export.ensemble``).

The graph takes ``uint8 (N, S, S, 3)`` RGB named ``image`` and returns

- ``logits`` ``float32 (N, K)``: the weighted mean over members (``choices.json`` ``member_weights``,
  summing to 1) of each member's mean logits over the test-time views, minus ``tau * log(prior)`` (post-hoc logit adjustment, Menon et al., ICLR 2021); the service applies
  the manifest's temperature as for any model, so it needs no change;
- ``ood_score`` ``float32 (N,)``: the out-of-distribution score of :mod:`trainer.ood` (mean over members
  of Mahalanobis distance / the member's held-out 95th percentile, over the guarding members
  ``choices.json`` ``ood_members``), flagged above 1.0.

Every choice (views, tau, temperature, referral threshold, detector) comes from
``trainer/results/ensemble/choices.json`` and the ``ood_member<i>.npz`` files written by
``python -m trainer.ensemble``. The Keras ensemble (each member in Keras, views by NumPy, mean and
adjustment in NumPy) is compared with the ONNX file as the service runs it on >= 300 real test JPEGs:
probabilities within 0.01 and the same top class on >= 99.5 %, OOD scores within 1e-3 relative.
A failed check writes nothing.
"""

from __future__ import annotations

import json
import logging
import shutil
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from export.staging import staged_directory, tool_versions
from schemas.manifest import (
    HAM10000_CLASSES,
    Calibration,
    ClassInfo,
    InputSpec,
    Manifest,
    OutOfDistribution,
    OutputSpec,
    Referral,
)
from service.runtime import sha256_file

log = logging.getLogger(__name__)

INPUT_NAME = "image"
OUTPUT_NAME = "logits"
OOD_OUTPUT = "ood_score"
OPSET = 17
#: Largest allowed relative |ood_keras - ood_onnx| / max(1, |ood_keras|).
MAX_OOD_REL_DIFF = 1e-3
#: The same with float16-stored convolution weights (:mod:`export.compact`): the rounding moves the
#: penultimate features a little and the squared Mahalanobis distance amplifies it (measured on the
#: 2-family test ensemble: 8e-3). 2 % of the score is far inside its spread around the 1.0 threshold;
#: the flag itself must still agree on >= 99.5 % of the images (as the top class must).
MAX_OOD_REL_DIFF_FLOAT16 = 2e-2
#: With float16-stored weights the top class is compared only where the Keras reference's top-two probability
#: margin exceeds this band: inside it the rounding alone (|dp| up to ~6e-4 measured on the 2-family test
#: ensemble, whose 64-px one-epoch members give near-uniform probabilities) can swap a near-tie (2 of 300 test
#: images there). A conversion error within the 0.01 probability tolerance that flips clearer decisions still fails.
#: Float32 exports compare every image.
TOP1_TIE_BAND_FLOAT16 = 2e-3
#: The model issue's budget for the model directory, in bytes (10^6 per MB): checked for the ONNX file alone
#: before the parity check and for the whole directory (file + manifest + REPORT.md) before it is moved into
#: place. Over it the export stops and names ``--float16-weights``.
MAX_MODEL_BYTES = 50_000_000

OOD_DESCRIPTION = (
    "Mahalanobis distance of the image's penultimate features to the nearest class mean of the training "
    "images (Lee et al., NeurIPS 2018), divided by the distance that 95 % of held-out dermoscopic images stay "
    "below, averaged over the guarding ensemble members. Higher = less like the dermoscopic training images; above "
    "the threshold the image is flagged as not recognised as a dermoscopic image."
)


def _detectors(ensemble_dir: Path, indices: list[int]) -> dict[int, dict[str, np.ndarray]]:
    """The guarding members' detector arrays, keyed by member index."""
    dets = {}
    for i in indices:
        with np.load(ensemble_dir / f"ood_member{i}.npz") as z:
            dets[i] = {k: z[k] for k in z.files}
    return dets


def convert(models: list, weights: np.ndarray, views: list[tuple[int, bool]], offset: np.ndarray,
            detectors: dict[int, dict], size: int, onnx_path: Path) -> list[str]:
    """Build the serving ``tf.function`` over the Keras members and convert it with tf2onnx.

    Args:
        models: Keras member models (logits output, float32 input in 0..255).
        weights: ``float (M,)`` member weights, summing to 1.
        views: ``(k, flip)`` dihedral views; the first must be the identity (its features feed the guard).
        offset: ``float32 (K,)`` subtracted from the weighted mean logits (``tau * log(prior)``).
        detectors: guarding member index -> ``chol (D, D)``, ``means_proj (K, D)``, ``threshold ()``.
        size: input height = width, pixels.
        onnx_path: where to write.

    Returns:
        The graph's output names (``["logits", "ood_score"]``).
    """
    import keras
    import tensorflow as tf
    import tf2onnx

    if tuple(views[0]) != (0, False):
        raise ValueError("the first view must be the identity")
    extractors = [keras.Model(m.inputs, [m.output, m.get_layer("dropout").input]) for m in models]
    n_views = len(views)

    @tf.function(input_signature=[tf.TensorSpec((None, size, size, 3), tf.uint8, name=INPUT_NAME)])
    def serve(image):
        x = tf.cast(image, tf.float32)
        batch = tf.shape(x)[0]
        xs = []
        for k, flip in views:
            v = tf.image.rot90(x, k) if k else x
            xs.append(tf.reverse(v, axis=[2]) if flip else v)
        xv = tf.concat(xs, axis=0) if n_views > 1 else xs[0]
        logit_sum, ood_sum = 0.0, 0.0
        for i, (ext, w) in enumerate(zip(extractors, weights)):
            lg, feat = ext(xv, training=False)
            logit_sum += float(w) * tf.reduce_mean(tf.reshape(lg, (n_views, batch, -1)), axis=0)
            if i not in detectors:
                continue
            det = detectors[i]
            g = tf.matmul(feat[:batch], tf.constant(det["chol"]))
            mp = tf.constant(det["means_proj"])
            d = (tf.reduce_sum(g * g, axis=1, keepdims=True) - 2.0 * tf.matmul(g, mp, transpose_b=True)
                 + tf.reduce_sum(mp * mp, axis=1)[None, :])
            ood_sum += tf.reduce_min(d, axis=1) / float(det["threshold"])
        return {OUTPUT_NAME: logit_sum - tf.constant(offset, tf.float32), OOD_OUTPUT: ood_sum / float(len(detectors))}

    proto, _ = tf2onnx.convert.from_function(serve, input_signature=serve.input_signature, opset=OPSET,
                                             output_path=str(onnx_path))
    return [o.name for o in proto.graph.output]


def keras_reference(models: list, weights: np.ndarray, views: list[tuple[int, bool]], offset: np.ndarray,
                    detectors: dict[int, dict], images: np.ndarray, temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """The same ensemble computed the trainer's way (Keras per member, views by NumPy).

    Returns:
        ``(probabilities float32 (N, K), ood_score float32 (N,))``.
    """
    from service.runtime import softmax_with_temperature
    from trainer.cv import apply_view
    from trainer.ensemble import member_features
    from trainer.ood import MahalanobisDetector, ensemble_ood_score

    logits, feats, dets = [], [], []
    for i, m in enumerate(models):
        logits.append(np.mean([m.predict(apply_view(images, k, f).astype(np.float32), batch_size=64, verbose=0)
                               for k, f in views], axis=0))
        if i in detectors:
            det = detectors[i]
            feats.append(member_features(m, images))
            dets.append(MahalanobisDetector(det["chol"], det["means_proj"], float(det["threshold"])))
    probs = softmax_with_temperature(np.tensordot(weights, np.stack(logits), axes=1) - offset, temperature)
    return probs, ensemble_ood_score(dets, feats)


def export_ensemble(ensemble_dir: Path, output_dir: Path, name: str, version_str: str, data_dir: Path,
                    parity_images: int = 300, force: bool = False, float16_weights: bool = False) -> Manifest:
    """Write a served model directory for the ensemble described by ``ensemble_dir/choices.json``.

    ``float16_weights`` stores the convolution weights as float16 (:mod:`export.compact`; computed in
    float32), for ensembles whose float32 file would break the 50 MB model budget.

    Raises:
        ExportError: ``output_dir`` exists without ``force``, the model file or the directory is over
            :data:`MAX_MODEL_BYTES`,
            or a parity check failed (nothing written).
    """
    from export.errors import ExportError
    from trainer.config import local_config, portable_config
    from trainer.cv import load_member
    from trainer.ensemble import resolve_member

    ensemble_dir, output_dir = Path(ensemble_dir), Path(output_dir)
    choices = json.loads((ensemble_dir / "choices.json").read_text())
    report = json.loads((ensemble_dir / "report.json").read_text())
    members = [resolve_member(p) for p in choices["members"]]
    models = [load_member(p) for p in members]
    member_cfgs = [portable_config(local_config(json.loads((p / "member.json").read_text())["config"]))
                   for p in members]
    size = int(member_cfgs[0]["image_size"])
    resize = member_cfgs[0].get("resize_method", "bilinear")
    views = [tuple(v) for v in choices["views"]]
    offset = (choices["tau"] * np.log(np.asarray(choices["prior"]))).astype(np.float32)
    weights = np.asarray(choices.get("member_weights", [1.0 / len(members)] * len(members)), np.float64)
    if len(weights) != len(members) or abs(weights.sum() - 1.0) > 1e-6 or (weights <= 0).any():
        raise ExportError(f"choices.json: {len(weights)} member weights for {len(members)} members "
                          f"(sum {weights.sum():.6f}); they must be positive and sum to 1")
    detectors = _detectors(ensemble_dir, choices.get("ood_members", list(range(len(members)))))
    if not detectors:
        raise ExportError("choices.json names no guarding member (trainer.ensemble ran with --no-ood?); "
                          "the served ensemble needs its out-of-distribution output")
    ref = choices["referral"]
    # the rule as served: with the low-confidence reason kept, the threshold chosen for the pair of reasons
    rule = ref["with_low_confidence_reason"] if ref["keep_low_confidence_reason"] else ref
    with staged_directory(output_dir, force) as tmp:
        outputs = convert(models, weights, views, offset, detectors, size, tmp / "model.onnx")
        storage = {"conv_weights": "float32"}
        if float16_weights:
            from export.compact import conv_weights_to_float16

            storage = {"conv_weights": "float16 (cast to float32 at session start)"} | \
                conv_weights_to_float16(tmp / "model.onnx")
        if outputs[0] != OUTPUT_NAME or OOD_OUTPUT not in outputs:
            raise ExportError(f"unexpected ONNX outputs {outputs}")
        if (size_b := (tmp / "model.onnx").stat().st_size) > MAX_MODEL_BYTES:
            raise ExportError(f"model.onnx is {size_b / 1e6:.1f} MB, over the {MAX_MODEL_BYTES / 1e6:g} MB budget"
                              + ("" if float16_weights else "; --float16-weights halves the convolution weights"))
        ood_eval = {k: v for k, v in choices["ood"].items() if k not in ("method", "threshold")}
        manifest = Manifest(
            name=name, version=version_str, created_at=datetime.now(UTC),
            sha256=sha256_file(tmp / "model.onnx"),
            classes=[ClassInfo(code=c, name=n) for c, n in HAM10000_CLASSES.items()],
            input=InputSpec(name=INPUT_NAME, height=size, width=size, dtype="uint8", resize_method=resize),
            output=OutputSpec(name=OUTPUT_NAME),
            calibration=Calibration(method="temperature", temperature=choices["temperature"], fitted_on="out-of-fold"),
            referral=Referral(
                malignant_probability_threshold=round(rule["malignant_probability_threshold"], 4),
                min_top_probability=0.5 if ref["keep_low_confidence_reason"] else 0.0,
                chosen_on="out-of-fold predictions of the train + val pool",
                target_sensitivity=ref["target_sensitivity"],
                validation_sensitivity=rule["oof_sensitivity"], validation_specificity=rule["oof_specificity"],
                operating_points=ref.get("operating_points", [])),
            ood=OutOfDistribution(output=OOD_OUTPUT, method="mahalanobis_penultimate_mean_ratio (Lee et al. 2018)",
                                  threshold=1.0, description=OOD_DESCRIPTION,
                                  fitted_on="each guarding member's training folds; threshold: 95 % of its held-out fold",
                                  evaluation=ood_eval),
            ensemble={"members": len(members), "views": [list(v) for v in views],
                      "member_weights": weights.tolist(), "families": choices.get("families", []),
                      "ood_members": sorted(detectors),
                      "logit_adjustment_tau": choices["tau"], "prior": choices["prior"],
                      "member_configs": member_cfgs},
            metrics={"split": "test", "test": report["test"]["metrics"],
                     "confidence_intervals": report["test"]["confidence_intervals"],
                     "referral_test": report["test"]["referral"], "cv": report["cv"],
                     "training_wall_time_seconds": report["training_wall_time_seconds"]},
            training={"recipe": "lesion-grouped k-fold members (trainer.cv), one k-fold split per family",
                      # the first member's config of each family (members of a family differ only in fold)
                      "families": _family_configs(members, member_cfgs)},
        )
        (tmp / "manifest.json").write_text(manifest.model_dump_json(indent=2))
        parity = check_parity(models, weights, views, offset, detectors, tmp, data_dir, parity_images,
                              MAX_OOD_REL_DIFF_FLOAT16 if float16_weights else MAX_OOD_REL_DIFF,
                              TOP1_TIE_BAND_FLOAT16 if float16_weights else 0.0)
        manifest.export = tool_versions(OPSET) | {"parity": parity, "storage": storage}
        (tmp / "manifest.json").write_text(manifest.model_dump_json(indent=2))
        # the human-readable report travels with the model; report.json (its machine-readable source, 0.5 MB
        # with the full weights x views grid) stays in the ensemble directory: the manifest carries its test
        # metrics, intervals and CV table
        if (ensemble_dir / "REPORT.md").exists():
            shutil.copy2(ensemble_dir / "REPORT.md", tmp / "REPORT.md")
        if (total := sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file())) > MAX_MODEL_BYTES:
            raise ExportError(f"the model directory would hold {total / 1e6:.2f} MB, over the "
                              f"{MAX_MODEL_BYTES / 1e6:g} MB budget" + ("" if float16_weights else
                              "; --float16-weights halves the convolution weights"))
    log.info("wrote %s (sha256 %s)", output_dir, manifest.sha256)
    return manifest


def _family_configs(member_dirs: list[Path], member_cfgs: list[dict]) -> dict[str, dict]:
    """``{family folder name: its first served member's config}`` (a member lives in ``<family>/fold<i>``;
    the members of a family differ only in their fold)."""
    out: dict[str, dict] = {}
    for d, cfg in zip(member_dirs, member_cfgs):
        out.setdefault(Path(d).parent.name, cfg)
    return out


def check_parity(models, weights, views, offset, detectors, model_dir: Path, data_dir: Path, n_images: int,
                 max_ood_rel_diff: float = MAX_OOD_REL_DIFF, top1_tie_band: float = 0.0) -> dict:
    """Keras ensemble vs the written ONNX file on ``n_images`` test JPEGs (bytes through the service's
    preprocessing and :class:`service.runtime.ModelRuntime`).

    ``top1_tie_band``: the top class is compared on the images whose Keras top-two probability margin exceeds
    it (0: every image; see :data:`TOP1_TIE_BAND_FLOAT16`); ``top1_agreement`` reports all images either way.

    Raises:
        ExportError: probabilities differ by > 0.01, top-1 agreement (outside the tie band) < 99.5 % or no
            image outside the band, OOD scores differ by more than ``max_ood_rel_diff`` (relative) or OOD flags
            agree on < 99.5 % of the images whose score lies outside that tolerance around the threshold (or no
            score does), or no test images.
    """
    from export.errors import ExportError
    from export.parity import MAX_ABS_DIFF, MIN_TOP1_AGREEMENT, run_served, served_images, top1_agreement
    from service.runtime import ModelRuntime
    from trainer.data import read_labels, select_rows

    runtime = ModelRuntime(model_dir, providers=["CPUExecutionProvider"])
    rows = select_rows(read_labels(Path(data_dir)), "test", None, 0)[:n_images]
    if not rows:
        raise ExportError(f"no test-split images in {data_dir} for the parity check")
    images = served_images(Path(data_dir), rows, runtime.spec)
    p_keras, ood_keras = keras_reference(models, weights, views, offset, detectors, images,
                                         runtime.manifest.calibration.temperature)
    # the service's own call: probabilities and the manifest's extra output (ood_score) in one graph run
    p_onnx, extras = run_served(runtime, images)
    ood_onnx = extras[OOD_OUTPUT]
    max_diff = float(np.abs(p_keras - p_onnx).max())
    agree, _ = top1_agreement(p_keras, p_onnx)
    agree_decided, in_band = top1_agreement(p_keras, p_onnx, top1_tie_band)
    ood_rel = float((np.abs(ood_keras - ood_onnx) / np.maximum(1.0, np.abs(ood_keras))).max())
    # flags are compared outside the tolerance band around the threshold (a score within
    # max_ood_rel_diff of 1.0 may legitimately land on either side)
    clear = np.abs(ood_keras - 1.0) > max_ood_rel_diff * np.maximum(1.0, np.abs(ood_keras))
    # NaN (a failure below) when every score lies in the band: nothing was compared
    flag_agree = float(((ood_keras > 1.0) == (ood_onnx > 1.0))[clear].mean()) if clear.any() else float("nan")
    result = {"images": len(rows), "max_abs_diff": max_diff, "top1_agreement": agree,
              "top1_tie_band": top1_tie_band, "images_in_top1_tie_band": in_band,
              "top1_agreement_outside_tie_band": agree_decided,
              "ood_max_rel_diff": ood_rel, "ood_flag_agreement": flag_agree,
              "thresholds": {"max_abs_diff": MAX_ABS_DIFF, "min_top1_agreement": MIN_TOP1_AGREEMENT,
                             "ood_max_rel_diff": max_ood_rel_diff, "min_ood_flag_agreement": MIN_TOP1_AGREEMENT}}
    print(f"ensemble parity on {len(rows)} test images: max |p_keras - p_onnx| = {max_diff:.2e}, top-1 agreement "
          f"{agree:.4f} ({agree_decided:.4f} outside a tie band of {top1_tie_band:g}, {in_band} images "
          f"in it), OOD max rel diff {ood_rel:.2e}", flush=True)
    # "not >=" also fails a NaN agreement: every image inside the tie band (or every OOD score inside its
    # band), nothing compared
    if (max_diff > MAX_ABS_DIFF or not agree_decided >= MIN_TOP1_AGREEMENT or ood_rel > max_ood_rel_diff
            or not flag_agree >= MIN_TOP1_AGREEMENT):
        raise ExportError(f"parity check failed on {len(rows)} images: {result}; nothing written")
    return result


def main(ensemble_dir: Path = Path("trainer/results/ensemble"), output: Path = Path("models/default"),
         name: str = "dermserve-ham10000", version: str = "2.0.0", data_dir: Path | None = None,
         parity_images: int = 300, force: bool = False, float16_weights: bool = False) -> None:
    """Convert the ensemble (tf2onnx), check parity end to end, write model.onnx + manifest.json."""
    import sys

    import typer

    from export.errors import ExportError
    from trainer.config import DEFAULT_DATA_DIR

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        m = export_ensemble(ensemble_dir, output, name, version, data_dir or DEFAULT_DATA_DIR, parity_images, force,
                            float16_weights)
    except ExportError as exc:
        print(f"export failed: {exc}", file=sys.stderr)
        raise typer.Exit(1) from exc
    print(f"wrote {output} ({m.name} {m.version}, sha256 {m.sha256[:12]}...)")


if __name__ == "__main__":
    import typer

    typer.run(main)
