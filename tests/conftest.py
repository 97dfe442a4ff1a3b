"""Shared fixtures for the service tests.

- ``ham_dir``: the HAM10000 dataset directory (env ``DERMSERVE_DATA_DIR``, default
  ``../shared/data/ham10000`` relative to the repository root). Missing -> skip, but FAIL when
  ``CI=true``. Images are read in place, never copied into the repo.
- ``model_dir``: the served model directory (env ``DERMSERVE_MODEL_DIR``, default
  ``models/default``), same skip/fail rule. The input size is always read from its manifest.
- ``test_images``: ``test_images(n, offset=0) -> list[Path]`` of real test-split JPEGs.
- ``runtime``: an in-process :class:`service.runtime.ModelRuntime` for reference answers.
- ``server_factory`` / ``live_server``: the real service started as a subprocess
  (``python -m service``) on 127.0.0.1 and a free port, waited on until ``/health/ready``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from benchmarks.processes import SERVICE_CMD, NotReady, free_port, service_env, start_process
from benchmarks.processes import wait_ready as wait_http_ready
from trainer.data import split_rows

REPO_ROOT = Path(__file__).resolve().parent.parent


def require(ok: bool, reason: str) -> None:
    """Skip the test when ``ok`` is False -- or fail it when running in CI (``CI=true``)."""
    if ok:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: missing prerequisites are failures, not skips)")
    pytest.skip(reason)


def _repo_relative(value: str) -> Path:
    p = Path(value).expanduser()
    return (p if p.is_absolute() else REPO_ROOT / p).resolve()


def run_module(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    """``python <args>`` from the repository root (TensorFlow quiet, no GPU); fails the test on a non-zero exit."""
    proc = subprocess.run([sys.executable, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout,
                          check=False, env=os.environ | {"TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def wait_job(client, job_id: str, timeout: float = 60.0, **kw) -> dict:
    """Poll ``GET /jobs/{job_id}`` with an ``httpx.Client`` until the job has finished; the last body."""
    deadline = time.monotonic() + timeout
    body: dict = {}
    while time.monotonic() < deadline:
        r = client.get(f"/jobs/{job_id}", **kw)
        assert r.status_code == 200, r.text
        body = r.json()
        if body["status"] in ("succeeded", "failed", "cancelled"):
            return body
        time.sleep(0.1)
    pytest.fail(f"job {job_id} did not finish within {timeout} s: {body}")


@pytest.fixture(scope="session")
def ham_dir() -> Path:
    """The HAM10000 directory holding ``labels.csv`` and ``images/``."""
    d = _repo_relative(os.environ.get("DERMSERVE_DATA_DIR", "../shared/data/ham10000"))
    require((d / "labels.csv").is_file(), f"HAM10000 dataset not found at {d} (set DERMSERVE_DATA_DIR)")
    return d


@pytest.fixture(scope="session")
def test_images(ham_dir: Path) -> Callable[..., list[Path]]:
    """``test_images(n, offset=0)``: ``n`` test-split image paths, sorted by image_id (deterministic)."""
    paths = [ham_dir / r["filename"] for r in split_rows(ham_dir, "test")]

    def pick(n: int, offset: int = 0) -> list[Path]:
        chosen = paths[offset: offset + n]
        require(len(chosen) == n and all(p.is_file() for p in chosen),
                f"need {n} test-split images from offset {offset} in {ham_dir}")
        return chosen

    return pick


@pytest.fixture(scope="session")
def model_dir() -> Path:
    """A servable model directory (manifest.json + ONNX file)."""
    d = _repo_relative(os.environ.get("DERMSERVE_MODEL_DIR", "models/default"))
    require((d / "manifest.json").is_file() and (d / "model.onnx").is_file(),
            f"no model directory at {d} (set DERMSERVE_MODEL_DIR or export a model to models/default)")
    return d


@pytest.fixture(scope="session")
def runtime(model_dir: Path):
    """In-process reference runtime on CPU, one intra-op thread (the machine is shared)."""
    from service.runtime import ModelRuntime

    return ModelRuntime(model_dir, ["CPUExecutionProvider"], intra_op_threads=1, inter_op_threads=1)


@dataclass
class ServerProcess:
    """A service subprocess. ``log()`` returns everything it wrote to stdout/stderr so far."""

    proc: subprocess.Popen
    port: int
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, wait, SIGKILL if needed; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def spawn_server(log_path: Path, env_overrides: dict[str, str], model_dir: Path) -> ServerProcess:
    """Start ``python -m service`` on 127.0.0.1:<free port> (without waiting)."""
    port = free_port()
    env = service_env(port, model_dir, log_path.parent / "jobs", {  # a job store per server, never the repo's .cache
        "DERMSERVE_PROVIDERS": '["CPUExecutionProvider"]',
        "DERMSERVE_INTRA_OP_THREADS": "1",
        "DERMSERVE_DECODE_THREADS": "2",
        "DERMSERVE_SHUTDOWN_GRACE_S": "5",
        **env_overrides,
    })
    return ServerProcess(start_process(SERVICE_CMD, env, log_path, REPO_ROOT), port, log_path, env)


def wait_ready(server: ServerProcess, timeout: float = 90.0) -> None:
    """Poll ``/health/ready`` until 200; fail with the server log if it exits or times out."""
    try:
        wait_http_ready(server.base_url + "/health/ready", server.proc, timeout, poll_s=0.1, request_timeout_s=2.0)
    except NotReady as exc:
        server.stop()
        pytest.fail(f"service not ready: {exc}:\n{server.log()}")


def exit_code_without_ready(server: ServerProcess, timeout: float = 90.0) -> int | None:
    """Poll until the server process exits, asserting ``/health/ready`` never answers 200 meanwhile.

    Returns:
        The exit code, or None if it still runs after ``timeout`` seconds.
    """
    import httpx

    deadline = time.monotonic() + timeout
    while server.proc.poll() is None and time.monotonic() < deadline:
        try:
            assert httpx.get(server.base_url + "/health/ready", timeout=1.0).status_code != 200
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    return server.proc.poll()


@pytest.fixture(scope="session")
def server_factory(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., ServerProcess]]:
    """``server_factory(env={...}, model_dir=None, wait=True) -> ServerProcess``; all stopped at session end."""
    started: list[ServerProcess] = []

    def make(env: dict[str, str] | None = None, model: Path | None = None, wait: bool = True) -> ServerProcess:
        log_path = tmp_path_factory.mktemp("server") / "server.log"
        server = spawn_server(log_path, env or {}, model or model_dir)
        started.append(server)
        if wait:
            wait_ready(server)
        return server

    yield make
    for s in started:
        s.stop()


#: Limits of the shared test server (small, so 413 tests need little data).
LIVE_MAX_IMAGES = 8
LIVE_MAX_UPLOAD_BYTES = 1_000_000


@pytest.fixture(scope="session")
def live_server(server_factory) -> ServerProcess:
    """The shared service under test: at most 8 images and 1 MB per request."""
    return server_factory(env={
        "DERMSERVE_MAX_IMAGES_PER_REQUEST": str(LIVE_MAX_IMAGES),
        "DERMSERVE_MAX_UPLOAD_BYTES": str(LIVE_MAX_UPLOAD_BYTES),
        "DERMSERVE_MAX_BATCH_SIZE": "8",
        "DERMSERVE_MAX_BATCH_DELAY_MS": "5",
    })
