"""Prometheus metrics (prometheus-client), one registry per app so several apps can coexist in tests.

Exposed names (all prefixed ``dermserve_``):

- ``http_requests_total{route,method,status}`` -- counter; ``route`` is the route template
  (``/v2/models/{name}/infer``), never the raw path, to bound label cardinality.
- ``http_request_duration_seconds{route,method}`` -- histogram, seconds.
- ``queue_images`` -- gauge, images waiting for inference.
- ``batch_size_images`` -- histogram, images per model call.
- ``inference_duration_seconds`` -- histogram, seconds per model call (incl. stacking the batch).
- ``inference_failures_total`` -- counter, failed model calls.
- ``images_refused_total{reason}`` -- counter, images refused at submit (``queue_full``, ``closed``).
- ``images_expired_total`` -- counter, images dropped at their deadline.
- ``model_info{name,version,provider}`` -- gauge set to 1 for the served model.
- ``jobs{status}`` -- gauge, asynchronous jobs in the job store by status (queued, running, succeeded,
  failed, cancelled); refreshed every few seconds from the store (shared by all replicas).
- ``job_queue_age_seconds`` -- gauge, age of the oldest ``queued`` job (0 when none waits).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from service.batching import BatcherObserver

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics(BatcherObserver):
    """The service's metrics; also the batcher's observer."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("dermserve_http_requests", "HTTP requests by route template, method and status",
                                ["route", "method", "status"], registry=r)
        self.latency = Histogram("dermserve_http_request_duration_seconds", "HTTP request latency (seconds)",
                                 ["route", "method"], buckets=_LATENCY_BUCKETS, registry=r)
        self.queue = Gauge("dermserve_queue_images", "images waiting for inference", registry=r)
        self.batch_size = Histogram("dermserve_batch_size_images", "images per model call",
                                    buckets=_BATCH_BUCKETS, registry=r)
        self.inference = Histogram("dermserve_inference_duration_seconds", "seconds per model call",
                                   buckets=_LATENCY_BUCKETS, registry=r)
        self.failures = Counter("dermserve_inference_failures", "failed model calls", registry=r)
        self.refused_images = Counter("dermserve_images_refused", "images refused at submit", ["reason"], registry=r)
        self.expired_images = Counter("dermserve_images_expired", "images dropped at their deadline", registry=r)
        self.model_info = Gauge("dermserve_model_info", "the served model (value 1)",
                                ["name", "version", "provider"], registry=r)
        for reason in ("queue_full", "closed"):
            self.refused_images.labels(reason=reason)
        self.jobs = Gauge("dermserve_jobs", "asynchronous jobs in the job store by status", ["status"], registry=r)
        self.job_queue_age = Gauge("dermserve_job_queue_age_seconds", "age of the oldest queued job (seconds)",
                                   registry=r)

    def job_stats(self, by_status: dict[str, int], oldest_queued_age_s: float) -> None:
        """Set the job gauges from the store's counts (jobs by status, oldest queued job's age in s)."""
        for status, n in by_status.items():
            self.jobs.labels(status=status).set(n)
        self.job_queue_age.set(oldest_queued_age_s)

    # BatcherObserver hooks
    def queue_depth(self, images: int) -> None:  # noqa: D102
        self.queue.set(images)

    def batch_done(self, size: int, seconds: float, ok: bool) -> None:  # noqa: D102
        self.batch_size.observe(size)
        self.inference.observe(seconds)
        if not ok:
            self.failures.inc()

    def refused(self, images: int, reason: str) -> None:  # noqa: D102
        self.refused_images.labels(reason=reason).inc(images)

    def expired(self, images: int) -> None:  # noqa: D102
        self.expired_images.inc(images)
