"""What the node holds, for ``codebrain-node status``: studies, their series and contrasts, jobs and exports, the
associations senders hold open, and Storage Commitment transactions (pending, committed, failed, timed out).

Identifies studies by UID and accession-free numbers only: status output ends up in tickets and chat, so it
carries no patient names or IDs. A superseded synthetic series is listed as such (never as one the study has),
with why and what became of its deliveries.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import inspect, or_, select
from sqlalchemy.orm import Session, selectinload

from codebrain_node.db.associations import StudyHold, count_associations, holds_of, open_associations
from codebrain_node.db.commitments import commitment_counts
from codebrain_node.db.models import (
    AuditEvent,
    CommitmentRole,
    CommitmentStatus,
    Export,
    ExportKind,
    ExportStatus,
    Job,
    Series,
    StorageCommitment,
    Study,
    StudyState,
    as_utc,
    utcnow,
)
from codebrain_node.db.session import current_revision, head_revision
from codebrain_node.durations import format_age

#: What ``status`` says on a database the node has not made yet.
NOTHING_YET = (
    "nothing yet: this database holds no node data (`codebrain-node serve` creates it on start, "
    "or run `codebrain-node db upgrade`)"
)


@dataclass
class StudyLine:
    id: int
    uid: str
    state: str
    age_s: float
    inputs: list[str]
    synthetic: list[str]
    other_series: int
    job: str
    exports: str
    #: ``FLAIR #1022 (FLAIR acquired: series #5)`` for each superseded synthetic series.
    superseded: list[str] = field(default_factory=list)
    #: For a receiving study: what it waits for (an open association, or the quiet period).
    waiting: str = ""


def collect(session: Session, limit: int = 50) -> list[StudyLine]:
    """The ``limit`` most recently active studies, newest first."""
    studies = session.scalars(
        select(Study)
        .options(selectinload(Study.series).selectinload(Series.exports), selectinload(Study.jobs))
        .order_by(Study.last_received_at.desc())
        .limit(limit)
    ).all()
    receiving = [study.id for study in studies if StudyState(study.state) is StudyState.RECEIVING]
    holds = holds_of(session, receiving)
    lines = []
    now = utcnow()
    for study in studies:
        acquired = [s for s in study.series if not s.is_synthetic]
        # a confidence map's series describes one of these: counted with its exports, not as a contrast
        contrasts = [s for s in study.series if s.is_synthetic and s.describes_series_id is None]
        synthetic = [s for s in contrasts if s.superseded_at is None]
        superseded = [s for s in contrasts if s.superseded_at is not None]
        job = max(study.jobs, key=lambda j: j.id, default=None)
        job_text = f"#{job.id} {job.status} ({job.attempts}/{job.max_attempts})" if job else "-"
        if job and job.error:
            job_text += f": {job.error[:100]}"
        if len(study.jobs) > 1:
            job_text += f"  [{_job_counts(study.jobs)}]"
        lines.append(
            StudyLine(
                id=study.id,
                uid=study.study_instance_uid,
                state=str(study.state),
                age_s=(now - as_utc(study.first_received_at)).total_seconds(),
                inputs=sorted(s.contrast for s in acquired if s.contrast and s.contrast != "other"),
                synthetic=sorted(s.contrast for s in synthetic if s.contrast),
                other_series=sum(1 for s in acquired if not s.contrast or s.contrast == "other"),
                job=job_text,
                exports=_export_text([e for s in study.series if s.is_synthetic for e in s.exports]),
                superseded=[
                    f"{s.contrast} #{s.series_number} ({s.superseded_reason or 'superseded'})" for s in superseded
                ],
                waiting=_waiting(study, holds.get(study.id), now) if study.id in receiving else "",
            )
        )
    return lines


def _job_counts(jobs: list[Job]) -> str:
    counts = Counter(str(job.status) for job in jobs)
    return ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) + " in all"


def _export_text(exports: list[Export]) -> str:
    """``3 sent, 1 cancelled; rejection notes: 1 sent``."""
    series = Counter(str(e.status) for e in exports if e.kind == ExportKind.SERIES)
    notes = Counter(str(e.status) for e in exports if e.kind == ExportKind.REJECTION_NOTE)
    text = ", ".join(f"{n} {k}" for k, n in sorted(series.items())) or "-"
    if notes:
        text += "; rejection notes: " + ", ".join(f"{n} {k}" for k, n in sorted(notes.items()))
    return text


def _waiting(study: Study, hold: StudyHold | None, now: datetime) -> str:
    """What a receiving study waits for before it can be stable."""
    if hold is not None and hold.open:
        return f"held open by {hold.open} association(s) that delivered it"
    last = as_utc(study.last_received_at)
    if hold is not None and hold.last_ended_at is not None:
        last = max(last, hold.last_ended_at)
    return f"quiet for {format_age((now - last).total_seconds())}"


def dead_letters(session: Session) -> list[tuple[str, str, str, int, str]]:
    """Exports that gave up: (study UID, series UID, destination, attempts, last error)."""
    rows = session.execute(
        select(
            Study.study_instance_uid, Series.series_instance_uid, Export.destination, Export.attempts, Export.last_error
        )
        .join(Series, Export.series_id == Series.id)
        .join(Study, Series.study_id == Study.id)
        .where(Export.status == ExportStatus.DEAD_LETTER)
    ).all()
    return [(a, b, c, d, e or "") for a, b, c, d, e in rows]


def queue_counts(session: Session) -> dict[str, int]:
    return dict(Counter(str(status) for status in session.scalars(select(Job.status))))


def recent_audit(session: Session, limit: int = 10) -> list[AuditEvent]:
    return list(session.scalars(select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)))


def schema_problem(session: Session) -> str | None:
    """None when the database holds the node's current schema, else the one line to print instead."""
    engine = session.get_bind()
    if not inspect(engine).has_table("studies"):
        return NOTHING_YET
    current, head = current_revision(engine), head_revision()
    if current != head:
        return f"the database schema is at revision {current}, this node's is {head}: run `codebrain-node db upgrade`"
    return None


def association_lines(session: Session) -> list[str]:
    """How many associations are open (and closed today), and who holds the open ones."""
    now = utcnow()
    open_count, closed = count_associations(session, now - timedelta(days=1))
    out = [f"associations: {open_count} open, {closed} ended in the last 24 h"]
    for row in open_associations(session):
        since = as_utc(row.started_at)
        out.append(
            f"  {row.calling_ae_title or '?'} from {row.peer_address or '?'}:{row.peer_port or '?'} "
            f"open {format_age((now - since).total_seconds())}: {row.instances} instances, "
            f"{row.bytes / 1e6:.1f} MB (receiver {row.receiver})"
        )
    return out


#: Storage Commitment transactions (PS3.4 Annex J) by our role, in the order ``status`` names them.
_COMMITMENT_ROLES = (("scu", "we asked destinations"), ("scp", "peers asked us"))
_COMMITMENT_STATES = ("pending", "committed", "failed", "timed_out")


def commitment_lines(session: Session) -> list[str]:
    """``storage commitment: we asked destinations 1 pending, 4 committed; peers asked us 2 committed, 1 failed``,
    and the transactions not committed (or whose report did not reach the requester), newest first (a few)."""
    counts = commitment_counts(session)
    if not counts:
        return []
    parts = []
    for role, words in _COMMITMENT_ROLES:
        mine = [
            f"{counts[(role, state)]} {state.replace('_', ' ')}"
            for state in _COMMITMENT_STATES
            if (role, state) in counts
        ]
        if mine:
            parts.append(f"{words} {', '.join(mine)}")
    out = [f"storage commitment: {'; '.join(parts)}"]
    unsettled = session.scalars(
        select(StorageCommitment)
        # not committed, or committed but the report never reached the requester
        .where(
            or_(StorageCommitment.status != CommitmentStatus.COMMITTED, StorageCommitment.detail.like("not reported%"))
        )
        .order_by(StorageCommitment.id.desc())
        .limit(5)
    )
    for row in unsettled:
        side = "asked of" if row.role == CommitmentRole.SCU else "asked by"
        out.append(
            f"  {row.status} {row.transaction_uid} {side} {row.peer_ae_title or '?'}: {row.instances} instance(s), "
            f"{row.failed} failed{f' ({row.detail[:80]})' if row.detail else ''}"
        )
    return out


def render(session: Session, limit: int = 50) -> str:
    """The text ``codebrain-node status`` prints."""
    problem = schema_problem(session)
    if problem is not None:
        return problem
    lines = collect(session, limit)
    out = []
    counts = queue_counts(session)
    out.append("jobs: " + (", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "none"))
    out.extend(association_lines(session))
    out.extend(commitment_lines(session))
    out.append(f"studies ({len(lines)} shown):")
    if not lines:
        out.append("  none yet")
    for line in lines:
        out.append(
            f"  [{line.id}] {line.uid}  {line.state}  age {format_age(line.age_s)}"
            + (f"  ({line.waiting})" if line.waiting else "")
            + f"\n       in: {', '.join(line.inputs) or '-'}"
            + (f" (+{line.other_series} other)" if line.other_series else "")
            + f"   synthetic: {', '.join(line.synthetic) or '-'}\n"
            + "".join(f"       superseded: {text}\n" for text in line.superseded)
            + f"       job: {line.job}   exports: {line.exports}"
        )
    dead = dead_letters(session)
    if dead:
        out.append("dead letters (retry with `codebrain-node export retry`):")
        for study_uid, series_uid, destination, attempts, error in dead:
            out.append(f"  {study_uid} / {series_uid} → {destination}: {attempts} attempts, {error[:80]}")
    events = recent_audit(session)
    if events:
        out.append("recent events:")
        for event in reversed(events):
            study = f" study {event.study_id}" if event.study_id else ""
            out.append(f"  {as_utc(event.at):%Y-%m-%d %H:%M:%S} {event.actor}: {event.action}{study}")
    return "\n".join(out)
