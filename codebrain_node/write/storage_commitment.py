"""Storage Commitment Push Model messages (PS3.4 Annex J), built and read in one place for both of our roles.

The SCU asks with an N-ACTION (Action Type ID 1, "Request Storage Commitment", PS3.4 J.3.2) on the well-known
SOP Instance 1.2.840.10008.1.20.1.1, whose Action Information is a Transaction UID (0008,1195) and a Referenced
SOP Sequence (0008,1199) of (Referenced SOP Class UID, Referenced SOP Instance UID). The SCP answers with an
N-EVENT-REPORT (PS3.4 J.3.3): Event Type ID 1 when every instance is committed, 2 when any failed; the Event
Information repeats the Transaction UID and lists the committed instances in the Referenced SOP Sequence and
the others in the Failed SOP Sequence (0008,1198), each with its Failure Reason (0008,1197, PS3.4 J.3.3.1).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pydicom.dataset import Dataset

#: Storage Commitment Push Model SOP Class and its well-known SOP Instance (PS3.4 J.3.1).
PUSH_MODEL_CLASS_UID = "1.2.840.10008.1.20.1"
PUSH_MODEL_INSTANCE_UID = "1.2.840.10008.1.20.1.1"
#: N-ACTION Action Type ID: Request Storage Commitment (PS3.4 J.3.2).
REQUEST_COMMITMENT = 1
#: N-EVENT-REPORT Event Type IDs (PS3.4 J.3.3): all committed, or some failed.
ALL_COMMITTED = 1
SOME_FAILED = 2

# Failure Reasons (0008,1197), PS3.4 J.3.3.1 / C.4.2.1.4.
PROCESSING_FAILURE = 0x0110
NO_SUCH_OBJECT_INSTANCE = 0x0112
RESOURCE_LIMITATION = 0x0213
REFERENCED_SOP_CLASS_NOT_SUPPORTED = 0x0122
CLASS_INSTANCE_CONFLICT = 0x0119
DUPLICATE_TRANSACTION_UID = 0x0131

FAILURE_REASONS = {
    PROCESSING_FAILURE: "processing failure",
    NO_SUCH_OBJECT_INSTANCE: "no such object instance",
    RESOURCE_LIMITATION: "resource limitation",
    REFERENCED_SOP_CLASS_NOT_SUPPORTED: "referenced SOP class not supported",
    CLASS_INSTANCE_CONFLICT: "class-instance conflict",
    DUPLICATE_TRANSACTION_UID: "duplicate transaction UID",
}


def failure_words(reason: int) -> str:
    """``0x0112 no such object instance``."""
    return f"0x{reason:04X} {FAILURE_REASONS.get(reason, 'failure')}"


@dataclass(frozen=True)
class Reference:
    sop_class_uid: str
    sop_instance_uid: str


@dataclass(frozen=True)
class Failure:
    reference: Reference
    reason: int


@dataclass(frozen=True)
class CommitmentRequest:
    """What an N-ACTION asks: commit these instances, answering under ``transaction_uid``."""

    transaction_uid: str
    references: tuple[Reference, ...]


@dataclass(frozen=True)
class CommitmentResult:
    """What an N-EVENT-REPORT says about one transaction."""

    transaction_uid: str
    committed: tuple[Reference, ...]
    failed: tuple[Failure, ...]

    @property
    def event_type_id(self) -> int:
        return SOME_FAILED if self.failed else ALL_COMMITTED


class MalformedCommitment(ValueError):
    """An Action or Event Information without what PS3.4 J.3.2 / J.3.3 requires of it."""


def _uid(item: Dataset, keyword: str, where: str) -> str:
    value = str(item.get(keyword, "") or "").strip()
    if not value:
        raise MalformedCommitment(f"{where}: no {keyword}")
    return value


def _references(sequence: Iterable[Dataset], where: str) -> tuple[Reference, ...]:
    return tuple(
        Reference(_uid(item, "ReferencedSOPClassUID", where), _uid(item, "ReferencedSOPInstanceUID", where))
        for item in sequence
    )


def _sequence_of(references: Iterable[Reference]) -> list[Dataset]:
    items = []
    for reference in references:
        item = Dataset()
        item.ReferencedSOPClassUID = reference.sop_class_uid
        item.ReferencedSOPInstanceUID = reference.sop_instance_uid
        items.append(item)
    return items


def action_information(request: CommitmentRequest) -> Dataset:
    """The N-ACTION-RQ's Action Information (PS3.4 J.3.2, Table J.3-1)."""
    dataset = Dataset()
    dataset.TransactionUID = request.transaction_uid
    dataset.ReferencedSOPSequence = _sequence_of(request.references)
    return dataset


def read_action_information(dataset: Dataset | None) -> CommitmentRequest:
    """The request in an N-ACTION-RQ; :class:`MalformedCommitment` when a required attribute is missing."""
    if dataset is None:
        raise MalformedCommitment("N-ACTION without Action Information")
    references = _references(dataset.get("ReferencedSOPSequence") or [], "Referenced SOP Sequence")
    if not references:
        raise MalformedCommitment("Referenced SOP Sequence empty or missing")
    return CommitmentRequest(_uid(dataset, "TransactionUID", "Action Information"), references)


def event_information(result: CommitmentResult) -> Dataset:
    """The N-EVENT-REPORT-RQ's Event Information (PS3.4 J.3.3, Tables J.3-2): the Referenced SOP Sequence only when
    some instance is committed, the Failed SOP Sequence only when some is not."""
    dataset = Dataset()
    dataset.TransactionUID = result.transaction_uid
    if result.committed:
        dataset.ReferencedSOPSequence = _sequence_of(result.committed)
    if result.failed:
        items = _sequence_of(failure.reference for failure in result.failed)
        for item, failure in zip(items, result.failed, strict=True):
            item.FailureReason = failure.reason
        dataset.FailedSOPSequence = items
    return dataset


def read_event_information(dataset: Dataset | None) -> CommitmentResult:
    """The result in an N-EVENT-REPORT-RQ; a failed item without a Failure Reason counts as a processing
    failure."""
    if dataset is None:
        raise MalformedCommitment("N-EVENT-REPORT without Event Information")
    transaction_uid = _uid(dataset, "TransactionUID", "Event Information")
    committed = _references(dataset.get("ReferencedSOPSequence") or [], "Referenced SOP Sequence")
    failed_items = list(dataset.get("FailedSOPSequence") or [])
    failed_refs = _references(failed_items, "Failed SOP Sequence")
    failed = tuple(
        Failure(reference, int(item.get("FailureReason", PROCESSING_FAILURE) or PROCESSING_FAILURE))
        for reference, item in zip(failed_refs, failed_items, strict=True)
    )
    return CommitmentResult(transaction_uid, committed, failed)
