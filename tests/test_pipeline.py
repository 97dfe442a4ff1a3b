"""End to end on real data: trainer CLI -> export CLI (tf2onnx + parity) -> the service serves the result.

A few dozen real HAM10000 images, one epoch, 64x64 input: this proves the path works, not that
the model is good (model quality is measured by the full training run; see the model card).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import _repo_relative, require, run_module


def setup_module() -> None:
    import importlib.util

    require(importlib.util.find_spec("tensorflow") is not None and importlib.util.find_spec("tf2onnx") is not None,
            "training extra not installed (pip install -e '.[train,cpu]')")

WEIGHTS = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.5_224_no_top.h5"


@pytest.fixture(scope="module")
def weights_file() -> Path:
    d = _repo_relative(os.environ.get("DERMSERVE_WEIGHTS_DIR", "../shared/weights"))
    require((d / WEIGHTS).is_file(), f"ImageNet MobileNetV2 weights not found in {d} (set DERMSERVE_WEIGHTS_DIR)")
    return d / WEIGHTS




@pytest.fixture(scope="module")
def exported(tmp_path_factory, ham_dir: Path, weights_file: Path) -> Path:
    work = tmp_path_factory.mktemp("pipeline")
    run_module(["-m", "trainer", "--data-dir", str(ham_dir), "--weights", str(weights_file),
             "--output-dir", str(work / "run"), "--image-size", "64", "--limit-per-split", "35",
             "--head-epochs", "1", "--finetune-epochs", "1", "--batch-size", "16", "--no-gallery", "--no-cache"],
            timeout=600)
    run_module(["-m", "export", str(work / "run"), "--output", str(work / "model"), "--name", "pipeline-smoke",
             "--version", "0.0.1-test", "--data-dir", str(ham_dir), "--parity-images", "40"], timeout=600)
    return work


def test_trainer_writes_model_metrics_and_config(exported: Path):
    run = exported / "run"
    assert (run / "model.keras").is_file()
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["image_size"] == 64 and cfg["limit_per_split"] == 35 and cfg["finetune_epochs"] == 1
    metrics = json.loads((run / "metrics.json").read_text())
    wall = metrics["wall_time_seconds"]
    assert 0 < wall["total"] <= wall["total_with_report"]
    test = metrics["test"]
    assert test["n"] == 35
    assert 0.0 <= test["balanced_accuracy"] <= 1.0 and 0.0 <= test["accuracy"] <= 1.0
    assert set(test["per_class"]) == {"akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"}
    assert all("recall" in v for v in test["per_class"].values())
    for png in ("training_curves.png", "confusion_matrix.png", "reliability_diagram.png", "roc_curves.png"):
        assert (run / png).stat().st_size > 1000
    # one row per epoch (1 head + 1 fine-tuning), each with the held-out cross-entropy the curves plot
    history = json.loads((run / "history.json").read_text())
    assert len(history) == 2 and all(0.0 < h["val_loss"] < 20.0 for h in history)


def test_export_writes_verified_model_dir(exported: Path):
    from service.runtime import sha256_file

    model = exported / "model"
    manifest = json.loads((model / "manifest.json").read_text())
    assert manifest["sha256"] == sha256_file(model / "model.onnx")
    assert [c["code"] for c in manifest["classes"]] == ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    assert manifest["input"]["height"] == manifest["input"]["width"] == 64
    assert manifest["input"]["dtype"] == "uint8" and manifest["input"]["color_order"] == "RGB"
    parity = manifest["export"]["parity"]
    assert parity["images"] == 40 and parity["max_abs_diff"] <= 0.01 and parity["top1_agreement"] >= 0.995
    assert manifest["metrics"]["test"]["n"] == 35


def test_failed_parity_writes_nothing(exported: Path, ham_dir: Path, monkeypatch):
    """A parity failure must leave no model directory behind."""
    from export import parity
    from export.convert import export_run
    from export.errors import ExportError

    monkeypatch.setattr(parity, "MAX_ABS_DIFF", -1.0)  # impossible threshold
    target = exported / "should-not-exist"
    with pytest.raises(ExportError, match="parity check failed"):
        export_run(exported / "run", target, "x", "0", ham_dir, parity_images=8)
    assert not target.exists()
    assert not [p for p in exported.iterdir() if p.name.startswith(".export-")]


def test_service_serves_the_exported_model(exported: Path, server_factory, test_images):
    from service.preprocessing import preprocess_bytes
    from service.runtime import ModelRuntime

    server = server_factory(model=exported / "model")
    paths = test_images(3)
    files = [("images", (p.name, p.read_bytes(), "image/jpeg")) for p in paths]
    r = httpx.post(server.base_url + "/predict", files=files, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == {"name": "pipeline-smoke", "version": "0.0.1-test"}
    rt = ModelRuntime(exported / "model", ["CPUExecutionProvider"], intra_op_threads=1)
    ref = rt.predict_proba(np.stack([preprocess_bytes(p.read_bytes(), rt.spec) for p in paths]))
    for pred, row in zip(body["predictions"], ref):
        got = np.array([pred["probabilities"][c] for c in rt.class_codes])
        assert np.abs(got - row).max() < 1e-4
        assert pred["label"] == rt.class_codes[int(row.argmax())]


def test_freeze_blocks_freezes_the_stem_and_first_blocks_only():
    import keras

    from trainer.model import build_model
    from trainer.train import freeze_backbone_prefix

    _, backbone = build_model("mobilenetv2", 64, 7, weights=None)
    backbone.trainable = True
    n = freeze_backbone_prefix(backbone, 4)
    names = [layer.name for layer in backbone.layers]
    cut = names.index("block_4_expand")
    assert n == cut > 0
    assert not any(layer.trainable for layer in backbone.layers[:cut])
    assert all(layer.trainable for layer in backbone.layers[cut:])
    assert any(isinstance(layer, keras.layers.DepthwiseConv2D) for layer in backbone.layers[:cut])
    assert freeze_backbone_prefix(backbone, 0) == 0
    with pytest.raises(ValueError):
        freeze_backbone_prefix(backbone, 17)
