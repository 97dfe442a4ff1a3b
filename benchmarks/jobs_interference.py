"""How much does a running asynchronous job slow ``POST /predict``? (a CLI, not a test)

Starts the real service (``python -m service`` on 127.0.0.1, a throw-away job store), then runs
``--requests`` sequential single-image ``/predict`` requests (with ``--think-ms`` between them)
three times: without a job, with a ``--job-images`` job always running (a new one is submitted
as soon as the previous finishes), and without a job again (drift check). Prints p50/p99 of
each and the with/without ratios, and the job throughput.

    .venv/bin/python -m benchmarks.jobs_interference --requests 300 --job-images 500

Run it on a quiet machine (nothing else training): ``pgrep -f "python -m trainer"`` must be empty.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

if __package__ in (None, ""):  # run as a script (python benchmarks/jobs_interference.py): import from the repo
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import REPO_ROOT as REPO
from benchmarks.processes import SERVICE_CMD, NotReady, free_port, service_env, start_process, wait_ready
from trainer.data import split_rows


def pick_images(data_dir: Path, n: int) -> list[Path]:
    return [data_dir / r["filename"] for r in split_rows(data_dir, "test")[:n]]


def percentiles(xs: list[float]) -> tuple[float, float]:
    a = np.asarray(xs) * 1000.0
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def run_predicts(client: httpx.Client, images: list[tuple[str, bytes]], n: int, think_s: float) -> list[float]:
    out = []
    for i in range(n):
        name, data = images[i % len(images)]
        t0 = time.perf_counter()
        r = client.post("/predict", files=[("images", (name, data, "image/jpeg"))])
        out.append(time.perf_counter() - t0)
        r.raise_for_status()
        time.sleep(think_s)
    return out


class JobFeeder(threading.Thread):
    """Keeps one ``job_images``-image job running until stopped; counts finished images."""

    def __init__(self, base_url: str, images: list[tuple[str, bytes]], job_images: int) -> None:
        super().__init__(daemon=True)
        self.client = httpx.Client(base_url=base_url, timeout=120)
        self.files = [("images", (name, data, "image/jpeg"))
                      for name, data in (images[i % len(images)] for i in range(job_images))]
        self.stop_flag = threading.Event()
        self.images_done = 0
        self.jobs_done = 0
        self.current_done = 0  # images done of the job now running (from its last poll)
        self.running = threading.Event()

    def progress(self) -> int:
        """Job images computed so far (finished jobs plus the running job's ``done``)."""
        return self.images_done + self.current_done

    def run(self) -> None:
        while not self.stop_flag.is_set():
            r = self.client.post("/jobs", files=self.files)
            r.raise_for_status()
            job = r.json()["id"]
            self.running.set()
            while not self.stop_flag.is_set():
                body = self.client.get(f"/jobs/{job}").json()
                self.current_done = body["done"]
                if body["status"] == "succeeded":
                    self.images_done += body["total"]
                    self.jobs_done += 1
                    self.current_done = 0
                    break
                time.sleep(0.2)
            else:
                self.client.delete(f"/jobs/{job}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=300, help="/predict requests per phase")
    ap.add_argument("--job-images", type=int, default=500, help="images per background job")
    ap.add_argument("--think-ms", type=float, default=10.0, help="pause between /predict requests (ms)")
    ap.add_argument("--model-dir", type=Path, default=REPO / "models" / "default")
    ap.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data" / "ham10000")
    ap.add_argument("--intra-op-threads", type=int, default=None, help="DERMSERVE_INTRA_OP_THREADS (default: "
                    "the service's own default)")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                    help="extra DERMSERVE_* setting for the server, e.g. --env JOB_YIELD_MAX_WAIT_MS=20 (repeatable)")
    args = ap.parse_args()

    paths = pick_images(args.data_dir, 64)
    images = [(p.name, p.read_bytes()) for p in paths]
    port = free_port()
    tmp = Path(tempfile.mkdtemp(prefix="dermserve-jobbench-"))
    overrides = {"DERMSERVE_PROVIDERS": '["CPUExecutionProvider"]', "DERMSERVE_DECODE_THREADS": "2",
                 "DERMSERVE_MAX_UPLOAD_BYTES": str(512 * 1024 * 1024), "DERMSERVE_LOG_LEVEL": "warning"}
    if args.intra_op_threads is not None:
        overrides["DERMSERVE_INTRA_OP_THREADS"] = str(args.intra_op_threads)
    for kv in args.env:
        name, _, value = kv.partition("=")
        overrides["DERMSERVE_" + name.upper().removeprefix("DERMSERVE_")] = value
    env = service_env(port, args.model_dir, tmp / "jobs", overrides)
    proc = start_process(SERVICE_CMD, env, tmp / "server.log", REPO)
    base = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_ready(base + "/health/ready", proc, 90, poll_s=0.2, request_timeout_s=2)
        except NotReady:
            print((tmp / "server.log").read_text(), file=sys.stderr)
            return 1
        think = args.think_ms / 1000.0
        with httpx.Client(base_url=base, timeout=60) as c:
            run_predicts(c, images, 30, think)  # warm-up
            without = run_predicts(c, images, args.requests, think)
            feeder = JobFeeder(base, images, args.job_images)
            feeder.start()
            feeder.running.wait(120)
            t0, done0 = time.perf_counter(), feeder.progress()
            with_job = run_predicts(c, images, args.requests, think)
            elapsed, job_images = time.perf_counter() - t0, feeder.progress() - done0
            feeder.stop_flag.set()
            feeder.join(60)
            without2 = run_predicts(c, images, args.requests, think)
        base_all = without + without2
        p50a, p99a = percentiles(base_all)
        p50b, p99b = percentiles(with_job)
        p50c, p99c = percentiles(without2)
        print(f"/predict, 1 image, {args.requests} sequential requests per phase, think {args.think_ms:.0f} ms")
        print(f"  without job : p50 {p50a:7.1f} ms   p99 {p99a:7.1f} ms   (second half alone: p50 {p50c:.1f}, "
              f"p99 {p99c:.1f})")
        print(f"  with job    : p50 {p50b:7.1f} ms   p99 {p99b:7.1f} ms   ({args.job_images}-image jobs kept running)")
        print(f"  ratio       : p50 x{p50b / p50a:.2f}   p99 x{p99b / p99a:.2f}")
        print(f"  job throughput while measuring: {job_images} job images in {elapsed:.1f} s of /predict load "
              f"({job_images / elapsed:.0f} images/s; progress polled every 0.2 s)")
        return 0
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


if __name__ == "__main__":
    sys.exit(main())
