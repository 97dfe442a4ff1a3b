"""Writing a model directory all-or-nothing, and the tool versions an export records."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from export.errors import ExportError


@contextmanager
def staged_directory(output_dir: Path, force: bool) -> Iterator[Path]:
    """Yield a temporary folder beside ``output_dir``; on success it replaces ``output_dir`` (mode 755),
    on any exception it is deleted, so a failed export (e.g. a failed parity check) writes nothing.

    Raises:
        ExportError: ``output_dir`` exists and ``force`` is false.
    """
    output_dir = Path(output_dir)
    if output_dir.exists() and not force:
        raise ExportError(f"{output_dir} exists; pass --force to replace it")
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=output_dir.parent))
    try:
        yield tmp
        tmp.chmod(0o755)
        if output_dir.exists():
            shutil.rmtree(output_dir)
        tmp.rename(output_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def tool_versions(opset: int) -> dict[str, str | int]:
    """Versions of the converter stack (tf2onnx, TensorFlow, Keras, onnxruntime) and the ONNX opset."""
    def v(*dists: str) -> str:
        for d in dists:
            try:
                return version(d)
            except PackageNotFoundError:
                continue
        return "not installed"

    return {"tf2onnx": v("tf2onnx"), "tensorflow": v("tensorflow"), "keras": v("keras"),
            "onnxruntime": v("onnxruntime", "onnxruntime-gpu"), "opset": opset}
