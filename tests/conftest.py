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

import csv
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

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


@pytest.fixture(scope="session")
def ham_dir() -> Path:
    """The HAM10000 directory holding ``labels.csv`` and ``images/``."""
    d = _repo_relative(os.environ.get("DERMSERVE_DATA_DIR", "../shared/data/ham10000"))
    require((d / "labels.csv").is_file(), f"HAM10000 dataset not found at {d} (set DERMSERVE_DATA_DIR)")
    return d


@pytest.fixture(scope="session")
def test_images(ham_dir: Path) -> Callable[..., list[Path]]:
    """``test_images(n, offset=0)``: ``n`` test-split image paths, sorted by image_id (deterministic)."""
    with open(ham_dir / "labels.csv", newline="") as fh:
        rows = sorted((r for r in csv.DictReader(fh) if r["split"] == "test"), key=lambda r: r["image_id"])
    paths = [ham_dir / r["filename"] for r in rows]

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


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    env = {k: v for k, v in os.environ.items() if not k.startswith("DERMSERVE_")}
    env.update({
        "DERMSERVE_HOST": "127.0.0.1",
        "DERMSERVE_PORT": str(port),
        "DERMSERVE_MODEL_DIR": str(model_dir),
        "DERMSERVE_PROVIDERS": '["CPUExecutionProvider"]',
        "DERMSERVE_INTRA_OP_THREADS": "1",
        "DERMSERVE_DECODE_THREADS": "2",
        "DERMSERVE_SHUTDOWN_GRACE_S": "5",
        "DERMSERVE_JOBS_DIR": str(log_path.parent / "jobs"),  # a job store per server, never the repo's .cache
        "PYTHONUNBUFFERED": "1",
    })
    env.update(env_overrides)
    fh = open(log_path, "wb")
    proc = subprocess.Popen([sys.executable, "-m", "service"], cwd=REPO_ROOT, env=env, stdout=fh,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    fh.close()
    return ServerProcess(proc, port, log_path, env)


def wait_ready(server: ServerProcess, timeout: float = 90.0) -> None:
    """Poll ``/health/ready`` until 200; fail with the server log if it exits or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            pytest.fail(f"server exited with {server.proc.returncode} before becoming ready:\n{server.log()}")
        try:
            if httpx.get(server.base_url + "/health/ready", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    server.stop()
    pytest.fail(f"server not ready after {timeout} s:\n{server.log()}")


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
