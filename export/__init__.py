"""Keras -> ONNX export with an end-to-end parity check (``python -m export --help``)."""
