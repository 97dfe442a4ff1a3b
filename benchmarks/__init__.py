"""Benchmark harness for dermserve (``python -m benchmarks --help``); see benchmarks/README.md."""
