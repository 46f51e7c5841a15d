"""The worklist as data: what each study is waiting for, what came in, what was synthesised; and the two actions.

Shared by the web pages and ``codebrain-node worklist``, so a study approved from the CLI and from the browser
goes through the same lines: the state machine transition (audited with the user as actor) and then export
scheduling. A study's many states are shown as the handful a radiologist cares about (:data:`STATUS_LABELS`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session, selectinload

from codebrain_node.contrasts import Contrast
from codebrain_node.db.lifecycle import transition
from codebrain_node.db.models import AuditEvent, Export, Job, Series, Study, StudyState, as_utc, utcnow
from codebrain_node.db.superseding import current_synthetic
from codebrain_node.durations import format_age  # noqa: F401 (re-exported for the review templates)

log = logging.getLogger(__name__)

S = StudyState

#: Worklist status key → label, in the order a study lives them.
STATUS_LABELS: dict[str, str] = {
    "receiving": "receiving",
    "waiting_stable": "waiting for stable",
    "queued": "queued",
    "imputing": "imputing",
    "awaiting_review": "awaiting review",
    "approved": "approved, sending",
    "sent": "approved and sent",
    "rejected": "rejected",
    "ignored": "nothing to synthesise",
    "failed": "failed",
    "dead_letter": "dead letter",
}

STATES_OF_STATUS: dict[str, frozenset[StudyState]] = {
    "receiving": frozenset({S.RECEIVING}),
    "waiting_stable": frozenset({S.RECEIVING, S.STABLE}),
    "queued": frozenset({S.QUEUED}),
    "imputing": frozenset({S.IMPUTING, S.WRITTEN}),
    "awaiting_review": frozenset({S.AWAITING_REVIEW}),
    "approved": frozenset({S.APPROVED}),
    "sent": frozenset({S.EXPORTED}),
    "rejected": frozenset({S.REJECTED}),
    "ignored": frozenset({S.IGNORED}),
    "failed": frozenset({S.FAILED}),
    "dead_letter": frozenset({S.DEAD_LETTER}),
}

#: A receiving study with an instance this recent is still arriving; after that it waits for the quiet period.
RECENT_INSTANCE = timedelta(seconds=10)

SORT_KEYS = ("age", "status", "patient", "updated")
#: The largest row id (an INTEGER column: 32 bits on PostgreSQL); a larger one in a URL names no row, and asking
#: the database for it would fail (PostgreSQL: integer out of range) instead of finding nothing.
MAX_ROW_ID = 2**31 - 1


def is_row_id(value: int) -> bool:
    """Could ``value`` be a row's id at all (1 … :data:`MAX_ROW_ID`)?"""
    return 0 < value <= MAX_ROW_ID


class ReviewError(RuntimeError):
    """An action that cannot be done now (unknown study, wrong state, not allowed); the message says why."""


def status_of(study: Study, now: datetime | None = None) -> str:
    """The worklist status key of a study."""
    state = StudyState(study.state)
    if state is S.RECEIVING:
        now = now or utcnow()
        last = as_utc(study.last_received_at)
        return "receiving" if last is not None and now - last < RECENT_INSTANCE else "waiting_stable"
    for key, states in STATES_OF_STATUS.items():
        if state in states and key != "receiving":
            return key
    return state.value


@dataclass
class WorklistRow:
    id: int
    study_instance_uid: str
    status: str
    status_label: str
    patient_name: str
    patient_id: str
    accession_number: str
    study_date: str
    study_description: str
    acquired: list[str]
    synthetic: list[str]
    age_s: float
    updated_at: datetime | None


def _contrast_order(name: str) -> int:
    names = [c.value for c in Contrast]
    return names.index(name) if name in names else len(names)


def _contrasts(series: list[Series], synthetic: bool) -> list[str]:
    """Acquired contrasts, or the current synthetic ones (a superseded series is no longer what the study has)."""
    found = {
        s.contrast
        for s in series
        if s.is_synthetic == synthetic and s.superseded_at is None and s.contrast and s.contrast != "other"
    }
    return sorted(found, key=_contrast_order)


def list_worklist(
    session: Session,
    status: str | None = None,
    contrast: str | None = None,
    text: str | None = None,
    sort: str = "age",
    descending: bool = False,
    limit: int = 200,
) -> list[WorklistRow]:
    """Studies filtered by worklist status, by a contrast present (acquired or synthetic), and by free text."""
    query = select(Study).options(selectinload(Study.series))
    if status:
        if status not in STATES_OF_STATUS:
            raise ReviewError(f"unknown status {status!r}; one of {', '.join(STATES_OF_STATUS)}")
        query = query.where(Study.state.in_(STATES_OF_STATUS[status]))
    if text:
        if "\x00" in text:  # no text column holds a NUL (PostgreSQL refuses the query outright)
            raise ReviewError("the search text cannot contain a NUL character")
        pattern = f"%{text.strip()}%"
        query = query.where(
            or_(
                Study.patient_name.ilike(pattern),
                Study.patient_id.ilike(pattern),
                Study.accession_number.ilike(pattern),
                Study.study_description.ilike(pattern),
                Study.study_instance_uid.ilike(pattern),
            )
        )
    if contrast:
        wanted = Contrast.parse(contrast).value
        query = query.where(Study.series.any(Series.contrast == wanted))
    studies = session.scalars(query.order_by(Study.first_received_at.desc()).limit(limit * 2)).all()
    now = utcnow()
    rows = []
    for study in studies:
        key = status_of(study, now)
        if status and key != status:
            continue
        first = as_utc(study.first_received_at) or now
        rows.append(
            WorklistRow(
                id=study.id,
                study_instance_uid=study.study_instance_uid,
                status=key,
                status_label=STATUS_LABELS.get(key, key),
                patient_name=(study.patient_name or "").replace("^", " ").strip(),
                patient_id=study.patient_id or "",
                accession_number=study.accession_number or "",
                study_date=study.study_date or "",
                study_description=study.study_description or "",
                acquired=_contrasts(study.series, synthetic=False),
                synthetic=_contrasts(study.series, synthetic=True),
                age_s=max(0.0, (now - first).total_seconds()),
                updated_at=as_utc(study.updated_at),
            )
        )
    order = list(STATUS_LABELS)
    sort_keys: dict[str, Any] = {
        "age": lambda row: row.age_s,
        "status": lambda row: (order.index(row.status) if row.status in order else len(order), row.age_s),
        "patient": lambda row: (row.patient_name.lower(), row.age_s),
        "updated": lambda row: row.updated_at or now,
    }
    if sort not in sort_keys:
        raise ReviewError(f"unknown sort {sort!r}; one of {', '.join(SORT_KEYS)}")
    rows.sort(key=sort_keys[sort], reverse=descending)
    return rows[:limit]


@dataclass
class StudyDetail:
    study: Study
    status: str
    status_label: str
    acquired: list[Series]
    #: Current synthetic series: what approving the study sends.
    synthetic: list[Series]
    #: Synthetic series superseded by an acquired series or a replacement: shown, never approved or sent.
    superseded: list[Series]
    jobs: list[Job]
    exports: list[Export]
    audit: list[AuditEvent]
    #: series_instance_uid → Series, to name a job's inputs.
    by_uid: dict[str, Series] = field(default_factory=dict)


def find_study(session: Session, key: str | int, lock: bool = False) -> Study:
    """A study by database id or Study Instance UID."""
    text = str(key).strip()
    query = select(Study)
    if text.isdigit() and not is_row_id(int(text)):
        raise ReviewError(f"no study {text[:64]}")
    query = query.where(Study.id == int(text)) if text.isdigit() else query.where(Study.study_instance_uid == text)
    if lock:
        query = query.with_for_update()
    study = session.scalars(query).one_or_none()
    if study is None:
        raise ReviewError(f"no study {text}")
    return study


def study_detail(session: Session, key: str | int) -> StudyDetail:
    study = find_study(session, key)
    series = session.scalars(
        select(Series)
        .where(Series.study_id == study.id)
        .options(selectinload(Series.instances), selectinload(Series.exports))
        .order_by(Series.series_number, Series.id)
    ).all()
    jobs = session.scalars(select(Job).where(Job.study_id == study.id).order_by(Job.id.desc())).all()
    audit = session.scalars(
        select(AuditEvent).where(AuditEvent.study_id == study.id).order_by(AuditEvent.at, AuditEvent.id)
    ).all()
    # a confidence map's series (describes_series_id) is no panel of its own: the page overlays the map on its
    # series; only its deliveries are listed
    synthetic = [s for s in series if s.is_synthetic and s.describes_series_id is None]
    describing = [s for s in series if s.describes_series_id is not None]
    current = [s for s in synthetic if s.superseded_at is None]
    key_ = status_of(study)
    return StudyDetail(
        study=study,
        status=key_,
        status_label=STATUS_LABELS.get(key_, key_),
        acquired=[s for s in series if not s.is_synthetic],
        synthetic=sorted(current, key=lambda s: _contrast_order(s.contrast or "")),
        superseded=[s for s in synthetic if s.superseded_at is not None],
        jobs=list(jobs),
        exports=[e for s in synthetic + describing for e in s.exports],
        audit=list(audit),
        by_uid={s.series_instance_uid: s for s in series},
    )


def _clean_reason(reason: str | None) -> str:
    return (reason or "").strip()[:1000]


def _require_awaiting_review(study: Study) -> None:
    """Only a study awaiting review can be approved or rejected (a second reviewer's click is refused)."""
    if StudyState(study.state) is not S.AWAITING_REVIEW:
        shown = STATUS_LABELS.get(status_of(study), str(study.state))
        raise ReviewError(f"study {study.id} is {shown}, not awaiting review")


def approve(session: Session, key: str | int, actor: str, reason: str | None = None) -> Study:
    """AWAITING_REVIEW → APPROVED by ``actor``; the exporter picks every approved study up on its next round and
    sends its current synthetic series only (a superseded one can never be approved, so never sent)."""
    study = find_study(session, key, lock=True)
    _require_awaiting_review(study)
    if not current_synthetic(session, study.id):
        raise ReviewError(f"study {study.id} has no current synthetic series to approve (all are superseded)")
    transition(session, study, S.APPROVED, actor, reason=_clean_reason(reason))
    log.info("study %s approved by %s", study.study_instance_uid, actor)
    return study


def reject(session: Session, key: str | int, actor: str, reason: str | None = None) -> Study:
    """AWAITING_REVIEW → REJECTED by ``actor``: the synthetic series are never sent."""
    study = find_study(session, key, lock=True)
    _require_awaiting_review(study)
    transition(session, study, S.REJECTED, actor, reason=_clean_reason(reason))
    log.info("study %s rejected by %s", study.study_instance_uid, actor)
    return study
