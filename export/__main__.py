"""``python -m export RUN_DIR``: convert a trainer run to a served model directory (ONNX + manifest)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import typer

from trainer.config import DEFAULT_DATA_DIR

app = typer.Typer(add_completion=False, help=__doc__)


@app.command()
def main(
    run_dir: Path = typer.Argument(..., help="trainer output folder (model.keras, metrics.json, ...)"),
    output: Path = typer.Option(Path("models/default"), help="model directory to write"),
    name: str = typer.Option("dermserve-ham10000", help="model name"),
    version: str = typer.Option("1.0.0", help="model version"),
    data_dir: Path = typer.Option(DEFAULT_DATA_DIR, help="dataset for the parity check (env DERMSERVE_DATA_DIR)"),
    parity_images: int = typer.Option(300, help="test images in the parity check"),
    force: bool = typer.Option(False, help="replace an existing output directory"),
) -> None:
    """Convert with tf2onnx, check Keras-vs-ONNX parity end to end, write model.onnx + manifest.json."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from export.convert import export_run
    from export.errors import ExportError

    try:
        m = export_run(run_dir, output, name, version, data_dir, parity_images, force)
    except ExportError as exc:
        print(f"export failed: {exc}", file=sys.stderr)
        raise typer.Exit(1) from exc
    print(f"wrote {output} ({m.name} {m.version}, sha256 {m.sha256[:12]}...)")


if __name__ == "__main__":
    app()
