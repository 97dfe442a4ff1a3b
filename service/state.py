"""The per-app lifecycle state shared by the lifespan, the routes and ``__main__``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from service.metrics import Metrics
from service.settings import Settings

if TYPE_CHECKING:  # keep this module free of onnxruntime imports
    from service.batching import DynamicBatcher
    from service.dataplane import DataPlane
    from service.runtime import ModelRuntime


@dataclass
class AppState:
    """What one app instance holds; stored as ``app.state.dermserve``.

    ``ready`` turns True only after the model is loaded (sha256 verified), warmed up and the
    batcher started; :meth:`begin_shutdown` turns it False at once (SIGTERM or lifespan exit).
    """

    settings: Settings
    metrics: Metrics = field(default_factory=Metrics)
    runtime: ModelRuntime | None = None
    batcher: DynamicBatcher | None = None
    dataplane: DataPlane | None = None
    ready: bool = False
    shutting_down: bool = False

    def begin_shutdown(self) -> None:
        """Mark the service as shutting down: readiness answers 503 from now on."""
        self.shutting_down = True
        self.ready = False

    @property
    def is_ready(self) -> bool:
        """True when requests can be served: loaded, warmed up, batcher running, not stopping."""
        return self.ready and not self.shutting_down and self.batcher is not None and self.batcher.running

    def not_ready_reason(self) -> str:
        """A sentence for 503 answers."""
        if self.shutting_down:
            return "the service is shutting down"
        if not self.ready:
            return "the model is not loaded and warmed up yet"
        return "the inference worker is not running"
