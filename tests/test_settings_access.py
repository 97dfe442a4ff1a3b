"""Access and configuration: list settings from the environment, thread defaults, the open-bind
warning, and startup refusal on bad settings (without echoing secrets)."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys

import httpx
import pytest
from conftest import REPO_ROOT
from test_api import assert_error, multipart

from service.settings import Settings


def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in list(os.environ):
        if k.startswith("DERMSERVE_"):
            monkeypatch.delenv(k)


@pytest.mark.parametrize(("raw", "keys"), [
    ("k1", ["k1"]),
    (" k1 , k2,", ["k1", "k2"]),
    ('["k1", "k2"]', ["k1", "k2"]),
    ('["a,b"]', ["a,b"]),  # a key holding a comma needs the JSON form
    ("", []),
])
def test_api_keys_from_env_comma_separated_or_json(monkeypatch, raw, keys):
    _clean_env(monkeypatch)
    monkeypatch.setenv("DERMSERVE_API_KEYS", raw)
    s = Settings(_env_file=None)
    assert [k.get_secret_value() for k in s.access.api_keys] == keys
    assert all(k not in repr(s) for k in keys)  # SecretStr: never printed


def test_cors_origins_from_env_comma_separated(monkeypatch):
    _clean_env(monkeypatch)
    monkeypatch.setenv("DERMSERVE_CORS_ORIGINS", "http://a.example, http://b.example")
    assert Settings(_env_file=None).access.cors_origins == ["http://a.example", "http://b.example"]
    monkeypatch.delenv("DERMSERVE_CORS_ORIGINS")
    assert Settings(_env_file=None).access.cors_origins == []  # CORS off unless configured


def test_bad_settings_refuse_startup_without_echoing_secrets():
    env = {k: v for k, v in os.environ.items() if not k.startswith("DERMSERVE_")}
    env["DERMSERVE_API_KEYS"] = '["s3cr3t-key'  # broken JSON
    p = subprocess.run([sys.executable, "-m", "service"], cwd=REPO_ROOT, env=env, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 2, p.stderr
    assert "api_keys" in p.stderr and "Traceback" not in p.stderr
    assert "s3cr3t" not in p.stderr + p.stdout


def test_thread_defaults_follow_cpu_affinity_not_host_cores(monkeypatch):
    _clean_env(monkeypatch)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {2, 3})
    s = Settings(_env_file=None)
    assert (s.runtime.intra_op_threads, s.decode.threads) == (2, 2)
    monkeypatch.setenv("DERMSERVE_INTRA_OP_THREADS", "1")
    assert Settings(_env_file=None).runtime.intra_op_threads == 1  # explicit settings still win


@pytest.mark.parametrize(("host", "keys", "warned"), [
    ("0.0.0.0", [], True),
    ("::", [], True),
    ("0.0.0.0", ["k1"], False),
    ("127.0.0.1", [], False),
    ("localhost", [], False),
])
def test_warns_when_open_without_api_keys(model_dir, caplog, host, keys, warned):
    """Checked in the lifespan (no socket is bound here)."""
    from service.app import create_app

    app = create_app(Settings(model_dir=model_dir, host=host, api_keys=keys, providers=["CPUExecutionProvider"],
                              intra_op_threads=1, decode_threads=1, _env_file=None))

    async def run_lifespan():
        async with app.router.lifespan_context(app):
            pass

    with caplog.at_level(logging.WARNING, logger="dermserve"):
        asyncio.run(run_lifespan())
    hits = [r for r in caplog.records if "without api_keys" in r.getMessage()]
    assert bool(hits) is warned, [r.getMessage() for r in caplog.records]
    if warned:
        assert hits[0].levelno == logging.WARNING and host in hits[0].getMessage()


def test_live_server_with_comma_separated_keys(server_factory, test_images):
    server = server_factory(env={"DERMSERVE_API_KEYS": "k1,k2"})
    files = multipart(test_images(1))
    with httpx.Client(base_url=server.base_url, timeout=30.0) as c:
        assert_error(c.post("/predict", files=files), 401)
        assert_error(c.post("/predict", files=files, headers={"X-API-Key": "k1,k2"}), 401)
        for key in ("k1", "k2"):
            assert c.post("/predict", files=files, headers={"Authorization": f"Bearer {key}"}).status_code == 200
    assert "k1" not in server.log() and "k2" not in server.log()


def test_failed_start_up_stops_what_it_started(model_dir, tmp_path, caplog):
    """The job store cannot be opened after the batcher and decode pool have started: the lifespan
    must raise *and* leave no dermserve thread running (they are registered for clean-up as created)."""
    import threading

    from service.app import create_app

    bad_url = f"sqlite:///{tmp_path}/no/such/dir/jobs.db"
    app = create_app(Settings(model_dir=model_dir, providers=["CPUExecutionProvider"], intra_op_threads=1,
                              decode_threads=1, jobs_database_url=bad_url, _env_file=None))

    async def run_lifespan() -> bool:
        with pytest.raises(Exception):
            async with app.router.lifespan_context(app):
                pass
        # checked inside the loop: asyncio.run() would cancel a leaked batcher task on its way out anyway
        batcher = app.state.dermserve.batcher
        return batcher is not None and batcher.running

    before = {t.ident for t in threading.enumerate()}
    with caplog.at_level(logging.CRITICAL, logger="dermserve"):
        still_running = asyncio.run(run_lifespan())
    assert not still_running, "the batcher started before the failure is still running"
    assert any("job store cannot be opened" in r.getMessage() for r in caplog.records)
    for t in [t for t in threading.enumerate() if t.ident not in before and t.name.startswith("dermserve-")]:
        t.join(timeout=10.0)  # a pool thread exits once it sees the shutdown; bounded wait, not a timing check
    left = [t.name for t in threading.enumerate() if t.ident not in before and t.name.startswith("dermserve-")]
    assert left == [], left
