"""One measured point: wrk against a server, with the CPU accounting of server and client and, for
dermserve, its model-call counters from ``/metrics``."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import BENCH_DIR
from benchmarks.processes import tree_cpu_s, tree_rss_mb
from benchmarks.servers import Server

LUA_SCRIPT = BENCH_DIR / "wrk" / "bodies.lua"


@dataclass
class Point:
    scenario: str
    system: str
    per_request: int
    concurrency: int
    images_per_s: float
    requests_per_s: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    errors: int
    requests: int
    paced_delay_ms: float = 0.0
    extra: dict = field(default_factory=dict)


def run_wrk(url: str, body_dir: Path, connections: int, duration_s: float, delay_ms: float = 0.0,
            monitor_pid: int | None = None) -> tuple[dict, float]:
    """One wrk run; returns (wrk's JSON summary, max tree RSS of ``monitor_pid`` in MB during it).

    The summary gains ``client_cpu_s``: wrk's own CPU seconds (user + system, from the rusage of
    reaped children), since it shares the machine's cores with the server.
    """
    env = dict(os.environ, BENCH_BODY_DIR=str(body_dir), BENCH_DELAY_MS=str(delay_ms))
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration_s))}s", "--timeout", "10s",
           "-s", str(LUA_SCRIPT), url]
    peak = [0.0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.5):
            peak[0] = max(peak[0], tree_rss_mb(monitor_pid))

    th = threading.Thread(target=sample, daemon=True) if monitor_pid else None
    if th:
        th.start()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=duration_s + 60)
    finally:
        stop.set()
        if th:
            th.join()
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    for line in proc.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            return json.loads(line[len("BENCH_JSON "):]) | {"client_cpu_s": client_cpu}, peak[0]
    raise RuntimeError(f"wrk gave no summary (exit {proc.returncode}): {proc.stdout[-2000:]} {proc.stderr[-2000:]}")


def measure_http(server: Server, scenario: str, body_dir: Path, per_request: int, conc: int, duration: float,
                 warmup: float, delay_ms: float = 0.0) -> Point:
    url = server.base + server.infer_path
    if warmup > 0:
        run_wrk(url, body_dir, conc, warmup, delay_ms)
    m0 = scrape_model_stats(server)
    cpu0 = tree_cpu_s(server.proc.pid)
    s, peak = run_wrk(url, body_dir, conc, duration, delay_ms, monitor_pid=server.proc.pid)
    cpu1 = tree_cpu_s(server.proc.pid)
    m1 = scrape_model_stats(server)
    server.rss_load_mb = max(server.rss_load_mb, peak)
    secs = s["duration_us"] / 1e6
    errors = sum(s["errors"].values())
    ok = max(0, s["requests"] - s["errors"]["status"])
    lat = s["latency_us"]
    has = s["requests"] > 0
    p = Point(scenario, server.name, per_request, conc, ok * per_request / secs, s["requests"] / secs,
              lat["p50"] / 1000 if has else None, lat["p95"] / 1000 if has else None,
              lat["p99"] / 1000 if has else None, errors, s["requests"], delay_ms)
    p.extra = cpu_accounting(cpu1 - cpu0, s["client_cpu_s"], secs, ok * per_request, s["requests"], m0, m1)
    return p


def scrape_model_stats(server: Server) -> dict[str, float] | None:
    """dermserve's model-call counters from ``/metrics`` (None for other systems or on failure).

    Keys: ``calls`` (model calls), ``images`` (images in them), ``seconds`` (time inside them).
    """
    if server.kind != "dermserve":
        return None
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(server.base + "/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except (urllib.error.URLError, OSError):
        return None
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for sample in fam.samples:
            if sample.name == "dermserve_batch_size_images_count":
                out["calls"] = sample.value
            elif sample.name == "dermserve_batch_size_images_sum":
                out["images"] = sample.value
            elif sample.name == "dermserve_inference_duration_seconds_sum":
                out["seconds"] = sample.value
    return out if len(out) == 3 else None


def cpu_accounting(server_cpu_s: float, client_cpu_s: float, secs: float, images: int, requests: int,
                   m0: dict | None, m1: dict | None) -> dict:
    """Where the machine's CPU went during one measured point (Triton-style server-side breakdown).

    Returns cores used by the server and by the client (CPU seconds / wall seconds), CPU ms per
    image (server) and per request (client), and for dermserve the mean images per model call and
    the wall ms per image spent inside model calls (from its ``/metrics`` counters).
    """
    out = {"server_cores": server_cpu_s / secs if secs else None,
           "client_cores": client_cpu_s / secs if secs else None,
           "server_cpu_ms_per_image": 1000 * server_cpu_s / images if images else None,
           "client_cpu_ms_per_request": 1000 * client_cpu_s / requests if requests else None}
    if m0 and m1 and m1["calls"] > m0["calls"]:
        calls, imgs = m1["calls"] - m0["calls"], m1["images"] - m0["images"]
        out["mean_batch_images"] = imgs / calls
        out["model_ms_per_image"] = 1000 * (m1["seconds"] - m0["seconds"]) / imgs if imgs else None
    return out
