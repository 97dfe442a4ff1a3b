"""The durable job store: SQLAlchemy 2.x models and a small synchronous API over them.

Every method runs one short transaction and is blocking: call it from a worker thread
(``asyncio.to_thread``), never on the event loop.

Backends (``jobs_database_url``):

- **SQLite** (default, a file ``jobs.sqlite3`` in ``jobs_dir``): one service process per file.
  WAL journal with ``synchronous=FULL`` (a committed job survives power loss) and
  ``secure_delete=ON`` (deleted images are overwritten with zeros in the database file).
- **PostgreSQL** (``postgresql+psycopg://...``): several replicas share one queue. Chunks of images
  are claimed with ``SELECT ... FOR UPDATE SKIP LOCKED`` (so two replicas never claim the same
  image at once) and a *lease*: an image whose claim has expired (its replica died) is claimable
  again. Only the holder of a live claim can store a result, so each stored result was computed
  under exactly one claim.

Tables: ``dermserve_jobs`` (one row per job), ``dermserve_job_items`` (one row per image:
the original bytes until the result is stored, then the result as JSON) and
``dermserve_job_patients`` (for a DICOM image whose header names a patient: its PatientID and
IssuerOfPatientID, stored with the result and only read for the FHIR subject of ``GET /jobs/{id}``;
never part of the JSON result). Times are Unix epoch seconds (float, UTC).

Lifecycle of a job: ``queued`` -> ``running`` (first claim) -> ``succeeded`` (every result stored) |
``failed`` | ``cancelled``. Images are deleted as soon as their result is stored (and all of a job's
remaining images when it fails or is cancelled); finished jobs are deleted ``job_retention_s``
seconds after finishing (:meth:`JobStore.sweep`), their patient rows with them (and at once when a
job fails or is cancelled).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import (
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    and_,
    create_engine,
    delete,
    event,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from service.jobs import JobFinishedError, JobNotFoundError

log = logging.getLogger(__name__)

UNFINISHED = ("queued", "running")
FINISHED = ("succeeded", "failed", "cancelled")
STATUSES = UNFINISHED + FINISHED


class Base(DeclarativeBase):
    """Declarative base of the job tables."""


class JobRow(Base):
    """One job (a submitted study)."""

    __tablename__ = "dermserve_jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    key_hash: Mapped[str | None] = mapped_column(String(64))  # sha256 hex of the caller's API key
    reference: Mapped[str | None] = mapped_column(String(256))
    status: Mapped[str] = mapped_column(String(16))
    total: Mapped[int] = mapped_column(Integer)
    done: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[float] = mapped_column(Double)
    started_at: Mapped[float | None] = mapped_column(Double)
    finished_at: Mapped[float | None] = mapped_column(Double)
    error: Mapped[str | None] = mapped_column(Text)
    model_name: Mapped[str | None] = mapped_column(String(256))
    model_version: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (Index("ix_dermserve_jobs_status_created", "status", "created_at"),)


class JobItemRow(Base):
    """One image of a job: its bytes until computed, then its result."""

    __tablename__ = "dermserve_job_items"

    job_id: Mapped[str] = mapped_column(ForeignKey("dermserve_jobs.id", ondelete="CASCADE"), primary_key=True)
    idx: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[str | None] = mapped_column(String(256))  # the client's id / multipart filename
    data: Mapped[bytes | None] = mapped_column(LargeBinary)  # original encoded image; NULL once computed
    state: Mapped[str] = mapped_column(String(16), default="pending")  # pending | claimed | done
    claimed_by: Mapped[str | None] = mapped_column(String(128))
    lease_until: Mapped[float | None] = mapped_column(Double)
    claim_count: Mapped[int] = mapped_column(Integer, default=0)  # how often the image was claimed
    computed_by: Mapped[str | None] = mapped_column(String(128))  # worker whose result was stored
    result: Mapped[str | None] = mapped_column(Text)  # JSON of schemas.api.Prediction

    __table_args__ = (Index("ix_dermserve_job_items_state", "state", "lease_until"),)


class JobPatientRow(Base):
    """The patient a job image's DICOM header named (PatientID, IssuerOfPatientID): kept for the FHIR
    subject of the job's report, deleted with the job. A table of its own (not columns of the items),
    so stores created before it gain it by ``create_all`` without a migration."""

    __tablename__ = "dermserve_job_patients"

    job_id: Mapped[str] = mapped_column(ForeignKey("dermserve_jobs.id", ondelete="CASCADE"), primary_key=True)
    idx: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(64))
    issuer: Mapped[str | None] = mapped_column(String(64))


@dataclass(frozen=True)
class ClaimedItem:
    """An image claimed for computation by this worker."""

    job_id: str
    idx: int
    image_id: str | None
    data: bytes
    attempts: int = 1  # claims of this image so far, this one included (claim_count)


@dataclass(frozen=True)
class JobView:
    """A job as read by its owner; ``results`` (JSON strings in input order) only when succeeded."""

    id: str
    status: str
    done: int
    total: int
    reference: str | None
    created_at: float
    finished_at: float | None
    error: str | None
    model_name: str | None
    model_version: str | None
    results: list[str] | None = None
    #: image index -> (PatientID, IssuerOfPatientID) of DICOM images naming a patient; only when
    #: read with ``patients=True`` (the FHIR report), else None
    patients: dict[int, tuple[str, str | None]] | None = None


@dataclass(frozen=True)
class StoreStats:
    """Counts for the metrics: jobs by status and the age (s) of the oldest queued job (0 if none)."""

    by_status: dict[str, int]
    oldest_queued_age_s: float


def sqlite_url(jobs_dir: Path) -> str:
    """The default store URL: ``sqlite:///<jobs_dir>/jobs.sqlite3`` (the directory is created)."""
    jobs_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(jobs_dir / 'jobs.sqlite3').resolve()}"


def make_engine(url: str) -> Engine:
    """A SQLAlchemy engine for ``url`` with the pragmas/pool settings the store relies on."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record) -> None:  # noqa: ANN001
            cur = dbapi_conn.cursor()
            for pragma in ("journal_mode=WAL", "synchronous=FULL", "secure_delete=ON", "foreign_keys=ON"):
                cur.execute(f"PRAGMA {pragma}")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)


#: Arbitrary 64-bit key of the PostgreSQL advisory lock serialising table creation ("dermjobs").
_SCHEMA_LOCK_KEY = 0x6465726D6A6F6273


class JobStore:
    """The job tables behind one engine.

    Args:
        url: SQLAlchemy URL (``sqlite:///...`` or ``postgresql+psycopg://...``).

    Raises:
        sqlalchemy.exc.SQLAlchemyError: the database cannot be reached or the tables cannot be created.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        if self.engine.dialect.name == "postgresql":
            # Replicas starting together would race on CREATE TABLE (a unique violation in
            # pg_type); a transaction-scoped advisory lock makes table creation one-at-a-time.
            with self.engine.begin() as conn:
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _SCHEMA_LOCK_KEY})
                Base.metadata.create_all(conn)
            return
        for attempt in range(3):  # two processes creating the tables at once: the loser retries
            try:
                Base.metadata.create_all(self.engine)
                break
            except OperationalError:
                if attempt == 2:
                    raise
                time.sleep(0.2)

    def close(self) -> None:
        """Close every pooled connection (SQLite then checkpoints and removes its WAL file)."""
        self.engine.dispose()

    # ---------------------------------------------------------------- jobs
    def create(self, job_id: str, key_hash: str | None, reference: str | None,
               images: Sequence[tuple[str | None, bytes]]) -> float:
        """Persist a job and its images (``(image_id, encoded bytes)`` in input order) in one transaction.

        Returns:
            ``created_at`` (epoch seconds). When this returns the job is committed (durable).
        """
        now = time.time()
        with Session(self.engine) as s, s.begin():
            s.add(JobRow(id=job_id, key_hash=key_hash, reference=reference, status="queued", total=len(images),
                         done=0, created_at=now))
            s.flush()
            s.execute(insert(JobItemRow), [
                {"job_id": job_id, "idx": i, "image_id": image_id, "data": data, "state": "pending", "claim_count": 0}
                for i, (image_id, data) in enumerate(images)
            ])
        return now

    def _owned(self, s: Session, job_id: str, key_hash: str | None) -> JobRow:
        job = s.get(JobRow, job_id)
        if job is None or (key_hash is not None and job.key_hash != key_hash):
            raise JobNotFoundError(f"no job {job_id!r} (unknown, expired, or not yours)")
        return job

    def get(self, job_id: str, key_hash: str | None, *, patients: bool = False) -> JobView:
        """Read a job (with results when it has succeeded).

        Args:
            key_hash: the caller's key hash; ``None`` = authentication is off, every job is visible.
            patients: also read the patients of a succeeded job's DICOM images (for its FHIR report only).

        Raises:
            JobNotFoundError: unknown id, expired, or another key's job.
        """
        with Session(self.engine) as s:
            job = self._owned(s, job_id, key_hash)
            results = found = None
            if job.status == "succeeded":
                results = list(s.scalars(select(JobItemRow.result).where(JobItemRow.job_id == job_id)
                                         .order_by(JobItemRow.idx)))
                if patients:
                    found = {idx: (pid, issuer) for idx, pid, issuer in s.execute(
                        select(JobPatientRow.idx, JobPatientRow.patient_id, JobPatientRow.issuer)
                        .where(JobPatientRow.job_id == job_id))}
            return self._view(job, results, found)

    @staticmethod
    def _view(job: JobRow, results: list[str] | None,
              patients: dict[int, tuple[str, str | None]] | None = None) -> JobView:
        return JobView(id=job.id, status=job.status, done=job.done, total=job.total, reference=job.reference,
                       created_at=job.created_at, finished_at=job.finished_at, error=job.error,
                       model_name=job.model_name, model_version=job.model_version, results=results,
                       patients=patients)

    def cancel(self, job_id: str, key_hash: str | None) -> JobView:
        """Cancel an unfinished job and delete its remaining images.

        Raises:
            JobNotFoundError: unknown id, expired, or another key's job.
            JobFinishedError: the job has already succeeded, failed or been cancelled.
        """
        with Session(self.engine) as s, s.begin():
            job = self._owned(s, job_id, key_hash)
            n = s.execute(update(JobRow).where(JobRow.id == job_id, JobRow.status.in_(UNFINISHED))
                          .values(status="cancelled", finished_at=time.time())).rowcount
            if n == 0:
                s.refresh(job)
                raise JobFinishedError(f"job {job_id!r} has already finished ({job.status}); it cannot be cancelled")
            s.execute(delete(JobPatientRow).where(JobPatientRow.job_id == job_id))
            s.execute(delete(JobItemRow).where(JobItemRow.job_id == job_id))
            s.refresh(job)
            return self._view(job, None)

    def fail(self, job_ids: Iterable[str], error: str) -> None:
        """Mark unfinished jobs failed with ``error`` and delete their images."""
        ids = list(set(job_ids))
        if not ids:
            return
        with Session(self.engine) as s, s.begin():
            s.execute(update(JobRow).where(JobRow.id.in_(ids), JobRow.status.in_(UNFINISHED))
                      .values(status="failed", error=error, finished_at=time.time()))
            s.execute(delete(JobPatientRow).where(JobPatientRow.job_id.in_(ids)))
            s.execute(delete(JobItemRow).where(JobItemRow.job_id.in_(ids)))

    # ---------------------------------------------------------------- work queue
    def claim(self, worker_id: str, limit: int, lease_s: float) -> list[ClaimedItem]:
        """Claim up to ``limit`` images of unfinished jobs (oldest job first, input order) for ``lease_s`` s.

        Claimable: ``pending`` images, and ``claimed`` ones whose lease has expired. On PostgreSQL the
        rows are locked with ``FOR UPDATE SKIP LOCKED``, so concurrent replicas take disjoint chunks;
        each claim increments the image's ``claim_count``. Jobs still ``queued`` become ``running``.
        """
        now = time.time()
        with Session(self.engine) as s, s.begin():
            rows = s.execute(
                select(JobItemRow.job_id, JobItemRow.idx, JobItemRow.image_id, JobItemRow.data,
                       JobItemRow.claim_count)
                .join(JobRow, JobRow.id == JobItemRow.job_id)
                .where(JobRow.status.in_(UNFINISHED),
                       or_(JobItemRow.state == "pending",
                           and_(JobItemRow.state == "claimed", JobItemRow.lease_until < now)))
                .order_by(JobRow.created_at, JobItemRow.job_id, JobItemRow.idx)
                .limit(limit)
                .with_for_update(skip_locked=True, of=JobItemRow)
            ).all()
            claimed: list[ClaimedItem] = []
            for job_id, idx, image_id, data, claim_count in rows:
                # conditional update: also correct where FOR UPDATE is a no-op (SQLite, one writer at a time)
                n = s.execute(
                    update(JobItemRow)
                    .where(JobItemRow.job_id == job_id, JobItemRow.idx == idx,
                           or_(JobItemRow.state == "pending",
                               and_(JobItemRow.state == "claimed", JobItemRow.lease_until < now)))
                    .values(state="claimed", claimed_by=worker_id, lease_until=now + lease_s,
                            claim_count=JobItemRow.claim_count + 1)
                ).rowcount
                if n == 1 and data is not None:
                    claimed.append(ClaimedItem(job_id, idx, image_id, data, (claim_count or 0) + 1))
            job_ids = {c.job_id for c in claimed}
            if job_ids:
                s.execute(update(JobRow).where(JobRow.id.in_(job_ids), JobRow.status == "queued")
                          .values(status="running", started_at=now))
        return claimed

    def complete(self, worker_id: str, results: Sequence[tuple[str, int, str]], model_name: str,
                 model_version: str, patients: Mapping[tuple[str, int], tuple[str, str | None]] | None = None) -> int:
        """Store results ``(job_id, idx, prediction JSON)`` of images this worker holds a claim on.

        The image bytes are deleted in the same update. A result whose claim was lost (lease
        expired and another worker re-claimed it, or the job was cancelled) is discarded. A job
        whose every result is stored becomes ``succeeded``.

        Args:
            patients: ``(job_id, idx) -> (PatientID, IssuerOfPatientID)`` of DICOM images naming a
                patient, stored with their result (for the job's FHIR report).

        Returns:
            The number of results stored.
        """
        stored: dict[str, int] = {}
        patients = patients or {}
        with Session(self.engine) as s, s.begin():
            for job_id, idx, result in results:
                n = s.execute(
                    update(JobItemRow)
                    .where(JobItemRow.job_id == job_id, JobItemRow.idx == idx, JobItemRow.state == "claimed",
                           JobItemRow.claimed_by == worker_id)
                    .values(state="done", result=result, data=None, computed_by=worker_id, lease_until=None)
                ).rowcount
                stored[job_id] = stored.get(job_id, 0) + n
                patient = patients.get((job_id, idx))
                if n == 1 and patient is not None:
                    s.add(JobPatientRow(job_id=job_id, idx=idx, patient_id=patient[0], issuer=patient[1]))
            now = time.time()
            for job_id, n in stored.items():
                if n == 0:
                    continue
                s.execute(update(JobRow).where(JobRow.id == job_id, JobRow.status.in_(UNFINISHED))
                          .values(done=JobRow.done + n, model_name=model_name, model_version=model_version))
                s.execute(update(JobRow).where(JobRow.id == job_id, JobRow.status.in_(UNFINISHED),
                                               JobRow.done >= JobRow.total)
                          .values(status="succeeded", finished_at=now))
        return sum(stored.values())

    def release(self, worker_id: str, keys: Iterable[tuple], *, count_attempt: bool = False) -> None:
        """Give back claims so the images are claimable again at once.

        Args:
            worker_id: the claiming worker (claims of other workers are left alone).
            keys: ``(job_id, idx, attempts)`` of the images (``attempts`` = :attr:`ClaimedItem.attempts`,
                so only *that* claim is released, never a newer claim of the same row by this worker
                after the first one's lease ran out); ``(job_id, idx)`` releases whatever claim
                ``worker_id`` holds.
            count_attempt: False (shutdown, full queue, deadline: not the image's fault) undoes the
                claim's ``claim_count`` increment; True (the model call failed) keeps it, so a
                repeatedly failing image ends its job after ``max_attempts`` (see the runner).
        """
        keys = list(keys)
        if not keys:
            return
        values: dict = {"state": "pending", "claimed_by": None, "lease_until": None}
        if not count_attempt:
            values["claim_count"] = JobItemRow.claim_count - 1
        with Session(self.engine) as s, s.begin():
            for key in keys:
                job_id, idx = key[0], key[1]
                cond = [JobItemRow.job_id == job_id, JobItemRow.idx == idx, JobItemRow.state == "claimed",
                        JobItemRow.claimed_by == worker_id, JobItemRow.claim_count > 0]
                if len(key) > 2:
                    cond.append(JobItemRow.claim_count == key[2])
                s.execute(update(JobItemRow).where(*cond).values(**values))

    def requeue_at_startup(self) -> int:
        """Resume unfinished work after a restart.

        SQLite (one process per file): every claim belongs to a dead process and is released at once.
        PostgreSQL: only expired claims are released (live ones belong to other replicas). Jobs left
        ``running`` without a live claim go back to ``queued``.

        Returns:
            The number of jobs requeued.
        """
        now = time.time()
        with Session(self.engine) as s, s.begin():
            stale = JobItemRow.state == "claimed"
            if not self.is_sqlite:
                stale = and_(stale, JobItemRow.lease_until < now)
            s.execute(update(JobItemRow).where(stale).values(state="pending", claimed_by=None, lease_until=None))
            live = select(JobItemRow.job_id).where(JobItemRow.job_id == JobRow.id, JobItemRow.state == "claimed")
            return s.execute(update(JobRow).where(JobRow.status == "running", ~live.exists())
                             .values(status="queued")).rowcount

    # ---------------------------------------------------------------- housekeeping
    def sweep(self, retention_s: float) -> int:
        """Delete jobs (and their results) that finished more than ``retention_s`` seconds ago.

        Returns:
            The number of jobs deleted.
        """
        cutoff = time.time() - retention_s
        with Session(self.engine) as s, s.begin():
            expired = select(JobRow.id).where(JobRow.status.in_(FINISHED), JobRow.finished_at < cutoff)
            s.execute(delete(JobPatientRow).where(JobPatientRow.job_id.in_(expired)))
            s.execute(delete(JobItemRow).where(JobItemRow.job_id.in_(expired)))
            return s.execute(delete(JobRow).where(JobRow.status.in_(FINISHED), JobRow.finished_at < cutoff)).rowcount

    def stats(self) -> StoreStats:
        """Jobs by status and the age in seconds of the oldest ``queued`` job."""
        with Session(self.engine) as s:
            counts = dict(s.execute(select(JobRow.status, func.count()).group_by(JobRow.status)).all())
            oldest = s.scalar(select(func.min(JobRow.created_at)).where(JobRow.status == "queued"))
        return StoreStats({st: int(counts.get(st, 0)) for st in STATUSES},
                          max(0.0, time.time() - oldest) if oldest is not None else 0.0)
