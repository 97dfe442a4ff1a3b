"""The systems under test: dermserve (also with variant settings or from another checkout), the naive
server and Seldon MLServer, each a subprocess bound to 127.0.0.1; and the check of their answers."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import typer

from benchmarks import BENCH_DIR, REPO_ROOT
from benchmarks.bodies import oip_request
from benchmarks.processes import (
    SERVICE_CMD,
    NotReady,
    free_port,
    service_env,
    start_process,
    tree_rss_mb,
    wait_ready,
)

MLSERVER_VENV = REPO_ROOT / ".bench-venvs" / "mlserver"
MLSERVER_SPEC = "mlserver==1.7.*"


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
    #: the model directory it serves (its answers are checked against this model in-process)
    model_dir: Path | None = None
    proc: subprocess.Popen | None = None
    cold_start_s: float | None = None
    rss_rest_mb: float | None = None
    rss_load_mb: float = 0.0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120.0) -> None:
        """Start it in its own session; record the cold start (process start -> first ready 200) and RSS."""
        t0 = time.perf_counter()
        self.proc = start_process(self.cmd, self.env, self.log_path, self.cwd, new_session=True)
        try:
            wait_ready(self.base + self.ready_path, self.proc, timeout)
        except NotReady as exc:
            self.stop()
            log = self.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{self.name}: {exc}; log:\n{log}") from None
        self.cold_start_s = time.perf_counter() - t0
        time.sleep(1.0)
        self.rss_rest_mb = tree_rss_mb(self.proc.pid)

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
                 checkouts: dict[str, Path] | None = None, checkout_model: str = "same") -> list[Server]:
    """The HTTP systems, not started. Each serves ``model_dir`` except a variant that sets
    ``DERMSERVE_MODEL_DIR`` (that directory) and, with ``checkout_model="own"``, a checkout (its own
    ``models/default``; see :func:`benchmarks.models.checkout_model_dir`)."""
    from benchmarks.models import checkout_model_dir

    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("DERMSERVE_", "MLSERVER_"))}
    base_env["PYTHONUNBUFFERED"] = "1"
    servers: list[Server] = []
    ds_names = [s for s in systems if s == "dermserve"] + [f"dermserve[{v}]" for v in variants]
    for name in ds_names:
        port = free_port()
        extra = variants[name[len("dermserve["):-1]] if name != "dermserve" else {}
        env = service_env(port, model_dir, log_dir / f"jobs-{name}", extra, base=base_env)
        servers.append(Server(name, "dermserve", SERVICE_CMD, env, port, "/health/ready", "/predict", "multipart",
                              log_dir / f"{name}.log", model_dir=Path(env["DERMSERVE_MODEL_DIR"])))
    for name, path in (checkouts or {}).items():  # dermserve from another checkout (e.g. before a change)
        port = free_port()
        served = checkout_model_dir(path.resolve(), checkout_model, model_dir)
        env = service_env(port, served, log_dir / f"jobs-at-{name}", base=base_env)
        servers.append(Server(f"dermserve@{name}", "dermserve", SERVICE_CMD, env, port, "/health/ready", "/predict",
                              "multipart", log_dir / f"dermserve@{name}.log", cwd=path.resolve(), model_dir=served))
    if "naive" in systems:
        port = free_port()
        servers.append(Server("naive", "naive", [sys.executable, "-m", "benchmarks.naive_server", "--model-dir",
                                                 str(model_dir), "--port", str(port)], dict(base_env), port,
                              "/health/ready", "/predict", "multipart", log_dir / "naive.log", model_dir=model_dir))
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
                              log_dir / "mlserver.log", cwd=log_dir,  # its files stay out of the repo
                              model_dir=model_dir))
    return servers


# ------------------------------------------------------------------------------------ correctness
def check_answers(server: Server, images: list[tuple[str, bytes]], runtime, codes: list[str]) -> float:
    """POST two images with httpx; return the max |p - p_ref| against ``runtime``, the in-process
    :class:`service.runtime.ModelRuntime` of the model ``server`` serves (``server.model_dir``)."""
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
        raise RuntimeError(f"{server.name} answers differ from the in-process runtime of {runtime.model_dir} "
                           f"by {diff:.4g}")
    return diff
