"""Storage Commitment transactions in the database (PS3.4 Annex J): where the exporter, which asks, and the
receiver, which gets the answer on a new association, meet; and what the node checks before it commits an
instance as SCP.

Values are plain (UID pairs, Failure Reason codes) so both stages can call these without sharing types.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from codebrain_node.db.models import CommitmentRole, CommitmentStatus, Instance, StorageCommitment, utcnow

#: PS3.4 J.3.3.1 Failure Reasons this module decides (the codes are the standard's; ``write/storage_commitment``
#: names them all).
NO_SUCH_OBJECT_INSTANCE = 0x0112
CLASS_INSTANCE_CONFLICT = 0x0119
PROCESSING_FAILURE = 0x0110

_IN_CHUNK = 500


def check_instances(
    session: Session, data_dir: Path, references: Sequence[tuple[str, str]]
) -> list[tuple[str, str, int | None]]:
    """Each (SOP Class UID, SOP Instance UID) with None when we hold it durably, else its Failure Reason:
    0x0112 when no Instance row has the UID (not received, or not yet recorded), 0x0119 when the row's SOP class
    is another, 0x0110 when the row's file is gone from disk. A row exists only after the spool's fsync."""
    uids = sorted({uid for _, uid in references})
    rows: dict[str, tuple[str, str]] = {}
    for start in range(0, len(uids), _IN_CHUNK):
        chunk = uids[start : start + _IN_CHUNK]
        query = select(Instance.sop_instance_uid, Instance.sop_class_uid, Instance.path)
        for uid, sop_class, path in session.execute(query.where(Instance.sop_instance_uid.in_(chunk))):
            rows[uid] = (sop_class, path)
    results: list[tuple[str, str, int | None]] = []
    for sop_class, uid in references:
        row = rows.get(uid)
        if row is None:
            reason: int | None = NO_SUCH_OBJECT_INSTANCE
        elif row[0] != sop_class:
            reason = CLASS_INSTANCE_CONFLICT
        elif not _file(row[1], data_dir).is_file():
            reason = PROCESSING_FAILURE
        else:
            reason = None
        results.append((sop_class, uid, reason))
    return results


def _file(recorded: str, data_dir: Path) -> Path:
    path = Path(recorded)
    return path if path.is_absolute() else Path(data_dir) / path


def failure_items(failures: Iterable[tuple[str, str, int]]) -> list[dict[str, Any]]:
    """The ``failures`` column's form of (SOP Class UID, SOP Instance UID, reason) triples."""
    return [{"sop_class_uid": c, "sop_instance_uid": i, "reason": r} for c, i, r in failures]


def open_request(
    session: Session, transaction_uid: str, *, export_id: int, peer_ae_title: str, instances: int
) -> StorageCommitment:
    """The SCU's row, written before the N-ACTION goes out so that a quick N-EVENT-REPORT finds it."""
    row = StorageCommitment(
        transaction_uid=transaction_uid,
        role=CommitmentRole.SCU,
        export_id=export_id,
        peer_ae_title=peer_ae_title[:16],
        status=CommitmentStatus.PENDING,
        instances=instances,
        failed=0,
        failures=[],
        requested_at=utcnow(),
    )
    session.add(row)
    session.flush()
    return row


def record_report(
    session: Session,
    transaction_uid: str,
    *,
    committed: int,
    failures: Sequence[tuple[str, str, int]],
    peer_ae_title: str | None,
    at: datetime | None = None,
) -> bool:
    """An N-EVENT-REPORT for one of our requests (PS3.4 J.3.3): the row becomes COMMITTED or FAILED, even after
    it timed out (a late answer is kept; the exporter takes a late commitment of the same instances). False when
    no request of ours has that Transaction UID."""
    row = session.scalars(
        select(StorageCommitment).where(
            StorageCommitment.transaction_uid == transaction_uid, StorageCommitment.role == CommitmentRole.SCU
        )
    ).first()
    if row is None:
        return False
    row.status = CommitmentStatus.FAILED if failures else CommitmentStatus.COMMITTED
    row.failed = len(failures)
    row.failures = failure_items(failures)
    row.answered_at = at or utcnow()
    row.detail = f"reported by {peer_ae_title or '?'}: {committed} committed, {len(failures)} failed"[:256]
    return True


def record_answer(
    session: Session,
    transaction_uid: str,
    *,
    peer_ae_title: str,
    instances: int,
    failures: Sequence[tuple[str, str, int]],
    detail: str,
    requested_at: datetime,
) -> None:
    """What we answered a peer's request (SCP). A Transaction UID the peer used before (PS3.4 J.3.2 wants a new
    one each time) keeps its first row and gains the new answer's outcome."""
    row = session.scalars(select(StorageCommitment).where(StorageCommitment.transaction_uid == transaction_uid)).first()
    if row is None:
        row = StorageCommitment(transaction_uid=transaction_uid, role=CommitmentRole.SCP, requested_at=requested_at)
        session.add(row)
    row.peer_ae_title = peer_ae_title[:16]
    row.instances = instances
    row.failed = len(failures)
    row.failures = failure_items(failures)
    row.status = CommitmentStatus.FAILED if failures else CommitmentStatus.COMMITTED
    row.answered_at = utcnow()
    row.detail = detail[:256]


def commitment_counts(session: Session) -> dict[tuple[str, str], int]:
    """(role, status) → how many transactions, for ``status``."""
    rows = session.execute(select(StorageCommitment.role, StorageCommitment.status))
    return dict(Counter((str(role), str(status)) for role, status in rows))
