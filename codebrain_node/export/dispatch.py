"""The dispatcher: one Export row per (synthetic series, destination), sent once, retried, dead-lettered.

The exporter is the only place that schedules exports: each round of :func:`run_due_exports` first creates the
missing rows of every APPROVED study (:func:`schedule_exports`; the unique constraint makes it idempotent).
:func:`run_due_exports` sends the rows that are due. Each send is claimed first in a short transaction (attempts
+1, next attempt pushed a lease ahead; ``FOR UPDATE SKIP LOCKED`` on PostgreSQL so several nodes never send one row
at once), then delivered with no transaction open (SQLite keeps a single writer free for the receiver), then
settled: SENT for good (a SENT row is never sent again), or back off ``backoff_initial_s * 2**(attempts-1)``
capped at ``backoff_max_s``, or DEAD_LETTER after ``export.max_attempts``. A node that dies mid-send leaves the
row PENDING with its lease: it is sent again when the lease ends (at least once, never lost).

Sends resume per instance: each instance the destination acknowledges is recorded at once (an
``export_deliveries`` row, in its own short transaction, which also renews the lease), and every later attempt
(after a crash, or after a failure mid-series) sends only the instances without one, so a resend repeats at most
the one instance in flight. The lease is sized to the work left (:func:`lease_s`: the association's timeouts plus
:data:`LEASE_PER_INSTANCE_S` per instance still to send), not to the back-off cap.

A destination that asks for Storage Commitment (``storage_commitment = true``, ``export/commitment.py``) has a
series delivered only once it commits every instance: after the C-STOREs the attempt asks and waits for the
report; a failure or no report in time fails the attempt like any other (the instances it failed are sent again).

The study follows its exports: APPROVED → EXPORTED when every export is SENT, → DEAD_LETTER as soon as one is
dead. ``codebrain-node export retry`` (:func:`retry_dead_letters`) gives dead rows fresh attempts and the study
goes back to APPROVED.

Only current series go out. A series export waits while its study is not approved (reopened by a late series,
say: the scheduler first decides whether the series still stands), and a superseded series is never sent: each
round cancels its unsent rows (:func:`retract_superseded`) and, for every destination that already holds it and
``accepts_rejection_notes``, schedules an IHE IOCM rejection note (one Key Object Selection Document per series,
``write/rejection_note.py``) as an Export row of kind ``rejection_note``, sent, retried and dead-lettered like any
other, whatever the study's state (withdrawing a wrong image from PACS waits for no one).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import and_, exists, or_, select, update
from sqlalchemy.orm import Session, aliased, sessionmaker

from codebrain_node import metrics
from codebrain_node.config import Settings
from codebrain_node.db.lifecycle import audit, transition
from codebrain_node.db.models import (
    Export,
    ExportDelivery,
    ExportKind,
    ExportStatus,
    Instance,
    Series,
    Study,
    StudyState,
    as_utc,
    instance_file,
    utcnow,
)
from codebrain_node.db.session import transaction
from codebrain_node.export.base import Delivered, DeliveryError, Destination, destination_class
from codebrain_node.export.commitment import commit_series, wants_commitment
from codebrain_node.write.rejection_note import rejection_series_number, write_rejection_note

log = logging.getLogger(__name__)

ACTOR = "exporter"
Clock = Callable[[], datetime]

#: Seconds a lease allows for each instance still to send (a C-STORE of one synthetic slice takes milliseconds).
LEASE_PER_INSTANCE_S = 2.0

#: Study states in which a current series is sent (a dead-lettered study keeps sending its other rows).
SENDING_STATES = (StudyState.APPROVED, StudyState.DEAD_LETTER, StudyState.EXPORTED)


def build_destinations(settings: Settings) -> dict[str, Destination[Any]]:
    """The configured destinations by name, each built by the class registered for its ``kind``."""
    return {
        entry.name: destination_class(entry.kind).from_settings(entry, settings)
        for entry in settings.export.destinations
    }


def backoff_s(attempts: int, initial_s: float, max_s: float) -> float:
    """Seconds to wait after the ``attempts``-th failure: initial, 2x, 4x ... capped at ``max_s``."""
    return min(initial_s * 2 ** max(attempts - 1, 0), max_s)


def lease_s(settings: Settings, instances: int) -> float:
    """How long a claim holds an export: connecting and associating (``dicom.network_timeout_s`` each, the
    timeouts a C-STORE destination uses) plus :data:`LEASE_PER_INSTANCE_S` for each of ``instances`` left to send.
    Renewed at each acknowledged instance, so a slow but live send keeps it; a dead one is due again after it."""
    return 2 * settings.dicom.network_timeout_s + LEASE_PER_INSTANCE_S * instances


@dataclass(frozen=True)
class Claim:
    """What one attempt sends: the export's destination, the files still unacknowledged (with their Instance ids;
    none for a rejection note) and how many instances the series has in all."""

    destination: str
    files: list[Path]
    study_id: int
    instance_ids: dict[Path, int] = field(default_factory=dict)
    total: int = 0
    #: A series (not a rejection note): the kind a destination may be asked to commit.
    is_series: bool = False


def schedule_exports(session: Session, study: Study, settings: Settings, *, now: Clock = utcnow) -> int:
    """Create the missing Export rows for ``study``'s current synthetic series (call on APPROVED); returns how
    many. Superseded series never get one."""
    names = [entry.name for entry in settings.export.destinations]
    if not names:
        log.warning("study %s approved but export.destinations is empty: nothing to send", study.study_instance_uid)
        return 0
    series_ids = list(
        session.scalars(
            select(Series.id).where(Series.study_id == study.id, Series.is_synthetic, Series.superseded_at.is_(None))
        )
    )
    if not series_ids:
        return 0
    existing = set(
        session.execute(
            select(Export.series_id, Export.destination).where(
                Export.series_id.in_(series_ids), Export.kind == ExportKind.SERIES
            )
        ).all()
    )
    created = 0
    for series_id in series_ids:
        for name in names:
            if (series_id, name) not in existing:
                session.add(
                    Export(series_id=series_id, destination=name, status=ExportStatus.PENDING, next_attempt_at=now())
                )
                created += 1
    if created:
        session.flush()
        audit(session, ACTOR, "export:scheduled", study, exports=created, destinations=names)
    return created


def retract_superseded(session: Session, settings: Settings, *, now: Clock = utcnow) -> tuple[int, int]:
    """Cancel the unsent rows of superseded series, and schedule a rejection note for each destination that
    holds one and accepts notes; returns (cancelled, notes scheduled)."""
    superseded = Series.superseded_at.is_not(None)
    cancelled = 0
    unsent = (ExportStatus.PENDING, ExportStatus.DEAD_LETTER)
    query = select(Export).join(Series).where(superseded, Export.kind == ExportKind.SERIES, Export.status.in_(unsent))
    for export in session.scalars(query):
        export.status = ExportStatus.CANCELLED
        export.last_error = "series superseded before it was sent"
        cancelled += 1
        series = export.series
        audit(
            session,
            ACTOR,
            "export:cancelled",
            series.study,
            series=series.series_instance_uid,
            destination=export.destination,
            reason=series.superseded_reason,
        )
    accepting = {entry.name for entry in settings.export.destinations if entry.accepts_rejection_notes}
    scheduled = 0
    if accepting:
        note = aliased(Export)
        has_note = exists().where(
            note.series_id == Export.series_id,
            note.destination == Export.destination,
            note.kind == ExportKind.REJECTION_NOTE,
        )
        sent = session.scalars(
            select(Export)
            .join(Series)
            .where(
                superseded,
                Export.kind == ExportKind.SERIES,
                Export.status == ExportStatus.SENT,
                Export.destination.in_(accepting),
                ~has_note,
            )
        ).all()
        for export in sent:
            scheduled += _schedule_rejection_note(session, export.series, export.destination, settings, now)
    return cancelled, scheduled


def _schedule_rejection_note(session: Session, series: Series, destination: str, settings: Settings, now: Clock) -> int:
    """One rejection-note row for (series, destination) unless there is one; one KOS file per series, shared."""
    notes = list(
        session.scalars(select(Export).where(Export.series_id == series.id, Export.kind == ExportKind.REJECTION_NOTE))
    )
    if any(note.destination == destination for note in notes):
        return 0
    path = next((note.path for note in notes if note.path), None)
    if path is None:
        files = [
            instance_file(p, settings.paths.data_dir)
            for p in session.scalars(
                select(Instance.path).where(Instance.series_id == series.id).order_by(Instance.instance_number)
            )
        ]
        study = series.study
        try:
            written = write_rejection_note(
                files,
                settings.paths.data_dir / "rejection_notes" / study.study_instance_uid,
                series_number=rejection_series_number(series.series_number),
                description=(
                    f"Synthetic {series.contrast} series {series.series_number} withdrawn: {series.superseded_reason}"
                ),
            )
        except Exception:  # one unwritable note (its files gone, say) must not stop the round; tried again next
            log.exception("rejection note for series %s could not be written", series.series_instance_uid)
            return 0
        path = str(written.path)
        log.info(
            "rejection note %s for superseded series %s (%d instances)",
            written.sop_instance_uid,
            series.series_instance_uid,
            written.rejected,
        )
    session.add(
        Export(
            series_id=series.id,
            destination=destination,
            kind=ExportKind.REJECTION_NOTE,
            path=path,
            status=ExportStatus.PENDING,
            next_attempt_at=now(),
        )
    )
    session.flush()
    audit(
        session,
        ACTOR,
        "export:rejection_note_scheduled",
        series.study,
        series=series.series_instance_uid,
        destination=destination,
    )
    return 1


def run_due_exports(
    factory: sessionmaker[Session],
    settings: Settings,
    *,
    now: Clock = utcnow,
    destinations: Mapping[str, Destination[Any]] | None = None,
) -> int:
    """Send every export that is due; returns how many were delivered. ``now`` lets tests drive the clock."""
    targets = dict(destinations) if destinations is not None else build_destinations(settings)
    with transaction(factory) as session:  # approved studies whose rows a caller forgot get them here
        approved = list(session.scalars(select(Study).where(Study.state == StudyState.APPROVED)))
        for study in approved:
            schedule_exports(session, study, settings, now=now)
        retract_superseded(session, settings, now=now)
    # an approved study with nothing left to send (say re-approved, every series already SENT) settles too
    touched_studies: set[int] = {study.id for study in approved}
    with factory() as session:
        due_ids = list(
            session.scalars(
                select(Export.id)
                .join(Series)
                .join(Study)
                .where(Export.status == ExportStatus.PENDING, Export.next_attempt_at <= now())
                .where(_sendable())
                .order_by(Export.next_attempt_at, Export.id)
            )
        )
    sent = 0
    for export_id in due_ids:
        claim = _claim(factory, export_id, settings, now)
        if claim is None:
            continue  # another node took it, or it is no longer due
        touched_studies.add(claim.study_id)
        recorder = _DeliveryRecorder(factory, export_id, claim, settings, now)
        destination = targets.get(claim.destination)
        error = _deliver(destination, claim, recorder)
        if error is None and claim.is_series and wants_commitment(destination):
            error = commit_series(factory, export_id, destination, settings, now=now)  # type: ignore[arg-type]
        _settle(factory, export_id, error, settings, now)
        sent += error is None
    for study_id in touched_studies:
        _settle_study(factory, study_id, settings, now)
    return sent


def _sendable():  # type: ignore[no-untyped-def]
    """Rejection notes always; a series only while current and its study approved (or sending)."""
    return or_(
        Export.kind == ExportKind.REJECTION_NOTE,
        and_(Series.superseded_at.is_(None), Study.state.in_(SENDING_STATES)),
    )


def _claim(factory: sessionmaker[Session], export_id: int, settings: Settings, now: Clock) -> Claim | None:
    with transaction(factory) as session:
        query = select(Export).where(Export.id == export_id).with_for_update(skip_locked=True)
        export = session.scalars(query).first()
        if export is None or export.status != ExportStatus.PENDING or as_utc(export.next_attempt_at) > now():
            return None
        series = export.series
        if export.kind == ExportKind.SERIES and (
            series.superseded_at is not None or StudyState(series.study.state) not in SENDING_STATES
        ):
            return None  # superseded or reopened since the round began: cancelled or sent later
        export.attempts += 1
        if export.kind == ExportKind.REJECTION_NOTE:
            files = [instance_file(export.path, settings.paths.data_dir)] if export.path else []
            claim = Claim(export.destination, files, series.study_id, total=len(files))
        else:
            delivered = select(ExportDelivery.instance_id).where(ExportDelivery.export_id == export.id)
            rows = session.execute(
                select(Instance.id, Instance.path, Instance.id.in_(delivered))
                .where(Instance.series_id == export.series_id)
                .order_by(Instance.instance_number, Instance.id)
            ).all()
            ids = {instance_file(path, settings.paths.data_dir): id_ for id_, path, done in rows if not done}
            claim = Claim(export.destination, list(ids), series.study_id, ids, total=len(rows), is_series=True)
            if len(ids) < len(rows):
                log.info(
                    "export %s: %d of %d instance(s) already acknowledged by %s, sending the other %d",
                    export.id,
                    len(rows) - len(ids),
                    len(rows),
                    export.destination,
                    len(ids),
                )
        # the lease: if this node dies mid-send, the row is due again after this
        export.next_attempt_at = now() + timedelta(seconds=lease_s(settings, len(claim.files)))
        return claim


class _DeliveryRecorder:
    """The ``delivered`` callback of one attempt: records each acknowledged instance at once (its own short
    transaction) and renews the lease for what is left. A failure to record is logged, never raised: the instance
    is then sent again next time (a duplicate, never a loss)."""

    def __init__(
        self, factory: sessionmaker[Session], export_id: int, claim: Claim, settings: Settings, now: Clock
    ) -> None:
        self.factory, self.export_id, self.claim = factory, export_id, claim
        self.settings, self.now = settings, now
        self.left = len(claim.files)

    def __call__(self, path: Path) -> None:
        instance_id = self.claim.instance_ids.get(path)
        if instance_id is None:
            return  # a rejection note: one file, settled as a whole
        self.left -= 1
        try:
            with transaction(self.factory) as session:
                session.add(ExportDelivery(export_id=self.export_id, instance_id=instance_id, delivered_at=self.now()))
                lease = timedelta(seconds=lease_s(self.settings, self.left))
                session.execute(
                    update(Export)
                    .where(Export.id == self.export_id, Export.status == ExportStatus.PENDING)
                    .values(next_attempt_at=self.now() + lease)
                    .execution_options(synchronize_session=False)
                )
        except Exception:  # IntegrityError (another node recorded it first), the database away, ...
            log.warning("export %s: could not record an acknowledged instance", self.export_id, exc_info=True)


def _deliver(destination: Destination[Any] | None, claim: Claim, delivered: Delivered) -> str | None:
    """None when delivered, else the reason (never patient data)."""
    name, files = claim.destination, claim.files
    if destination is None:
        return f"destination {name!r} is not configured"
    if not claim.total:
        return "series has no instances on record"
    if not files:
        return None  # every instance acknowledged before (the node died before it could settle the row)
    missing = [path for path in files if not path.exists()]
    if missing:
        return f"{len(missing)} file(s) of the series are missing, e.g. {missing[0].name}"
    try:
        destination.send(files, delivered)
    except DeliveryError as exc:
        return str(exc)
    except Exception as exc:  # a bug in one destination must not stop the dispatcher
        log.exception("export to %s failed unexpectedly", name)
        return f"{type(exc).__name__}: {exc}"
    return None


def _settle(factory: sessionmaker[Session], export_id: int, error: str | None, settings: Settings, now: Clock) -> None:
    with transaction(factory) as session:
        export = session.get(Export, export_id)
        if export is None:
            return
        series_uid = export.series.series_instance_uid
        study = export.series.study
        what = "rejection note for series" if export.kind == ExportKind.REJECTION_NOTE else "series"
        kind = ExportKind(export.kind).value
        if error is None:
            metrics.EXPORT_ATTEMPTS.labels(export.destination, kind, "sent").inc()
            export.status = ExportStatus.SENT
            export.sent_at = now()
            export.last_error = None
            log.info("export %s %s=%s → %s sent", export.id, what, series_uid, export.destination)
            action = "export:rejection_note_sent" if export.kind == ExportKind.REJECTION_NOTE else "export:sent"
            audit(session, ACTOR, action, study, series=series_uid, destination=export.destination)
            return
        export.last_error = error[:2000]
        if export.attempts >= settings.export.max_attempts:
            export.status = ExportStatus.DEAD_LETTER
            metrics.EXPORT_ATTEMPTS.labels(export.destination, kind, "dead_letter").inc()
            log.error("export %s %s=%s → %s dead-lettered: %s", export.id, what, series_uid, export.destination, error)
            audit(
                session,
                ACTOR,
                "export:dead_letter",
                study,
                series=series_uid,
                destination=export.destination,
                attempts=export.attempts,
            )
            return
        metrics.EXPORT_ATTEMPTS.labels(export.destination, kind, "retry").inc()
        delay = backoff_s(export.attempts, settings.export.backoff_initial_s, settings.export.backoff_max_s)
        export.next_attempt_at = now() + timedelta(seconds=delay)
        log.warning(
            "export %s %s=%s → %s failed (attempt %d/%d, next in %.0f s): %s",
            export.id,
            what,
            series_uid,
            export.destination,
            export.attempts,
            settings.export.max_attempts,
            delay,
            error,
        )


def _settle_study(factory: sessionmaker[Session], study_id: int, settings: Settings, now: Clock) -> None:
    with transaction(factory) as session:
        study = session.get(Study, study_id)
        if study is None or StudyState(study.state) is not StudyState.APPROVED:
            return
        # approved after this round began (its rows not yet made): not exported before its new series are sent
        if schedule_exports(session, study, settings, now=now):
            return
        statuses = list(
            session.scalars(
                select(Export.status)
                .join(Series)
                .where(Series.study_id == study_id, Series.is_synthetic, Export.status != ExportStatus.CANCELLED)
            )
        )
        if not statuses:
            return
        if any(ExportStatus(s) is ExportStatus.DEAD_LETTER for s in statuses):
            transition(session, study, StudyState.DEAD_LETTER, ACTOR, reason="an export was dead-lettered")
        elif all(ExportStatus(s) is ExportStatus.SENT for s in statuses):
            transition(session, study, StudyState.EXPORTED, ACTOR, exports=len(statuses))


def retry_dead_letters(factory: sessionmaker[Session], study_uid: str | None = None, *, now: Clock = utcnow) -> int:
    """Give every dead-lettered export (of one study, or all) fresh attempts, due now; returns how many."""
    with transaction(factory) as session:
        query = (
            select(Export)
            .join(Series)
            .join(Study)
            .where(Export.status == ExportStatus.DEAD_LETTER)
            # a superseded series is never sent: its dead rows are cancelled, not retried (its notes are)
            .where(or_(Export.kind == ExportKind.REJECTION_NOTE, Series.superseded_at.is_(None)))
        )
        if study_uid is not None:
            query = query.where(Study.study_instance_uid == study_uid)
        exports = list(session.scalars(query))
        studies: dict[int, Study] = {}
        for export in exports:
            export.status = ExportStatus.PENDING
            export.attempts = 0
            export.next_attempt_at = now()
            studies[export.series.study.id] = export.series.study
        for study in studies.values():
            if StudyState(study.state) is StudyState.DEAD_LETTER:
                transition(session, study, StudyState.APPROVED, ACTOR, reason="export retry")
        if exports:
            log.info("export retry: %d dead-lettered export(s) of %d study(ies) due again", len(exports), len(studies))
        return len(exports)
