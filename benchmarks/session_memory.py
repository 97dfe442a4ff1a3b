"""Resident memory of one onnxruntime session across batch sizes, with and without its CPU memory arena.

``python -m benchmarks.session_memory [--model-dir models/default] [--no-arena] [--batches 1,8,32,8,1,32]``

Prints the process's ``VmRSS`` and peak ``VmHWM`` (MiB, from ``/proc/self/status``) after loading the model and
after each batch of random uint8 images. Run it once per setting (a fresh process each, so one setting's
allocations do not hide another's); it measures memory, not time, so a busy machine does not change it. It
explains the RSS under load that ``python -m benchmarks`` reports for the served model (benchmarks/RESULTS.md,
2026-12-07 15:10 UTC): with the arena on, the largest batch's intermediate tensors stay reserved.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import typer


def rss_mb() -> dict[str, int]:
    """``{"VmRSS": MiB, "VmHWM": MiB}`` of this process, rounded down (:func:`benchmarks.processes.status_mb`)."""
    from benchmarks.processes import status_mb

    return {key: int(status_mb("self", key)) for key in ("VmRSS", "VmHWM")}


def main(model_dir: Annotated[Path, typer.Option(help="model directory (manifest.json + model.onnx)")]
         = Path("models/default"),
         arena: Annotated[bool, typer.Option(help="onnxruntime's enable_cpu_mem_arena")] = True,
         batches: Annotated[str, typer.Option(help="comma-separated batch sizes, run in this order")]
         = "1,8,32,8,1,32") -> None:
    """Load the model's session (as the service does, see :func:`service.runtime.open_session`) and print its
    RSS after loading and after each batch of ``(B, H, W, 3)`` uint8 images (B from ``batches``).

    Raises:
        service.runtime.ModelLoadError: ``model_dir`` cannot be loaded.
    """
    from service.runtime import ModelRuntime

    typer.echo(f"arena {'on' if arena else 'off'}; before loading: {rss_mb()}")
    rt = ModelRuntime(model_dir, ["CPUExecutionProvider"], cpu_mem_arena=arena, allow_spinning=False)
    typer.echo(f"after loading {rt.manifest.name} {rt.manifest.version}: {rss_mb()}")
    rng = np.random.default_rng(0)
    for b in (int(v) for v in batches.split(",")):
        rt.predict(rng.integers(0, 256, (b, rt.spec.height, rt.spec.width, 3), dtype=np.uint8))
        typer.echo(f"after a batch of {b:3d}: {rss_mb()}")


if __name__ == "__main__":
    typer.run(main)
