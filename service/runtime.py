"""The model runtime: one onnxruntime InferenceSession plus the manifest that describes it.

Knows about onnxruntime, execution providers, threads and the model directory; knows nothing
about HTTP, queues or batching. Loading verifies the sha256 of ``model.onnx`` against the
manifest, so a corrupt or swapped file is never served.

A batch call (:meth:`ModelRuntime.predict`) returns a :class:`~service.outputs.ModelOutput`: the
calibrated probabilities, plus every *extra* graph output the runtime was asked for (e.g. an
out-of-distribution score ``float32 (B,)``), so that a second output reaches the answers without
changing the batcher or the data plane.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from schemas.manifest import Manifest
from service.outputs import ModelOutput
from service.preprocessing import PreprocessSpec

log = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """The model directory cannot be served (missing file, bad manifest, sha256 mismatch, bad graph)."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in ``chunk``-byte pieces."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def load_manifest(model_dir: Path) -> Manifest:
    """Parse and validate ``model_dir/manifest.json``.

    Raises:
        ModelLoadError: missing or invalid manifest.
    """
    path = Path(model_dir) / "manifest.json"
    try:
        return Manifest.model_validate_json(path.read_bytes())
    except FileNotFoundError as exc:
        raise ModelLoadError(f"no manifest.json in {model_dir}") from exc
    except ValueError as exc:
        raise ModelLoadError(f"invalid manifest {path}: {exc}") from exc


def manifest_extra_outputs(manifest: Manifest) -> tuple[str, ...]:
    """The graph outputs besides the logits that the manifest names, each ``float32 (B,)``.

    Today: the out-of-distribution score named by the manifest (``ood.output``, see
    :class:`schemas.manifest.OutOfDistribution`), when the model carries a guard.
    """
    return (manifest.ood.output,) if manifest.ood is not None else ()


def verify_sha256(model_path: Path, expected: str) -> None:
    """Raise :class:`ModelLoadError` unless ``model_path`` exists and has the sha256 the manifest gives."""
    if not model_path.is_file():
        raise ModelLoadError(f"model file {model_path} does not exist")
    digest = sha256_file(model_path)
    if digest != expected:
        raise ModelLoadError(f"sha256 of {model_path} is {digest} but the manifest says {expected}: "
                             "refusing to serve a model that is not the one described")


def open_session(model_path: Path, providers: list[str] | None, intra_op_threads: int, inter_op_threads: int,
                 allow_spinning: bool, force_spinning_stop: bool,
                 cpu_mem_arena: bool = True):  # -> onnxruntime.InferenceSession
    """An onnxruntime session on the preferred available providers (CPU always last), full graph optimisation;
    ``cpu_mem_arena`` = onnxruntime's ``SessionOptions.enable_cpu_mem_arena`` (see :class:`ModelRuntime`).

    Raises:
        ModelLoadError: onnxruntime cannot load the file.
    """
    import onnxruntime as ort

    available = ort.get_available_providers()
    wanted = [p for p in (providers or ["CPUExecutionProvider"]) if p in available]
    if "CPUExecutionProvider" not in wanted:
        wanted.append("CPUExecutionProvider")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = intra_op_threads
    opts.inter_op_num_threads = inter_op_threads
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.enable_cpu_mem_arena = cpu_mem_arena
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
    opts.add_session_config_entry("session.force_spinning_stop", "1" if force_spinning_stop else "0")
    try:
        return ort.InferenceSession(str(model_path), sess_options=opts, providers=wanted)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        raise ModelLoadError(f"onnxruntime cannot load {model_path}: {exc}") from exc


def check_graph(session, m: Manifest, extra_outputs: Sequence[str]) -> None:
    """Raise :class:`ModelLoadError` unless the graph's input and outputs are the ones the manifest describes."""
    inp, out = session.get_inputs()[0], session.get_outputs()[0]
    if inp.name != m.input.name or out.name != m.output.name:
        raise ModelLoadError(f"graph has input {inp.name!r} / output {out.name!r}, manifest says "
                             f"{m.input.name!r} / {m.output.name!r}")
    if len(out.shape) != 2 or out.shape[1] != len(m.classes):
        raise ModelLoadError(f"graph output shape {out.shape} does not match the manifest's {len(m.classes)} "
                             "classes")
    if list(inp.shape[1:]) != [m.input.height, m.input.width, m.input.channels]:
        raise ModelLoadError(f"graph input shape {inp.shape} does not match the manifest's input size")
    graph_outputs = {o.name for o in session.get_outputs()}
    missing = [name for name in extra_outputs if name not in graph_outputs]
    if missing:
        raise ModelLoadError(f"graph has no output {missing}; its outputs are {sorted(graph_outputs)}")


def softmax_with_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Calibrated probabilities ``softmax(logits / temperature)`` along the last axis.

    Args:
        logits: float32 ``(B, K)``.
        temperature: > 0, fitted on the validation split (Guo et al., ICML 2017).

    Returns:
        float32 ``(B, K)``, rows summing to 1.
    """
    z = logits.astype(np.float64) / temperature
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


class ModelRuntime:
    """One onnxruntime session serving one model directory.

    Attributes:
        manifest: the parsed manifest.
        spec: the preprocessing spec (input size, resize method) derived from the manifest.
        provider: the execution provider actually in use (e.g. ``CPUExecutionProvider``).
    """

    def __init__(self, model_dir: Path, providers: list[str] | None = None, intra_op_threads: int = 0,
                 inter_op_threads: int = 1, max_image_pixels: int | None = None,
                 allow_spinning: bool = True, force_spinning_stop: bool = False,
                 extra_outputs: Sequence[str] | None = None, cpu_mem_arena: bool = True) -> None:
        """Load and verify a model directory.

        Args:
            model_dir: folder with ``manifest.json`` and the ONNX file it names.
            providers: preferred execution providers; those not available in this onnxruntime
                build are skipped (CPU is always appended as the last resort).
            intra_op_threads: onnxruntime intra-op threads (0 = onnxruntime's default).
            inter_op_threads: onnxruntime inter-op threads.
            max_image_pixels: decoded-pixel limit for :attr:`spec` (None = preprocessing default).
            allow_spinning: let idle onnxruntime intra-op threads busy-wait for work (onnxruntime's
                default). Off, they sleep: a little more latency per call, but no CPU taken from
                the decode and HTTP threads between batches.
            force_spinning_stop: with ``allow_spinning``, stop the spinning the moment ``Run()``
                returns (onnxruntime's ``session.force_spinning_stop``): threads busy-wait only
                between the operators of one call (no wake-up latency per operator) and sleep
                between calls.
            extra_outputs: names of further graph outputs, each ``float32 (B,)`` or ``(B, 1)``,
                returned in :attr:`ModelOutput.extras`; None = :func:`manifest_extra_outputs`.
            cpu_mem_arena: onnxruntime's CPU memory arena (its default: on). On, the intermediate tensors
                of the largest batch so far stay reserved (and the arena grows in chunks: RSS only rises); off,
                they are freed after each call, at the cost of allocating per call.

        Raises:
            ModelLoadError: missing files, invalid manifest, sha256 mismatch, or a graph whose
                input/outputs do not match the manifest.
        """
        self.model_dir = Path(model_dir)
        self.manifest = m = load_manifest(self.model_dir)
        model_path = self.model_dir / m.model_file
        verify_sha256(model_path, m.sha256)
        self.session = open_session(model_path, providers, intra_op_threads, inter_op_threads, allow_spinning,
                                    force_spinning_stop, cpu_mem_arena)
        self.provider = self.session.get_providers()[0]
        self.extra_outputs = tuple(manifest_extra_outputs(m) if extra_outputs is None else extra_outputs)
        check_graph(self.session, m, self.extra_outputs)
        self.input_dtype = np.uint8 if m.input.dtype == "uint8" else np.float32
        self.spec = PreprocessSpec(
            height=m.input.height, width=m.input.width, resize_method=m.input.resize_method,
            **({"max_pixels": max_image_pixels} if max_image_pixels else {}),
        )
        log.info("loaded model %s %s from %s on %s", m.name, m.version, self.model_dir, self.provider)

    @property
    def class_codes(self) -> list[str]:
        """Class codes in output order."""
        return self.manifest.class_codes

    def run_logits(self, batch: np.ndarray) -> np.ndarray:
        """Run the graph on a batch.

        Args:
            batch: ``(B, H, W, 3)`` RGB in 0..255, dtype uint8 (or float32; cast to the graph's type).

        Returns:
            logits, float32 ``(B, K)`` in manifest class order.
        """
        if batch.dtype != self.input_dtype:
            batch = batch.astype(self.input_dtype)
        (logits,) = self.session.run([self.manifest.output.name], {self.manifest.input.name: batch})
        return logits

    def predict_proba(self, batch: np.ndarray) -> np.ndarray:
        """Calibrated probabilities float32 ``(B, K)`` for a batch (see :meth:`run_logits`)."""
        return softmax_with_temperature(self.run_logits(batch), self.manifest.calibration.temperature)

    def predict(self, batch: np.ndarray) -> ModelOutput:
        """One graph call: calibrated probabilities ``float32 (B, K)`` plus each extra output ``float32 (B,)``.

        Args:
            batch: ``(B, H, W, 3)`` RGB in 0..255 (see :meth:`run_logits`).
        """
        if not self.extra_outputs:
            return ModelOutput(self.predict_proba(batch))
        if batch.dtype != self.input_dtype:
            batch = batch.astype(self.input_dtype)
        logits, *extras = self.session.run([self.manifest.output.name, *self.extra_outputs],
                                           {self.manifest.input.name: batch})
        probs = softmax_with_temperature(logits, self.manifest.calibration.temperature)
        return ModelOutput(probs, {name: np.asarray(v, dtype=np.float32).reshape(len(batch))
                                   for name, v in zip(self.extra_outputs, extras)})

    def warm_up(self, batch_sizes: tuple[int, ...] = (1,)) -> None:
        """Run the graph once per batch size on zeros so the first real request is not slow."""
        for b in batch_sizes:
            self.run_logits(np.zeros((b, self.spec.height, self.spec.width, 3), dtype=self.input_dtype))
