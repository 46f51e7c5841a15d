"""Which synthetic series of a study are current, and superseding those that are not.

A synthetic series stops being current when its contrast turns out to be acquired after all (a late series: PACS
must never hold a synthetic image beside the acquired one it imitates), or when a newer synthetic series of the
same contrast, made from changed inputs, replaces it. It is marked, never deleted: the review page, ``status``
and the audit trail still show it, the exporter never sends it (and withdraws it with an IHE IOCM rejection note
where it was already sent), and approving its study never approves it. What the node wrote about a series (its
confidence map, ``Series.describes_series_id``) is superseded with it, so it is withdrawn alongside.
"""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.orm import Session

from codebrain_node.db.lifecycle import audit
from codebrain_node.db.models import Series, Study, utcnow

log = logging.getLogger(__name__)


def current_synthetic(session: Session, study_id: int) -> list[Series]:
    """The study's synthetic series that are not superseded, by series number: the synthesised contrasts, not the
    series that describe them (a confidence map goes where its series goes)."""
    query = select(Series).where(
        Series.study_id == study_id,
        Series.is_synthetic,
        Series.superseded_at.is_(None),
        Series.describes_series_id.is_(None),
    )
    return list(session.scalars(query.order_by(Series.series_number, Series.id)))


def describing(session: Session, series: Series) -> list[Series]:
    """The series that describe ``series`` (its confidence map), by series number."""
    if series.id is None:
        session.flush()
    query = select(Series).where(Series.describes_series_id == series.id)
    return list(session.scalars(query.order_by(Series.series_number, Series.id)))


def supersede(session: Session, series: Series, *, by: Series | None, reason: str, actor: str) -> None:
    """Mark ``series`` superseded (by ``by``, when one takes its place) and audit it; a no-op if it already is."""
    if series.superseded_at is not None:
        return
    if by is not None and by.id is None:
        session.flush()
    series.superseded_at = utcnow()
    series.superseded_by_series_id = by.id if by is not None else None
    series.superseded_reason = reason[:256]
    study = session.get(Study, series.study_id)
    audit(
        session,
        actor,
        "series:superseded",
        study,
        series=series.series_instance_uid,
        series_number=series.series_number,
        contrast=series.contrast,
        by=by.series_instance_uid if by is not None else None,
        reason=series.superseded_reason,
    )
    log.info(
        "study id %s: synthetic %s series #%s superseded: %s",
        series.study_id,
        series.contrast,
        series.series_number,
        series.superseded_reason,
    )
    for described_by in describing(session, series):
        supersede(
            session, described_by, by=by, reason=f"describes series #{series.series_number}: {reason}", actor=actor
        )
