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


# ---------------------------------------------------------------- model options, limit@NAME, report rows
# No benchmark is run below: option parsing, server construction (nothing started), the interleaving of
# the limits with a fake measure(), and the report / results.json / plot from made-up numbers.

def _fake_model_dir(root: Path, version: str = "9.9.9") -> Path:
    d = root / "models" / "default"
    d.mkdir(parents=True)
    (d / "manifest.json").write_text(json.dumps({"version": version, "sha256": version * 4}))
    return d


def _fake_checkout(root: Path, version: str = "1.1.0") -> Path:
    (root / "service").mkdir(parents=True)
    (root / "service" / "__main__.py").write_text("")
    _fake_model_dir(root, version)
    return root


def test_limit_model_option_parsing(tmp_path: Path) -> None:
    pytest.importorskip("typer", reason="the benchmark CLI needs typer (pip install -e '.[bench]')")
    from benchmarks.models import BadSpec, parse_limit_models, parse_named

    m110 = _fake_model_dir(tmp_path / "m110")
    assert parse_limit_models([f"1.1.0={m110}"]) == {"limit@1.1.0": m110.resolve()}
    assert parse_named([" a = x ", "b=y=z"], "--opt") == {"a": "x", "b": "y=z"}
    for bad in (["nothing"], ["=dir"], ["name="], ["a=x", "a=y"], ["a@b=x"], ["a:b=x"]):
        with pytest.raises(BadSpec):
            parse_named(bad, "--opt")
    with pytest.raises(BadSpec, match="no manifest.json"):
        parse_limit_models([f"x={tmp_path / 'nowhere'}"])


def test_limit_model_from_a_git_commit(tmp_path: Path) -> None:
    """``NAME=git:REV`` extracts that commit's models/default (like ``git archive REV models/default | tar -x``)."""
    from benchmarks.models import BadSpec, parse_limit_models

    repo = tmp_path / "repo"
    _fake_model_dir(repo, "1.1.0")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "1.1.0"], check=True)
    first = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    (repo / "models" / "default" / "manifest.json").write_text(json.dumps({"version": "2.0.0"}))
    subprocess.run([*git, "commit", "-q", "-am", "2.0.0"], check=True)

    cache = tmp_path / "cache"
    got = parse_limit_models([f"old=git:{first[:7]}", "new=git:HEAD:models/default"], repo=repo, cache=cache)
    assert json.loads((got["limit@old"] / "manifest.json").read_text())["version"] == "1.1.0"
    assert json.loads((got["limit@new"] / "manifest.json").read_text())["version"] == "2.0.0"
    assert got["limit@old"] == (cache / first[:12] / "models" / "default").resolve()
    assert parse_limit_models([f"again=git:{first}"], repo=repo, cache=cache)["limit@again"] == got["limit@old"]
    with pytest.raises(BadSpec, match="not a commit"):
        parse_limit_models(["x=git:no-such-rev"], repo=repo, cache=cache)
    with pytest.raises(BadSpec):
        parse_limit_models(["x=git:HEAD:models/other"], repo=repo, cache=cache)


def test_each_system_serves_the_model_it_is_documented_to(tmp_path: Path) -> None:
    """--model-dir for dermserve/naive and (--checkout-model same) the checkout; its own models/default with
    own; a variant's model_dir=. Servers are only built, never started."""
    pytest.importorskip("typer", reason="the benchmark CLI needs typer (pip install -e '.[bench]')")
    from benchmarks.models import BadSpec, checkout_model_dir, parse_checkouts
    from benchmarks.run import model_options
    from benchmarks.servers import make_servers

    bundled = _fake_model_dir(tmp_path / "here", "2.0.0").resolve()
    int8 = _fake_model_dir(tmp_path / "int8", "2.0.0-int8").resolve()
    before = _fake_checkout(tmp_path / "before").resolve()
    variants, checkouts, limits = model_options([f"int8:model_dir={int8}"], [f"before={before}"], "same", [],
                                                bundled)
    assert checkouts == {"before": before} and limits == {}
    assert variants == {"int8": {"DERMSERVE_MODEL_DIR": str(int8)}}
    for mode, expected in (("same", bundled), ("own", before / "models" / "default")):
        servers = {s.name: s for s in make_servers(["dermserve", "naive"], bundled, variants, tmp_path, 10.0, 32,
                                                   checkouts, mode)}
        assert set(servers) == {"dermserve", "dermserve[int8]", "dermserve@before", "naive"}
        assert all(s.proc is None for s in servers.values())
        ck = servers["dermserve@before"]
        assert ck.cwd == before and ck.model_dir == expected and ck.env["DERMSERVE_MODEL_DIR"] == str(expected)
        assert servers["dermserve"].model_dir == bundled == Path(servers["dermserve"].env["DERMSERVE_MODEL_DIR"])
        assert servers["dermserve[int8]"].model_dir == int8
        assert servers["naive"].model_dir == bundled and str(bundled) in servers["naive"].cmd
    with pytest.raises(BadSpec):
        checkout_model_dir(before, "theirs", bundled)
    with pytest.raises(BadSpec, match="own"):
        checkout_model_dir(tmp_path, "own", bundled)  # no models/default there
    with pytest.raises(BadSpec, match="service"):
        parse_checkouts([f"x={tmp_path / 'int8'}"])


def test_cli_refuses_bad_model_options_before_measuring(tmp_path: Path) -> None:
    pytest.importorskip("typer", reason="the benchmark CLI needs typer (pip install -e '.[bench]')")
    from typer.testing import CliRunner

    from benchmarks.run import app

    runner = CliRunner()
    base = ["--systems", "limit", "--out-dir", str(tmp_path / "out"), "--data-dir", str(tmp_path / "no-data")]
    r = runner.invoke(app, [*base, "--limit-model", "1.1.0"])
    assert r.exit_code == 2 and "NAME=VALUE" in r.output
    r = runner.invoke(app, [*base, "--limit-model", f"1.1.0={tmp_path}"])
    assert r.exit_code == 2 and "manifest.json" in r.output
    ck = _fake_checkout(tmp_path / "before")
    r = runner.invoke(app, [*base, "--checkout", f"before={ck}", "--checkout-model", "theirs"])
    assert r.exit_code == 2 and "same or own" in r.output
    r = runner.invoke(app, [*base, "--checkout-model", "theirs"])  # refused with no --checkout too
    assert r.exit_code == 2 and "same or own" in r.output
    assert not (tmp_path / "out").exists()  # refused before anything was measured or written


class _FakeLimit:
    """Stands in for benchmarks.limit.Limit: records the order of measurements, no model."""

    def __init__(self, name: str, speed: float, calls: list) -> None:
        self.name, self.speed, self.calls = name, speed, calls
        self.last_cpu_ms_per_image, self.last_cores = 1000.0 / speed, 1.0

    def measure(self, images, cfg, seconds: float) -> float:
        self.calls.append((self.name, cfg))
        return self.speed * cfg.batch ** 0.5 / cfg.intra_op_threads


def test_limits_share_the_grid_and_are_interleaved(tmp_path: Path) -> None:
    pytest.importorskip("typer", reason="the benchmark CLI needs typer (pip install -e '.[bench]')")
    from benchmarks.limit import LimitConfig
    from benchmarks.run import Plan, grid_configs, run_scenario

    calls: list = []
    lims = [_FakeLimit("limit", 40.0, calls), _FakeLimit("limit@1.1.0", 480.0, calls)]
    plan = Plan(levels=[1, 2, 4], multi_levels=[], multi_images=8, duration=1.0, warmup=0.0, half_load=False,
                limit_threads="1:1,2:2", limit_batches="1,8", limit_seconds=0.1)
    limits: dict = {}
    assert run_scenario(plan, [], lims, "dermoscopic", [("a.jpg", b"")], tmp_path, limits) == []
    grid = grid_configs("1:1,2:2", "1,8")
    assert grid == [LimitConfig(1, 1, 1, True), LimitConfig(8, 1, 1, True), LimitConfig(1, 2, 2, True),
                    LimitConfig(8, 2, 2, True), LimitConfig(1, 2, 2, False), LimitConfig(8, 2, 2, False)]
    grid_calls, sample_calls = calls[:2 * len(grid)], calls[2 * len(grid):]
    for i, cfg in enumerate(grid):  # every config measured for both models before the next, first one rotating
        pair = grid_calls[2 * i: 2 * i + 2]
        assert {c for _, c in pair} == {cfg} and {n for n, _ in pair} == {"limit", "limit@1.1.0"}
        assert pair[0][0] == ("limit" if i % 2 == 0 else "limit@1.1.0")
    assert [n for n, _ in sample_calls] == ["limit", "limit@1.1.0", "limit@1.1.0", "limit", "limit", "limit@1.1.0"]
    best = LimitConfig(8, 1, 1, True)
    assert all(c == best for _, c in sample_calls)
    for name, speed in (("limit", 40.0), ("limit@1.1.0", 480.0)):
        e = limits[name]["dermoscopic"]
        assert e["config"] == {"batch": 8, "intra_op_threads": 1, "decode_threads": 1, "ort_spinning": True}
        assert len(e["grid"]) == len(grid) and len(e["samples"]) == 3
        assert e["images_per_s"] == pytest.approx(speed * 8 ** 0.5)
        assert e["cpu_ms_per_image"] == [pytest.approx(1000.0 / speed)] * 3


def test_answers_checked_against_each_servers_own_model(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("typer", reason="the benchmark CLI needs typer (pip install -e '.[bench]')")
    import service.runtime
    from benchmarks import run

    class FakeRuntime:
        def __init__(self, model_dir, *a, **k) -> None:
            self.model_dir = Path(model_dir)
            self.manifest = type("M", (), {"name": "m", "version": self.model_dir.name})()
            self.class_codes = ["a"]

    class FakeServer:
        def __init__(self, name: str, model_dir: Path | None) -> None:
            self.name, self.model_dir, self.cwd = name, model_dir, tmp_path
            self.cold_start_s, self.rss_rest_mb = 0.1, 1.0

        def start(self) -> None:
            pass

    checked = {}
    monkeypatch.setattr(service.runtime, "ModelRuntime", FakeRuntime)
    monkeypatch.setattr(run, "check_answers", lambda s, imgs, rt, codes: checked.setdefault(s.name, rt) and 0.0)
    bundled, own = (tmp_path / "bundled").resolve(), (tmp_path / "own").resolve()
    ref = FakeRuntime(bundled)
    run.start_and_check([FakeServer("dermserve", bundled), FakeServer("dermserve@before", own),
                         FakeServer("naive", None)], [], ref)
    assert checked["dermserve"] is ref and checked["naive"] is ref
    assert checked["dermserve@before"].model_dir == own


def _limit_entry(ips: float, cpu: float) -> dict:
    cfg = {"batch": 8, "intra_op_threads": 1, "decode_threads": 2, "ort_spinning": True}
    return {"config": cfg, "grid": [dict(cfg, images_per_s=ips)], "samples": [ips * 0.95, ips, ips * 1.05],
            "cpu_ms_per_image": [cpu] * 3, "cores": [1.9] * 3, "images_per_s": ips}


def test_report_rows_and_ratios_for_limit_models(tmp_path: Path) -> None:
    pytest.importorskip("typer", reason="the benchmark CLI needs typer (pip install -e '.[bench]')")
    from benchmarks.report import compute_ratios, evaluate_targets, plot, print_table
    from benchmarks.wrk import Point

    model = {"name": "dermserve-ensemble", "version": "2.0.0", "sha256": "ab" * 32, "dir": "/m"}
    limit = {"dermoscopic": _limit_entry(40.0, 48.0), "clinical": _limit_entry(20.0, 95.0)}
    extra = {"limit@1.1.0": {"model": {"name": "dermserve-ham10000-mnv2", "version": "1.1.0", "sha256": "cd" * 32},
                             "scenarios": {"dermoscopic": _limit_entry(480.0, 4.0),
                                           "clinical": _limit_entry(60.0, 32.0)}}}
    points = [Point("dermoscopic", "dermserve", 1, c, ips, ips, 5.0, 8.0, 9.0, 0, 100)
              for c, ips in ((1, 20.0), (8, 38.0))]
    ratios = compute_ratios(points, limit, extra)
    r = ratios["dermoscopic"]["limit_models"]["limit@1.1.0"]
    assert r["over_limit"] == pytest.approx(12.0) and r["cpu_ms_over_limit"] == pytest.approx(4.0 / 48.0)
    assert r["images_per_s"] == 480.0 and r["model_version"] == "1.1.0"
    assert ratios["clinical"]["limit_models"]["limit@1.1.0"]["over_limit"] == pytest.approx(3.0)
    assert ratios["dermoscopic"]["dermserve_over_limit"] == pytest.approx(38.0 / 40.0)
    targets = evaluate_targets(ratios, points, {})
    assert evaluate_targets(ratios, points, {}, scenario="clinical") == []  # limits only: no targets
    servers = {"dermserve@before": {"cold_start_s": 1.0, "rss_rest_mb": 100.0, "rss_load_mb": 120.0,
                                    "code_dir": "/tmp/before", "model": model}}
    text = print_table(points, limit, servers, ratios, targets, extra, model)
    lines = text.splitlines()
    assert any(ln.startswith("limit (in-process, model dermserve-ensemble 2.0.0") for ln in lines)
    assert any(ln.startswith("limit@1.1.0 (in-process, model dermserve-ham10000-mnv2 1.1.0") for ln in lines)
    rows = [ln.split() for ln in lines if ln.startswith(("limit ", "limit@1.1.0 ")) and "in-process" not in ln
            and "CPU:" not in ln]
    assert ["limit", "dermserve-ensemble", "2.0.0", "40.0", "48.00", "1.00"] in rows
    assert ["limit@1.1.0", "dermserve-ham10000-mnv2", "1.1.0", "480.0", "4.00", "12.00"] in rows
    assert "[dermoscopic] limit@1.1.0/limit (in-process images/s): 12.00 (limit/limit@1.1.0: 0.083)" in text
    assert "[clinical] dermserve/limit" not in text  # no HTTP points there
    assert "2.0.0 (sha256 abababababab, /m), code /tmp/before" in text
    png = tmp_path / "results.png"
    pytest.importorskip("matplotlib")
    plot(points, limit, png, extra)  # an HTTP scenario (vertical lines) and a limits-only one (bars)
    assert png.stat().st_size > 0


def test_results_json_carries_limit_models(tmp_path: Path, model_dir: Path) -> None:
    pytest.importorskip("typer", reason="the benchmark CLI needs typer (pip install -e '.[bench]')")
    from datetime import UTC, datetime

    from benchmarks.run import write_results

    limits = {"limit": {"dermoscopic": _limit_entry(40.0, 48.0)},
              "limit@1.1.0": {"dermoscopic": _limit_entry(480.0, 4.0)}}
    write_results(tmp_path, datetime.now(UTC), model_dir, {"limit_models": {"1.1.0": str(model_dir)}},
                  [], limits, {"limit@1.1.0": model_dir}, [])
    result = json.loads((tmp_path / "results.json").read_text())
    assert result["limit"] == limits["limit"]
    lm = result["limit_models"]["limit@1.1.0"]
    assert lm["scenarios"] == limits["limit@1.1.0"]
    assert lm["model"]["dir"] == str(model_dir) and len(lm["model"]["sha256"]) == 64
    assert result["model"]["sha256"] == lm["model"]["sha256"]
    assert result["ratios"]["dermoscopic"]["limit_models"]["limit@1.1.0"]["over_limit"] == pytest.approx(12.0)
    assert result["targets"] == []
    assert "limit@1.1.0" in (tmp_path / "report.txt").read_text()
