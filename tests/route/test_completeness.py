"""A study is complete when its senders are done: open associations hold it, the quiet period counts from their
release, force-complete settles one held too long; late series re-plan a queued job and supersede what they make
obsolete, and unchanged inputs let earlier results stand."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from mr_headers import add_series, mr_header, write_series
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker
from test_stable import FLAIR_HEADER, LOCALIZER, MODEL, T0, T1_HEADER, T2_HEADER, make_study, state_of

from codebrain_node.config import Settings
from codebrain_node.db.associations import close_association, open_association
from codebrain_node.db.models import (
    AuditEvent,
    Export,
    ExportStatus,
    Instance,
    Job,
    JobStatus,
    Series,
    Study,
    StudyState,
    utcnow,
)
from codebrain_node.db.session import session_factory, transaction, upgrade
from codebrain_node.receive.recorder import record_instances
from codebrain_node.receive.spool import describe_file
from codebrain_node.route.stable import check_stable_studies


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.model_validate({"paths": {"data_dir": str(tmp_path)}, "routing": {"quiet_period_s": 60}})


@pytest.fixture
def factory(sqlite_engine: Engine) -> sessionmaker[Session]:
    upgrade(sqlite_engine)
    return session_factory(sqlite_engine)


def held_by(factory: sessionmaker[Session], study_id: int, key: str, started: datetime) -> None:
    """Link every instance of the study to one association, opened at ``started`` and still open."""
    with transaction(factory) as session:
        association = open_association(session, key, receiver="scanner-host:1", started_at=started)
        instances = session.scalars(select(Instance).join(Series).where(Series.study_id == study_id))
        for instance in instances:
            instance.association_id = association.id


def release(factory: sessionmaker[Session], key: str, at: datetime) -> None:
    with transaction(factory) as session:
        assert close_association(session, key, at, "released")


def jobs_of(factory: sessionmaker[Session]) -> list[Job]:
    with factory() as session:
        return list(session.scalars(select(Job).order_by(Job.id)))


def test_an_open_association_holds_the_study_and_the_quiet_period_counts_from_its_release(
    factory, settings: Settings
) -> None:
    study_id = make_study(factory, settings, "1.2.826.20", [T1_HEADER, T2_HEADER, FLAIR_HEADER])
    held_by(factory, study_id, "a1", T0 - timedelta(minutes=1))
    # the sender pauses far longer than the quiet period (60 s) but is still associated: not complete
    assert check_stable_studies(factory, settings, MODEL, now=T0 + timedelta(minutes=10)) == []
    assert state_of(factory, study_id) is StudyState.RECEIVING
    release(factory, "a1", T0 + timedelta(minutes=10))
    assert check_stable_studies(factory, settings, MODEL, now=T0 + timedelta(minutes=10, seconds=59)) == []
    assert check_stable_studies(factory, settings, MODEL, now=T0 + timedelta(minutes=11, seconds=1)) == [study_id]
    (job,) = jobs_of(factory)
    assert set(job.inputs) == {"T1", "T2", "FLAIR"} and job.targets == ["T1Gd"]
    with factory() as session:
        stable = session.scalars(select(AuditEvent).where(AuditEvent.action == "state:stable")).one()
    assert "released" in stable.details["reason"]


def test_a_study_held_open_too_long_is_force_completed_with_a_log_line(
    factory, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    settings.routing.force_complete_after_s = 600
    study_id = make_study(factory, settings, "1.2.826.21", [T1_HEADER, T2_HEADER])
    held_by(factory, study_id, "never-released", T0 - timedelta(minutes=1))
    assert check_stable_studies(factory, settings, MODEL, now=T0 + timedelta(seconds=599)) == []
    with caplog.at_level(logging.WARNING, logger="codebrain_node.route.stable"):
        assert check_stable_studies(factory, settings, MODEL, now=T0 + timedelta(seconds=601)) == [study_id]
    assert "still open" in caplog.text and "force_complete_after_s" in caplog.text
    with factory() as session:
        stable = session.scalars(select(AuditEvent).where(AuditEvent.action == "state:stable")).one()
    assert stable.details["reason"].startswith("forced")


def _receive(factory: sessionmaker[Session], paths: list[Path]) -> None:
    """File instances as the recorder does (their received_at is now)."""
    with transaction(factory) as session:
        record_instances(session, [describe_file(path) for path in paths])


def test_a_late_series_withdraws_the_queued_job_and_the_study_is_planned_once(factory, settings: Settings) -> None:
    uid = "1.2.826.22"
    study_id = make_study(factory, settings, uid, [T1_HEADER, T2_HEADER])
    assert check_stable_studies(factory, settings, MODEL, now=T0 + timedelta(minutes=2)) == [study_id]
    (first,) = jobs_of(factory)
    assert first.status is JobStatus.QUEUED and set(first.targets) == {"T1Gd", "FLAIR"}

    _, flair = write_series(settings.paths.data_dir / "incoming" / uid, FLAIR_HEADER, 10, study_uid=uid)
    _receive(factory, flair)
    assert state_of(factory, study_id) is StudyState.RECEIVING
    assert jobs_of(factory)[0].status is JobStatus.CANCELLED  # no worker will run it

    assert check_stable_studies(factory, settings, MODEL, now=utcnow() + timedelta(minutes=2)) == [study_id]
    cancelled, planned = jobs_of(factory)
    assert cancelled.status is JobStatus.CANCELLED
    assert planned.status is JobStatus.QUEUED and set(planned.inputs) == {"T1", "T2", "FLAIR"}
    assert planned.targets == ["T1Gd"]  # FLAIR is acquired now: never synthesised
    with factory() as session:
        actions = list(session.scalars(select(AuditEvent.action).where(AuditEvent.study_id == study_id)))
    assert actions == ["state:stable", "state:queued", "state:receiving", "state:stable", "state:queued"]


def _with_results(
    factory: sessionmaker[Session],
    settings: Settings,
    study_id: int,
    contrasts: list[str],
    inputs: dict[str, str],
    *,
    sent: bool,
    state: StudyState = StudyState.EXPORTED,
) -> dict[str, int]:
    """A done job and its current synthetic series (sent to "pacs" or not); the study left in ``state``."""
    ids = {}
    with transaction(factory) as session:
        study = session.get(Study, study_id)
        for offset, contrast in enumerate(contrasts, start=1):
            header = mr_header(f"SYNTHETIC {contrast} (test)", synthetic=True, series_number=1020 + offset)
            series_uid, paths = write_series(
                settings.paths.data_dir / "synthetic", header, 4, study_uid=study.study_instance_uid
            )
            series = add_series(session, study, series_uid, paths, T0, series_number=1020 + offset, is_synthetic=True)
            series.contrast = contrast
            if sent:
                session.add(Export(series_id=series.id, destination="pacs", status=ExportStatus.SENT, sent_at=T0))
            ids[contrast] = series.id
        session.add(
            Job(study=study, status=JobStatus.DONE, inputs=inputs, targets=contrasts, created_at=T0 + timedelta(days=1))
        )
        study.state = state
    return ids


def _input_uids(factory: sessionmaker[Session], study_id: int) -> dict[str, str]:
    with factory() as session:
        numbers = {2: "T1", 3: "T2", 4: "FLAIR"}
        series = session.scalars(select(Series).where(Series.study_id == study_id, Series.is_synthetic.is_(False)))
        return {numbers[s.series_number]: s.series_instance_uid for s in series if s.series_number in numbers}


def test_an_acquired_late_series_supersedes_its_synthetic_twin_and_the_rest_is_made_again(
    factory, settings: Settings
) -> None:
    uid = "1.2.826.23"
    study_id = make_study(factory, settings, uid, [T1_HEADER, T2_HEADER])
    synthetic = _with_results(factory, settings, study_id, ["T1Gd", "FLAIR"], _input_uids(factory, study_id), sent=True)
    _, flair = write_series(settings.paths.data_dir / "incoming" / uid, FLAIR_HEADER, 10, study_uid=uid)
    _receive(factory, flair)  # reopens the exported study
    assert state_of(factory, study_id) is StudyState.RECEIVING

    assert check_stable_studies(factory, settings, MODEL, now=utcnow() + timedelta(minutes=2)) == [study_id]
    with factory() as session:
        flair_synthetic = session.get(Series, synthetic["FLAIR"])
        acquired = session.scalars(select(Series).where(Series.study_id == study_id, Series.series_number == 4)).one()
        assert flair_synthetic.superseded_at is not None
        assert flair_synthetic.superseded_by_series_id == acquired.id
        assert flair_synthetic.superseded_reason == "FLAIR acquired: series #4"
        # the T1Gd stays current until its replacement (made from T1, T2 and FLAIR) is written
        assert session.get(Series, synthetic["T1Gd"]).superseded_at is None
        job = session.scalars(select(Job).where(Job.status == JobStatus.QUEUED)).one()
        assert set(job.inputs) == {"T1", "T2", "FLAIR"} and job.targets == ["T1Gd"]
        assert session.scalars(select(AuditEvent).where(AuditEvent.action == "series:superseded")).one()


def test_unchanged_inputs_let_the_results_stand(factory, settings: Settings) -> None:
    """A localizer re-sent after the results were sent: nothing is imputed again, the study is approved again
    (the same series need no second approval) and the exporter settles it as exported."""
    uid = "1.2.826.24"
    study_id = make_study(factory, settings, uid, [T1_HEADER, T2_HEADER, FLAIR_HEADER])
    _with_results(factory, settings, study_id, ["T1Gd"], _input_uids(factory, study_id), sent=True)
    _, localizer = write_series(settings.paths.data_dir / "incoming" / uid, LOCALIZER, 3, study_uid=uid)
    _receive(factory, localizer)
    assert check_stable_studies(factory, settings, MODEL, now=utcnow() + timedelta(minutes=2)) == [study_id]
    assert state_of(factory, study_id) is StudyState.APPROVED
    assert [job.status for job in jobs_of(factory)] == [JobStatus.DONE]


def test_unchanged_inputs_of_results_never_approved_go_by_the_policy(factory, settings: Settings) -> None:
    settings.export.policy = "review"
    uid = "1.2.826.25"
    study_id = make_study(factory, settings, uid, [T1_HEADER, T2_HEADER, FLAIR_HEADER])
    _with_results(
        factory,
        settings,
        study_id,
        ["T1Gd"],
        _input_uids(factory, study_id),
        sent=False,
        state=StudyState.AWAITING_REVIEW,
    )
    _, localizer = write_series(settings.paths.data_dir / "incoming" / uid, LOCALIZER, 3, study_uid=uid)
    _receive(factory, localizer)
    assert state_of(factory, study_id) is StudyState.RECEIVING  # a reviewer cannot approve a changing study
    assert check_stable_studies(factory, settings, MODEL, now=utcnow() + timedelta(minutes=2)) == [study_id]
    assert state_of(factory, study_id) is StudyState.AWAITING_REVIEW
    assert len(jobs_of(factory)) == 1
