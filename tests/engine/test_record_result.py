"""Recording a job's result: a replacement gets a free series number and supersedes the earlier series of its
contrast; a result whose study received acquired instances meanwhile goes back to receiving, not out to PACS."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from codebrain_node.config import Settings
from codebrain_node.contrasts import Contrast
from codebrain_node.db import jobs
from codebrain_node.db.lifecycle import transition
from codebrain_node.db.models import Instance, Job, JobStatus, Series, Study, StudyState, utcnow
from codebrain_node.db.session import session_factory, transaction, upgrade
from codebrain_node.engine.worker import Engine as Worker
from codebrain_node.engine.worker import JobResult, _series_number, study_numbering
from codebrain_node.write.synthetic_series import WrittenInstance, WrittenSeries

WORKER = "host:1:thread-0"


@pytest.fixture
def factory(sqlite_engine: Engine) -> sessionmaker[Session]:
    upgrade(sqlite_engine)
    return session_factory(sqlite_engine)


def _series(  # type: ignore[no-untyped-def]
    session: Session, study: Study, uid: str, number: int, contrast: str | None, synthetic: bool, received_at=None
) -> Series:
    series = Series(study=study, series_instance_uid=uid, series_number=number, contrast=contrast)
    session.add(series)
    series.is_synthetic = synthetic
    series.instances.append(
        Instance(
            sop_instance_uid=f"{uid}.1",
            sop_class_uid="1.2.840.10008.5.1.4.1.1.4",
            path=f"{uid}.dcm",
            size_bytes=1,
            received_at=received_at or utcnow() - timedelta(hours=1),
        )
    )
    return series


def _running_job(factory: sessionmaker[Session]) -> int:
    """A study with acquired T1, T2 and FLAIR, a current synthetic T1Gd #1021 from an earlier job, and a new job
    (inputs T1, T2, FLAIR; target T1Gd) claimed by ``WORKER``."""
    with transaction(factory) as session:
        study = Study(study_instance_uid="1.2.9", state=StudyState.RECEIVING)
        session.add(study)
        for uid, number, contrast in (("1.2.9.2", 2, "T1"), ("1.2.9.3", 3, "T2"), ("1.2.9.4", 4, "FLAIR")):
            _series(session, study, uid, number, contrast, synthetic=False)
        _series(session, study, "1.2.9.1021", 1021, "T1Gd", synthetic=True)
        session.flush()
        job = Job(study=study, inputs={"T1": "1.2.9.2"}, targets=["T1Gd"], created_at=utcnow() - timedelta(minutes=1))
        session.add(job)
        session.flush()
        transition(session, study, StudyState.STABLE, "test")
        transition(session, study, StudyState.QUEUED, "test")
        claimed = jobs.claim_next_job(session, WORKER)
        assert claimed is not None and claimed.id == job.id
        return job.id


def _result(number: int, replaces: int | None) -> JobResult:
    uid = f"1.2.9.{number}"
    instance = WrittenInstance(f"{uid}.1", "1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.1.2.1", 1, Path("x.dcm"), 1)
    description = "SYNTHETIC T1Gd (m)" + (f" - replaces series {replaces}" if replaces else "")
    written = WrittenSeries(Contrast.T1GD, uid, number, description, None, [instance])
    return JobResult(written={Contrast.T1GD: written}, timings={"model_s": 1.0})


def _worker(settings: Settings, factory: sessionmaker[Session]) -> Worker:
    return Worker(settings, factory, model=SimpleNamespace(name="m", version="1"), name=WORKER)  # type: ignore[arg-type]


def test_the_replacement_takes_a_free_number_and_supersedes_the_earlier_series(factory, tmp_path: Path) -> None:
    job_id = _running_job(factory)
    with factory() as session:
        numbering = study_numbering(session, session.get(Job, job_id).study, [Contrast.T1GD])
    assert numbering.replaces == {Contrast.T1GD: 1021}
    reference = [SimpleNamespace(SeriesNumber=2)]
    assert _series_number(reference, 1) == 1021  # type: ignore[arg-type]
    assert _series_number(reference, 1, set(numbering.taken)) == 1121  # type: ignore[arg-type]

    settings = Settings.model_validate({"paths": {"data_dir": str(tmp_path)}})
    _worker(settings, factory)._record(job_id, _result(1121, replaces=1021))
    with factory() as session:
        old = session.scalars(select(Series).where(Series.series_number == 1021)).one()
        new = session.scalars(select(Series).where(Series.series_number == 1121)).one()
        assert old.superseded_by_series_id == new.id and new.superseded_at is None
        assert old.superseded_reason.startswith("replaced by series #1121")
        assert StudyState(session.get(Job, job_id).study.state) is StudyState.APPROVED


def test_instances_that_arrived_while_the_job_ran_send_the_result_back_to_receiving(factory, tmp_path: Path) -> None:
    job_id = _running_job(factory)
    with transaction(factory) as session:
        study = session.get(Job, job_id).study
        _series(session, study, "1.2.9.5", 5, None, synthetic=False, received_at=utcnow())
    settings = Settings.model_validate({"paths": {"data_dir": str(tmp_path)}})
    _worker(settings, factory)._record(job_id, _result(1121, replaces=1021))
    with factory() as session:
        job = session.get(Job, job_id)
        assert job.status is JobStatus.DONE
        assert StudyState(job.study.state) is StudyState.RECEIVING  # planned again; nothing approved or sent
