"""The job queue: claim, heartbeat, finish, bounded retries, lease expiry; exclusive concurrent claims on PostgreSQL."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import Engine, select

from codebrain_node.db import AuditEvent, Job, JobStatus, Study, StudyState, session_factory, upgrade
from codebrain_node.db.jobs import (
    LeaseLostError,
    claim_next_job,
    fail_job,
    finish_job,
    heartbeat,
    requeue_expired_leases,
)
from codebrain_node.db.models import utcnow
from codebrain_node.db.session import transaction


def step(factory, queue_function, *args, **kwargs):
    """One queue call in its own transaction, as the engine makes it."""
    with transaction(factory) as session:
        return queue_function(session, *args, **kwargs)


def queue_jobs(factory, count: int, max_attempts: int = 2) -> list[int]:
    """``count`` queued studies, one queued job each, oldest first."""
    ids = []
    with factory() as session, session.begin():
        base = utcnow() - timedelta(minutes=count)
        for index in range(count):
            study = Study(study_instance_uid=f"1.2.999.{index}", state=StudyState.QUEUED)
            job = Job(
                study=study,
                inputs={"T1": f"1.2.999.{index}.1"},
                targets=["T1Gd"],
                max_attempts=max_attempts,
                created_at=base + timedelta(seconds=index),
            )
            session.add(job)
            session.flush()
            ids.append(job.id)
    return ids


def job_and_study(factory, job_id: int) -> tuple[Job, StudyState]:
    with factory() as session:
        job = session.get(Job, job_id)
        return job, StudyState(job.study.state)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def factory(request: pytest.FixtureRequest):
    """Every queue test runs on SQLite (guarded UPDATE) and on PostgreSQL (FOR UPDATE SKIP LOCKED)."""
    engine: Engine = request.getfixturevalue(f"{request.param}_engine")
    upgrade(engine)
    return session_factory(engine)


def test_claim_takes_oldest_and_moves_study_to_imputing(factory) -> None:
    first, second = queue_jobs(factory, 2)
    job = step(factory, claim_next_job, "w1")
    assert job is not None and job.id == first
    assert (job.status, job.attempts, job.worker) == (JobStatus.RUNNING, 1, "w1")
    assert job.inputs == {"T1": "1.2.999.0.1"} and job.claimed_at is not None
    assert job_and_study(factory, first)[1] is StudyState.IMPUTING
    assert step(factory, claim_next_job, "w2").id == second
    assert step(factory, claim_next_job, "w3") is None


def test_inconsistent_job_is_failed_not_wedging_the_queue(factory) -> None:
    stray, good = queue_jobs(factory, 2)
    with factory() as session, session.begin():
        session.get(Job, stray).study.state = StudyState.IGNORED
    assert step(factory, claim_next_job, "w1").id == good
    job, study_state = job_and_study(factory, stray)
    assert (job.status, study_state) == (JobStatus.FAILED, StudyState.IGNORED)
    assert "not queued" in job.error


def test_finish_records_timings_and_writes_study(factory) -> None:
    (job_id,) = queue_jobs(factory, 1)
    step(factory, claim_next_job, "w1")
    assert step(factory, heartbeat, job_id, "w1")
    assert not step(factory, heartbeat, job_id, "someone-else")
    step(factory, finish_job, job_id, {"model_s": 1.5, "write_s": 0.25}, "codebrain-small 0.1", worker_id="w1")
    job, study_state = job_and_study(factory, job_id)
    assert (job.status, job.timings, job.model_name) == (
        JobStatus.DONE,
        {"model_s": 1.5, "write_s": 0.25},
        "codebrain-small 0.1",
    )
    assert job.finished_at is not None
    assert study_state is StudyState.WRITTEN
    assert not step(factory, heartbeat, job_id)
    with pytest.raises(LeaseLostError):
        step(factory, finish_job, job_id, {}, "again")


def test_fail_retries_then_fails_with_reason(factory) -> None:
    (job_id,) = queue_jobs(factory, 1, max_attempts=2)
    step(factory, claim_next_job, "w1")
    assert step(factory, fail_job, job_id, "RuntimeError: CUDA out of memory") is JobStatus.QUEUED
    job, study_state = job_and_study(factory, job_id)
    assert (job.status, job.attempts, job.worker, study_state) == (JobStatus.QUEUED, 1, None, StudyState.QUEUED)
    assert job.error == "RuntimeError: CUDA out of memory"

    again = step(factory, claim_next_job, "w2")
    assert again.id == job_id and again.attempts == 2
    assert step(factory, fail_job, job_id, "ValueError: bad series") is JobStatus.FAILED
    job, study_state = job_and_study(factory, job_id)
    assert (job.status, study_state) == (JobStatus.FAILED, StudyState.FAILED)
    assert step(factory, claim_next_job, "w3") is None
    with factory() as session:
        failed = session.scalars(select(AuditEvent).where(AuditEvent.action == "state:failed")).one()
    assert "failed after 2 attempts: ValueError: bad series" in failed.details["reason"]
    # A late report from a worker that lost the job changes nothing.
    assert step(factory, fail_job, job_id, "late") is JobStatus.FAILED


def test_unusable_inputs_fail_at_once(factory) -> None:
    (job_id,) = queue_jobs(factory, 1, max_attempts=3)
    step(factory, claim_next_job, "w1")
    assert step(factory, fail_job, job_id, "T2 series #3: 2 echo times", permanent=True) is JobStatus.FAILED
    job, study_state = job_and_study(factory, job_id)
    assert (job.status, job.attempts, study_state) == (JobStatus.FAILED, 1, StudyState.FAILED)
    with factory() as session:
        failed = session.scalars(select(AuditEvent).where(AuditEvent.action == "state:failed")).one()
    assert failed.details["reason"] == "inputs unusable: T2 series #3: 2 echo times"


def test_expired_lease_is_requeued_as_a_failed_attempt(factory) -> None:
    alive, dead = queue_jobs(factory, 2, max_attempts=2)
    step(factory, claim_next_job, "alive")
    step(factory, claim_next_job, "dead")
    later = utcnow() + timedelta(seconds=100)
    with factory() as session, session.begin():
        session.get(Job, alive).heartbeat_at = later  # the live worker keeps beating
    assert step(factory, requeue_expired_leases, lease_timeout_s=60, now=later) == [dead]
    job, study_state = job_and_study(factory, dead)
    assert (job.status, study_state) == (JobStatus.QUEUED, StudyState.QUEUED)
    assert job.error.startswith("lease expired: worker dead silent for")
    assert job_and_study(factory, alive)[0].status is JobStatus.RUNNING
    # The dead worker's late result is refused; the next claimer runs it (last attempt), dies too -> FAILED.
    with pytest.raises(LeaseLostError):
        step(factory, finish_job, dead, {}, "m", worker_id="dead")
    assert step(factory, claim_next_job, "other").id == dead
    assert step(factory, requeue_expired_leases, 60, now=utcnow() + timedelta(seconds=200)) == [alive, dead]
    assert job_and_study(factory, dead)[0].status is JobStatus.FAILED
    assert job_and_study(factory, dead)[1] is StudyState.FAILED
    assert job_and_study(factory, alive)[0].status is JobStatus.QUEUED  # its first attempt: retried


@pytest.mark.postgres
def test_postgres_concurrent_claimers_never_share_a_job(postgres_engine: Engine) -> None:
    upgrade(postgres_engine)
    factory = session_factory(postgres_engine)
    job_ids = queue_jobs(factory, 20)
    claimed: dict[str, list[int]] = {f"w{n}": [] for n in range(4)}
    start = threading.Barrier(len(claimed))
    errors: list[BaseException] = []

    def claimer(name: str) -> None:
        try:
            start.wait(timeout=30)
            while (job := step(factory, claim_next_job, name)) is not None:
                claimed[name].append(job.id)
                step(factory, finish_job, job.id, {"model_s": 0.0}, "test", worker_id=name)
        except BaseException as exc:  # reported below: a thread's failure must fail the test
            errors.append(exc)

    threads = [threading.Thread(target=claimer, args=(name,)) for name in claimed]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    every_claim = [job_id for ids in claimed.values() for job_id in ids]
    assert sorted(every_claim) == sorted(job_ids)  # each job claimed exactly once
    with factory() as session:
        jobs = session.scalars(select(Job)).all()
        assert {job.status for job in jobs} == {JobStatus.DONE}
        assert {job.attempts for job in jobs} == {1}
        assert {StudyState(job.study.state) for job in jobs} == {StudyState.WRITTEN}
        assert {job.worker for job in jobs} <= set(claimed)
