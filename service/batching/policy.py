"""The batching policy: when the next batch closes and what goes into it (pure; no queues, no clock).

- A batch holds at most ``max_batch_size`` images. Interactive images go first.
- Background (job) images take only the slots left over, at most ``background_per_batch`` of them,
  and at most ``background_per_batch_busy`` while interactive traffic is active (so an interactive
  request arriving behind a job-only batch waits for a short model call, not a full job chunk).
- While background images wait, interactive images fill at most ``max_batch_size - 1`` slots, so
  jobs progress by at least one image per batch under any load.
- When the worker is busy, the next batch waits for more images until it is full or its oldest
  image has waited ``max_delay_s`` (never applied to a lone request at an idle batcher).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BatchPolicy:
    """What goes into the next batch.

    Attributes:
        max_batch_size: images per model call at most (>= 1).
        max_delay_s: how long (seconds) the oldest waiting image may wait for the batch to fill while
            the worker is busy (>= 0).
        background_per_batch: background images per model call at most (None = ``max_batch_size``).
        background_per_batch_busy: the same while interactive traffic is active (None =
            ``background_per_batch``; >= 1 so background work never starves).
    """

    max_batch_size: int = 8
    max_delay_s: float = 0.002
    background_per_batch: int | None = None
    background_per_batch_busy: int | None = None

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        if self.max_delay_s < 0:
            raise ValueError("max_delay_s must be >= 0")
        share = max(1, min(self.background_per_batch or self.max_batch_size, self.max_batch_size))
        busy = max(1, min(self.background_per_batch_busy or share, share))
        object.__setattr__(self, "background_per_batch", share)
        object.__setattr__(self, "background_per_batch_busy", busy)

    def background_share(self, interactive_active: bool) -> int:
        """Background images the next batch may take."""
        return self.background_per_batch_busy if interactive_active else self.background_per_batch  # type: ignore[return-value]

    def is_full(self, interactive_waiting: int, background_waiting: int, interactive_active: bool) -> bool:
        """True when the waiting images already make a full batch (no reason to wait longer)."""
        fillable = interactive_waiting + min(background_waiting, self.background_share(interactive_active))
        return fillable >= self.max_batch_size

    def interactive_slots(self, background_waiting: bool) -> int:
        """Interactive images the next batch may take (one slot stays free while background work waits)."""
        return self.max_batch_size - (1 if background_waiting and self.max_batch_size > 1 else 0)

    def background_slots(self, batch_so_far: int, interactive_active: bool) -> int:
        """The batch size up to which background images may be added to a batch of ``batch_so_far``."""
        return min(self.max_batch_size, batch_so_far + self.background_share(interactive_active))
