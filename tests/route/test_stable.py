"""Quiet-period detection, classification stored on the rows, one job per study, restart resumes."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from mr_headers import add_series, add_study, mr_header, write_series
from sqlalchemy import Engine, select

from codebrain_node.config import Settings
from codebrain_node.contrasts import Contrast
from codebrain_node.db import AuditEvent, Job, JobStatus, Series, Study, StudyState, session_factory, upgrade
from codebrain_node.db.session import make_engine
from codebrain_node.route.stable import check_stable_studies, make_scheduler, wanted_contrasts

MODEL = [Contrast.T1, Contrast.T1GD, Contrast.T2, Contrast.FLAIR]
T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)

T1_HEADER = mr_header("t1_mprage_sag", scanning=("GR", "IR"), acquisition="3D", tr=2300, te=3, ti=900, series_number=2)
T2_HEADER = mr_header("t2_tse_tra", tr=4000, te=91, series_number=3)
FLAIR_HEADER = mr_header("t2_tirm_tra_dark-fluid", scanning=("SE", "IR"), tr=9000, te=81, ti=2500, series_number=4)
T1GD_HEADER = mr_header(
    "t1_mprage_sag_post",
    scanning=("GR", "IR"),
    acquisition="3D",
    tr=2300,
    te=3,
    ti=900,
    agent="Gadovist",
    series_number=5,
)
LOCALIZER = mr_header("localizer", image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"), series_number=1)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.model_validate(
        {"paths": {"data_dir": str(tmp_path)}, "routing": {"quiet_period_s": 60}, "engine": {"max_attempts": 4}}
    )


@pytest.fixture
def factory(sqlite_engine: Engine):
    upgrade(sqlite_engine)
    return session_factory(sqlite_engine)


@pytest.fixture
def pg_factory(postgres_engine: Engine):
    upgrade(postgres_engine)
    return session_factory(postgres_engine)


def make_study(factory, settings: Settings, uid: str, headers, last: datetime = T0, slices: int = 10) -> int:
    """A study on disk and in the database as the receiver leaves it: RECEIVING, last instance at ``last``."""
    incoming = settings.paths.data_dir / "incoming" / uid
    with factory() as session, session.begin():
        study = add_study(session, uid, last)
        for header in headers:
            series_uid, paths = write_series(incoming, header, slices, study_uid=uid)
            add_series(session, study, series_uid, paths, last, series_number=int(header.SeriesNumber))
        return study.id


def state_of(factory, study_id: int) -> StudyState:
    with factory() as session:
        return StudyState(session.get(Study, study_id).state)


def test_quiet_period_is_respected_then_one_job_is_made(factory, settings: Settings) -> None:
    study_id = make_study(factory, settings, "1.2.826.1", [LOCALIZER, T1_HEADER, T2_HEADER, FLAIR_HEADER])
    assert check_stable_studies(factory, settings, MODEL, now=T0 + timedelta(seconds=59)) == []
    assert state_of(factory, study_id) is StudyState.RECEIVING

    assert check_stable_studies(factory, settings, MODEL, now=T0 + timedelta(seconds=61)) == [study_id]
    assert state_of(factory, study_id) is StudyState.QUEUED
    with factory() as session:
        job = session.scalars(select(Job)).one()
        series = {s.series_number: s for s in session.scalars(select(Series))}
        actions = list(session.scalars(select(AuditEvent.action).order_by(AuditEvent.id)))
    assert job.targets == ["T1Gd"]
    assert set(job.inputs) == {"T1", "T2", "FLAIR"}
    assert job.inputs["T1"] == series[2].series_instance_uid
    assert (job.status, job.attempts, job.max_attempts) == (JobStatus.QUEUED, 0, 4)
    assert series[1].contrast == "other" and "LOCALIZER" in series[1].classification_reason
    assert series[4].contrast == "FLAIR" and "FLAIR" in series[4].classification_reason
    assert actions == ["state:stable", "state:queued"]
    # Checking again changes nothing: the study is no longer receiving.
    assert check_stable_studies(factory, settings, MODEL, now=T0 + timedelta(hours=1)) == []
    with factory() as session:
        assert len(session.scalars(select(Job)).all()) == 1


def test_no_usable_input_or_nothing_missing_is_ignored_with_reason(factory, settings: Settings) -> None:
    only_localizer = make_study(factory, settings, "1.2.826.2", [LOCALIZER])
    complete = make_study(factory, settings, "1.2.826.3", [T1_HEADER, T1GD_HEADER, T2_HEADER, FLAIR_HEADER])
    settled = check_stable_studies(factory, settings, MODEL, now=T0 + timedelta(minutes=5))
    assert sorted(settled) == sorted([only_localizer, complete])
    with factory() as session:
        assert session.scalars(select(Job)).all() == []
        reasons = {
            event.study_id: event.details["reason"]
            for event in session.scalars(select(AuditEvent).where(AuditEvent.action == "state:ignored"))
        }
    assert state_of(factory, only_localizer) is StudyState.IGNORED
    assert reasons[only_localizer].startswith("no usable input")
    assert reasons[complete].startswith("nothing to synthesise")


def test_synthesize_setting_narrows_targets(factory, settings: Settings) -> None:
    settings.routing.synthesize = [Contrast.FLAIR, Contrast.PD]  # PD is not in the model: never a target
    assert wanted_contrasts(MODEL, settings.routing.synthesize) == [Contrast.FLAIR]
    with_flair = make_study(factory, settings, "1.2.826.4", [T1_HEADER, FLAIR_HEADER])
    without_flair = make_study(factory, settings, "1.2.826.5", [T1_HEADER, T2_HEADER])
    check_stable_studies(factory, settings, MODEL, now=T0 + timedelta(minutes=5))
    assert state_of(factory, with_flair) is StudyState.IGNORED
    assert state_of(factory, without_flair) is StudyState.QUEUED
    with factory() as session:
        assert session.scalars(select(Job.targets)).one() == ["FLAIR"]


def test_own_synthetic_series_is_never_an_input(factory, settings: Settings) -> None:
    study_id = make_study(factory, settings, "1.2.826.6", [T2_HEADER])
    synthetic_header = mr_header("SYNTHETIC T1 (codebrain)", tr=500, te=10, synthetic=True, series_number=1031)
    with factory() as session, session.begin():
        study = session.get(Study, study_id)
        uid, paths = write_series(settings.paths.data_dir / "synthetic", synthetic_header, 10, study_uid="1.2.826.6")
        add_series(session, study, uid, paths, T0, series_number=1031, is_synthetic=True)
    check_stable_studies(factory, settings, MODEL, now=T0 + timedelta(minutes=5))
    with factory() as session:
        job = session.scalars(select(Job)).one()
    assert job.inputs == {"T2": job.inputs["T2"]}
    assert set(job.targets) == {"T1", "T1Gd", "FLAIR"}


def test_reopened_study_with_unchanged_inputs_is_not_imputed_twice(factory, settings: Settings) -> None:
    study_id = make_study(factory, settings, "1.2.826.7", [T1_HEADER, T2_HEADER])
    check_stable_studies(factory, settings, MODEL, now=T0 + timedelta(minutes=2))
    with factory() as session, session.begin():
        job = session.scalars(select(Job)).one()
        job.status = JobStatus.DONE
        job.created_at = T0 + timedelta(minutes=2)
        study = session.get(Study, study_id)
        study.state = StudyState.RECEIVING  # reopened by a re-sent instance
        study.last_received_at = T0 + timedelta(minutes=3)
    check_stable_studies(factory, settings, MODEL, now=T0 + timedelta(minutes=10))
    assert state_of(factory, study_id) is StudyState.IGNORED
    with factory() as session:
        event = session.scalars(select(AuditEvent).where(AuditEvent.action == "state:ignored")).one()
    assert "already synthesised" in event.details["reason"]


def _wait_for(predicate, timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_scheduler_runs_checks_and_a_restart_resumes(tmp_path: Path, settings: Settings) -> None:
    """State lives in the database: a new scheduler (new engine, same file) settles what the old one left."""
    settings.routing.quiet_period_s = 0
    settings.routing.check_interval_s = 0.1
    url = f"sqlite:///{tmp_path / 'restart.db'}"
    first_engine = make_engine(url)
    upgrade(first_engine)
    first = session_factory(first_engine)
    past = datetime.now(UTC) - timedelta(seconds=5)
    study_a = make_study(first, settings, "1.2.826.8", [T1_HEADER, T2_HEADER], last=past)
    scheduler = make_scheduler(first, settings, MODEL)
    scheduler.start()
    try:
        assert _wait_for(lambda: state_of(first, study_a) is StudyState.QUEUED)
    finally:
        scheduler.shutdown(wait=True)
    first_engine.dispose()

    # While the node is down, another study arrives (recorded by a restarted receiver, say).
    second_engine = make_engine(url)
    second = session_factory(second_engine)
    study_b = make_study(second, settings, "1.2.826.9", [FLAIR_HEADER], last=past)
    scheduler = make_scheduler(second, settings, MODEL)
    scheduler.start()
    try:
        assert _wait_for(lambda: state_of(second, study_b) is StudyState.QUEUED)
    finally:
        scheduler.shutdown(wait=True)
    with second() as session:
        assert len(session.scalars(select(Job)).all()) == 2
    assert state_of(second, study_a) is StudyState.QUEUED
    second_engine.dispose()


def test_instance_arriving_while_settling_rolls_back(factory, settings: Settings, monkeypatch) -> None:
    """An instance recorded between the candidate query and our first write: the study stays RECEIVING."""
    import codebrain_node.route.stable as stable

    study_id = make_study(factory, settings, "1.2.826.10", [T1_HEADER, T2_HEADER])
    real_transition = stable.transition

    def receiver_wins_the_race(session, study, target, actor, **details):
        if target is StudyState.STABLE:
            with factory() as other, other.begin():  # the receiver's recorder, on its own connection
                other.get(Study, study_id).last_received_at = T0 + timedelta(minutes=4)
        return real_transition(session, study, target, actor, **details)

    monkeypatch.setattr(stable, "transition", receiver_wins_the_race)
    assert check_stable_studies(factory, settings, MODEL, now=T0 + timedelta(minutes=4, seconds=30)) == []
    assert state_of(factory, study_id) is StudyState.RECEIVING
    with factory() as session:
        assert session.scalars(select(Job)).all() == []
        assert session.scalars(select(AuditEvent)).all() == []
    monkeypatch.setattr(stable, "transition", real_transition)
    assert check_stable_studies(factory, settings, MODEL, now=T0 + timedelta(minutes=6)) == [study_id]


@pytest.mark.postgres
def test_settling_on_postgres_locks_and_queues(pg_factory, settings: Settings) -> None:
    study_id = make_study(pg_factory, settings, "1.2.826.11", [T1_HEADER, T2_HEADER, FLAIR_HEADER])
    assert check_stable_studies(pg_factory, settings, MODEL, now=T0 + timedelta(seconds=30)) == []
    assert check_stable_studies(pg_factory, settings, MODEL, now=T0 + timedelta(minutes=2)) == [study_id]
    assert state_of(pg_factory, study_id) is StudyState.QUEUED
    with pg_factory() as session:
        assert session.scalars(select(Job.targets)).one() == ["T1Gd"]
