"""Service configuration (pydantic-settings): settings grouped by concern, times in seconds.

Code reads the groups (``settings.batching.max_delay_s``). Every setting also has one *flat name*,
which is how it is configured:

- environment variable ``DERMSERVE_`` + the flat name in capitals (``DERMSERVE_MAX_BATCH_DELAY_MS=5``),
  also read from a ``.env`` file in the working directory;
- keyword argument ``Settings(max_batch_delay_ms=5)``.

A field's flat name is its own name unless it carries a :class:`Flat` marker (the names predate the
groups; deployments use them). A flat name ending in ``_ms`` is in milliseconds and is converted to
the field's seconds. ``python -m service.settings`` prints every flat name with its group field and
effective value (secrets hidden).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

#: The bundled default model directory, relative to the repository root.
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "models" / "default"
#: The default directory of the SQLite job store (git-ignored ``.cache/`` of the repository root).
DEFAULT_JOBS_DIR = Path(__file__).resolve().parent.parent / ".cache" / "jobs"
ENV_PREFIX = "DERMSERVE_"


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
    """List values: a JSON list (``'["a", "b"]'``) or a comma-separated string (``a,b``).

    Blank items are dropped, so ``""`` is the empty list; non-strings are returned unchanged. An
    item that itself contains a comma needs the JSON form.
    """
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.startswith("["):
        return json.loads(text)
    return [item.strip() for item in text.split(",") if item.strip()]


@dataclass(frozen=True)
class Flat:
    """Marks a group field whose flat name differs from its own; ``_ms`` names are converted to seconds."""

    name: str


@dataclass(frozen=True)
class Millis:
    """A value given under a ``_ms`` flat name: milliseconds, for a field in seconds."""

    name: str
    value: Any

    def seconds(self) -> float:
        """The value in seconds.

        Raises:
            ValueError: not a number (the message names the setting, never the value).
        """
        try:
            return float(self.value) / 1000.0
        except (TypeError, ValueError):
            raise ValueError(f"{self.name}: expected a number of milliseconds") from None


class _Group(BaseModel):
    """Base of the settings groups."""

    model_config = ConfigDict(protected_namespaces=(), hide_input_in_errors=True)  # errors must not echo API keys

    @model_validator(mode="before")
    @classmethod
    def _milliseconds_to_seconds(cls, values: Any) -> Any:
        if isinstance(values, dict):
            return {k: v.seconds() if isinstance(v, Millis) else v for k, v in values.items()}
        return values


# ------------------------------------------------------------------------------------------ groups
class RuntimeSettings(_Group):
    """The model and onnxruntime."""

    model_dir: Path = Field(DEFAULT_MODEL_DIR, description="model directory: model.onnx + manifest.json")
    providers: list[str] = Field(
        default_factory=lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"],
        description="onnxruntime execution providers in order of preference (JSON list or comma-separated); "
        "unavailable ones are skipped",
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
        "own default); false (ours) = they sleep, leaving the CPU to decoding and HTTP between batches "
        "(measured in benchmarks/RESULTS.md)"
    )
    ort_force_spinning_stop: bool = Field(
        False, description="with ort_allow_spinning: intra-op threads spin only while a model call runs and "
        "sleep the moment it returns (onnxruntime session.force_spinning_stop)"
    )
    ort_cpu_mem_arena: bool = Field(
        True, description="onnxruntime's CPU memory arena (SessionOptions.enable_cpu_mem_arena): on, the "
        "intermediate tensors of the largest batch so far stay reserved and RSS only rises; off, they are freed "
        "after every model call, which cost throughput with batches of 32 and gained nothing with batches of 8 "
        "(benchmarks/RESULTS.md, 2026-12-07)"
    )

    @field_validator("providers", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        return split_list_setting(value)


class DecodeSettings(_Group):
    """Image decoding (:mod:`service.decoder`)."""

    threads: Annotated[int, Flat("decode_threads")] = Field(
        default_factory=available_cpus, ge=1,
        description="threads decoding and resizing images (default: the CPUs this process may use)",
    )
    inline_max_bytes: Annotated[int, Flat("inline_decode_max_bytes")] = Field(
        64 * 1024, ge=0, description="idle fast path: a lone single-image request of at most this many bytes, "
        "arriving when nothing else is in flight, is decoded on the event loop (no thread round trip); "
        "0 = always use the pool"
    )
    max_image_pixels: int = Field(40_000_000, ge=1, description="decoded width*height limit per image (pixels)")


class ServerSettings(_Group):
    """The HTTP server and its lifecycle."""

    host: str = Field("127.0.0.1", description="bind address; the default accepts local connections only")
    port: int = Field(8000, ge=1, le=65535, description="TCP port")
    log_level: str = Field("info", description="debug | info | warning | error")
    shutdown_grace_s: float = Field(30.0, ge=0, description="seconds to drain accepted work on SIGTERM")


class BatchingSettings(_Group):
    """Dynamic batching and admission (:mod:`service.batching`)."""

    max_batch_size: int = Field(
        8, ge=1, description="images per onnxruntime call at most. 8 for the bundled ensembles on 2 CPU cores: "
        "for 2.2.0, against 32 it kept throughput (1.08x at concurrency 8, 1.12x at 32) and cut RSS under load "
        "from ~990 to ~430 MB (0.44x), since onnxruntime's arena keeps the largest batch's tensors (7 members x 4 views per image; "
        "benchmarks/RESULTS.md, 2026-12-07; 2.3.0: 434 MB, 2.4.0: 442 MB, 2.5.0: 445 MB, 2.6.0: 358 MB). A GPU may want more")
    max_delay_s: Annotated[float, Flat("max_batch_delay_ms")] = Field(
        0.002, ge=0, description="how long an open batch waits for more images (seconds); a lone image on an "
        "idle queue runs without waiting"
    )
    max_queue_images: int = Field(256, ge=1, description="images waiting for inference at most; beyond: 503")
    max_queue_bytes: int | None = Field(
        None, ge=1, description="decoded bytes (H*W*3 per image) waiting for inference at most; beyond: 503. "
        "None = only max_queue_images bounds the queue"
    )
    request_timeout_s: Annotated[float, Flat("request_timeout_ms")] = Field(
        10.0, gt=0, description="deadline per request (seconds); images not started by then are dropped -> 504"
    )
    inline_when_idle: Annotated[bool, Flat("inline_infer_when_idle")] = Field(
        True, description="idle fast path: a lone one-image batch arriving at an idle batcher runs on the event "
        "loop (no thread round trip; blocks the loop for one model call)"
    )
    busy_window_s: Annotated[float, Flat("interactive_busy_window_ms")] = Field(
        1.0, ge=0, description="/predict traffic counts as active for this long (seconds) after its last request; "
        "job batches use their full chunk size only when it has been quiet this long"
    )


class LimitSettings(_Group):
    """Request limits."""

    max_images_per_request: int = Field(64, ge=1, description="images in one /predict request at most; beyond: 413")
    max_upload_bytes: int = Field(
        64 * 1024 * 1024, ge=1, description="request body size limit in bytes (Triton's default 64 MB); beyond: 413"
    )


class ReferralSettings(_Group):
    """Overrides of the manifest's referral thresholds (None = the manifest's value)."""

    malignant_threshold: Annotated[float | None, Flat("referral_malignant_threshold")] = Field(
        None, ge=0, le=1, description="override the manifest's malignant-probability referral threshold"
    )
    min_top_probability: Annotated[float | None, Flat("referral_min_top_probability")] = Field(
        None, ge=0, le=1, description="override the manifest's minimum top-1 probability (below it: refer)"
    )
    target_sensitivity: Annotated[float | None, Flat("referral_target_sensitivity")] = Field(
        None, ge=0, le=1, description="use the manifest's operating point for this malignant sensitivity (one of "
        "`referral.operating_points[].target_sensitivity`, e.g. 0.95) instead of its default threshold; "
        "referral_malignant_threshold, when set, wins")
    ood_policy: Annotated[Literal["flag", "reject"], Flat("ood_policy")] = Field(
        "flag", description="images the model's out-of-distribution guard flags: 'flag' answers them with "
        "out_of_distribution=true and a referral; 'reject' refuses /predict and /v2 requests holding any with 422 "
        "(reason out_of_distribution, naming each image). Jobs always flag (their images were accepted before "
        "inference). No effect for a model without a guard")
    ood_threshold: Annotated[float | None, Flat("ood_threshold")] = Field(
        None, gt=0, allow_inf_nan=False, description="override the manifest's out-of-distribution threshold "
        "(None = the manifest's, "
        "1.0 = 95 % of the guarding members' held-out HAM10000 images below it). For a site whose dermatoscope "
        "shifts colours: measured on held-out HAM10000 images, a warm white balance (red x1.12, blue x0.88) "
        "raised the guarding members' flagged share from 5 % to 12-28 % "
        "(trainer/results/experiments/ood_colour_shift.txt). Set it from the ood_score of the site's own "
        "dermoscopic images (e.g. their 95th percentile), again for every new model version (the score's scale is "
        "the model's), and check that non-dermoscopic images are still flagged; no effect for a model without a guard. "
        "Needs ood_threshold_model_version")
    ood_threshold_model_version: Annotated[str | None, Flat("ood_threshold_model_version")] = Field(
        None, min_length=1, description="the model version ood_threshold was measured on (manifest `version`, "
        "e.g. 2.3.0); required with ood_threshold. Start-up fails when the served model has another version, so "
        "a site threshold never carries over to a model upgrade, whose ood_score has another scale")

    @field_validator("ood_threshold_model_version", mode="before")
    @classmethod
    def _strip_version(cls, value: Any) -> Any:
        return value.strip() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _threshold_names_its_model(self) -> ReferralSettings:
        if (self.ood_threshold is None) != (self.ood_threshold_model_version is None):
            raise ValueError("ood_threshold and ood_threshold_model_version (DERMSERVE_OOD_THRESHOLD, "
                             "DERMSERVE_OOD_THRESHOLD_MODEL_VERSION) go together: a site's "
                             "out-of-distribution threshold holds for the one model version it was measured on")
        return self


class AccessSettings(_Group):
    """Authentication and CORS."""

    api_keys: list[SecretStr] = Field(
        default_factory=list, description="accepted API keys: comma-separated (k1,k2) or a JSON list "
        '(["k1","k2"]); empty = no authentication'
    )
    cors_origins: list[str] = Field(
        default_factory=list, description="allowed CORS origins, comma-separated or a JSON list; empty = CORS off"
    )

    @field_validator("api_keys", "cors_origins", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        return split_list_setting(value)


class JobSettings(_Group):
    """Asynchronous jobs (``POST /jobs``, :mod:`service.jobs`)."""

    max_images: Annotated[int, Flat("max_images_per_job")] = Field(
        1000, ge=1, description="images in one POST /jobs request at most; beyond: 413")
    max_upload_bytes: Annotated[int, Flat("max_job_upload_bytes")] = Field(
        512 * 1024 * 1024, ge=1, description="body size limit of a multipart POST /jobs in bytes (a 1000-image "
        "study of ~500 KB dermoscopy JPEGs); the study is held in memory while it is checked and stored, so at most "
        "max_concurrent_job_uploads are read at once; JSON jobs keep max_upload_bytes (base64 is parsed whole); "
        "beyond: 413"
    )
    max_concurrent_uploads: Annotated[int, Flat("max_concurrent_job_uploads")] = Field(
        2, ge=1, description="POST /jobs bodies read and stored at once per replica (more wait their turn)"
    )
    dir: Annotated[Path, Flat("jobs_dir")] = Field(
        DEFAULT_JOBS_DIR, description="directory of the default SQLite job store (jobs.sqlite3), used when "
        "jobs_database_url is unset; one service process per SQLite file"
    )
    database_url: Annotated[str | None, Flat("jobs_database_url")] = Field(
        None, description="SQLAlchemy URL of the job store; e.g. postgresql+psycopg://user@host/db so several "
        "replicas share one queue (needs the `postgres` extra). None = SQLite in jobs_dir"
    )
    retention_s: Annotated[float, Flat("job_retention_s")] = Field(
        7 * 24 * 3600.0, gt=0, description="seconds a finished (succeeded/failed/cancelled) job and its results "
        "are kept after finishing; then a background sweep deletes them"
    )
    sweep_interval_s: Annotated[float, Flat("job_sweep_interval_s")] = Field(
        60.0, gt=0, description="seconds between sweeps deleting expired jobs and refreshing the job metrics"
    )
    chunk_images: Annotated[int, Flat("job_chunk_images")] = Field(
        8, ge=1, description="images a replica claims from the job queue at a time (one background batcher call)"
    )
    max_inflight_chunks: Annotated[int, Flat("job_max_inflight_chunks")] = Field(
        2, ge=1, description="claimed chunks per replica in the batcher at once; bounds the share of the "
        "batcher that job work can hold (job_chunk_images * this images)"
    )
    images_per_batch_when_busy: Annotated[int, Flat("job_images_per_batch_when_busy")] = Field(
        1, ge=1, description="job images one model call may carry while /predict traffic is active (see "
        "interactive_busy_window_ms); small keeps a job from delaying interactive requests, >= 1 so jobs never starve"
    )
    yield_max_wait_s: Annotated[float, Flat("job_yield_max_wait_ms")] = Field(
        0.05, gt=0, description="job images (the submit check and the run) are decoded one at a time, each once "
        "no /predict request is in flight; under sustained /predict load each waits at most this long (seconds)"
    )
    max_attempts: Annotated[int, Flat("job_max_attempts")] = Field(
        3, ge=1, description="claims per job image before its job is marked failed (a failing model call is "
        "retried; an image the process keeps dying on ends its job instead of looping for ever)"
    )
    lease_s: Annotated[float, Flat("job_lease_s")] = Field(
        60.0, gt=0, description="seconds a claim on a chunk lasts; a replica that dies holding it loses it after "
        "this long and another replica (or this one after a restart) computes the chunk"
    )
    poll_interval_s: Annotated[float, Flat("job_poll_interval_s")] = Field(
        1.0, gt=0, description="seconds between looks at the job queue when idle (new local jobs wake it at once)"
    )


#: The default canonical base of dermserve's own FHIR code systems (``.example`` is reserved, RFC 2606);
#: the same value as :data:`service.codecs.fhir.DEFAULT_CANONICAL_BASE` (kept here so settings stay light).
DEFAULT_FHIR_CANONICAL_BASE = "https://dermserve.example/fhir"

_ABSOLUTE_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:\S+$")


class FhirSettings(_Group):
    """FHIR output (``Accept: application/fhir+json`` on ``POST /predict`` and ``GET /jobs/{id}``)."""

    canonical_base: Annotated[str, Flat("fhir_canonical_base")] = Field(
        DEFAULT_FHIR_CANONICAL_BASE, description="canonical base URL of dermserve's own FHIR code systems (class "
        "codes, result and component codes: <base>/CodeSystem/ham10000-class and <base>/CodeSystem/dermserve-result); "
        "set it to where your organisation publishes them"
    )
    patient_identifier_system: Annotated[str | None, Flat("fhir_patient_identifier_system")] = Field(
        None, description="the hospital's URI for the DICOM PatientIDs it sends (FHIR Identifier.system of the "
        "report's subject); None = no system (DICOM does not carry one)"
    )

    @field_validator("canonical_base")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", value):
            raise ValueError("fhir_canonical_base must be an absolute http(s) URL")
        return value.rstrip("/")

    @field_validator("patient_identifier_system")
    @classmethod
    def _uri(cls, value: str | None) -> str | None:
        if value is not None and not _ABSOLUTE_URI.match(value):
            raise ValueError("fhir_patient_identifier_system must be an absolute URI (e.g. urn:oid:... or https://...)")
        return value


#: The groups, by their attribute name on :class:`Settings`.
GROUPS: dict[str, type[BaseModel]] = {
    "runtime": RuntimeSettings, "decode": DecodeSettings, "server": ServerSettings, "batching": BatchingSettings,
    "limits": LimitSettings, "referral": ReferralSettings, "access": AccessSettings, "jobs": JobSettings,
    "fhir": FhirSettings,
}


def _flat_names() -> dict[str, tuple[str, str]]:
    """flat name -> (group, field), from the groups' fields and their :class:`Flat` markers."""
    names: dict[str, tuple[str, str]] = {}
    for group, cls in GROUPS.items():
        for field, info in cls.model_fields.items():
            flat = next((m.name for m in info.metadata if isinstance(m, Flat)), field)
            if flat in names:
                raise RuntimeError(f"flat setting name {flat!r} is used twice")
            names[flat] = (group, field)
    return names


#: Every setting's flat name (``DERMSERVE_<NAME>``, ``Settings(<name>=...)``) -> ``(group, field)``.
FLAT_NAMES: dict[str, tuple[str, str]] = _flat_names()


def nest(values: dict[str, Any]) -> dict[str, Any]:
    """Move flat-named values into their groups; other keys stay. Values of ``_ms`` names are wrapped
    in :class:`Millis` (the group converts them to seconds when it validates).

    A group given as a whole (a model instance) wins over flat values for it; within a group given
    as a dict, a field set there wins over the same field's flat name.
    """
    out = {k: v for k, v in values.items() if k not in FLAT_NAMES}
    for flat, value in values.items():
        if flat not in FLAT_NAMES:
            continue
        group, field = FLAT_NAMES[flat]
        target = out.setdefault(group, {})
        if isinstance(target, dict):
            target.setdefault(field, Millis(flat, value) if flat.endswith("_ms") and value is not None else value)
    return out


class NestedInitSource(PydanticBaseSettingsSource):
    """The keyword arguments, flat names moved into their groups (so that they outrank the environment)."""

    def __init__(self, settings_cls: type[BaseSettings], init: PydanticBaseSettingsSource) -> None:
        super().__init__(settings_cls)
        self.init = init

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return nest(self.init())


class FlatEnvSource(PydanticBaseSettingsSource):
    """Reads ``DERMSERVE_<FLAT NAME>`` from a mapping of environment variables (process or ``.env``)."""

    def __init__(self, settings_cls: type[BaseSettings], env_vars: Any) -> None:
        super().__init__(settings_cls)
        self.env_vars = env_vars  # lower-case names (pydantic-settings is case-insensitive by default)

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        values = {flat: self.env_vars[f"{ENV_PREFIX}{flat}".lower()] for flat in FLAT_NAMES
                  if f"{ENV_PREFIX}{flat}".lower() in self.env_vars}
        return nest(values)


class Settings(BaseSettings):
    """All settings of the service, by group. Configure them by flat name (module docstring)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_file=".env", extra="ignore",
                                      hide_input_in_errors=True)  # errors must not echo API keys

    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)
    decode: DecodeSettings = Field(default_factory=DecodeSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    batching: BatchingSettings = Field(default_factory=BatchingSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    referral: ReferralSettings = Field(default_factory=ReferralSettings)
    access: AccessSettings = Field(default_factory=AccessSettings)
    jobs: JobSettings = Field(default_factory=JobSettings)
    fhir: FhirSettings = Field(default_factory=FhirSettings)

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Keyword arguments first, then ``DERMSERVE_*`` variables, then the ``.env`` file, by flat name."""
        return (NestedInitSource(settings_cls, init_settings),
                FlatEnvSource(settings_cls, env_settings.env_vars),  # type: ignore[attr-defined]
                FlatEnvSource(settings_cls, dotenv_settings.env_vars))  # type: ignore[attr-defined]

    @model_validator(mode="before")
    @classmethod
    def _nest_flat_names(cls, values: Any) -> Any:
        return nest(values) if isinstance(values, dict) else values

    @staticmethod
    def flat_names() -> set[str]:
        """Every flat setting name (``DERMSERVE_`` + name in capitals is its environment variable)."""
        return set(FLAT_NAMES)


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings (cached)."""
    return Settings()


if __name__ == "__main__":  # python -m service.settings: every setting, its group field and effective value
    s = get_settings()
    for flat, (group, field) in sorted(FLAT_NAMES.items()):
        value = getattr(getattr(s, group), field)
        shown = [v.get_secret_value() and "***" for v in value] if field == "api_keys" else value
        print(f"{ENV_PREFIX + flat.upper():<46} {group + '.' + field:<34} {shown}")
