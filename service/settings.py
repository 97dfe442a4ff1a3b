"""Service configuration from ``DERMSERVE_*`` environment variables (pydantic-settings).

Every field is documented; ``python -c "from service.settings import Settings; print(Settings())"``
shows the effective values. A ``.env`` file in the working directory is read too.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

#: The bundled default model directory, relative to the repository root.
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "models" / "default"
#: The default directory of the SQLite job store (git-ignored ``.cache/`` of the repository root).
DEFAULT_JOBS_DIR = Path(__file__).resolve().parent.parent / ".cache" / "jobs"


def available_cpus() -> int:
    """CPUs this process may run on: its CPU affinity (``taskset``, cpusets, Kubernetes static CPU manager).

    Not ``os.cpu_count()``, which counts the host's cores even when the process is pinned to a few.
    A CFS *quota* (``docker --cpus``, Kubernetes ``limits.cpu`` without static CPU manager) does
    not show in the affinity, so in such containers set the thread settings explicitly.
    """
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def split_list_setting(value: Any) -> Any:
    """``DERMSERVE_*`` list values: a JSON list (``'["a", "b"]'``) or a comma-separated string (``a,b``).

    Blank items are dropped, so ``""`` is the empty list; non-strings are returned unchanged. An
    item that itself contains a comma needs the JSON form.
    """
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.startswith("["):
        return json.loads(text)
    return [item.strip() for item in text.split(",") if item.strip()]


class Settings(BaseSettings):
    """All settings of the service. Environment variable = ``DERMSERVE_`` + field name in capitals."""

    model_config = SettingsConfigDict(env_prefix="DERMSERVE_", env_file=".env", extra="ignore",
                                      protected_namespaces=("settings_",),
                                      hide_input_in_errors=True)  # errors must not echo API keys

    # --- model -------------------------------------------------------------------------------
    model_dir: Path = Field(DEFAULT_MODEL_DIR, description="model directory: model.onnx + manifest.json")
    providers: list[str] = Field(
        default_factory=lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"],
        description="onnxruntime execution providers in order of preference; unavailable ones are skipped",
    )
    intra_op_threads: int = Field(
        default_factory=available_cpus, ge=1,
        description="onnxruntime intra-op threads (default: the CPUs this process may use, see available_cpus). "
        "Together with decode_threads up to twice that many threads can be busy at peak: the default favours "
        "the latency of a lone request; on a shared host set intra_op_threads + decode_threads ~ cores",
    )
    inter_op_threads: int = Field(1, ge=1, description="onnxruntime inter-op threads")
    ort_allow_spinning: bool = Field(
        False, description="let idle onnxruntime intra-op threads busy-wait for the next call (onnxruntime's "
        "own default); false (ours) = they sleep, leaving the CPU to decoding and HTTP between batches: "
        "measured 1.4-2.2x the throughput under load on 2 cores (benchmarks/RESULTS.md)"
    )
    ort_force_spinning_stop: bool = Field(
        False, description="with ort_allow_spinning: intra-op threads spin only while a model call runs and "
        "sleep the moment it returns (onnxruntime session.force_spinning_stop)"
    )
    inline_infer_when_idle: bool = Field(
        True, description="idle fast path: a lone one-image batch arriving at an idle batcher runs on the event "
        "loop (no thread round trip; blocks the loop for one model call, ~3 ms here). Measured with "
        "inline_decode_max_bytes: c=1 171 vs 156 images/s, p50 5.74 vs 6.28 ms (benchmarks/RESULTS.md)"
    )
    inline_decode_max_bytes: int = Field(
        64 * 1024, ge=0, description="idle fast path: a lone single-image request of at most this many bytes, arriving when "
        "nothing else is in flight, is decoded on the event loop (no thread round trip); 0 = always use the pool"
    )
    decode_threads: int = Field(
        default_factory=available_cpus, ge=1,
        description="threads decoding and resizing images (default: the CPUs this process may use)",
    )
    # --- server ------------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="bind address; the default accepts local connections only")
    port: int = Field(8000, ge=1, le=65535, description="TCP port")
    log_level: str = Field("info", description="debug | info | warning | error")
    # --- dynamic batching --------------------------------------------------------------------
    max_batch_size: int = Field(32, ge=1, description="images per onnxruntime call at most")
    max_batch_delay_ms: float = Field(
        2.0, ge=0, description="how long an open batch waits for more images (ms); a lone image on an idle "
        "queue runs without waiting"
    )
    max_queue_images: int = Field(256, ge=1, description="images waiting for inference at most; beyond: 503")
    max_queue_bytes: int | None = Field(
        None, ge=1, description="decoded bytes (H*W*3 per image) waiting for inference at most; beyond: 503. "
        "None = only max_queue_images bounds the queue"
    )
    request_timeout_ms: float = Field(
        10_000, gt=0, description="deadline per request (ms); images not started by then are dropped -> 504"
    )
    # --- request limits ----------------------------------------------------------------------
    max_images_per_request: int = Field(64, ge=1, description="images in one /predict request at most; beyond: 413")
    max_upload_bytes: int = Field(
        64 * 1024 * 1024, ge=1, description="request body size limit in bytes (Triton's default 64 MB); beyond: 413"
    )
    max_job_upload_bytes: int = Field(
        512 * 1024 * 1024, ge=1, description="body size limit of a multipart POST /jobs in bytes (a 1000-image "
        "study of ~500 KB dermoscopy JPEGs); the study is held in memory while it is checked and stored, so at most "
        "max_concurrent_job_uploads are read at once; JSON jobs keep max_upload_bytes (base64 is parsed whole); "
        "beyond: 413"
    )
    max_concurrent_job_uploads: int = Field(
        2, ge=1, description="POST /jobs bodies read and stored at once per replica (more wait their turn)"
    )
    max_image_pixels: int = Field(40_000_000, ge=1, description="decoded width*height limit per image (pixels)")
    # --- referral rule -----------------------------------------------------------------------
    referral_malignant_threshold: float | None = Field(
        None, ge=0, le=1, description="override the manifest's malignant-probability referral threshold"
    )
    referral_min_top_probability: float | None = Field(
        None, ge=0, le=1, description="override the manifest's minimum top-1 probability (below it: refer)"
    )
    # --- access ------------------------------------------------------------------------------
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="accepted API keys: comma-separated (k1,k2) or a JSON list "
        '(["k1","k2"]); empty = no authentication'
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="allowed CORS origins, comma-separated or a JSON list; empty = CORS off"
    )
    # --- asynchronous jobs (POST /jobs) ------------------------------------------------------
    max_images_per_job: int = Field(1000, ge=1, description="images in one POST /jobs request at most; beyond: 413")
    jobs_dir: Path = Field(
        DEFAULT_JOBS_DIR, description="directory of the default SQLite job store (jobs.sqlite3), used when "
        "jobs_database_url is unset; one service process per SQLite file"
    )
    jobs_database_url: str | None = Field(
        None, description="SQLAlchemy URL of the job store; e.g. postgresql+psycopg://user@host/db so several "
        "replicas share one queue (needs the `postgres` extra). None = SQLite in jobs_dir"
    )
    job_retention_s: float = Field(
        7 * 24 * 3600.0, gt=0, description="seconds a finished (succeeded/failed/cancelled) job and its results "
        "are kept after finishing; then a background sweep deletes them"
    )
    job_sweep_interval_s: float = Field(
        60.0, gt=0, description="seconds between sweeps deleting expired jobs and refreshing the job metrics"
    )
    job_chunk_images: int = Field(
        8, ge=1, description="images a replica claims from the job queue at a time (one background batcher call)"
    )
    job_max_inflight_chunks: int = Field(
        2, ge=1, description="claimed chunks per replica in the batcher at once; bounds the share of the "
        "batcher that job work can hold (job_chunk_images * this images)"
    )
    job_images_per_batch_when_busy: int = Field(
        1, ge=1, description="job images one model call may carry while /predict traffic is active (see "
        "interactive_busy_window_ms); small keeps a job from delaying interactive requests, >= 1 so jobs never starve"
    )
    interactive_busy_window_ms: float = Field(
        1000.0, ge=0, description="/predict traffic counts as active for this long (ms) after its last request; "
        "job batches use their full chunk size only when it has been quiet this long"
    )
    job_yield_max_wait_ms: float = Field(
        50.0, gt=0, description="job images (the submit check and the run) are decoded one at a time, each once "
        "no /predict request is in flight; under sustained /predict load each waits at most this long (ms)"
    )
    job_max_attempts: int = Field(
        3, ge=1, description="claims per job image before its job is marked failed (a failing model call is "
        "retried; an image the process keeps dying on ends its job instead of looping for ever)"
    )
    job_lease_s: float = Field(
        60.0, gt=0, description="seconds a claim on a chunk lasts; a replica that dies holding it loses it after "
        "this long and another replica (or this one after a restart) computes the chunk"
    )
    job_poll_interval_s: float = Field(
        1.0, gt=0, description="seconds between looks at the job queue when idle (new local jobs wake it at once)"
    )
    # --- shutdown ----------------------------------------------------------------------------
    shutdown_grace_s: float = Field(30.0, ge=0, description="seconds to drain accepted work on SIGTERM")

    @field_validator("api_keys", "cors_origins", mode="before")
    @classmethod
    def _split_lists(cls, value: Any) -> Any:
        return split_list_setting(value)


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings (FastAPI dependency; cached)."""
    return Settings()
