"""Asynchronous jobs (``POST /jobs``, ``GET``/``DELETE /jobs/{id}``) against the real service
(``python -m service`` subprocesses), the job store alone, and a real PostgreSQL server that the
test starts itself (initdb + pg_ctl in a temp dir; skipped without the binaries, failed under CI).

Reference answers are the service's own ``POST /predict`` answers for the same images.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import os
import pwd
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import ServerProcess, free_port, require, wait_job, wait_ready

ATOL = 1e-5
FAST = {  # quick job polling for tests
    "DERMSERVE_JOB_POLL_INTERVAL_S": "0.2",
    "DERMSERVE_JOB_SWEEP_INTERVAL_S": "0.5",
}


# ------------------------------------------------------------------ helpers
def files(paths: list[Path]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("images", (p.name, p.read_bytes(), "image/jpeg")) for p in paths]


def submit(client: httpx.Client, paths: list[Path], reference: str | None = None, **kw) -> dict:
    data = {"reference": reference} if reference is not None else None
    r = client.post("/jobs", files=files(paths), data=data, **kw)
    assert r.status_code == 202, r.text
    body = r.json()
    assert r.headers["location"] == f"/jobs/{body['id']}"
    assert body["status"] == "queued" and body["total"] == len(paths)
    return body




def predict_probs(client: httpx.Client, paths: list[Path]) -> dict[str, dict[str, float]]:
    """``/predict`` probabilities per file name (the reference for job results)."""
    out: dict[str, dict[str, float]] = {}
    unique = list(dict.fromkeys(paths))
    for i in range(0, len(unique), 8):
        r = client.post("/predict", files=files(unique[i: i + 8]))
        assert r.status_code == 200, r.text
        for p in r.json()["predictions"]:
            out[p["id"]] = p["probabilities"]
    return out


def assert_results_equal_predict(body: dict, paths: list[Path], reference: dict[str, dict[str, float]]) -> None:
    assert body["status"] == "succeeded", body
    assert body["done"] == body["total"] == len(paths)
    results = body["results"]
    assert [r["index"] for r in results] == list(range(len(paths)))
    assert [r["id"] for r in results] == [p.name for p in paths]
    for r, p in zip(results, paths):
        codes = list(reference[p.name])
        assert list(r["probabilities"]) == codes
        np.testing.assert_allclose([r["probabilities"][c] for c in codes], [reference[p.name][c] for c in codes],
                                   atol=ATOL)
        assert r["label"] == max(reference[p.name], key=reference[p.name].get)


def db_rows(db: Path, sql: str, args: tuple = ()) -> list[tuple]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def jobs_db(server: ServerProcess) -> Path:
    return Path(server.env["DERMSERVE_JOBS_DIR"]) / "jobs.sqlite3"


# ------------------------------------------------------------------ one shared server with API keys
@pytest.fixture(scope="module")
def jobs_server(server_factory) -> ServerProcess:
    return server_factory(env={**FAST, "DERMSERVE_API_KEYS": '["k1", "k2"]', "DERMSERVE_MAX_IMAGES_PER_JOB": "12",
                               "DERMSERVE_JOB_CHUNK_IMAGES": "2", "DERMSERVE_JOB_MAX_INFLIGHT_CHUNKS": "1"})


@pytest.fixture()
def k1(jobs_server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=jobs_server.base_url, timeout=30, headers={"X-API-Key": "k1"}) as c:
        yield c


def test_multipart_job_results_equal_predict_and_images_are_deleted(jobs_server, k1, test_images):
    paths = test_images(10)
    receipt = submit(k1, paths, reference="study-118")
    assert receipt["reference"] == "study-118"
    body = wait_job(k1, receipt["id"])
    assert body["reference"] == "study-118"
    assert body["created_at"].endswith("Z") and body["finished_at"] >= body["created_at"]
    assert_results_equal_predict(body, paths, predict_probs(k1, paths))
    rows = db_rows(jobs_db(jobs_server), "SELECT data IS NULL, result IS NOT NULL, state, claim_count "
                   "FROM dermserve_job_items WHERE job_id = ?", (receipt["id"],))
    assert len(rows) == 10 and all(r == (1, 1, "done", 1) for r in rows), rows


def test_json_job_with_ids_keeps_order(k1, test_images):
    import base64

    paths = test_images(3, offset=20)
    images = [{"id": f"lesion-{i}", "data": base64.b64encode(p.read_bytes()).decode()} for i, p in enumerate(paths)]
    r = k1.post("/jobs", json={"images": images, "reference": "json-study"})
    assert r.status_code == 202, r.text
    body = wait_job(k1, r.json()["id"])
    assert body["status"] == "succeeded" and body["reference"] == "json-study"
    assert [x["id"] for x in body["results"]] == ["lesion-0", "lesion-1", "lesion-2"]
    ref = predict_probs(k1, paths)
    for x, p in zip(body["results"], paths):
        np.testing.assert_allclose(list(x["probabilities"].values()), list(ref[p.name].values()), atol=ATOL)


def test_bad_images_and_limits_are_refused_up_front(jobs_server, k1, test_images):
    paths = test_images(2)
    before = db_rows(jobs_db(jobs_server), "SELECT count(*) FROM dermserve_jobs")[0][0]
    r = k1.post("/jobs", files=[*files(paths), ("images", ("notes.txt", b"not an image", "text/plain"))])
    assert r.status_code == 422, r.text
    assert [(d["index"], d["id"], d["reason"]) for d in r.json()["detail"]] == [(2, "notes.txt", "not_an_image")]
    r = k1.post("/jobs", files=files(test_images(13)))
    assert r.status_code == 413, r.text
    r = k1.post("/jobs", json={"images": []})
    assert r.status_code == 422
    r = k1.post("/jobs", content=b"x", headers={"content-type": "text/plain"})
    assert r.status_code == 415
    assert db_rows(jobs_db(jobs_server), "SELECT count(*) FROM dermserve_jobs")[0][0] == before, "nothing stored"


def test_only_the_submitting_key_sees_its_job(jobs_server, k1, test_images):
    receipt = submit(k1, test_images(2))
    job = f"/jobs/{receipt['id']}"
    with httpx.Client(base_url=jobs_server.base_url, timeout=30) as anon:
        assert anon.get(job).status_code == 401
        assert anon.get(job, headers={"X-API-Key": "k2"}).status_code == 404
        assert anon.delete(job, headers={"Authorization": "Bearer k2"}).status_code == 404
        assert anon.get(job, headers={"Authorization": "Bearer k1"}).status_code == 200
    wait_job(k1, receipt["id"])
    (stored,) = db_rows(jobs_db(jobs_server), "SELECT key_hash FROM dermserve_jobs WHERE id = ?", (receipt["id"],))
    assert stored[0] == hashlib.sha256(b"k1").hexdigest()


def test_cancel_unfinished_job_then_409_and_unknown_404(jobs_server, k1, test_images):
    paths = test_images(12)  # chunks of 2, one in flight: several DB round trips, cancelled long before the end
    receipt = submit(k1, paths)
    r = k1.delete(f"/jobs/{receipt['id']}")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "cancelled" and body["done"] < body["total"] and body["finished_at"]
    assert "results" not in body
    assert k1.delete(f"/jobs/{receipt['id']}").status_code == 409
    assert k1.get(f"/jobs/{receipt['id']}").json()["status"] == "cancelled"
    assert k1.get("/jobs/0123456789abcdef0123456789abcdef").status_code == 404
    assert k1.delete("/jobs/0123456789abcdef0123456789abcdef").status_code == 404
    time.sleep(0.5)  # a chunk that was in the batcher must not bring images or results back
    assert db_rows(jobs_db(jobs_server), "SELECT count(*) FROM dermserve_job_items WHERE job_id = ?",
                   (receipt["id"],)) == [(0,)]
    assert k1.get(f"/jobs/{receipt['id']}").json()["status"] == "cancelled"


def test_job_metrics(jobs_server, k1, test_images):
    wait_job(k1, submit(k1, test_images(1))["id"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        text = k1.get("/metrics").text
        succeeded = [float(line.split()[-1]) for line in text.splitlines()
                     if line.startswith('dermserve_jobs{status="succeeded"}')]
        if succeeded and succeeded[0] >= 1:
            break
        time.sleep(0.2)
    assert succeeded and succeeded[0] >= 1, text
    assert "dermserve_job_queue_age_seconds 0.0" in text


def test_openapi_documents_jobs(k1):
    spec = k1.get("/openapi.json").json()
    post = spec["paths"]["/jobs"]["post"]
    assert post["operationId"] == "create_job" and "202" in post["responses"]
    assert set(post["requestBody"]["content"]) == {"multipart/form-data", "application/json"}
    assert spec["paths"]["/jobs/{job_id}"]["get"]["operationId"] == "get_job"
    delete = spec["paths"]["/jobs/{job_id}"]["delete"]
    assert delete["operationId"] == "cancel_job" and {"404", "409"} <= set(delete["responses"])
    status = spec["components"]["schemas"]["JobStatus"]
    assert status["properties"]["results"]["anyOf"][0]["items"]["$ref"].endswith("/Prediction")


# ------------------------------------------------------------------ retention
def test_finished_jobs_expire_after_retention(server_factory, test_images):
    server = server_factory(env={**FAST, "DERMSERVE_JOB_RETENTION_S": "1.5", "DERMSERVE_JOB_SWEEP_INTERVAL_S": "0.3"})
    with httpx.Client(base_url=server.base_url, timeout=30) as c:
        receipt = submit(c, test_images(2))
        assert wait_job(c, receipt["id"])["status"] == "succeeded"
        deadline = time.monotonic() + 15
        while c.get(f"/jobs/{receipt['id']}").status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert c.get(f"/jobs/{receipt['id']}").status_code == 404
    assert db_rows(jobs_db(server), "SELECT count(*) FROM dermserve_job_items") == [(0,)]
    assert db_rows(jobs_db(server), "SELECT count(*) FROM dermserve_jobs") == [(0,)]


# ------------------------------------------------------------------ crash in the middle of a job
def test_sigkill_mid_job_then_restart_completes_every_image(server_factory, test_images, tmp_path):
    env = {**FAST, "DERMSERVE_JOBS_DIR": str(tmp_path / "jobs"), "DERMSERVE_JOB_CHUNK_IMAGES": "1",
           "DERMSERVE_JOB_MAX_INFLIGHT_CHUNKS": "1", "DERMSERVE_MAX_IMAGES_PER_JOB": "2000"}
    paths = test_images(40) * 2  # 80 images, one per chunk: long enough to kill in the middle
    first = server_factory(env=env)
    with httpx.Client(base_url=first.base_url, timeout=30) as c:
        receipt = submit(c, paths)
        deadline = time.monotonic() + 30
        while (done := c.get(f"/jobs/{receipt['id']}").json()["done"]) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(10)
    assert 3 <= done < len(paths), f"the job must be killed in the middle (done={done})"
    (status,) = db_rows(tmp_path / "jobs" / "jobs.sqlite3", "SELECT status FROM dermserve_jobs")
    assert status == ("running",)

    second = server_factory(env=env)
    with httpx.Client(base_url=second.base_url, timeout=30) as c:
        body = wait_job(c, receipt["id"], timeout=90)
        assert_results_equal_predict(body, paths, predict_probs(c, paths))
    assert "requeued 1 unfinished jobs" in second.log()
    rows = db_rows(jobs_db(second), "SELECT data IS NULL, state FROM dermserve_job_items")
    assert len(rows) == len(paths) and set(rows) == {(1, "done")}


# ------------------------------------------------------------------ the store alone
def test_jobs_have_their_own_body_limit(server_factory, test_images):
    """A study is bigger than one /predict call: /jobs has its own byte limit (max_job_upload_bytes),
    /predict keeps max_upload_bytes; both answer 413 with a JSON body beyond their limit."""
    paths = test_images(6)
    body_bytes = sum(p.stat().st_size for p in paths)
    server = server_factory(env={**FAST, "DERMSERVE_MAX_UPLOAD_BYTES": str(body_bytes // 2),
                                 "DERMSERVE_MAX_JOB_UPLOAD_BYTES": str(body_bytes * 4)})
    with httpx.Client(base_url=server.base_url, timeout=30) as c:
        r = c.post("/predict", files=files(paths))
        assert r.status_code == 413 and "limit" in r.json()["error"], r.text
        receipt = c.post("/jobs", files=files(paths))
        assert receipt.status_code == 202, receipt.text
        assert wait_job(c, receipt.json()["id"])["status"] == "succeeded"
        r = c.post("/jobs", files=files(paths * 5))
        assert r.status_code == 413, r.text
        # JSON jobs keep the /predict limit (base64 is parsed whole in memory)
        import base64
        r = c.post("/jobs", json={"images": [{"data": base64.b64encode(p.read_bytes()).decode()} for p in paths]})
        assert r.status_code == 413 and "multipart" in r.json()["error"], r.text


def test_body_limit_per_path_ignores_trailing_slash_and_proxy_prefix():
    """The /jobs limit applies to /jobs/, and to /api/jobs behind a proxy with root_path /api."""
    import asyncio

    from service.middleware import BodySizeLimitMiddleware

    async def call(path: str, root: str, size: int) -> int:
        status = {}

        async def app(scope, receive, send):
            status["code"] = 200

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]

        mw = BodySizeLimitMiddleware(app, max_bytes=100, path_limits={"/jobs": 10_000})
        scope = {"type": "http", "method": "POST", "path": path, "root_path": root,
                 "headers": [(b"content-length", str(size).encode())]}
        await mw(scope, receive, send)
        return status["code"]

    assert asyncio.run(call("/jobs", "", 5_000)) == 200
    assert asyncio.run(call("/jobs/", "", 5_000)) == 200
    assert asyncio.run(call("/api/jobs", "/api", 5_000)) == 200
    assert asyncio.run(call("/predict", "", 5_000)) == 413
    assert asyncio.run(call("/jobs", "", 20_000)) == 413


def test_attempts_are_counted_only_for_failures(tmp_path):
    """release(count_attempt=False) (shutdown, full queue) undoes the claim's attempt; True keeps it."""
    from service.jobs.store import JobStore, sqlite_url

    store = JobStore(sqlite_url(tmp_path))
    store.create("k" * 32, None, None, [("a", b"1")])
    assert [c.attempts for c in store.claim("w", 1, lease_s=30)] == [1]
    store.release("w", [("k" * 32, 0)])
    assert [c.attempts for c in store.claim("w", 1, lease_s=30)] == [1]
    store.release("w", [("k" * 32, 0)], count_attempt=True)
    assert [c.attempts for c in store.claim("w", 1, lease_s=30)] == [2]
    store.close()


def test_failing_model_calls_are_retried_then_fail_the_job(tmp_path, model_dir):
    """The runner puts a chunk back when the model call fails and fails the job only after
    max_attempts claims; a transient failure (first call only) still completes the job."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor
    from io import BytesIO

    from PIL import Image

    from service.answers import AnswerShaper, ReferralRule
    from service.batching import BatchPolicy, DynamicBatcher, QueueLimits
    from service.decoder import ImageDecoder
    from service.jobs.runner import JobRunner
    from service.jobs.store import JobStore, sqlite_url
    from service.preprocessing import PreprocessSpec
    from service.runtime import load_manifest
    from service.settings import JobSettings

    buf = BytesIO()
    Image.new("RGB", (40, 30), (120, 80, 60)).save(buf, "JPEG")

    def scenario(fail_calls: int) -> tuple[str, int]:
        calls = {"n": 0}

        def model(batch):
            calls["n"] += 1
            if calls["n"] <= fail_calls:
                raise RuntimeError("simulated device error")
            return np.full((len(batch), 7), 1 / 7, np.float32)

        async def body() -> str:
            store = JobStore(sqlite_url(tmp_path / f"f{fail_calls}"))
            batcher = DynamicBatcher(model, BatchPolicy(max_batch_size=4), QueueLimits(max_background_images=8))
            batcher.start()
            with ThreadPoolExecutor(1) as pool:
                manifest = load_manifest(model_dir)
                answers = AnswerShaper(manifest, ReferralRule.resolve(manifest), "CPUExecutionProvider")
                decoder = ImageDecoder(PreprocessSpec(height=16, width=16), pool, batcher.traffic, yield_wait_s=0.05)
                runner = JobRunner(store, decoder, batcher, answers,
                                   JobSettings(chunk_images=2, poll_interval_s=0.02, max_attempts=3))
                store.create("j" * 32, None, None, [("a", buf.getvalue()), ("b", buf.getvalue())])
                await runner.start()
                for _ in range(500):
                    view = store.get("j" * 32, None)
                    if view.status in ("succeeded", "failed"):
                        break
                    await asyncio.sleep(0.02)
                await runner.stop()
                await batcher.close(5)
            store.close()
            return view.status

        return asyncio.run(body()), calls["n"]

    assert scenario(fail_calls=1) == ("succeeded", 2)
    status, calls = scenario(fail_calls=100)
    assert status == "failed" and calls == 3, (status, calls)


def test_store_discards_a_result_whose_claim_was_lost(tmp_path):
    from service.jobs.store import JobStore, sqlite_url

    store = JobStore(sqlite_url(tmp_path))
    store.create("j" * 32, None, None, [("a", b"1"), ("b", b"2")])
    slow = store.claim("slow-worker", 2, lease_s=0.2)
    assert [c.idx for c in slow] == [0, 1]
    assert store.claim("other", 2, lease_s=30) == []  # claims are exclusive while the lease lasts
    time.sleep(0.3)
    fast = store.claim("other", 2, lease_s=30)  # the lease expired: re-claimable
    assert [c.idx for c in fast] == [0, 1]
    assert store.complete("slow-worker", [("j" * 32, 0, '{"x": 0}')], "m", "1") == 0  # lost its claim
    assert store.complete("other", [("j" * 32, i, f'{{"x": {i}}}') for i in (0, 1)], "m", "1") == 2
    view = store.get("j" * 32, None)
    assert view.status == "succeeded" and view.results == ['{"x": 0}', '{"x": 1}']
    assert store.sweep(retention_s=3600) == 0 and store.sweep(retention_s=0) == 1
    store.close()


# ------------------------------------------------------------------ PostgreSQL: two replicas, one queue
@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A throw-away PostgreSQL server (unix socket only) in a temp dir; its SQLAlchemy URL."""
    require(importlib.util.find_spec("psycopg") is not None, "psycopg is not installed (pip install -e '.[test]')")
    initdbs = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    require(bool(initdbs), "PostgreSQL server binaries not found in /usr/lib/postgresql/*/bin "
                           "(apt-get install postgresql; see .ci/install-system-deps.sh)")
    bindir = Path(initdbs[-1]).parent
    root = Path(tempfile.mkdtemp(prefix="dermserve-pg-"))
    prefix: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        user = "postgres"
        try:
            pw = pwd.getpwnam(user)
        except KeyError:
            user, pw = "nobody", pwd.getpwnam("nobody")
        os.chown(root, pw.pw_uid, pw.pw_gid)
        prefix = ["runuser", "-u", user, "--"]
    data, port = root / "data", free_port()
    subprocess.run([*prefix, str(bindir / "initdb"), "-D", str(data), "-U", "dermserve", "--auth=trust",
                    "-E", "UTF8", "--no-sync"], check=True, capture_output=True)
    subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "pg.log"), "-w", "-t", "60",
                    "-o", f"-p {port} -k {root} -c listen_addresses='' -c fsync=off", "start"],
                   check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg://dermserve@/postgres?host={root}&port={port}"
    finally:
        subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def test_two_replicas_share_one_postgres_queue_exactly_once(server_factory, postgres_url, test_images):
    from service.jobs.store import JobStore

    env = {**FAST, "DERMSERVE_JOBS_DATABASE_URL": postgres_url, "DERMSERVE_JOB_CHUNK_IMAGES": "2",
           "DERMSERVE_JOB_LEASE_S": "3"}
    a, b = server_factory(env=env, wait=False), server_factory(env=env, wait=False)
    wait_ready(a)
    wait_ready(b)
    paths = test_images(30)
    store = JobStore(postgres_url)
    try:
        # a replica that died holding a claim: its images come back after the lease (3 s)
        store.create("d" * 32, None, "dead-replica", [(p.name, p.read_bytes()) for p in paths[:6]])
        dead = store.claim("dead-replica", 2, lease_s=3)
        assert len(dead) == 2
        with httpx.Client(base_url=a.base_url, timeout=30) as ca, httpx.Client(base_url=b.base_url, timeout=30) as cb:
            jobs = [submit(c, paths, reference=f"r{i}")["id"] for i, c in enumerate([ca, cb, ca, cb])]
            bodies = [wait_job(ca if i % 2 else cb, j) for i, j in enumerate(jobs)]  # read through the other one
            dead_body = wait_job(ca, "d" * 32)
            ref = predict_probs(ca, paths)
        for body in bodies:
            assert_results_equal_predict(body, paths, ref)
        assert_results_equal_predict(dead_body, paths[:6], ref)
        from sqlalchemy import select

        from service.jobs.store import JobItemRow
        with store.engine.connect() as con:
            rows = con.execute(select(JobItemRow.job_id, JobItemRow.idx, JobItemRow.claim_count,
                                      JobItemRow.computed_by, JobItemRow.data)).all()
        live = [r for r in rows if r.job_id in jobs]
        assert len(live) == 4 * len(paths)
        assert all(r.claim_count == 1 and r.computed_by and r.data is None for r in live), "each image computed once"
        workers = {r.computed_by for r in live}
        assert len(workers) == 2, f"both replicas should have taken part: {workers}"
        reclaimed = {r.idx: r for r in rows if r.job_id == "d" * 32}
        assert all(reclaimed[c.idx].claim_count == 2 and reclaimed[c.idx].computed_by in workers for c in dead)
    finally:
        store.close()
