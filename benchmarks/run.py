"""dermserve benchmark harness: the limit, dermserve, a naive FastAPI server and MLServer, side by side.

``python -m benchmarks --help``. One invocation measures every system on the same images and model,
alternating systems at each concurrency level so that drift (thermal, noisy neighbours, the ±15 %
run-to-run spread of a 2-core box) hits all of them alike. Only ratios from one run are meaningful.

Systems:

- ``limit``: dermserve's own decode + preprocess (``service.preprocessing``) and
  ``service.runtime.ModelRuntime.predict_proba`` in this process, no HTTP, at the best batch size /
  thread setting found by a short grid search; decode of the next batch overlaps inference.
- ``dermserve``: ``python -m service`` at its default settings (multipart ``POST /predict``).
- ``naive``: :mod:`benchmarks.naive_server` (one onnxruntime call per request, no batching).
- ``mlserver``: Seldon MLServer 1.7 with adaptive batching and :mod:`benchmarks.mlserver_runtime`
  (Open Inference Protocol JSON, base64 BYTES input), in its own virtualenv ``.bench-venvs/mlserver``.
- ``dermserve[NAME]``: dermserve with extra ``DERMSERVE_*`` settings (``--variant``), to measure levers.

The load generator is ``wrk`` (compiled; a Python client would take CPU from the server on 2 cores)
with ``benchmarks/wrk/bodies.lua``, posting pre-built bodies of real test-split JPEGs. httpx is used
only to check each server's answers against the in-process runtime before measuring.

CPU accounting (every point): cores used by the server's process tree (/proc utime + stime) and by
wrk (rusage), CPU ms per image / per request, and for dermserve the mean images per model call and
the ms per image inside model calls (its /metrics counters) -- the server-side split between model
compute and everything else, and the evidence for where a 2-core ceiling comes from. The limit
records its own CPU ms per image (process CPU time).
"""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = Path(__file__).resolve().parent
LUA_SCRIPT = BENCH_DIR / "wrk" / "bodies.lua"
CACHE_DIR = REPO_ROOT / ".bench-cache"
MLSERVER_VENV = REPO_ROOT / ".bench-venvs" / "mlserver"
MLSERVER_SPEC = "mlserver==1.7.*"
BOUNDARY = "dermbench0c2f6b1e9a4d"

app = typer.Typer(add_completion=False, help=__doc__, no_args_is_help=False)


# ------------------------------------------------------------------------------------ data
def load_test_images(data_dir: Path, n: int) -> list[tuple[str, bytes]]:
    """``n`` test-split JPEGs (sorted by image_id) as ``(filename, bytes)``; n <= 0 = all."""
    with open(data_dir / "labels.csv", newline="") as fh:
        rows = sorted((r for r in csv.DictReader(fh) if r["split"] == "test"), key=lambda r: r["image_id"])
    if n > 0:
        rows = rows[:n]
    if not rows:
        raise typer.BadParameter(f"no test-split images in {data_dir}/labels.csv")
    return [(Path(r["filename"]).name, (data_dir / r["filename"]).read_bytes()) for r in rows]


def clinical_images(images: list[tuple[str, bytes]], n: int, size=(1600, 1200), quality: int = 90):
    """The first ``n`` images upscaled to ``size`` JPEGs (clinical-photo size), cached in .bench-cache/."""
    from PIL import Image

    out_dir = CACHE_DIR / f"clinical-{size[0]}x{size[1]}-q{quality}"
    out_dir.mkdir(parents=True, exist_ok=True)
    result = []
    for name, data in images[:n]:
        path = out_dir / name
        if not path.is_file():
            img = Image.open(io.BytesIO(data)).convert("RGB").resize(size, Image.Resampling.BICUBIC)
            tmp = path.with_suffix(".tmp")
            img.save(tmp, "JPEG", quality=quality)
            tmp.replace(path)
        result.append((name, path.read_bytes()))
    return result


def build_bodies(images: list[tuple[str, bytes]], per_request: int, fmt: str, out_dir: Path) -> Path:
    """Write request bodies (``fmt``: ``multipart`` or ``oip``) of ``per_request`` images each for wrk."""
    out_dir.mkdir(parents=True, exist_ok=True)
    n_bodies = max(1, len(images) // per_request) if per_request > 1 else len(images)
    names = []
    for b in range(n_bodies):
        chunk = [images[(b * per_request + j) % len(images)] for j in range(per_request)]
        if fmt == "multipart":
            parts = []
            for name, data in chunk:
                parts.append(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="images"; filename="{name}"\r\n'
                             f"Content-Type: image/jpeg\r\n\r\n".encode() + data + b"\r\n")
            body = b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()
        else:
            body = json.dumps(oip_request(chunk)).encode()
        fname = f"body_{b:05d}.bin"
        (out_dir / fname).write_bytes(body)
        names.append(fname)
    (out_dir / "index.txt").write_text("\n".join(names) + "\n")
    ctype = f"multipart/form-data; boundary={BOUNDARY}" if fmt == "multipart" else "application/json"
    (out_dir / "content_type.txt").write_text(ctype + "\n")
    return out_dir


def oip_request(chunk: list[tuple[str, bytes]]) -> dict:
    return {"inputs": [{"name": "images", "shape": [len(chunk)], "datatype": "BYTES",
                        "parameters": {"content_type": "base64"},
                        "data": [base64.b64encode(d).decode("ascii") for _, d in chunk]}]}


# ------------------------------------------------------------------------------------ processes
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree_pids(pid: int) -> list[int]:
    """``pid`` and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) used so far by ``pid`` and its live descendants (/proc stat)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in tree_pids(pid):
        try:
            with open(f"/proc/{p}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat(5))
        except (OSError, ValueError, IndexError):
            continue
    return total / tick


def tree_rss_mb(pid: int) -> float:
    """Resident memory (MB) of ``pid`` and all its descendants, from /proc."""
    total_kb = 0
    for p in tree_pids(pid):
        try:
            with open(f"/proc/{p}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        total_kb += int(line.split()[1])
                        break
        except OSError:
            continue
    return total_kb / 1024.0


def http_ok(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


@dataclass
class Server:
    """A server under test, started as a subprocess bound to 127.0.0.1."""

    name: str
    kind: str  # dermserve | naive | mlserver
    cmd: list[str]
    env: dict[str, str]
    port: int
    ready_path: str
    infer_path: str
    body_format: str  # multipart | oip
    log_path: Path
    cwd: Path = REPO_ROOT
    proc: subprocess.Popen | None = None
    cold_start_s: float | None = None
    rss_rest_mb: float | None = None
    rss_load_mb: float = 0.0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120.0) -> None:
        fh = open(self.log_path, "wb")
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(self.cmd, cwd=self.cwd, env=self.env, stdout=fh, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        fh.close()
        deadline = t0 + timeout
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; log:\n"
                                   f"{self.log_path.read_text(errors='replace')[-3000:]}")
            if http_ok(self.base + self.ready_path, timeout=0.5):
                self.cold_start_s = time.perf_counter() - t0
                time.sleep(1.0)
                self.rss_rest_mb = tree_rss_mb(self.proc.pid)
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"{self.name} not ready after {timeout} s; log: {self.log_path}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)  # its own session: the server and its workers only
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        except ProcessLookupError:
            pass


def ensure_mlserver_venv(venv: Path = MLSERVER_VENV) -> Path:
    """Create ``venv`` with MLServer 1.7 + onnxruntime + Pillow (the versions of this venv) if missing."""
    from importlib.metadata import version

    exe = venv / "bin" / "mlserver"
    # uvloop >= 0.22 breaks MLServer 1.7's inference workers ("There is no current event loop" in
    # mlserver/parallel/worker.py); 0.21 is the uvloop of MLServer 1.7's time.
    pins = [MLSERVER_SPEC, "uvloop==0.21.0", f"onnxruntime=={version('onnxruntime')}",
            f"pillow=={version('pillow')}", f"numpy=={version('numpy')}"]
    marker = venv / ".dermbench-pins"
    if exe.is_file() and marker.is_file() and marker.read_text() == " ".join(pins):
        return exe
    typer.echo(f"installing {' '.join(pins)} into {venv} (one-off, a few minutes)", err=True)
    if not (venv / "bin" / "pip").is_file():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", *pins], check=True)
    marker.write_text(" ".join(pins))
    return exe


def make_servers(systems: list[str], model_dir: Path, variants: dict[str, dict[str, str]], log_dir: Path,
                 mlserver_batch_time_ms: float, mlserver_batch_size: int,
                 checkouts: dict[str, Path] | None = None) -> list[Server]:
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("DERMSERVE_", "MLSERVER_"))}
    base_env["PYTHONUNBUFFERED"] = "1"
    servers: list[Server] = []
    ds_names = [s for s in systems if s == "dermserve"] + [f"dermserve[{v}]" for v in variants]
    for name in ds_names:
        port = free_port()
        env = dict(base_env, DERMSERVE_HOST="127.0.0.1", DERMSERVE_PORT=str(port), DERMSERVE_MODEL_DIR=str(model_dir),
                   DERMSERVE_JOBS_DIR=str(log_dir / f"jobs-{name}"))  # own job store per server, not the repo's
        if name != "dermserve":
            env.update(variants[name[len("dermserve["):-1]])
        servers.append(Server(name, "dermserve", [sys.executable, "-m", "service"], env, port, "/health/ready",
                              "/predict", "multipart", log_dir / f"{name}.log"))
    for name, path in (checkouts or {}).items():  # dermserve from another checkout (e.g. before a change)
        port = free_port()
        env = dict(base_env, DERMSERVE_HOST="127.0.0.1", DERMSERVE_PORT=str(port), DERMSERVE_MODEL_DIR=str(model_dir),
                   DERMSERVE_JOBS_DIR=str(log_dir / f"jobs-at-{name}"))
        servers.append(Server(f"dermserve@{name}", "dermserve", [sys.executable, "-m", "service"], env, port,
                              "/health/ready", "/predict", "multipart", log_dir / f"dermserve@{name}.log",
                              cwd=path.resolve()))
    if "naive" in systems:
        port = free_port()
        servers.append(Server("naive", "naive", [sys.executable, "-m", "benchmarks.naive_server", "--model-dir",
                                                 str(model_dir), "--port", str(port)], dict(base_env), port,
                              "/health/ready", "/predict", "multipart", log_dir / "naive.log"))
    if "mlserver" in systems:
        exe = ensure_mlserver_venv()
        repo = log_dir / "mlserver-models"
        mdir = repo / "dermserve"
        mdir.mkdir(parents=True, exist_ok=True)
        shutil.copy(BENCH_DIR / "mlserver_runtime" / "runtime.py", mdir / "runtime.py")
        ms = json.loads((BENCH_DIR / "mlserver_runtime" / "model-settings.json").read_text())
        ms["max_batch_size"] = mlserver_batch_size
        ms["max_batch_time"] = mlserver_batch_time_ms / 1000.0
        ms["parameters"]["uri"] = str(model_dir.resolve())
        ms["parameters"]["extra"]["repo_root"] = str(REPO_ROOT)
        (mdir / "model-settings.json").write_text(json.dumps(ms, indent=2))
        port = free_port()
        env = dict(base_env, MLSERVER_HOST="127.0.0.1", MLSERVER_HTTP_PORT=str(port),
                   MLSERVER_GRPC_PORT=str(free_port()), MLSERVER_METRICS_PORT=str(free_port()),
                   MLSERVER_DEBUG="false", MLSERVER_METRICS_DIR=str(log_dir / "mlserver-metrics"))
        env.pop("VIRTUAL_ENV", None)
        env["PATH"] = f"{exe.parent}:{env.get('PATH', '')}"
        servers.append(Server("mlserver", "mlserver", [str(exe), "start", str(repo)], env, port,
                              "/v2/models/dermserve/ready", "/v2/models/dermserve/infer", "oip",
                              log_dir / "mlserver.log", cwd=log_dir))  # its files stay out of the repo
    return servers


# ------------------------------------------------------------------------------------ correctness
def check_answers(server: Server, images: list[tuple[str, bytes]], runtime, codes: list[str]) -> float:
    """POST two images with httpx; return the max |p - p_ref| against the in-process runtime."""
    import httpx

    from service.preprocessing import preprocess_bytes

    chunk = images[:2]
    ref = runtime.predict_proba(np.stack([preprocess_bytes(d, runtime.spec) for _, d in chunk]))
    url = server.base + server.infer_path
    if server.body_format == "multipart":
        resp = httpx.post(url, files=[("images", (n, d, "image/jpeg")) for n, d in chunk], timeout=30)
        resp.raise_for_status()
        got = np.array([[p["probabilities"][c] for c in codes] for p in resp.json()["predictions"]])
    else:
        resp = httpx.post(url, json=oip_request(chunk), timeout=30)
        resp.raise_for_status()
        out = resp.json()["outputs"][0]
        got = np.array(out["data"], dtype=np.float64).reshape(out["shape"])
    diff = float(np.abs(got - ref).max())
    if diff > 1e-3:
        raise RuntimeError(f"{server.name} answers differ from the in-process runtime by {diff:.4g}")
    return diff


# ------------------------------------------------------------------------------------ wrk
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


# ------------------------------------------------------------------------------------ the limit
@dataclass(frozen=True)
class LimitConfig:
    batch: int
    intra_op_threads: int
    decode_threads: int
    ort_spinning: bool = True


class Limit:
    """In-process decode + preprocess + onnxruntime (dermserve's own code), no HTTP."""

    def __init__(self, model_dir: Path) -> None:
        self.model_dir = model_dir
        self._runtimes: dict[tuple[int, bool], object] = {}
        #: CPU ms per image and cores used in the last :meth:`measure` (process CPU time / images, / seconds)
        self.last_cpu_ms_per_image: float | None = None
        self.last_cores: float | None = None

    def runtime(self, intra: int, spinning: bool = True):
        from service.runtime import ModelRuntime

        if (intra, spinning) not in self._runtimes:
            self._runtimes[(intra, spinning)] = ModelRuntime(self.model_dir, ["CPUExecutionProvider"],
                                                             intra_op_threads=intra, allow_spinning=spinning)
        return self._runtimes[(intra, spinning)]

    def measure(self, images: list[tuple[str, bytes]], cfg: LimitConfig, seconds: float) -> float:
        """Images/s over ``seconds``: decode of batch i+1 (thread pool) overlaps inference of batch i."""
        from service.preprocessing import preprocess_bytes

        rt = self.runtime(cfg.intra_op_threads, cfg.ort_spinning)
        rt.warm_up((cfg.batch,))
        spec = rt.spec
        datas = [d for _, d in images]
        pos = 0

        def next_batch(pool):
            nonlocal pos
            chunk = [datas[(pos + j) % len(datas)] for j in range(cfg.batch)]
            pos += cfg.batch
            return [pool.submit(preprocess_bytes, d, spec) for d in chunk]

        done = 0
        with ThreadPoolExecutor(cfg.decode_threads) as pool:
            pending = next_batch(pool)
            t0 = time.perf_counter()
            c0 = time.process_time()  # this process: decode threads + onnxruntime's threads
            while True:
                arrays = [f.result() for f in pending]
                pending = next_batch(pool)
                rt.predict_proba(np.stack(arrays))
                done += len(arrays)
                elapsed = time.perf_counter() - t0
                if elapsed >= seconds:
                    break
            cpu = time.process_time() - c0
            for f in pending:
                f.cancel()
        self.last_cpu_ms_per_image = 1000 * cpu / done
        self.last_cores = cpu / elapsed
        return done / elapsed


def _sample_limit(entry: dict, lim: Limit, images: list[tuple[str, bytes]], cfg: LimitConfig, seconds: float) -> None:
    """Re-measure the limit at ``cfg``; append images/s and its CPU cost to the scenario's ``entry``."""
    entry["samples"].append(lim.measure(images, cfg, seconds))
    entry.setdefault("cpu_ms_per_image", []).append(lim.last_cpu_ms_per_image)
    entry.setdefault("cores", []).append(lim.last_cores)


# ------------------------------------------------------------------------------------ report
def pct_ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def compute_ratios(points: list[Point], limit: dict) -> dict:
    """dermserve / limit at saturation; dermserve / naive and / mlserver at each concurrency."""
    out: dict = {}
    for scenario in sorted({p.scenario for p in points}):
        sc: dict = {}
        single = [p for p in points if p.scenario == scenario and p.per_request == 1 and not p.paced_delay_ms]
        by = {(p.system, p.concurrency): p for p in single}
        systems = sorted({p.system for p in single})
        sat = {s: max((p.images_per_s for p in single if p.system == s), default=None) for s in systems}
        sc["saturated_images_per_s"] = sat
        lim = limit.get(scenario, {}).get("images_per_s")
        sc["limit_images_per_s"] = lim
        sc["dermserve_over_limit"] = pct_ratio(sat.get("dermserve"), lim)
        multi = [p for p in points if p.scenario == scenario and p.per_request > 1 and p.system == "dermserve"]
        if multi and lim:
            sc["dermserve_multi_over_limit"] = max(p.images_per_s for p in multi) / lim
        levels = sorted({p.concurrency for p in single})
        for peer in ("naive", "mlserver"):
            rows = {}
            for c in levels:
                d, o = by.get(("dermserve", c)), by.get((peer, c))
                if d and o:
                    rows[str(c)] = {"throughput_ratio": pct_ratio(d.images_per_s, o.images_per_s),
                                    "p99_dermserve_ms": d.p99_ms, f"p99_{peer}_ms": o.p99_ms,
                                    "p50_diff_ms": None if d.p50_ms is None or o.p50_ms is None
                                    else d.p50_ms - o.p50_ms}
            sc[f"dermserve_over_{peer}"] = rows
        out[scenario] = sc
    return out


def evaluate_targets(ratios: dict, points: list[Point], servers: dict, scenario: str = "dermoscopic") -> list[dict]:
    """The issue's targets, each ``{target, value, met}`` (on the dermoscopic scenario, single images)."""
    sc = ratios.get(scenario)
    if not sc:
        return []
    t: list[dict] = []

    def add(name: str, value, met) -> None:
        t.append({"target": name, "value": value, "met": met})

    r = sc.get("dermserve_over_limit")
    add("saturated throughput >= 0.9 x limit", r, None if r is None else r >= 0.9)
    n32, m32 = sc.get("dermserve_over_naive", {}).get("32"), sc.get("dermserve_over_mlserver", {}).get("32")
    if n32:
        add("c=32: >= 1.3 x naive throughput", n32["throughput_ratio"], n32["throughput_ratio"] >= 1.3)
        add("c=32: p99 lower than naive", [n32["p99_dermserve_ms"], n32["p99_naive_ms"]],
            n32["p99_dermserve_ms"] < n32["p99_naive_ms"])
    if m32:
        add("c=32: >= 1.25 x MLServer throughput", m32["throughput_ratio"], m32["throughput_ratio"] >= 1.25)
        add("c=32: p99 lower than MLServer", [m32["p99_dermserve_ms"], m32["p99_mlserver_ms"]],
            m32["p99_dermserve_ms"] < m32["p99_mlserver_ms"])
    m1, n1 = sc.get("dermserve_over_mlserver", {}).get("1"), sc.get("dermserve_over_naive", {}).get("1")
    if m1:
        add("c=1: >= 4 x MLServer throughput", m1["throughput_ratio"], m1["throughput_ratio"] >= 4)
    if n1:
        add("c=1: p50 within 1 ms of naive", n1["p50_diff_ms"], n1["p50_diff_ms"] <= 1.0)
    c1 = next((p for p in points if p.scenario == scenario and p.system == "dermserve" and p.concurrency == 1
               and p.per_request == 1 and not p.paced_delay_ms), None)
    half = next((p for p in points if p.scenario == scenario and p.system == "dermserve" and p.paced_delay_ms), None)
    if c1 and half and c1.p99_ms:
        add("p99 at half saturated load <= 2 x c=1 p99", [half.p99_ms, c1.p99_ms], half.p99_ms <= 2 * c1.p99_ms)
    ds = servers.get("dermserve")
    if ds:
        add("ready in <= 5 s", ds["cold_start_s"], ds["cold_start_s"] is not None and ds["cold_start_s"] <= 5)
        add("RSS <= 500 MB under load", ds["rss_load_mb"], ds["rss_load_mb"] <= 500)
    return t


def fmt(v, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def print_table(points: list[Point], limit: dict, servers: dict, ratios: dict, targets: list[dict]) -> str:
    lines = []
    for scenario in sorted({p.scenario for p in points} | set(limit)):
        lim = limit.get(scenario)
        lines.append(f"\n== scenario {scenario} ==")
        if lim:
            lines.append(f"limit (in-process, {lim['config']}): {lim['images_per_s']:.1f} images/s "
                         f"(re-measured {len(lim['samples'])}x: {min(lim['samples']):.0f}-{max(lim['samples']):.0f})")
            if lim.get("cpu_ms_per_image"):
                lines.append(f"limit CPU: {statistics.median(lim['cpu_ms_per_image']):.2f} CPU ms per image, "
                             f"{statistics.median(lim['cores']):.2f} cores busy (median of the re-measurements)")
        for per_request in sorted({p.per_request for p in points if p.scenario == scenario}):
            lines.append(f"-- {per_request} image(s) per request --")
            lines.append(f"{'conc':>5} {'system':<22} {'img/s':>8} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} "
                         f"{'p99 ms':>8} {'errors':>6} {'srv cores':>9} {'cli cores':>9} {'srv ms/img':>10} "
                         f"{'cli ms/req':>10} {'batch':>6} {'model ms/img':>12}")
            pts = sorted((p for p in points if p.scenario == scenario and p.per_request == per_request),
                         key=lambda p: (bool(p.paced_delay_ms), p.concurrency, p.system))
            for p in pts:
                conc = f"{p.concurrency}" + ("p" if p.paced_delay_ms else "")
                x = p.extra
                lines.append(f"{conc:>5} {p.system:<22} {p.images_per_s:8.1f} {p.requests_per_s:8.1f} "
                             f"{fmt(p.p50_ms, '8.2f')} {fmt(p.p95_ms, '8.2f')} {fmt(p.p99_ms, '8.2f')} {p.errors:6d} "
                             f"{fmt(x.get('server_cores'), '9.2f')} {fmt(x.get('client_cores'), '9.2f')} "
                             f"{fmt(x.get('server_cpu_ms_per_image'), '10.2f')} "
                             f"{fmt(x.get('client_cpu_ms_per_request'), '10.2f')} "
                             f"{fmt(x.get('mean_batch_images'), '6.1f')} {fmt(x.get('model_ms_per_image'), '12.2f')}")
    lines.append("\n== servers ==")
    for name, s in servers.items():
        lines.append(f"{name:<22} ready in {fmt(s['cold_start_s'], '.2f')} s, RSS at rest {fmt(s['rss_rest_mb'])} MB, "
                     f"under load {fmt(s['rss_load_mb'])} MB")
    lines.append("\n== ratios ==")
    for scenario, sc in ratios.items():
        lines.append(f"[{scenario}] dermserve/limit at saturation: {fmt(sc.get('dermserve_over_limit'), '.2f')}"
                     + (f" (multi-image requests: {sc['dermserve_multi_over_limit']:.2f})"
                        if "dermserve_multi_over_limit" in sc else ""))
        for peer in ("naive", "mlserver"):
            rows = sc.get(f"dermserve_over_{peer}", {})
            if rows:
                lines.append(f"[{scenario}] dermserve/{peer} throughput by concurrency: " + ", ".join(
                    f"c={c}: {fmt(r['throughput_ratio'], '.2f')}" for c, r in rows.items()))
    if targets:
        lines.append("\n== targets (dermoscopic, single-image requests) ==")
        for t in targets:
            v = t["value"]
            vs = ", ".join(fmt(x, ".2f") for x in v) if isinstance(v, list) else fmt(v, ".2f")
            lines.append(f"{'MET    ' if t['met'] else 'NOT MET' if t['met'] is False else 'n/a    '} "
                         f"{t['target']}: {vs}")
    text = "\n".join(lines)
    typer.echo(text)
    return text


def plot(points: list[Point], limit: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        typer.echo("matplotlib not installed: no plot", err=True)
        return
    scenarios = sorted({p.scenario for p in points})
    if not scenarios:
        return
    fig, axes = plt.subplots(1, len(scenarios), figsize=(6.5 * len(scenarios), 5), squeeze=False)
    for ax, scenario in zip(axes[0], scenarios):
        pts = [p for p in points if p.scenario == scenario and p.per_request == 1 and not p.paced_delay_ms]
        for system in sorted({p.system for p in pts}):
            sp = sorted((p for p in pts if p.system == system and p.p99_ms), key=lambda p: p.concurrency)
            ax.plot([p.images_per_s for p in sp], [p.p99_ms for p in sp], marker="o", label=system)
            for p in sp:
                ax.annotate(str(p.concurrency), (p.images_per_s, p.p99_ms), fontsize=7,
                            textcoords="offset points", xytext=(3, 3))
        if scenario in limit:
            ax.axvline(limit[scenario]["images_per_s"], color="grey", linestyle="--", label="limit (no HTTP)")
        ax.set_yscale("log")
        ax.set_xlabel("throughput (images/s)")
        ax.set_ylabel("p99 latency (ms, log)")
        ax.set_title(f"{scenario}: 1 image/request, labels = concurrency")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    v = {"python": platform.python_version()}
    for pkg in ("onnxruntime", "fastapi", "starlette", "uvicorn", "pillow", "numpy", "python-multipart"):
        try:
            v[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    if (MLSERVER_VENV / "bin" / "python").is_file():
        r = subprocess.run([str(MLSERVER_VENV / "bin" / "python"), "-c",
                            "import mlserver; print(mlserver.__version__)"], capture_output=True, text=True)
        v["mlserver"] = r.stdout.strip() or None
    w = shutil.which("wrk")
    if w:
        r = subprocess.run([w, "--version"], capture_output=True, text=True)
        v["wrk"] = (r.stdout or r.stderr).split("Copyright")[0].strip()
    return v


def machine() -> dict:
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cores": os.cpu_count(), "cpu": cpu, "platform": platform.platform()}


# ------------------------------------------------------------------------------------ CLI
def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


@app.command()
def main(
    systems: Annotated[str, typer.Option(help="comma list of: limit, dermserve, naive, mlserver")] =
        "limit,dermserve,naive,mlserver",
    scenarios: Annotated[str, typer.Option(help="dermoscopic (test JPEGs as-is), clinical (upscaled 1600x1200)")] =
        "dermoscopic,clinical",
    levels: Annotated[str, typer.Option(help="concurrency sweep, single-image requests")] = "1,2,4,8,16,32,64",
    multi_levels: Annotated[str, typer.Option(help="concurrency levels for multi-image requests ('' = none)")] =
        "1,8,32",
    multi_images: Annotated[int, typer.Option(help="images per multi-image request")] = 8,
    duration: Annotated[float, typer.Option(help="seconds measured per point")] = 8.0,
    warmup: Annotated[float, typer.Option(help="seconds of load before each point (not measured)")] = 1.0,
    images: Annotated[int, typer.Option(help="test-split images used (0 = all)")] = 256,
    clinical_count: Annotated[int, typer.Option(help="images upscaled for the clinical scenario")] = 64,
    half_load: Annotated[bool, typer.Option(help="paced point at half of each server's saturated rate")] = True,
    limit_seconds: Annotated[float, typer.Option(help="seconds per limit measurement")] = 3.0,
    limit_batches: Annotated[str, typer.Option(help="batch sizes tried for the limit")] = "1,8,32,64",
    limit_threads: Annotated[str, typer.Option(help="(intra_op,decode) thread pairs tried, e.g. 2:2,1:2")] =
        "1:1,1:2,2:1,2:2",
    variant: Annotated[list[str], typer.Option(help="extra dermserve system NAME:KEY=VAL[,KEY=VAL] "
                                                    "(DERMSERVE_ prefix optional); repeatable")] = [],  # noqa: B006
    checkout: Annotated[list[str], typer.Option(help="extra dermserve system NAME=PATH run from another checkout "
                                                     "of this repo at default settings (e.g. a git worktree of "
                                                     "the commit before a change); repeatable")] = [],  # noqa: B006
    mlserver_batch_time_ms: Annotated[float, typer.Option(help="MLServer max_batch_time (ms)")] = 10.0,
    mlserver_batch_size: Annotated[int, typer.Option(help="MLServer max_batch_size")] = 32,
    model_dir: Annotated[Path, typer.Option(help="model directory")] = REPO_ROOT / "models" / "default",
    data_dir: Annotated[Path, typer.Option(help="HAM10000 folder with labels.csv")] =
        REPO_ROOT.parent / "shared" / "data" / "ham10000",
    out_dir: Annotated[Path, typer.Option(help="where results.json, results.png and report.txt go")] =
        BENCH_DIR / "results",
) -> None:
    """Run the benchmark; print a table; write JSON, a PNG plot and a text report."""
    sys_list = [s.strip() for s in systems.split(",") if s.strip()]
    unknown = set(sys_list) - {"limit", "dermserve", "naive", "mlserver"}
    if unknown:
        raise typer.BadParameter(f"unknown systems {sorted(unknown)}")
    variants: dict[str, dict[str, str]] = {}
    for v in variant:
        name, _, kvs = v.partition(":")
        env = {}
        for kv in filter(None, kvs.split(",")):
            k, _, val = kv.partition("=")
            k = k.strip().upper()
            env[k if k.startswith("DERMSERVE_") else f"DERMSERVE_{k}"] = val.strip()
        variants[name] = env
    http_systems = [s for s in sys_list if s != "limit"] or []
    if (http_systems or variants or checkout) and not shutil.which("wrk"):
        raise typer.BadParameter("wrk not found: apt-get install -y --no-install-recommends wrk (see benchmarks/README.md)")
    sc_list = [s.strip() for s in scenarios.split(",") if s.strip()]
    model_dir = model_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    started = datetime.now(timezone.utc)

    base_images = load_test_images(data_dir, images)
    scenario_images = {}
    for sc in sc_list:
        if sc == "dermoscopic":
            scenario_images[sc] = base_images
        elif sc == "clinical":
            scenario_images[sc] = clinical_images(base_images, clinical_count)
        else:
            raise typer.BadParameter(f"unknown scenario {sc!r}")

    from service.runtime import ModelRuntime

    ref_runtime = ModelRuntime(model_dir, ["CPUExecutionProvider"], intra_op_threads=1)
    codes = ref_runtime.class_codes
    manifest = ref_runtime.manifest
    work = Path(tempfile.mkdtemp(prefix="dermbench-", dir=CACHE_DIR if CACHE_DIR.is_dir() else None))
    servers: list[Server] = []
    points: list[Point] = []
    limit: dict = {}
    try:
        # start servers one at a time (cold start measured with nothing else running), check answers
        checkouts = {c.partition("=")[0]: Path(c.partition("=")[2]) for c in checkout}
        servers = make_servers(http_systems, model_dir, variants, work, mlserver_batch_time_ms, mlserver_batch_size,
                               checkouts)
        for s in servers:
            typer.echo(f"starting {s.name} ...", err=True)
            s.start()
            try:
                diff = check_answers(s, base_images, ref_runtime, codes)
            except RuntimeError as exc:
                if "DERMSERVE_MODEL_DIR" not in variants.get(s.name[len("dermserve["):-1], {}):
                    raise
                diff = float("nan")  # a variant serving another model (e.g. int8) answers differently
                typer.echo(f"  {exc} (expected: it serves another model)", err=True)
            typer.echo(f"  ready in {s.cold_start_s:.2f} s, RSS {s.rss_rest_mb:.0f} MB, answers match "
                       f"(max |dp| {diff:.1e})", err=True)

        lim_obj = Limit(model_dir) if "limit" in sys_list else None
        for sc in sc_list:
            imgs = scenario_images[sc]
            bodies = {}
            for fmt_ in {s.body_format for s in servers}:
                bodies[(fmt_, 1)] = build_bodies(imgs, 1, fmt_, work / sc / f"{fmt_}-1")
                if multi_levels:
                    bodies[(fmt_, multi_images)] = build_bodies(imgs, multi_images, fmt_,
                                                                work / sc / f"{fmt_}-{multi_images}")
            best = None
            if lim_obj:
                grid = []
                for pair in limit_threads.split(","):
                    intra, dec = (int(x) for x in pair.split(":"))
                    for spin in ((True, False) if intra > 1 else (True,)):  # spinning only matters with a pool
                        for b in _ints(limit_batches):
                            cfg = LimitConfig(b, intra, dec, spin)
                            ips = lim_obj.measure(imgs, cfg, max(0.3, limit_seconds / 2))
                            grid.append({**asdict(cfg), "images_per_s": ips})
                            typer.echo(f"[{sc}] limit {cfg}: {ips:.1f} images/s", err=True)
                best_row = max(grid, key=lambda r: r["images_per_s"])
                best = LimitConfig(best_row["batch"], best_row["intra_op_threads"], best_row["decode_threads"],
                                   best_row["ort_spinning"])
                limit[sc] = {"config": asdict(best), "grid": grid, "samples": []}

            lv = _ints(levels)
            for i, c in enumerate(lv):
                order = servers[i % len(servers):] + servers[:i % len(servers)] if servers else []
                for s in order:
                    p = measure_http(s, sc, bodies[(s.body_format, 1)], 1, c, duration, warmup)
                    points.append(p)
                    typer.echo(f"[{sc}] c={c:<3} {s.name:<20} {p.images_per_s:7.1f} img/s  p50 {fmt(p.p50_ms, '.2f')}"
                               f"  p99 {fmt(p.p99_ms, '.2f')} ms  errors {p.errors}", err=True)
                if best:
                    _sample_limit(limit[sc], lim_obj, imgs, best, limit_seconds)
            if best and not lv:
                _sample_limit(limit[sc], lim_obj, imgs, best, limit_seconds)
            for i, c in enumerate(_ints(multi_levels)):
                order = servers[i % len(servers):] + servers[:i % len(servers)] if servers else []
                for s in order:
                    p = measure_http(s, sc, bodies[(s.body_format, multi_images)], multi_images, c, duration, warmup)
                    points.append(p)
                    typer.echo(f"[{sc}] c={c:<3} x{multi_images} {s.name:<17} {p.images_per_s:7.1f} img/s  "
                               f"p99 {fmt(p.p99_ms, '.2f')} ms  errors {p.errors}", err=True)
            if half_load and lv:
                conns = 8
                for s in servers:
                    sp = [p for p in points if p.scenario == sc and p.system == s.name and p.per_request == 1]
                    sat_rps = max(p.requests_per_s for p in sp)
                    c1 = min(sp, key=lambda p: p.concurrency)
                    target = sat_rps / 2
                    delay = max(0.0, conns * 1000.0 / target - (c1.p50_ms or 0.0))
                    p = measure_http(s, sc, bodies[(s.body_format, 1)], 1, conns, duration, warmup, delay_ms=delay)
                    p.extra |= {"target_requests_per_s": target, "saturated_requests_per_s": sat_rps}
                    points.append(p)
                    typer.echo(f"[{sc}] half load {s.name:<20} {p.requests_per_s:7.1f} req/s (target {target:.0f})"
                               f"  p99 {fmt(p.p99_ms, '.2f')} ms", err=True)
            if best:
                limit[sc]["images_per_s"] = statistics.median(limit[sc]["samples"])
    finally:
        for s in servers:
            s.stop()

    server_info = {s.name: {"cold_start_s": s.cold_start_s, "rss_rest_mb": s.rss_rest_mb,
                            "rss_load_mb": s.rss_load_mb} for s in servers}
    ratios = compute_ratios(points, limit)
    targets = evaluate_targets(ratios, points, server_info)
    argv = " ".join(["python -m benchmarks", *sys.argv[1:]])
    result = {
        "command": argv,
        "date": started.isoformat(timespec="seconds"),
        "elapsed_s": (datetime.now(timezone.utc) - started).total_seconds(),
        "machine": machine(),
        "versions": versions(),
        "model": {"dir": str(model_dir), "name": manifest.name, "version": manifest.version,
                  "input": [manifest.input.height, manifest.input.width], "sha256": manifest.sha256},
        "settings": {"duration_s": duration, "warmup_s": warmup, "images": len(base_images),
                     "clinical_images": clinical_count if "clinical" in sc_list else 0,
                     "multi_images": multi_images, "mlserver_max_batch_time_ms": mlserver_batch_time_ms,
                     "mlserver_max_batch_size": mlserver_batch_size, "variants": variants,
                     "checkouts": {c.partition("=")[0]: c.partition("=")[2] for c in checkout}},
        "servers": server_info,
        "limit": limit,
        "points": [asdict(p) for p in points],
        "ratios": ratios,
        "targets": targets,
    }
    (out_dir / "results.json").write_text(json.dumps(result, indent=2))
    text = print_table(points, limit, server_info, ratios, targets)
    (out_dir / "report.txt").write_text(f"{argv}\n{started.isoformat(timespec='seconds')}  {machine()}\n"
                                        f"{result['versions']}\n{text}\n")
    plot(points, limit, out_dir / "results.png")
    shutil.rmtree(work, ignore_errors=True)
    typer.echo(f"wrote {out_dir / 'results.json'}, {out_dir / 'results.png'}, {out_dir / 'report.txt'}", err=True)


if __name__ == "__main__":
    app()
