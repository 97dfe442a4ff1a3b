"""Benchmark harness for dermserve (``python -m benchmarks --help``); see benchmarks/README.md.

- :mod:`.run` -- the CLI: one interleaved run over every system, scenario and concurrency level;
- :mod:`.processes` -- free ports, starting a server process and waiting for it, /proc CPU and RSS
  (shared with the tests' fixtures);
- :mod:`.bodies` -- the test images and the request bodies wrk posts;
- :mod:`.servers` -- the systems under test (dermserve, naive, MLServer) and their answer check;
- :mod:`.wrk` -- one measured point: wrk, CPU accounting, dermserve's model-call counters;
- :mod:`.limit` -- the in-process limit (decode + model, no HTTP), one per model directory;
- :mod:`.models` -- ``NAME=MODEL_DIR|git:REV`` options, a model directory from a git commit, the model
  each checkout serves (``--checkout-model``) and what results record about a model;
- :mod:`.report` -- ratios, targets, the printed table, the plot, versions and machine.
"""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = Path(__file__).resolve().parent
CACHE_DIR = REPO_ROOT / ".bench-cache"
