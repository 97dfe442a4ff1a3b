"""``python -m benchmarks``: the benchmark CLI (see :mod:`benchmarks.run`)."""

from benchmarks.run import app

app()
