"""What one model call returns, per batch and per image (NumPy only: no onnxruntime, no HTTP).

:class:`ModelOutput` is the runtime's answer for a batch of ``B`` images: calibrated probabilities
``float32 (B, K)`` plus optional *extra* per-image outputs of the graph, ``float32 (B,)`` each, keyed
by output name (e.g. an out-of-distribution score ``ood_score`` named by the manifest). The batcher
splits every per-image array back to the request that owns the rows (:meth:`ModelOutput.take`,
:func:`concat`); the data plane reads one image at a time (:meth:`ModelOutput.image`).

The batcher treats a plain ``ndarray`` (``B`` rows) the same way, so a fake model in a test may
return just the probabilities.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np


@dataclass(frozen=True)
class ImageOutput:
    """The model's answer for one image.

    Attributes:
        probabilities: calibrated probabilities ``float32 (K,)`` in manifest class order.
        extras: the image's value of every extra graph output (e.g. ``{"ood_score": 0.12}``).
    """

    probabilities: np.ndarray
    extras: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelOutput:
    """The model's answer for a batch of ``B`` images.

    Attributes:
        probabilities: ``float32 (B, K)``, calibrated, manifest class order.
        extras: extra graph outputs by name, each ``float32 (B,)``; empty for a model with only
            the ``logits`` output.
    """

    probabilities: np.ndarray
    extras: Mapping[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.probabilities.shape[0])

    def check(self, batch_size: int) -> None:
        """Raise ``ValueError`` unless every array has ``batch_size`` rows (probabilities 2-D, extras 1-D)."""
        p = self.probabilities
        if p.ndim != 2 or p.shape[0] != batch_size:
            raise ValueError(f"probabilities of shape {p.shape} for a batch of {batch_size}")
        for name, values in self.extras.items():
            if values.shape != (batch_size,):
                raise ValueError(f"extra output {name!r} of shape {values.shape} for a batch of {batch_size}")

    def take(self, rows: Sequence[int] | np.ndarray) -> ModelOutput:
        """The rows ``rows`` (in that order) of every array."""
        idx = np.asarray(rows, dtype=np.intp)
        return ModelOutput(self.probabilities[idx], {k: v[idx] for k, v in self.extras.items()})

    def image(self, i: int) -> ImageOutput:
        """Row ``i`` as an :class:`ImageOutput`."""
        return ImageOutput(self.probabilities[i], {k: float(v[i]) for k, v in self.extras.items()})


#: What ``run_batch`` may return and what :meth:`DynamicBatcher.submit` hands back: a :class:`ModelOutput`
#: or a plain ``ndarray`` with one row per image.
BatchOut = TypeVar("BatchOut", ModelOutput, np.ndarray)


def take(out: BatchOut, rows: Sequence[int]) -> BatchOut:
    """Rows ``rows`` of a :class:`ModelOutput` or of an ``ndarray``."""
    return out.take(rows) if isinstance(out, ModelOutput) else out[np.asarray(rows, dtype=np.intp)]


def concat(parts: Sequence[BatchOut]) -> BatchOut:
    """Stack several row blocks of the same kind (and the same extra outputs) into one."""
    first = parts[0]
    if isinstance(first, ModelOutput):
        return ModelOutput(np.concatenate([p.probabilities for p in parts]),
                           {k: np.concatenate([p.extras[k] for p in parts]) for k in first.extras})
    return np.concatenate(parts)


def as_model_output(out: ModelOutput | np.ndarray) -> ModelOutput:
    """``out`` as a :class:`ModelOutput` (a plain array is the probabilities alone)."""
    return out if isinstance(out, ModelOutput) else ModelOutput(np.asarray(out))


def as_checked(out: object, batch_size: int) -> ModelOutput | np.ndarray:
    """``run_batch``'s return value, checked to hold ``batch_size`` rows.

    Raises:
        ValueError: wrong number of rows, or not 2-D probabilities.
    """
    if isinstance(out, ModelOutput):
        out.check(batch_size)
        return out
    arr = np.asarray(out)
    if arr.ndim != 2 or arr.shape[0] != batch_size:
        raise ValueError(f"run_batch returned shape {arr.shape} for a batch of {batch_size}")
    return arr
