"""Associations in the database: the receiver opens and closes rows, the scheduler asks which hold a study open.

DICOM has no "end of study" message, but it has the end of an association (A-RELEASE, PS3.8 7.2): a sender that
is still associated may still be sending. So a study whose instances came over an association that is still open
is not complete, however long it has been quiet; the quiet period counts from the later of its last instance and
the release of every association that delivered one (``route/stable.py``). The rows live here, not in the
receiver's memory, so several nodes sharing one database decide alike, and a restarted node closes the rows its
dead predecessor left open (an association never outlives the process that accepted it).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from codebrain_node.db.jobs import local_worker_is_dead
from codebrain_node.db.models import Association, Instance, Series, as_utc, utcnow

#: How an association ended, as ``Association.end_reason`` records it.
RELEASED = "released"
ABORTED = "aborted"
CONNECTION_CLOSED = "connection closed"
RECEIVER_STOPPED = "receiver stopped"
RECEIVER_DIED = "receiver died"


def receiver_identity() -> str:
    """``host:pid`` of this process: what :func:`close_orphaned_associations` checks after a restart."""
    return f"{socket.gethostname()}:{os.getpid()}"


def open_association(
    session: Session,
    key: str,
    *,
    receiver: str,
    started_at: datetime,
    calling_ae_title: str | None = None,
    called_ae_title: str | None = None,
    peer_address: str | None = None,
    peer_port: int | None = None,
) -> Association:
    """The row of an accepted association (idempotent on ``key``: a batch retried after a lost race)."""
    row = session.scalars(select(Association).where(Association.key == key)).first()
    if row is None:
        row = Association(
            key=key,
            receiver=receiver[:128],
            calling_ae_title=(calling_ae_title or None) and calling_ae_title[:16],
            called_ae_title=(called_ae_title or None) and called_ae_title[:16],
            peer_address=(peer_address or None) and peer_address[:64],
            peer_port=peer_port,
            started_at=started_at,
            instances=0,
            bytes=0,
        )
        session.add(row)
        session.flush()
    return row


def close_association(session: Session, key: str, ended_at: datetime, reason: str) -> bool:
    """Record the end of an association; the first end recorded wins (released, then connection closed)."""
    row = session.scalars(select(Association).where(Association.key == key)).first()
    if row is None or row.ended_at is not None:
        return False
    row.ended_at = ended_at
    row.end_reason = reason[:32]
    return True


def close_orphaned_associations(
    session: Session, is_dead: Callable[[str | None], bool] = local_worker_is_dead, now: datetime | None = None
) -> int:
    """Close open rows whose receiving process is known dead (this host, pid gone); returns how many.

    Rows of other hosts are left alone: only their own node can tell, and ``routing.force_complete_after_s``
    settles a study such a row holds if that node never comes back.
    """
    now = now or utcnow()
    closed = 0
    for row in session.scalars(select(Association).where(Association.ended_at.is_(None))):
        if is_dead(row.receiver):
            row.ended_at = now
            row.end_reason = RECEIVER_DIED
            closed += 1
    return closed


@dataclass(frozen=True)
class StudyHold:
    """What the associations that delivered a study's instances say about its completeness."""

    #: Associations still open (their sender may still be sending).
    open: int
    #: The latest release (or abort) among the closed ones; None if none closed.
    last_ended_at: datetime | None


def holds_of(session: Session, study_ids: Iterable[int]) -> dict[int, StudyHold]:
    """For each study, its open associations and the last end among the closed ones (studies with no instance
    from an association, say filed after a crash, are absent: nothing holds them)."""
    ids = list(study_ids)
    if not ids:
        return {}
    delivered = (
        select(Series.study_id.label("study_id"), Instance.association_id.label("association_id"))
        .join(Instance, Instance.series_id == Series.id)
        .where(Series.study_id.in_(ids), Instance.association_id.is_not(None))
        .distinct()
        .subquery()
    )
    rows = session.execute(
        select(
            delivered.c.study_id,
            func.count(Association.id).filter(Association.ended_at.is_(None)),
            func.max(Association.ended_at),
        )
        .join(Association, Association.id == delivered.c.association_id)
        .group_by(delivered.c.study_id)
    ).all()
    return {study_id: StudyHold(int(open_count or 0), as_utc(last)) for study_id, open_count, last in rows}


def open_associations(session: Session, limit: int = 20) -> list[Association]:
    """Open associations, oldest first (for ``status``)."""
    query = select(Association).where(Association.ended_at.is_(None)).order_by(Association.started_at)
    return list(session.scalars(query.limit(limit)))


def count_associations(session: Session, since: datetime) -> tuple[int, int]:
    """(open now, closed since ``since``)."""
    open_count = session.scalar(select(func.count(Association.id)).where(Association.ended_at.is_(None))) or 0
    closed = session.scalar(select(func.count(Association.id)).where(Association.ended_at >= since)) or 0
    return int(open_count), int(closed)
