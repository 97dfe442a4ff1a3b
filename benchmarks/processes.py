"""Processes for benchmarks and tests: free ports, a server started and waited for until ready, and
CPU / memory of a process tree from /proc. Standard library only (no httpx, no typer)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

#: ``python -m service`` with this interpreter (run it with ``cwd`` = the checkout to serve).
SERVICE_CMD = [sys.executable, "-m", "service"]


class NotReady(RuntimeError):
    """The process exited, or did not answer 200 on its readiness URL in time (the message says which)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def service_env(port: int, model_dir: Path, jobs_dir: Path, overrides: Mapping[str, str] | None = None,
                base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for ``python -m service`` on 127.0.0.1:``port``: ``base`` (default ``os.environ``)
    without any ``DERMSERVE_*``, plus host, port, model directory, an own job store in ``jobs_dir``
    (never the repository's ``.cache``) and ``overrides``."""
    env = {k: v for k, v in (os.environ if base is None else base).items() if not k.startswith("DERMSERVE_")}
    env.update({"DERMSERVE_HOST": "127.0.0.1", "DERMSERVE_PORT": str(port), "DERMSERVE_MODEL_DIR": str(model_dir),
                "DERMSERVE_JOBS_DIR": str(jobs_dir), "PYTHONUNBUFFERED": "1"})
    env.update(overrides or {})
    return env


def start_process(cmd: list[str], env: Mapping[str, str], log_path: Path, cwd: Path,
                  new_session: bool = False) -> subprocess.Popen:
    """Start ``cmd`` with stdout and stderr going to ``log_path`` (``new_session``: its own process group)."""
    with open(log_path, "wb") as fh:
        return subprocess.Popen(cmd, cwd=cwd, env=dict(env), stdout=fh, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=new_session)


def http_ok(url: str, timeout: float = 1.0) -> bool:
    """True when ``GET url`` answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def wait_ready(url: str, proc: subprocess.Popen, timeout_s: float, poll_s: float = 0.02,
               request_timeout_s: float = 0.5) -> float:
    """Poll ``url`` until it answers 200; returns the seconds waited.

    Raises:
        NotReady: ``proc`` exited first, or ``timeout_s`` passed.
    """
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout_s:
        if proc.poll() is not None:
            raise NotReady(f"the process exited with {proc.returncode} before becoming ready")
        if http_ok(url, timeout=request_timeout_s):
            return time.perf_counter() - t0
        time.sleep(poll_s)
    raise NotReady(f"not ready after {timeout_s} s")


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


def status_mb(pid: int | str, key: str = "VmRSS") -> float:
    """One memory field of ``/proc/<pid>/status`` (``VmRSS``: resident now, ``VmHWM``: its peak) in MiB.

    Raises:
        OSError: no such process (or not Linux).
        KeyError: the field is missing.
    """
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0
    raise KeyError(key)


def tree_rss_mb(pid: int) -> float:
    """Resident memory (MiB, reported as MB) of ``pid`` and all its descendants, from /proc."""
    total = 0.0
    for p in tree_pids(pid):
        try:
            total += status_mb(p)
        except (OSError, KeyError):
            continue
    return total
