"""The limit: dermserve's own decode + preprocess and model call in this process, no HTTP.

The model call is :meth:`service.runtime.ModelRuntime.predict`, the call dermserve's batcher makes: the
calibrated probabilities plus every extra output the manifest names (e.g. an ensemble's ``ood_score``).
One :class:`Limit` per model directory: ``limit`` is the run's ``--model-dir``, ``limit@NAME`` each
``--limit-model``."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class LimitConfig:
    batch: int
    intra_op_threads: int
    decode_threads: int
    ort_spinning: bool = True


class Limit:
    """In-process decode + preprocess + onnxruntime (dermserve's own code) for one model directory, no HTTP."""

    def __init__(self, model_dir: Path, name: str = "limit") -> None:
        self.model_dir = model_dir
        self.name = name
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
                rt.predict(np.stack(arrays))  # probabilities + extra outputs, as the server's batcher
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


def sample_limit(entry: dict, lim: Limit, images: list[tuple[str, bytes]], cfg: LimitConfig, seconds: float) -> None:
    """Re-measure the limit at ``cfg``; append images/s and its CPU cost to the scenario's ``entry``."""
    entry["samples"].append(lim.measure(images, cfg, seconds))
    entry.setdefault("cpu_ms_per_image", []).append(lim.last_cpu_ms_per_image)
    entry.setdefault("cores", []).append(lim.last_cores)
