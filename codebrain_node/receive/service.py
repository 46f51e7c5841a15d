"""The receive stage as one unit for ``serve``: check the TLS files (if any), close a dead predecessor's
associations, recover the spool, start the recorder, then listen (instances and association events both go to the
recorder). Storage Commitment requests are answered from what the recorder has filed."""

from __future__ import annotations

import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from codebrain_node.config import Settings
from codebrain_node.db.commitments import check_instances
from codebrain_node.receive.commitment import Check, CommitmentResponder
from codebrain_node.receive.limits import SharedAssociationCount
from codebrain_node.receive.recorder import Recorder, recover_spool
from codebrain_node.receive.scp import Receiver, receiver_tls_context
from codebrain_node.receive.spool import Spool, instance_limits

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReceiverSlot:
    """One of several receiver processes on one port (``receive/processes.py``): its number, the listening
    sockets its parent made, the node-wide association table, and whether it replaces one that died (then it
    recovers: the dead one's partial files, open associations and instances acknowledged but not filed)."""

    index: int
    listening_sockets: dict[str, socket.socket] = field(default_factory=dict)
    count_path: Path | None = None
    restarted: bool = False


@dataclass
class ReceiveService:
    spool: Spool
    recorder: Recorder
    receiver: Receiver

    @property
    def port(self) -> int:
        return self.receiver.port

    @property
    def tls_port(self) -> int | None:
        return self.receiver.tls_port

    def stop(self) -> None:
        """Stop listening first, then let the recorder file what is queued."""
        self.receiver.stop()
        self.recorder.stop()


def start_receive_service(
    settings: Settings, factory: sessionmaker[Session], slot: ReceiverSlot | None = None
) -> ReceiveService:
    """Recover what a previous run acknowledged but did not record, then accept associations. A TLS certificate or
    key that cannot be used raises :class:`~codebrain_node.tls.TLSFileError` first, before anything has started.

    ``slot``: this is one of several receiver processes; the parent recovered the spool before starting any, so
    only a replacement for one that died recovers (its own ``tmp/`` folder, and what the dead one left)."""
    receiver_tls_context(settings.dicom)
    spool = Spool(
        settings.paths.data_dir,
        settings.dicom.min_free_disk_mb,
        instance_limits(settings.dicom),
        tmp_name=f"receiver-{slot.index}" if slot is not None else None,
    )
    if slot is None or slot.restarted:
        recover_spool(factory, spool)
    shared = None
    if slot is not None and slot.count_path is not None:
        shared = SharedAssociationCount(slot.count_path, slot.index)
        shared.reset()
    recorder = Recorder(factory, spool=spool).start()  # what the database refuses is quarantined at once
    commitments = CommitmentResponder(
        settings.dicom,
        commitment_check(factory, settings),
        record=recorder.submit,
        settle=recorder.flush,
        siblings=slot is not None,
    )
    receiver = Receiver(
        settings.dicom,
        spool,
        recorder.submit,
        on_association=recorder.submit,
        on_conflict=recorder.submit,
        commitments=commitments,
        on_commitment_report=recorder.submit,
        shared_count=shared,
        listening_sockets=slot.listening_sockets if slot is not None else None,
    ).start()
    return ReceiveService(spool=spool, recorder=recorder, receiver=receiver)


def commitment_check(factory: sessionmaker[Session], settings: Settings) -> Check:
    """The Storage Commitment SCP's question to the database: which of these instances do we hold?"""

    def check(references: Sequence[tuple[str, str]]) -> list[tuple[str, str, int | None]]:
        with factory() as session:
            return check_instances(session, settings.paths.data_dir, references)

    return check
