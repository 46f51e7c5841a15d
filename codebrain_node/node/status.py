"""What the node holds, for ``codebrain-node status``: studies, their series and contrasts, jobs and exports.

Identifies studies by UID and accession-free numbers only: status output ends up in tickets and chat, so it
carries no patient names or IDs.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from codebrain_node.db.models import AuditEvent, Export, ExportStatus, Job, Series, Study, as_utc, utcnow
from codebrain_node.durations import format_age


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


def collect(session: Session, limit: int = 50) -> list[StudyLine]:
    """The ``limit`` most recently active studies, newest first."""
    studies = session.scalars(
        select(Study)
        .options(selectinload(Study.series).selectinload(Series.exports), selectinload(Study.jobs))
        .order_by(Study.last_received_at.desc())
        .limit(limit)
    ).all()
    lines = []
    now = utcnow()
    for study in studies:
        acquired = [s for s in study.series if not s.is_synthetic]
        synthetic = [s for s in study.series if s.is_synthetic]
        job = max(study.jobs, key=lambda j: j.id, default=None)
        job_text = f"#{job.id} {job.status} ({job.attempts}/{job.max_attempts})" if job else "-"
        if job and job.error:
            job_text += f": {job.error[:100]}"
        export_counts = Counter(str(e.status) for s in synthetic for e in s.exports)
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
                exports=", ".join(f"{n} {k}" for k, n in sorted(export_counts.items())) or "-",
            )
        )
    return lines


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


def render(session: Session, limit: int = 50) -> str:
    """The text ``codebrain-node status`` prints."""
    lines = collect(session, limit)
    out = []
    counts = queue_counts(session)
    out.append("jobs: " + (", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "none"))
    out.append(f"studies ({len(lines)} shown):")
    if not lines:
        out.append("  none yet")
    for line in lines:
        out.append(
            f"  [{line.id}] {line.uid}  {line.state}  age {format_age(line.age_s)}\n"
            f"       in: {', '.join(line.inputs) or '-'}"
            + (f" (+{line.other_series} other)" if line.other_series else "")
            + f"   synthetic: {', '.join(line.synthetic) or '-'}\n"
            f"       job: {line.job}   exports: {line.exports}"
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
