"""Smoke test of the benchmark harness (benchmarks/): runs only the in-process 'limit' system for one
short measurement and checks the JSON it writes. Never asserts timings. Needs the dataset and the
model (skip, or fail under CI=true, via the shared fixtures) and the harness's CLI deps (typer)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_limit_only_run_writes_results(ham_dir: Path, model_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("typer", reason="the benchmark CLI needs typer (pip install -e '.[bench]')")
    out = tmp_path / "bench"
    cmd = [sys.executable, "-m", "benchmarks", "--systems", "limit", "--scenarios", "dermoscopic",
           "--levels", "1", "--multi-levels", "", "--images", "8", "--limit-seconds", "0.3",
           "--limit-batches", "1,4", "--limit-threads", "1:1", "--no-half-load",
           "--model-dir", str(model_dir), "--data-dir", str(ham_dir), "--out-dir", str(out)]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "results.json").read_text())
    for key in ("command", "date", "machine", "versions", "model", "settings", "servers", "limit", "points",
                "ratios", "targets"):
        assert key in result, key
    assert result["machine"]["cores"] >= 1
    lim = result["limit"]["dermoscopic"]
    assert lim["config"]["batch"] in (1, 4)
    assert {(r["batch"], r["intra_op_threads"], r["decode_threads"]) for r in lim["grid"]} == {(1, 1, 1), (4, 1, 1)}
    assert lim["images_per_s"] > 0 and len(lim["samples"]) == 1
    assert result["points"] == [] and result["servers"] == {}
    assert (out / "report.txt").is_file()
