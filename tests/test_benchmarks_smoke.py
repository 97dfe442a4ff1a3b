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
    assert len(lim["cpu_ms_per_image"]) == 1 and lim["cpu_ms_per_image"][0] > 0 and lim["cores"][0] > 0
    assert result["points"] == [] and result["servers"] == {}
    assert (out / "report.txt").is_file()


def test_cpu_accounting_from_proc_and_metrics_counters() -> None:
    """The CPU bookkeeping each HTTP point gets: /proc CPU time grows with work; the arithmetic."""
    pytest.importorskip("typer", reason="the benchmark CLI needs typer (pip install -e '.[bench]')")
    import os
    import time

    from benchmarks.processes import tree_cpu_s
    from benchmarks.wrk import cpu_accounting

    t0 = tree_cpu_s(os.getpid())
    end = time.process_time() + 0.3
    while time.process_time() < end:  # burn ~0.3 s of CPU in this process
        pass
    assert tree_cpu_s(os.getpid()) - t0 >= 0.2
    m0 = {"calls": 10.0, "images": 40.0, "seconds": 1.0}
    m1 = {"calls": 60.0, "images": 440.0, "seconds": 2.2}
    x = cpu_accounting(server_cpu_s=3.0, client_cpu_s=0.5, secs=2.0, images=400, requests=100, m0=m0, m1=m1)
    assert x["server_cores"] == 1.5 and x["client_cores"] == 0.25
    assert x["server_cpu_ms_per_image"] == 7.5 and x["client_cpu_ms_per_request"] == 5.0
    assert x["mean_batch_images"] == 8.0 and abs(x["model_ms_per_image"] - 3.0) < 1e-9
    assert "mean_batch_images" not in cpu_accounting(1.0, 0.1, 1.0, 10, 10, None, None)
