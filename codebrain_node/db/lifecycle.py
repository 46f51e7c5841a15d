"""A study's life as one explicit state machine; every transition is checked here and leaves an audit event.

    receiving ─► stable ─► queued ─► imputing ─► written ─► awaiting_review ─► approved ─► exported
                   │  │                 │  ▲        ▲             │                │ ▲
                   │  └─────────────────┼──┼────────┘             ▼                ▼ └─ (export retry)
                   ▼                    ▼  └─ queued (retry)   rejected        dead_letter
                ignored               failed

A new acquired instance sends a settled study back to ``receiving`` (the study changed, so it is looked at
again). A study whose job is still queued goes back too, and the job is withdrawn (``jobs.withdraw_queued_job``),
so the study is planned once with everything it holds instead of imputed twice; a study being imputed keeps its
state, and its results go back to ``receiving`` with it when the job ends (``written → receiving``) rather than
out to PACS. When the study settles again with the inputs of a job already done, that job's results are current
again: ``stable → written`` and on by the export policy.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from codebrain_node.db.models import AuditEvent, Study, StudyState, utcnow

S = StudyState

ALLOWED: dict[StudyState, frozenset[StudyState]] = {
    S.RECEIVING: frozenset({S.STABLE}),
    S.STABLE: frozenset({S.QUEUED, S.IGNORED, S.RECEIVING, S.WRITTEN}),
    S.QUEUED: frozenset({S.IMPUTING, S.FAILED, S.RECEIVING}),
    S.IMPUTING: frozenset({S.WRITTEN, S.QUEUED, S.FAILED}),
    S.WRITTEN: frozenset({S.AWAITING_REVIEW, S.APPROVED, S.RECEIVING}),
    S.AWAITING_REVIEW: frozenset({S.APPROVED, S.REJECTED, S.RECEIVING}),
    S.APPROVED: frozenset({S.EXPORTED, S.DEAD_LETTER, S.RECEIVING}),
    S.DEAD_LETTER: frozenset({S.APPROVED, S.RECEIVING}),
    S.EXPORTED: frozenset({S.RECEIVING, S.APPROVED}),
    S.REJECTED: frozenset({S.RECEIVING}),
    S.IGNORED: frozenset({S.RECEIVING}),
    S.FAILED: frozenset({S.RECEIVING, S.QUEUED}),
}

#: States in which a newly received acquired instance reopens the study. A queued study goes back only with its
#: job withdrawn (``jobs.withdraw_queued_job``); a written one only by its engine, which holds the job.
REOPENABLE = frozenset(
    state for state, targets in ALLOWED.items() if S.RECEIVING in targets and state not in (S.QUEUED, S.WRITTEN)
)


class TransitionError(RuntimeError):
    """A transition the state machine does not allow (a bug or a race lost to another worker)."""


def audit(session: Session, actor: str, action: str, study: Study | None = None, **details: Any) -> AuditEvent:
    """Record who did what; ``details`` must hold no patient identifiers."""
    event = AuditEvent(actor=actor, action=action, study_id=study.id if study else None, details=details, at=utcnow())
    session.add(event)
    return event


def transition(session: Session, study: Study, target: StudyState, actor: str, **details: Any) -> None:
    """Move ``study`` to ``target`` if the state machine allows it, and audit the move."""
    current = StudyState(study.state)
    if target not in ALLOWED[current]:
        raise TransitionError(f"study {study.id}: {current.value} → {target.value} is not allowed")
    study.state = target
    study.updated_at = utcnow()
    if target is S.STABLE:
        study.stable_at = utcnow()
    if study.id is None:
        session.flush()
    audit(session, actor, f"state:{target.value}", study, previous=current.value, **details)


def apply_export_policy(session: Session, study: Study, policy: str) -> None:
    """WRITTEN onwards: ``auto`` approves now (the exporter sends on its next round); ``review`` waits for a
    radiologist."""
    if policy == "auto":
        transition(session, study, S.APPROVED, actor="policy:auto")
    else:
        transition(session, study, S.AWAITING_REVIEW, actor="policy:review")


def reopen_if_settled(session: Session, study: Study, actor: str = "receiver") -> bool:
    """A new acquired instance arrived: look at the study again unless a job is about to or does run on it."""
    if StudyState(study.state) in REOPENABLE:
        transition(session, study, S.RECEIVING, actor, reason="new instance")
        return True
    return False


def stable_candidates(session: Session, quiet_since: datetime) -> list[Study]:
    """Studies still receiving whose last instance is older than ``quiet_since``."""
    query = select(Study).where(Study.state == S.RECEIVING, Study.last_received_at <= quiet_since)
    return list(session.scalars(query))
