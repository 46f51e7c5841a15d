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

Nothing a sender puts in a header can fail a batch: every value is made to fit its column first (text clipped to
the column's length, NULs dropped, a number outside a 32-bit INTEGER or a UID too long to be one kept empty, with
a log line naming the attribute, never its value). Should the database still refuse something, the batch is
recorded again item by item, so only that item is lost to the database: it goes to ``quarantine/`` with the
reason (and an audit event), never taking the other senders' instances with it.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
from collections.abc import Iterable, Sequence
from itertools import groupby
from pathlib import Path
from typing import Any

from sqlalchemy import BigInteger, Integer, String, select
from sqlalchemy.exc import DataError, IntegrityError, OperationalError, StatementError
from sqlalchemy.orm import Session, sessionmaker

from codebrain_node.db.associations import close_association, close_orphaned_associations, open_association
from codebrain_node.db.commitments import record_answer, record_report
from codebrain_node.db.jobs import withdraw_queued_job
from codebrain_node.db.lifecycle import audit, reopen_if_settled
from codebrain_node.db.models import Association, Instance, Series, Study, as_utc
from codebrain_node.db.session import transaction
from codebrain_node.receive.associations import AssociationEnded, AssociationEvent, AssociationOpened
from codebrain_node.receive.commitment import CommitmentAnswered, CommitmentReported
from codebrain_node.receive.spool import HeaderError, InstanceConflict, ReceivedInstance, Spool, describe_file

log = logging.getLogger(__name__)

ACTOR = "receiver"
_IN_CHUNK = 500  # keeps IN (...) lists well inside every backend's parameter limit
#: A plain INTEGER column holds 32 bits on PostgreSQL; SQLite holds more, but a database may move.
_INT32 = (-(2**31), 2**31 - 1)


def record_instances(session: Session, instances: Sequence[ReceivedInstance]) -> int:
    """Upsert ``instances`` (one batch) into ``session``; returns how many Instance rows were new."""
    if not instances:
        return 0
    studies = _existing(session, Study, Study.study_instance_uid, {i.study_uid for i in instances})
    series_rows = _existing(session, Series, Series.series_instance_uid, {i.series_uid for i in instances})
    known_rows = _existing(session, Instance, Instance.sop_instance_uid, {i.sop_instance_uid for i in instances})
    known = set(known_rows.keys())
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
        if item.sop_instance_uid in known:
            # recorded already (here or, for a node sharing the spool, in another series): no study or series row
            # is made for it, which would stay empty
            _audit_elsewhere(session, known_rows.get(item.sop_instance_uid), item, studies)
            continue
        study = studies.get(item.study_uid)
        if study is None:
            study = Study(
                **_fit(
                    Study,
                    item.sop_instance_uid,
                    study_instance_uid=item.study_uid,
                    patient_name=item.patient_name,
                    patient_id=item.patient_id,
                    accession_number=item.accession_number,
                    study_date=item.study_date,
                    study_description=item.study_description,
                    calling_ae_title=item.calling_ae_title,
                    first_received_at=item.received_at,
                    last_received_at=item.received_at,
                )
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
                is_synthetic=False,
                **_fit(
                    Series,
                    item.sop_instance_uid,
                    series_instance_uid=item.series_uid,
                    modality=item.modality,
                    series_number=item.series_number,
                    series_description=item.series_description,
                    frame_of_reference_uid=item.frame_of_reference_uid,
                ),
            )
            session.add(series)
            series_rows[item.series_uid] = series
        known.add(item.sop_instance_uid)
        session.add(
            Instance(
                series=series,
                path=str(item.path),
                size_bytes=item.size_bytes,
                received_at=item.received_at,
                association_id=_association_id(associations, item),
                **_fit(
                    Instance,
                    item.sop_instance_uid,
                    sop_instance_uid=item.sop_instance_uid,
                    sop_class_uid=item.sop_class_uid,
                    transfer_syntax_uid=item.transfer_syntax_uid,
                    instance_number=item.instance_number,
                ),
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


def _audit_elsewhere(session: Session, row: Instance | None, item: ReceivedInstance, studies: dict) -> None:  # type: ignore[type-arg]
    """A UID on record under another file (another study or series) than this copy's: audited as the spool of one
    process audits it (another receiver process, or a node sharing the spool, took the first copy)."""
    if row is None or not item.path or row.path == str(item.path):
        return
    reason = "SOP Instance UID already recorded in another study or series; this copy is not recorded"
    log.warning("recorder: sop=%s %s (from %s)", item.sop_instance_uid, reason, item.calling_ae_title)
    audit(
        session,
        ACTOR,
        "instance:conflict",
        studies.get(item.study_uid),
        sop_instance_uid=item.sop_instance_uid,
        series_instance_uid=item.series_uid,
        study_instance_uid=item.study_uid,
        reason=reason,
        calling_ae_title=item.calling_ae_title,
    )


def _association_id(associations: dict[str, Association], item: ReceivedInstance) -> int | None:
    if not item.association_key:
        return None
    association = associations.get(item.association_key)
    if association is None:  # its opening was lost (a failed batch): the instance is kept, unlinked
        log.warning("recorder: association %s of an instance is not on record", item.association_key[:8])
        return None
    return association.id


def record_association(
    session: Session, event: AssociationEvent | InstanceConflict | CommitmentReported | CommitmentAnswered
) -> None:
    """Open or close one association's row, audit a conflicting SOP Instance UID, or file a Storage Commitment
    report (one answering the exporter's request, or one we sent as SCP)."""
    if isinstance(event, CommitmentReported):
        result = event.result
        failures = [(f.reference.sop_class_uid, f.reference.sop_instance_uid, f.reason) for f in result.failed]
        known = record_report(
            session,
            result.transaction_uid,
            committed=len(result.committed),
            failures=failures,
            peer_ae_title=event.calling_ae_title,
            at=event.at,
        )
        if not known:
            log.warning(
                "recorder: storage commitment report %s from %s answers no request of ours",
                result.transaction_uid,
                event.calling_ae_title,
            )
    elif isinstance(event, CommitmentAnswered):
        result = event.result
        failures = [(f.reference.sop_class_uid, f.reference.sop_instance_uid, f.reason) for f in result.failed]
        record_answer(
            session,
            result.transaction_uid,
            peer_ae_title=event.calling_ae_title,
            instances=len(result.committed) + len(result.failed),
            failures=failures,
            detail=event.detail,
            requested_at=event.requested_at,
        )
    elif isinstance(event, InstanceConflict):
        study = session.scalars(select(Study).where(Study.study_instance_uid == event.study_uid)).first()
        audit(
            session,
            ACTOR,
            "instance:conflict",
            study,
            sop_instance_uid=event.sop_instance_uid,
            series_instance_uid=event.series_uid,
            study_instance_uid=event.study_uid,
            reason=event.reason,
            calling_ae_title=event.calling_ae_title,
        )
    elif isinstance(event, AssociationOpened):
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


def _fit(model: type, sop_instance_uid: str, /, **values: Any) -> dict[str, Any]:
    """``values`` for ``model``'s columns, each made to fit: headers may carry anything (a 10,000-character name, a
    20-digit Series Number), and one value the database refuses would otherwise fail the batch it is in.

    Text is clipped to the column's length, NULs removed (PostgreSQL text cannot hold them) and lone surrogates
    replaced; a UID too long for its column is kept empty (a UID cut short names something else); an integer
    outside a 32-bit INTEGER is kept empty. Each change is logged by attribute, never with the value."""
    columns = model.__table__.columns  # type: ignore[attr-defined]
    fitted: dict[str, Any] = {}
    for name, value in values.items():
        kind = columns[name].type
        if isinstance(value, str) and isinstance(kind, String):
            cleaned = value.replace("\0", "").encode("utf-8", "replace").decode("utf-8")
            if kind.length is not None and len(cleaned) > kind.length:
                uid = name.endswith("_uid")
                _changed(sop_instance_uid, name, f"{len(cleaned)} characters", "kept empty" if uid else "clipped")
                cleaned = None if uid else cleaned[: kind.length]
            value = cleaned or None
        elif (
            isinstance(value, int)
            and isinstance(kind, Integer)
            and not isinstance(kind, BigInteger)
            and not _INT32[0] <= value <= _INT32[1]
        ):
            _changed(sop_instance_uid, name, "out of range", "kept empty")
            value = None
        fitted[name] = value
    return fitted


def _changed(sop_instance_uid: str, column: str, why: str, action: str) -> None:
    log.warning("recorder: %s of sop=%s does not fit its column (%s); %s", column, sop_instance_uid, why, action)


_QUOTED = re.compile(r"\"[^\"]*\"|'[^']*'|\([^)]*\)=\([^)]*\)")


def failure_reason(error: BaseException) -> str:
    """Why a row was refused, fit for a log line, an audit event and the quarantine note: the exception's class and
    the first line of the database's own message, with quoted values masked (a SQLAlchemy error's text goes on to
    echo the SQL parameters: patient name, ID, accession)."""
    cause = error.orig if isinstance(error, StatementError) and error.orig is not None else error
    lines = str(cause).strip().splitlines()
    first = _QUOTED.sub("<value>", lines[0])[:200] if lines else ""
    name = type(cause).__name__ if cause is error else f"{type(error).__name__} ({type(cause).__name__})"
    return f"{name}: {first}" if first else name


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


Item = ReceivedInstance | AssociationEvent | InstanceConflict | CommitmentReported | CommitmentAnswered


def record_each(factory: sessionmaker[Session], items: Sequence[Item]) -> tuple[int, list[tuple[Item, Exception]]]:
    """Record ``items`` as one batch; if the database refuses it, once more item by item, so that one item it
    refuses fails alone. Returns how many Instance rows were new and the items refused, each with its error."""
    try:
        return record_batch(factory, items), []
    except Exception as error:
        if len(items) <= 1:
            return 0, [(item, error) for item in items]
        log.warning("recorder: a batch of %d failed (%s); recording it item by item", len(items), failure_reason(error))
    recorded, refused = 0, []
    for item in items:
        try:
            recorded += record_batch(factory, [item])
        except Exception as error:
            refused.append((item, error))
    return recorded, refused


#: Errors that say the row's values are at fault (the same instance fails the same way every time).
_VALUE_ERRORS = (DataError, IntegrityError, ValueError, OverflowError, UnicodeError)


def refused_for_its_values(error: BaseException) -> bool:
    """Whether the database refused a row for what it holds, rather than being unreachable or busy (the
    OperationalError family) or the node having a bug: only then is quarantining the instance the answer."""
    if isinstance(error, OperationalError):
        return False
    if isinstance(error, StatementError) and not isinstance(error, DataError | IntegrityError):
        return isinstance(error.orig, _VALUE_ERRORS)
    return isinstance(error, _VALUE_ERRORS)


def quarantine_refused(factory: sessionmaker[Session], spool: Spool, item: ReceivedInstance, error: Exception) -> None:
    """An instance the database refuses for its values even alone: moved to ``quarantine/`` with the reason, and
    audited. Any other failure (a database that cannot be reached refuses everything alike) leaves the file in
    ``incoming/`` for the next start to file."""
    reason = failure_reason(error)
    if not refused_for_its_values(error):
        log.error("recorder: sop=%s not recorded (%s); it stays in incoming/", item.sop_instance_uid, reason)
        return
    try:
        spool.quarantine(item.path, f"not recordable: {reason}")
    except OSError as exc:
        log.error("recorder: sop=%s not recorded (%s) nor quarantined (%s)", item.sop_instance_uid, reason, exc)
        return
    log.error("recorder: sop=%s not recordable (%s); moved to quarantine/", item.sop_instance_uid, reason)
    try:
        with transaction(factory) as session:
            study = session.scalars(select(Study).where(Study.study_instance_uid == item.study_uid)).first()
            audit(
                session,
                ACTOR,
                "instance:quarantined",
                study,
                sop_instance_uid=item.sop_instance_uid,
                series_instance_uid=item.series_uid,
                study_instance_uid=item.study_uid,
                reason=reason,
            )
    except Exception as exc:
        log.error("recorder: could not audit the quarantine of sop=%s (%s)", item.sop_instance_uid, type(exc).__name__)


class Recorder:
    """A daemon thread that drains a queue of :class:`ReceivedInstance` and association events into the database
    in batches, in the order they happened. With ``spool``, an instance the database refuses even alone is
    quarantined at once (with the reason); without, it stays in ``incoming/`` for :func:`recover_spool`."""

    def __init__(
        self,
        factory: sessionmaker[Session],
        batch_size: int = 200,
        linger_s: float = 0.05,
        spool: Spool | None = None,
    ) -> None:
        self.factory = factory
        self.spool = spool
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

    def submit(self, item: Item) -> None:
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
            recorded, refused = record_each(self.factory, batch)
            self.recorded += recorded
            for item, error in refused:
                if isinstance(item, ReceivedInstance) and self.spool is not None:
                    quarantine_refused(self.factory, self.spool, item, error)
                else:  # durable all the same: recover_spool files it at the next start. Keep serving.
                    log.error("recorder: could not record %s (%s)", _name(item), failure_reason(error))
        except Exception as error:
            log.error("recorder: could not record a batch of %d (%s)", len(batch), failure_reason(error))
        finally:
            with self._idle:
                self._pending -= len(batch)
                self._idle.notify_all()


def _name(item: Item) -> str:
    if isinstance(item, ReceivedInstance):
        return f"sop={item.sop_instance_uid}; it stays in incoming/"
    if isinstance(item, InstanceConflict):
        return f"the conflict of sop={item.sop_instance_uid} (logged when received)"
    if isinstance(item, CommitmentReported | CommitmentAnswered):
        return f"storage commitment {item.result.transaction_uid} (logged when received)"
    return f"an event of association {item.key[:8]}"


def recover_spool(factory: sessionmaker[Session], spool: Spool, batch_size: int = 200) -> int:
    """At start: close the associations a dead predecessor on this host left open, drop partial temp files and
    file every ``incoming/`` instance the database does not know.

    A file that no longer parses cannot have been acknowledged (success follows the fsync), so it is moved
    aside to ``quarantine/`` with a log line rather than filed; so is one the database refuses even on its own
    (with the reason, audited): the node starts anyway, with everything else filed."""
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

    def file_batch() -> int:
        done, refused = record_each(factory, batch)
        for item, error in refused:
            quarantine_refused(factory, spool, item, error)  # type: ignore[arg-type]
        batch.clear()
        return done

    for path in missing:
        try:
            batch.append(describe_file(path))
        except HeaderError as exc:
            spool.quarantine(path, f"not filable: {exc}")
            log.warning("recover: %s is not filable (%s); moved to quarantine/", path.name, exc)
            continue
        if len(batch) >= batch_size:
            recorded += file_batch()
    recorded += file_batch()
    if recorded:
        log.info("recover: filed %d spooled instance(s) missing from the database", recorded)
    return recorded
