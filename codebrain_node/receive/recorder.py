"""The recorder: files spooled instances in the database, off the association threads, in batches.

The SCP answers "stored" as soon as the file is durable; the database row may follow a moment later. That keeps
database latency (and SQLite's single writer) out of the C-STORE round trip, and loses nothing: whatever sits in
``incoming/`` without a row after a crash is filed by :func:`recover_spool` at start.

Rows are upserted on the SOP/Series/Study Instance UIDs (a UID seen twice is one row), ``last_received_at`` moves
forward, and an acquired instance (not Synthetic Data = YES, not in a series this node wrote) sends a settled
study back to ``receiving`` through the state machine, or withdraws its job if none has claimed it yet (so a late
series is planned with the rest, not imputed twice).

Association events travel in the same queue as the instances, so an association's row is opened before its
first instance is filed and closed only after its last one: a study is never seen quiet while its sender is
still associated (``db/associations.py``). Each instance links to its association, whose instance and byte
counts grow as they are filed.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterable, Sequence
from itertools import groupby
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from codebrain_node.db.associations import close_association, close_orphaned_associations, open_association
from codebrain_node.db.jobs import withdraw_queued_job
from codebrain_node.db.lifecycle import audit, reopen_if_settled
from codebrain_node.db.models import Association, Instance, Series, Study, as_utc
from codebrain_node.db.session import transaction
from codebrain_node.receive.associations import AssociationEnded, AssociationEvent, AssociationOpened
from codebrain_node.receive.spool import HeaderError, ReceivedInstance, Spool, describe_file

log = logging.getLogger(__name__)

ACTOR = "receiver"
_IN_CHUNK = 500  # keeps IN (...) lists well inside every backend's parameter limit


def record_instances(session: Session, instances: Sequence[ReceivedInstance]) -> int:
    """Upsert ``instances`` (one batch) into ``session``; returns how many Instance rows were new."""
    if not instances:
        return 0
    studies = _existing(session, Study, Study.study_instance_uid, {i.study_uid for i in instances})
    series_rows = _existing(session, Series, Series.series_instance_uid, {i.series_uid for i in instances})
    known = set(_existing(session, Instance, Instance.sop_instance_uid, {i.sop_instance_uid for i in instances}).keys())
    keys = {i.association_key for i in instances if i.association_key}
    associations: dict[str, Association] = _existing(session, Association, Association.key, keys)
    for item in instances:  # counted as delivered, even a UID another association delivered first
        association = associations.get(item.association_key or "")
        if association is not None:
            association.instances += 1
            association.bytes += item.size_bytes
    reopened: set[str] = set()
    new_rows = 0
    for item in instances:
        study = studies.get(item.study_uid)
        if study is None:
            study = Study(
                study_instance_uid=item.study_uid,
                patient_name=item.patient_name,
                patient_id=item.patient_id,
                accession_number=_clip(item.accession_number, 16),
                study_date=_clip(item.study_date, 8),
                study_description=item.study_description,
                calling_ae_title=item.calling_ae_title,
                first_received_at=item.received_at,
                last_received_at=item.received_at,
            )
            session.add(study)
            session.flush()
            audit(session, ACTOR, "study:received", study, calling_ae_title=item.calling_ae_title)
            studies[item.study_uid] = study
            reopened.add(item.study_uid)  # a new study is already receiving
        series = series_rows.get(item.series_uid)
        if series is None:
            series = Series(
                study=study,
                series_instance_uid=item.series_uid,
                modality=item.modality,
                series_number=item.series_number,
                series_description=item.series_description,
                frame_of_reference_uid=item.frame_of_reference_uid,
                is_synthetic=False,
            )
            session.add(series)
            series_rows[item.series_uid] = series
        if item.sop_instance_uid in known:
            continue
        known.add(item.sop_instance_uid)
        session.add(
            Instance(
                series=series,
                sop_instance_uid=item.sop_instance_uid,
                sop_class_uid=item.sop_class_uid,
                transfer_syntax_uid=item.transfer_syntax_uid,
                instance_number=item.instance_number,
                path=str(item.path),
                size_bytes=item.size_bytes,
                received_at=item.received_at,
                association_id=_association_id(associations, item),
            )
        )
        new_rows += 1
        last = as_utc(study.last_received_at)
        if last is None or item.received_at > last:
            study.last_received_at = item.received_at
        acquired = not item.synthetic and not series.is_synthetic
        if acquired and item.study_uid not in reopened:
            if not reopen_if_settled(session, study, ACTOR):
                withdraw_queued_job(session, study, ACTOR)  # queued, not yet claimed: planned again with this
            reopened.add(item.study_uid)
    return new_rows


def _association_id(associations: dict[str, Association], item: ReceivedInstance) -> int | None:
    if not item.association_key:
        return None
    association = associations.get(item.association_key)
    if association is None:  # its opening was lost (a failed batch): the instance is kept, unlinked
        log.warning("recorder: association %s of an instance is not on record", item.association_key[:8])
        return None
    return association.id


def record_association(session: Session, event: AssociationEvent) -> None:
    """Open or close one association's row."""
    if isinstance(event, AssociationOpened):
        open_association(
            session,
            event.key,
            receiver=event.receiver,
            started_at=event.at,
            calling_ae_title=event.calling_ae_title,
            called_ae_title=event.called_ae_title,
            peer_address=event.peer_address,
            peer_port=event.peer_port,
        )
    elif isinstance(event, AssociationEnded):
        close_association(session, event.key, event.at, event.reason)


def record_items(session: Session, items: Sequence[ReceivedInstance | AssociationEvent]) -> int:
    """Record instances and association events in their order; returns how many Instance rows were new."""
    new_rows = 0
    for is_instance, run in groupby(items, key=lambda item: isinstance(item, ReceivedInstance)):
        if is_instance:
            new_rows += record_instances(session, list(run))  # type: ignore[arg-type]
        else:
            for event in run:
                record_association(session, event)  # type: ignore[arg-type]
                session.flush()
    return new_rows


def _clip(value: str | None, length: int) -> str | None:
    """Headers may carry over-long values; the columns have the standard's lengths."""
    return value[:length] if value else None


def _existing(session: Session, model: type, column, uids: Iterable[str]) -> dict:  # type: ignore[no-untyped-def]
    found = {}
    ordered = sorted(uids)
    for start in range(0, len(ordered), _IN_CHUNK):
        chunk = ordered[start : start + _IN_CHUNK]
        for row in session.scalars(select(model).where(column.in_(chunk))):
            found[getattr(row, column.key)] = row
    return found


def record_batch(factory: sessionmaker[Session], items: Sequence[ReceivedInstance | AssociationEvent]) -> int:
    """Record one batch (instances and association events) in its own transaction; a lost insert race (another
    process filed the same UID) or a busy database is retried, since the second pass sees the rows the other
    writer made."""
    for attempt in range(3):
        try:
            with transaction(factory) as session:
                return record_items(session, items)
        except (IntegrityError, OperationalError) as exc:
            if attempt == 2:
                raise
            log.info("recorder: retrying a batch of %d after %s", len(items), type(exc).__name__)
    return 0


class Recorder:
    """A daemon thread that drains a queue of :class:`ReceivedInstance` and association events into the database
    in batches, in the order they happened."""

    def __init__(self, factory: sessionmaker[Session], batch_size: int = 200, linger_s: float = 0.05) -> None:
        self.factory = factory
        self.batch_size = batch_size
        self.linger_s = linger_s
        self._queue: queue.Queue[ReceivedInstance | AssociationEvent | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="codebrain-recorder", daemon=True)
        self._idle = threading.Condition()
        self._pending = 0
        self.recorded = 0

    def start(self) -> Recorder:
        self._thread.start()
        return self

    def submit(self, item: ReceivedInstance | AssociationEvent) -> None:
        """Hand over one durable instance or association event; returns at once (called on the association
        thread)."""
        with self._idle:
            self._pending += 1
        self._queue.put(item)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything submitted so far is in the database; False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def stop(self, timeout: float = 30.0) -> None:
        """Record what is queued, then end the thread."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            item = self._queue.get()
            if item is None:
                break
            batch = [item]
            while len(batch) < self.batch_size:
                try:
                    following = self._queue.get(timeout=self.linger_s)
                except queue.Empty:
                    break
                if following is None:
                    stopping = True
                    break
                batch.append(following)
            self._write(batch)

    def _write(self, batch: list[ReceivedInstance | AssociationEvent]) -> None:
        try:
            self.recorded += record_batch(self.factory, batch)
        except Exception:
            # The files are durable; recover_spool files them at the next start. Keep serving.
            log.exception("recorder: could not record a batch of %d; its instances stay in incoming/", len(batch))
        finally:
            with self._idle:
                self._pending -= len(batch)
                self._idle.notify_all()


def recover_spool(factory: sessionmaker[Session], spool: Spool, batch_size: int = 200) -> int:
    """At start: close the associations a dead predecessor on this host left open, drop partial temp files and
    file every ``incoming/`` instance the database does not know.

    A file that no longer parses cannot have been acknowledged (success follows the fsync), so it is moved
    aside to ``quarantine/`` with a log line rather than filed."""
    with transaction(factory) as session:
        closed = close_orphaned_associations(session)
    if closed:
        log.info("recover: closed %d association(s) left open by a receiver that is gone", closed)
    spool.clean_tmp()
    on_disk: dict[str, Path] = {path.stem: path for path in spool.incoming.glob("*/*/*.dcm")}
    if not on_disk:
        return 0
    with factory() as session:
        known = set(_existing(session, Instance, Instance.sop_instance_uid, on_disk.keys()).keys())
    missing = [path for uid, path in sorted(on_disk.items()) if uid not in known]
    recorded = 0
    batch: list[ReceivedInstance] = []
    for path in missing:
        try:
            batch.append(describe_file(path))
        except HeaderError as exc:
            quarantine = spool.data_dir / "quarantine"
            quarantine.mkdir(exist_ok=True)
            path.rename(quarantine / path.name)
            log.warning("recover: %s is not filable (%s); moved to quarantine/", path.name, exc)
            continue
        if len(batch) >= batch_size:
            recorded += record_batch(factory, batch)
            batch = []
    recorded += record_batch(factory, batch)
    if recorded:
        log.info("recover: filed %d spooled instance(s) missing from the database", recorded)
    return recorded
