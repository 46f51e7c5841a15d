"""DICOM destination: one association per series, C-STORE of every instance, any non-success status fails it.

The presentation contexts come from the files themselves (SOP class and transfer syntax, plus both little
endian syntaxes so an uncompressed file can always go). TCP_NODELAY is set on our socket, as on the receiver.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Sequence
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association

from codebrain_node.config import DicomDestinationSettings, Settings
from codebrain_node.export.base import Delivered, DeliveryError, Destination, ignore_delivery, register

log = logging.getLogger(__name__)

#: C-STORE statuses that mean "stored": success and the three warnings (coercion, elements discarded, mismatch).
ACCEPTED_STATUSES = frozenset({0x0000, 0xB000, 0xB006, 0xB007})


def _pause_reactor(assoc: Association, timeout_s: float = 5.0) -> None:
    """Park the association's reactor thread before a send, closing a pynetdicom race.

    ``send_c_store`` clears the reactor checkpoint and proceeds as soon as ``_is_paused`` reads True, but the
    reactor may have just returned from its checkpoint wait and not yet reset the flag; it then takes our
    C-STORE-RSP off the queue itself ("Received unexpected C-STORE service message", a DIMSE timeout and an
    aborted association), seen here under CPU contention. The reactor loop sleeps 1 ms a turn, so a flag that
    still reads True 3 ms after the checkpoint was cleared means the reactor is parked at the checkpoint."""
    assoc._reactor_checkpoint.clear()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if assoc._is_paused:
            time.sleep(0.003)
            if assoc._is_paused:
                return
        time.sleep(0.0005)


@register(DicomDestinationSettings)
class DicomDestination(Destination[DicomDestinationSettings]):
    def __init__(
        self,
        name: str,
        ae_title: str,
        host: str,
        port: int,
        calling_ae_title: str,
        timeout_s: float = 30.0,
    ) -> None:
        super().__init__(name)
        self.ae_title, self.host, self.port = ae_title, host, port
        self.calling_ae_title = calling_ae_title
        self.timeout_s = timeout_s

    @classmethod
    def from_settings(cls, entry: DicomDestinationSettings, settings: Settings) -> DicomDestination:
        """Our calling AE title is node-wide (``export.calling_ae_title``); so is the network timeout."""
        return cls(
            entry.name,
            entry.ae_title,
            entry.host,
            entry.port,
            settings.export.calling_ae_title,
            timeout_s=settings.dicom.network_timeout_s,
        )

    def send(self, files: Sequence[Path], delivered: Delivered = ignore_delivery) -> None:
        datasets = [dcmread(path) for path in files]
        ae = AE(ae_title=self.calling_ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout_s
        ae.connection_timeout = self.timeout_s
        contexts: dict[str, set[str]] = {}
        for dataset in datasets:
            contexts.setdefault(str(dataset.SOPClassUID), set()).add(str(dataset.file_meta.TransferSyntaxUID))
        for sop_class, syntaxes in contexts.items():
            for syntax in syntaxes:
                ae.add_requested_context(sop_class, [syntax, ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        where = f"{self.ae_title}@{self.host}:{self.port}"
        assoc = ae.associate(self.host, self.port, ae_title=self.ae_title)
        if not assoc.is_established:
            state = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "unreachable"
            raise DeliveryError(f"{where}: association {state}")
        try:
            connection = assoc.dul.socket.socket if assoc.dul.socket else None
            if connection is not None:
                connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for path, dataset in zip(files, datasets, strict=True):
                _pause_reactor(assoc)
                try:
                    reply = assoc.send_c_store(dataset)
                except (ValueError, RuntimeError) as exc:  # no accepted context for this instance
                    raise DeliveryError(f"{where}: {exc}") from exc
                status = getattr(reply, "Status", None)
                if status is None:
                    raise DeliveryError(f"{where}: no C-STORE response (connection lost or timed out)")
                if status not in ACCEPTED_STATUSES:
                    raise DeliveryError(f"{where}: C-STORE status 0x{status:04X} for sop={dataset.SOPInstanceUID}")
                delivered(path)
        finally:
            if assoc.is_established:
                assoc.release()
            else:
                assoc.abort()
        log.info("sent %d instance(s) to %s", len(datasets), where)
