"""Storage Commitment as SCU (PS3.4 Annex J, Push Model): a series sent to a destination with
``storage_commitment = true`` counts as delivered only once the destination commits every one of its instances.

After the C-STOREs, :func:`commit_series` writes a ``storage_commitments`` row (pending, a fresh Transaction UID)
and asks the destination (N-ACTION). The answer, an N-EVENT-REPORT, comes on a new association to our receiver,
which files it on that row (the stages meet in the database), or on the N-ACTION's own association (filed from
here). The exporter polls the row for up to the destination's ``storage_commitment_timeout_s``:

- committed: delivered (the dispatcher marks the export SENT);
- failed: the failed instances lose their delivery records, so the next attempt sends them again and asks anew;
  the reasons (PS3.4 J.3.3.1 Failure Reason) go into the export's error;
- no report in time: the row is marked timed out and the attempt fails; the next attempt asks again (nothing is
  resent), and takes a report that arrived late for an earlier request of the same instances.

Each failure is an ordinary failed attempt for the dispatcher: retried with back-off, dead-lettered at the end.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Protocol, runtime_checkable

from pydicom.uid import generate_uid
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from codebrain_node.config import Settings
from codebrain_node.db.commitments import open_request, record_report
from codebrain_node.db.lifecycle import audit
from codebrain_node.db.models import (
    CommitmentRole,
    CommitmentStatus,
    Export,
    ExportDelivery,
    Instance,
    StorageCommitment,
    utcnow,
)
from codebrain_node.db.session import transaction
from codebrain_node.export.base import DeliveryError
from codebrain_node.write.storage_commitment import CommitmentRequest, CommitmentResult, Reference, failure_words

log = logging.getLogger(__name__)

ACTOR = "exporter"
#: How often the exporter looks at the row while it waits for the report.
POLL_S = 0.2


@runtime_checkable
class CommitsStorage(Protocol):
    """A destination that can be asked for Storage Commitment (``export/scu.py``'s DICOM destination)."""

    ae_title: str
    #: None: this destination is not asked.
    commitment_timeout_s: float | None

    def request_commitment(
        self, request: CommitmentRequest, on_report: Callable[[CommitmentResult, str], None]
    ) -> None: ...


def wants_commitment(destination: object) -> bool:
    return isinstance(destination, CommitsStorage) and destination.commitment_timeout_s is not None


def commit_series(
    factory: sessionmaker[Session],
    export_id: int,
    destination: CommitsStorage,
    settings: Settings,
    *,
    now: Callable[[], datetime] = utcnow,
    sleep: Callable[[float], None] = time.sleep,
) -> str | None:
    """None when ``destination`` has committed every instance of the export's series, else why not (the
    dispatcher retries). Blocks for at most the destination's timeout plus one association."""
    try:
        return _commit(factory, export_id, destination, settings, now, sleep)
    except Exception as exc:  # the database away, a bug: this attempt fails, the dispatcher goes on
        log.exception("export %s: storage commitment failed unexpectedly", export_id)
        return f"storage commitment: {type(exc).__name__}: {exc}"


def _commit(
    factory: sessionmaker[Session],
    export_id: int,
    destination: CommitsStorage,
    settings: Settings,
    now: Callable[[], datetime],
    sleep: Callable[[float], None],
) -> str | None:
    timeout_s = float(destination.commitment_timeout_s or 0)
    with transaction(factory) as session:
        export = session.get(Export, export_id)
        if export is None:
            return "export no longer on record"
        references = [
            Reference(sop_class, uid)
            for sop_class, uid in session.execute(
                select(Instance.sop_class_uid, Instance.sop_instance_uid)
                .where(Instance.series_id == export.series_id)
                .order_by(Instance.instance_number, Instance.id)
            )
        ]
        if not references:
            return "series has no instances on record"
        late = _committed_before(session, export_id, len(references))
        if late is not None:
            log.info("export %s: storage commitment %s came late but commits the series", export_id, late)
            _audit(session, export, "export:committed", late)
            return None
        transaction_uid = generate_uid()
        open_request(
            session,
            transaction_uid,
            export_id=export_id,
            peer_ae_title=destination.ae_title,
            instances=len(references),
        )
        # the lease covers the wait: another node must not send this export while we wait for its report
        export.next_attempt_at = now() + timedelta(seconds=2 * settings.dicom.network_timeout_s + timeout_s)
    request = CommitmentRequest(transaction_uid, tuple(references))
    try:
        destination.request_commitment(request, lambda result, peer: _record_here(factory, result, peer))
    except DeliveryError as exc:
        _finish(factory, transaction_uid, CommitmentStatus.FAILED, f"not requested: {exc}")
        return f"storage commitment not requested: {exc}"
    deadline = time.monotonic() + timeout_s
    while True:
        row = _row(factory, transaction_uid)
        if row is None:
            return "storage commitment request vanished from the database"
        if CommitmentStatus(row.status) is not CommitmentStatus.PENDING:
            break
        if time.monotonic() >= deadline:
            _finish(factory, transaction_uid, CommitmentStatus.TIMED_OUT, f"no report within {timeout_s:g} s")
            return (
                f"{destination.ae_title}: no storage commitment report within {timeout_s:g} s "
                f"(transaction {transaction_uid}; asked again next attempt)"
            )
        sleep(POLL_S)
    with transaction(factory) as session:
        export = session.get(Export, export_id)
        if CommitmentStatus(row.status) is CommitmentStatus.COMMITTED:
            if export is not None:
                _audit(session, export, "export:committed", transaction_uid)
            log.info("export %s: %s committed all %d instance(s)", export_id, destination.ae_title, len(references))
            return None
        failures: list[dict[str, Any]] = list(row.failures or [])
        failed_uids = {str(item.get("sop_instance_uid")) for item in failures}
        if export is not None and failed_uids:  # sent again next attempt
            failed_ids = select(Instance.id).where(
                Instance.series_id == export.series_id, Instance.sop_instance_uid.in_(failed_uids)
            )
            session.execute(
                delete(ExportDelivery)
                .where(ExportDelivery.export_id == export_id, ExportDelivery.instance_id.in_(failed_ids))
                .execution_options(synchronize_session=False)
            )
            _audit(session, export, "export:commitment_failed", transaction_uid, failed=len(failures))
    reasons = sorted({failure_words(int(item.get("reason") or 0x0110)) for item in failures})
    return (
        f"{destination.ae_title}: storage commitment failed for {len(failures)} of {len(references)} instance(s) "
        f"({', '.join(reasons) or 'no reason given'}; transaction {transaction_uid})"
    )


def _committed_before(session: Session, export_id: int, instances: int) -> str | None:
    """The Transaction UID of an earlier request for this export that was committed whole (a report that came
    after its attempt gave up), if there is one."""
    return session.scalars(
        select(StorageCommitment.transaction_uid)
        .where(
            StorageCommitment.export_id == export_id,
            StorageCommitment.role == CommitmentRole.SCU,
            StorageCommitment.status == CommitmentStatus.COMMITTED,
            StorageCommitment.instances == instances,
            StorageCommitment.failed == 0,
        )
        .order_by(StorageCommitment.id.desc())
    ).first()


def _row(factory: sessionmaker[Session], transaction_uid: str) -> StorageCommitment | None:
    with factory() as session:
        row = session.scalars(
            select(StorageCommitment).where(StorageCommitment.transaction_uid == transaction_uid)
        ).first()
        if row is not None:
            session.expunge(row)
        return row


def _finish(factory: sessionmaker[Session], transaction_uid: str, status: CommitmentStatus, detail: str) -> None:
    """A pending request that ends without a report: failed to ask, or timed out (a report may still come)."""
    with transaction(factory) as session:
        row = session.scalars(
            select(StorageCommitment).where(StorageCommitment.transaction_uid == transaction_uid)
        ).first()
        if row is not None and CommitmentStatus(row.status) is CommitmentStatus.PENDING:
            row.status = status
            row.detail = detail[:256]


def _record_here(factory: sessionmaker[Session], result: CommitmentResult, peer: str) -> None:
    """A report that came on the N-ACTION's own association."""
    failures = [(f.reference.sop_class_uid, f.reference.sop_instance_uid, f.reason) for f in result.failed]
    with transaction(factory) as session:
        record_report(
            session, result.transaction_uid, committed=len(result.committed), failures=failures, peer_ae_title=peer
        )


def _audit(session: Session, export: Export, action: str, transaction_uid: str, **details: Any) -> None:
    series = export.series
    audit(
        session,
        ACTOR,
        action,
        series.study,
        series=series.series_instance_uid,
        destination=export.destination,
        transaction_uid=transaction_uid,
        **details,
    )
