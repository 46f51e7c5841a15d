"""Storage Commitment Push Model in the receiver (PS3.4 Annex J), both directions, knowing nothing of the database.

As SCP: a peer asks (N-ACTION, Action Type 1) whether we hold instances it sent. The handler answers the N-ACTION
at once (success: the request is accepted) and hands it to :class:`CommitmentResponder`, which, in a thread of its
own, waits until the recorder has filed what was acknowledged before (a row follows the spool's fsync by a
moment), asks ``check`` which instances are durably stored and recorded, and sends the N-EVENT-REPORT (PS3.4
J.3.3): Event Type 1 when all are committed, 2 with a Failed SOP Sequence and a Failure Reason for each other
(0x0112 no such object instance, 0x0119 class-instance conflict, 0x0110 processing failure). The report goes on a
new association to the requester's ``host:port`` when ``dicom.storage_commitment_peers`` lists its AE title
(with ``report_on = "new"``), proposing the SCP role by SCP/SCU Role Selection (PS3.7 D.3.3.4) since we are the
association requester there, or else on the association the request came on, which the requester holds open.
What was answered, and how it travelled, goes to ``record`` (the recorder files it).

As SCU (the exporter asked a destination): the destination's N-EVENT-REPORT arrives on a new association to us;
:func:`report_of` turns it into a :class:`CommitmentReported` for the recorder, which writes it on the request's
row, where the exporter waits for it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from pynetdicom import AE, build_role
from pynetdicom.association import Association

from codebrain_node.config import DicomSettings, StorageCommitmentPeer
from codebrain_node.dimse import pause_reactor
from codebrain_node.write.storage_commitment import (
    PUSH_MODEL_CLASS_UID,
    PUSH_MODEL_INSTANCE_UID,
    CommitmentRequest,
    CommitmentResult,
    Failure,
    Reference,
    event_information,
    failure_words,
)

log = logging.getLogger(__name__)

#: Failure Reason "no such object instance" (PS3.4 J.3.3): the UID has no row (yet).
NOT_ON_RECORD = 0x0112
#: How often instances not on record are looked for again when other receiver processes file instances too.
RECHECK_S = 0.2

#: Requests answered at once; beyond, an N-ACTION is refused 0x0213 (resource limitation) and may be sent again.
MAX_CONCURRENT_ANSWERS = 16

#: (SOP Class UID, SOP Instance UID) → (the same, Failure Reason or None when committed).
Check = Callable[[Sequence[tuple[str, str]]], list[tuple[str, str, int | None]]]


@dataclass(frozen=True)
class CommitmentReported:
    """A destination's N-EVENT-REPORT about one of our requests (we are the SCU), for the recorder."""

    result: CommitmentResult
    calling_ae_title: str
    at: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass(frozen=True)
class CommitmentAnswered:
    """What we reported to a requester (we are the SCP), for the recorder."""

    result: CommitmentResult
    calling_ae_title: str
    requested_at: datetime
    #: How the report travelled, or why it could not.
    detail: str


def report_of(event_type_id: int, result: CommitmentResult, calling_ae_title: str) -> CommitmentReported:
    """The recorder's item for a received report; an Event Type 1 that lists failures counts them all the same."""
    if event_type_id not in (1, 2):
        log.warning("storage commitment report from %s with Event Type ID %s", calling_ae_title, event_type_id)
    return CommitmentReported(result, calling_ae_title)


class CommitmentResponder:
    """The SCP's answering side: one short-lived thread per request (a request is rare and bounded by
    ``storage_commitment_settle_s`` plus one association's timeouts)."""

    def __init__(
        self,
        dicom: DicomSettings,
        check: Check,
        record: Callable[[CommitmentAnswered], None],
        settle: Callable[[float], bool] | None = None,
        *,
        siblings: bool = False,
    ) -> None:
        self.dicom = dicom
        #: Other receiver processes file instances too (``dicom.receiver_processes`` > 1): ``settle`` waits for
        #: ours only, so an instance not on record yet is looked for again until ``storage_commitment_settle_s``.
        self.siblings = siblings
        self.check = check
        self.record = record
        #: Waits (up to the given seconds) until every instance acknowledged so far is recorded: the recorder's flush.
        self.settle = settle
        self.peers: dict[str, StorageCommitmentPeer] = {
            peer.ae_title.strip(): peer for peer in dicom.storage_commitment_peers
        }
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def accept(self, request: CommitmentRequest, assoc: Association, calling_ae_title: str) -> bool:
        """Called on the association's thread for a valid N-ACTION: answer in the background. False when
        :data:`MAX_CONCURRENT_ANSWERS` are under way already (the request is refused)."""
        thread = threading.Thread(
            target=self._answer,
            args=(request, assoc, calling_ae_title, datetime.now(UTC)),
            name="codebrain-commitment",
            daemon=True,
        )
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            if len(self._threads) >= MAX_CONCURRENT_ANSWERS:
                return False
            self._threads.append(thread)
        thread.start()
        return True

    def join(self, timeout_s: float = 30.0) -> None:
        """Wait for the reports under way (``stop``, and tests)."""
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout_s)

    def result_of(self, request: CommitmentRequest) -> CommitmentResult:
        """Which referenced instances we hold, durably and on record."""
        deadline = time.monotonic() + self.dicom.storage_commitment_settle_s
        if self.settle is not None and not self.settle(self.dicom.storage_commitment_settle_s):
            log.warning(
                "storage commitment %s: the recorder is still filing; checking what is recorded",
                request.transaction_uid,
            )
        checked = self.check([(r.sop_class_uid, r.sop_instance_uid) for r in request.references])
        # another process may have acknowledged some just before and not filed them yet: a moment more for those
        while self.siblings and time.monotonic() < deadline:
            missing = [(c, i) for c, i, reason in checked if reason == NOT_ON_RECORD]
            if not missing:
                break
            time.sleep(RECHECK_S)
            again = {(c, i): reason for c, i, reason in self.check(missing)}
            checked = [(c, i, again.get((c, i), reason)) for c, i, reason in checked]
        committed = tuple(Reference(c, i) for c, i, reason in checked if reason is None)
        failed = tuple(Failure(Reference(c, i), reason) for c, i, reason in checked if reason is not None)
        return CommitmentResult(request.transaction_uid, committed, failed)

    def _answer(
        self, request: CommitmentRequest, assoc: Association, calling_ae_title: str, requested_at: datetime
    ) -> None:
        try:
            result = self.result_of(request)
        except Exception as exc:  # the database away: every instance fails with a processing failure
            log.error("storage commitment %s: could not check the instances (%s)", request.transaction_uid, exc)
            result = CommitmentResult(
                request.transaction_uid, (), tuple(Failure(ref, 0x0110) for ref in request.references)
            )
        peer = self.peers.get(calling_ae_title)
        if peer is not None and peer.report_on == "new":
            detail = self._report_on_new_association(result, peer)
        else:
            detail = self._report_on_same_association(result, assoc, calling_ae_title)
        if result.failed:
            reasons = sorted({failure_words(f.reason) for f in result.failed})
            log.info(
                "storage commitment %s for %s: %d committed, %d failed (%s); %s",
                result.transaction_uid,
                calling_ae_title,
                len(result.committed),
                len(result.failed),
                ", ".join(reasons),
                detail,
            )
        else:
            log.info(
                "storage commitment %s for %s: all %d committed; %s",
                result.transaction_uid,
                calling_ae_title,
                len(result.committed),
                detail,
            )
        self.record(CommitmentAnswered(result, calling_ae_title, requested_at, detail))

    def _send(self, assoc: Association, result: CommitmentResult) -> str | None:
        """None when the peer answered the N-EVENT-REPORT with success, else what went wrong."""
        try:
            reply = assoc.send_n_event_report(
                event_information(result), result.event_type_id, PUSH_MODEL_CLASS_UID, PUSH_MODEL_INSTANCE_UID
            )
        except (RuntimeError, ValueError) as exc:
            return f"N-EVENT-REPORT not sent ({exc})"
        status = reply[0] if isinstance(reply, tuple) else reply
        code = getattr(status, "Status", None)
        if code is None:
            return "no N-EVENT-REPORT response (connection lost or timed out)"
        if code != 0x0000:
            return f"N-EVENT-REPORT answered 0x{code:04X}"
        return None

    def _report_on_same_association(self, result: CommitmentResult, assoc: Association, calling: str) -> str:
        if not assoc.is_established:
            return (
                f"not reported: {calling} ended the association before the report and is not in "
                "dicom.storage_commitment_peers"
            )
        pause_reactor(assoc)  # the reactor has answered the N-ACTION and waits at its checkpoint
        try:
            problem = self._send(assoc, result)
        finally:
            assoc._reactor_checkpoint.set()
        return f"not reported: {problem} (same association)" if problem else "reported on the same association"

    def _report_on_new_association(self, result: CommitmentResult, peer: StorageCommitmentPeer) -> str:
        where = f"{peer.ae_title}@{peer.host}:{peer.port}"
        ae = AE(ae_title=self.dicom.ae_title)
        ae.acse_timeout = self.dicom.acse_timeout_s
        ae.dimse_timeout = self.dicom.dimse_timeout_s
        ae.network_timeout = self.dicom.network_timeout_s
        ae.connection_timeout = self.dicom.network_timeout_s
        ae.add_requested_context(PUSH_MODEL_CLASS_UID)
        # we request the association but act as the service's SCP (PS3.4 J.3.3, PS3.7 D.3.3.4)
        role = build_role(PUSH_MODEL_CLASS_UID, scu_role=False, scp_role=True)
        assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title, ext_neg=[role])
        if not assoc.is_established:
            state = "rejected" if assoc.is_rejected else "not established"
            return f"not reported: association to {where} {state}"
        try:
            problem = self._send(assoc, result)
        finally:
            if assoc.is_established:
                assoc.release()
        return f"not reported: {problem} ({where})" if problem else f"reported on a new association to {where}"
