"""Asynchronous jobs: ``POST /jobs`` accepts a whole study, ``GET /jobs/{id}`` returns the results later.

- :mod:`service.jobs.store` -- the durable job store (SQLAlchemy 2.x; SQLite by default, PostgreSQL
  to share one queue between replicas): jobs, their images until computed, their results;
- :mod:`service.jobs.runner` -- claims chunks of stored images, feeds them to the dynamic batcher at
  background priority, stores the results; sweeps expired jobs; refreshes the job metrics;
- :mod:`service.jobs.service` -- the jobs service, what the routes call: validate and persist a
  submission, read and cancel jobs (no HTTP here either).
"""

from __future__ import annotations


class JobError(Exception):
    """Base class of job errors (mapped to HTTP answers in :mod:`service.errors`)."""


class JobNotFoundError(JobError):
    """No such job for this caller: unknown id, expired, or owned by another API key (-> 404)."""


class JobFinishedError(JobError):
    """The job has already finished (succeeded, failed or cancelled) and cannot be cancelled (-> 409)."""


class JobNotSucceededError(JobError):
    """The job has no results to report yet (queued or running), or never will (failed, cancelled) (-> 409)."""
