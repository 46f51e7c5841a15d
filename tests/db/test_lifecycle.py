"""The study state machine allows only its transitions and audits each one."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, select

from codebrain_node.db import AuditEvent, Study, StudyState, session_factory, upgrade
from codebrain_node.db.lifecycle import TransitionError, reopen_if_settled, transition


@pytest.fixture
def session(sqlite_engine: Engine):
    upgrade(sqlite_engine)
    with session_factory(sqlite_engine)() as session:
        yield session


def test_happy_path_is_audited(session) -> None:
    study = Study(study_instance_uid="1.2.3")
    session.add(study)
    session.flush()
    path = [
        StudyState.STABLE,
        StudyState.QUEUED,
        StudyState.IMPUTING,
        StudyState.WRITTEN,
        StudyState.APPROVED,
        StudyState.EXPORTED,
    ]
    for state in path:
        transition(session, study, state, actor="test")
    session.commit()
    actions = list(session.scalars(select(AuditEvent.action).order_by(AuditEvent.id)))
    assert actions == [f"state:{state.value}" for state in path]
    assert study.stable_at is not None


def test_illegal_transition_raises(session) -> None:
    study = Study(study_instance_uid="1.2.4")
    session.add(study)
    session.flush()
    with pytest.raises(TransitionError, match="receiving → exported"):
        transition(session, study, StudyState.EXPORTED, actor="test")
    assert study.state == StudyState.RECEIVING


def test_new_instance_reopens_settled_but_not_running_study(session) -> None:
    study = Study(study_instance_uid="1.2.5", state=StudyState.EXPORTED)
    running = Study(study_instance_uid="1.2.6", state=StudyState.IMPUTING)
    session.add_all([study, running])
    session.flush()
    assert reopen_if_settled(session, study)
    assert study.state == StudyState.RECEIVING
    assert not reopen_if_settled(session, running)
    assert running.state == StudyState.IMPUTING
