"""The job queue in the database: claim, heartbeat, finish, fail (with bounded retries) and lease expiry.

Several engine workers, on one machine or on several sharing one PostgreSQL database, take jobs from the same
table. A claim on PostgreSQL is ``SELECT … FOR UPDATE SKIP LOCKED`` (the oldest queued job no other transaction
holds), so two workers never get the same job and never wait for each other. SQLite has no row locks; there a
claim is a guarded ``UPDATE … WHERE status = 'queued'`` whose row count says whether we won (one worker per
SQLite node, but even two would not both win).

A claimed job is leased: its worker calls :func:`heartbeat` while it runs; a job whose heartbeat is older than
``engine.lease_timeout_s`` belonged to a worker that died and is taken back by :func:`requeue_expired_leases`,
which counts as a failed attempt. Every function works inside the caller's transaction (``with transaction(factory)
as session``), so a step and what the caller records with it commit together. Every study state change goes
through ``lifecycle.transition``:

    job:   QUEUED ─claim─► RUNNING ─finish─► DONE           study: QUEUED ─► IMPUTING ─► WRITTEN
                              └─fail/expired─► QUEUED (attempts < max) ─┐          IMPUTING ─► QUEUED (retry)
                                              FAILED (attempts = max)  │          IMPUTING ─► FAILED
           QUEUED ─withdraw─► CANCELLED  (instances arrived before any worker claimed it)   QUEUED ─► RECEIVING
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from codebrain_node.db.lifecycle import transition
from codebrain_node.db.models import Job, JobStatus, Study, StudyState, as_utc, utcnow
from codebrain_node.db.session import row_locks

log = logging.getLogger(__name__)

#: Longest error text kept on a job (tracebacks belong in the log).
MAX_ERROR_CHARS = 2000


class LeaseLostError(RuntimeError):
    """The job is no longer this worker's (its lease expired and it was requeued or taken by another worker)."""


def claim_next_job(session: Session, worker_id: str) -> Job | None:
    """Take the oldest queued job for ``worker_id``: RUNNING, attempts + 1, study QUEUED → IMPUTING.

    Returns the claimed :class:`Job`, or None when the queue is empty. A queued job whose study is not QUEUED (an
    inconsistency no transition should make) is marked FAILED with the reason instead of being claimed, so it can
    never wedge the head of the queue.
    """
    while True:
        job = _claim_locked(session) if row_locks(session) else _claim_guarded(session)
        if job is None:
            return None
        study = session.get(Study, job.study_id)
        if StudyState(study.state) is not StudyState.QUEUED:
            job.status = JobStatus.FAILED
            job.error = f"study was {study.state}, not queued, when the job was claimed"
            job.finished_at = utcnow()
            log.error("job %s: %s; marked failed", job.id, job.error)
            continue
        now = utcnow()
        job.worker = worker_id
        job.claimed_at = now
        job.heartbeat_at = now
        transition(session, study, StudyState.IMPUTING, _actor(worker_id), job_id=job.id, attempt=job.attempts)
        session.flush()
        log.info("job %s claimed by %s (attempt %s of %s)", job.id, worker_id, job.attempts, job.max_attempts)
        return job


def _claim_locked(session: Session) -> Job | None:
    """PostgreSQL: lock the oldest queued row that no other claimer holds, skipping locked ones."""
    query = (
        select(Job)
        .where(Job.status == JobStatus.QUEUED)
        .order_by(Job.created_at, Job.id)
        .limit(1)
        .with_for_update(skip_locked=True)
    )
    job = session.scalars(query).first()
    if job is None:
        return None
    job.status = JobStatus.RUNNING
    job.attempts = (job.attempts or 0) + 1
    return job


def _claim_guarded(session: Session) -> Job | None:
    """SQLite: pick the oldest queued id, then flip it only if it is still queued (row count 1 means ours)."""
    for _ in range(8):
        job_id = session.scalars(
            select(Job.id).where(Job.status == JobStatus.QUEUED).order_by(Job.created_at, Job.id).limit(1)
        ).first()
        if job_id is None:
            return None
        result = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.QUEUED)
            .values(status=JobStatus.RUNNING, attempts=Job.attempts + 1)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount == 1:
            job = session.get(Job, job_id, populate_existing=True)
            return job
    return None


def heartbeat(session: Session, job_id: int, worker_id: str | None = None) -> bool:
    """Renew the lease of a running job; False when it is no longer running (for ``worker_id``, if given)."""
    conditions = [Job.id == job_id, Job.status == JobStatus.RUNNING]
    if worker_id is not None:
        conditions.append(Job.worker == worker_id)
    result = session.execute(
        update(Job).where(*conditions).values(heartbeat_at=utcnow()).execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def finish_job(
    session: Session, job_id: int, timings: Mapping[str, Any], model_name: str, worker_id: str | None = None
) -> Job:
    """Mark a running job DONE (timings, model) and its study WRITTEN; returns the job.

    The caller records the written series and applies the export policy in the same transaction, so a crash
    leaves either the whole result or a job to retry, never half of it.

    Raises :class:`LeaseLostError` when the job is not running (or, given ``worker_id``, not this worker's): its
    lease expired and the result must not be recorded twice.
    """
    job = _running_job(session, job_id, worker_id)
    job.status = JobStatus.DONE
    job.timings = {key: float(value) for key, value in timings.items()}
    job.model_name = model_name[:128]
    job.error = None
    job.finished_at = utcnow()
    transition(session, job.study, StudyState.WRITTEN, _actor(job.worker), job_id=job.id, model=job.model_name)
    log.info("job %s done", job_id)
    return job


def fail_job(
    session: Session, job_id: int, error: str, worker_id: str | None = None, *, permanent: bool = False
) -> JobStatus:
    """Record a failed attempt: back to QUEUED while attempts remain, else FAILED (study FAILED) with the reason.
    ``permanent``: the inputs themselves are unusable, so FAILED at once (another attempt would read the same).

    Returns the job's new status. A job that is no longer running (lease lost) is left alone and its status
    returned, so a late failure report from a presumed-dead worker changes nothing.
    """
    job = session.get(Job, job_id, with_for_update=row_locks(session))
    if job is None:
        raise LookupError(f"job {job_id} does not exist")
    if job.status != JobStatus.RUNNING or (worker_id is not None and job.worker != worker_id):
        log.warning("job %s: failure report ignored, the job is %s", job_id, job.status)
        return JobStatus(job.status)
    return _record_failure(session, job, error, _actor(job.worker), permanent=permanent)


def requeue_expired_leases(
    session: Session, lease_timeout_s: float, now: datetime | None = None, actor: str = "engine"
) -> list[int]:
    """Take back running jobs whose worker has been silent for ``lease_timeout_s``; each is a failed attempt.

    Returns the ids of the jobs taken back (requeued or, out of attempts, failed).
    """
    now = as_utc(now) if now is not None else utcnow()
    deadline = now - timedelta(seconds=lease_timeout_s)
    expired = []
    query = select(Job).where(
        Job.status == JobStatus.RUNNING,
        or_(Job.heartbeat_at <= deadline, (Job.heartbeat_at.is_(None)) & (Job.claimed_at <= deadline)),
    )
    if row_locks(session):
        query = query.with_for_update(skip_locked=True)
    for job in session.scalars(query.order_by(Job.id)):
        last = as_utc(job.heartbeat_at or job.claimed_at)
        silent = (now - last).total_seconds() if last is not None else lease_timeout_s
        worker = job.worker
        status = _record_failure(session, job, f"lease expired: worker {worker} silent for {silent:.0f} s", actor)
        log.warning("job %s: lease of %s expired, now %s", job.id, worker, status.value)
        expired.append(job.id)
    return expired


def local_worker_is_dead(worker_id: str | None, hostname: str | None = None) -> bool:
    """True for a ``host:pid:…`` worker id of this host whose process no longer exists.

    Anything else (another host, an id without a pid, a live pid) is left to the lease, which is always safe.
    Should two machines share a host name, a job taken back by mistake is still never recorded twice: the first
    worker's ``finish_job`` then finds the job no longer its own (:class:`LeaseLostError`).
    """
    host, _, rest = (worker_id or "").partition(":")
    pid_text = rest.partition(":")[0]
    if host != (hostname or socket.gethostname()) or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # a live process of another user
        return False
    return False


def requeue_orphaned_jobs(
    session: Session, is_dead: Callable[[str | None], bool] = local_worker_is_dead, actor: str = "engine"
) -> list[int]:
    """Take back running jobs whose worker process is known dead (a node restarted after SIGKILL or a power cut).

    Without this, a restarted node would leave its own interrupted job untouched until ``lease_timeout_s`` (ten
    minutes by default) had passed; each job taken back counts as a failed attempt, as an expired lease does.
    """
    taken = []
    query = select(Job).where(Job.status == JobStatus.RUNNING).order_by(Job.id)
    if row_locks(session):
        query = query.with_for_update(skip_locked=True)
    for job in session.scalars(query):
        if not is_dead(job.worker):
            continue
        worker = job.worker
        status = _record_failure(session, job, f"worker {worker} died (found at restart)", actor)
        log.warning("job %s: worker %s is gone; now %s", job.id, worker, status.value)
        taken.append(job.id)
    return taken


def withdraw_queued_job(session: Session, study: Study, actor: str) -> bool:
    """Instances arrived for a study whose job no worker has claimed yet: cancel the job, study QUEUED → RECEIVING.

    The study is then planned again, once, with everything it holds, instead of imputed now from what it had and
    again later. Returns False (nothing changed) when the study is not QUEUED or its job was claimed meanwhile:
    a running job's engine sees the new instances when it records its result.
    """
    if StudyState(study.state) is not StudyState.QUEUED:
        return False
    result = session.execute(
        update(Job)
        .where(Job.study_id == study.id, Job.status == JobStatus.QUEUED)
        .values(status=JobStatus.CANCELLED, finished_at=utcnow(), error="withdrawn: instances arrived before it ran")
        .execution_options(synchronize_session="fetch")
    )
    if not result.rowcount:
        return False
    transition(session, study, StudyState.RECEIVING, actor, reason="new instances before the job ran; planned again")
    log.info("study id %s: queued job withdrawn, new instances arrived; planned again when stable", study.id)
    return True


def _record_failure(session: Session, job: Job, error: str, actor: str, *, permanent: bool = False) -> JobStatus:
    """The retry policy, shared by worker-reported failures and expired leases."""
    job.error = error[:MAX_ERROR_CHARS]
    study = job.study
    if job.attempts < job.max_attempts and not permanent:
        job.status = JobStatus.QUEUED
        job.worker = None
        job.claimed_at = None
        job.heartbeat_at = None
        transition(session, study, StudyState.QUEUED, actor, job_id=job.id, attempt=job.attempts, error=job.error)
    else:
        job.status = JobStatus.FAILED
        job.finished_at = utcnow()
        transition(
            session,
            study,
            StudyState.FAILED,
            actor,
            job_id=job.id,
            attempts=job.attempts,
            reason=f"inputs unusable: {job.error}"
            if permanent
            else f"failed after {job.attempts} attempts: {job.error}",
        )
    return JobStatus(job.status)


def _running_job(session: Session, job_id: int, worker_id: str | None) -> Job:
    job = session.get(Job, job_id, with_for_update=row_locks(session))
    if job is None:
        raise LookupError(f"job {job_id} does not exist")
    if job.status != JobStatus.RUNNING or (worker_id is not None and job.worker != worker_id):
        raise LeaseLostError(f"job {job_id} is {job.status}, worker {job.worker}: not ours any more")
    return job


def _actor(worker_id: str | None) -> str:
    return f"engine:{worker_id or 'unknown'}"
