"""DICOM destination: one association per series, C-STORE of every instance, any non-success status fails it.

The presentation contexts come from the files' meta information (SOP class and transfer syntax, plus both little
endian syntaxes so an uncompressed file can always go). A file whose own transfer syntax the peer accepted is
streamed from disk as written (pynetdicom's chunked send: no decoding, no re-encoding, the bytes the writer made);
only one that must change syntax is read and converted. TCP_NODELAY is set on our socket, as on the receiver.

With ``tls = true`` the association runs over DICOM TLS (PS3.15 Annex B.9, the BCP 195 TLS profile: TLS 1.2 or
later; ``codebrain_node/tls.py``): the peer's certificate must chain to ``tls_ca_certificates`` (or the system's
trust store) and carry ``host`` (or ``tls_server_name``) as a name; ours is presented when configured. The
context is built for each send, so renewed certificates are picked up without a restart, and a file that went
missing fails that attempt (retried with back-off) rather than the dispatcher; :meth:`DicomDestination.check`
builds it once at start, so a bad file stops ``serve`` before anything listens.

With ``storage_commitment = true`` the dispatcher asks the peer, once a series is stored, to commit it
(:meth:`DicomDestination.request_commitment`: an N-ACTION of the Storage Commitment Push Model, PS3.4 J.3.2, on an
association of its own, over TLS like the C-STOREs); the answer is an N-EVENT-REPORT, usually on a new association
to our receiver, sometimes on this one before we release it (then ``on_report`` gets it). ``export/commitment.py``
waits for it.
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Callable, Sequence
from pathlib import Path

from pydicom import dcmread
from pydicom.filereader import read_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, _config, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import StorageCommitmentPushModel

from codebrain_node.config import DicomDestinationSettings, Settings
from codebrain_node.dimse import pause_reactor
from codebrain_node.export.base import Delivered, DeliveryError, Destination, ignore_delivery, register
from codebrain_node.tls import TLSFileError, client_context
from codebrain_node.write.storage_commitment import (
    PUSH_MODEL_INSTANCE_UID,
    REQUEST_COMMITMENT,
    CommitmentRequest,
    CommitmentResult,
    MalformedCommitment,
    action_information,
    read_event_information,
)

log = logging.getLogger(__name__)

# send_c_store(path) streams the file's data set in chunks instead of decoding and re-encoding it (process-wide;
# only calls that pass a path are affected, and this module is the one that does).
_config.STORE_SEND_CHUNKED_DATASET = True

#: C-STORE statuses that mean "stored": success and the three warnings (coercion, elements discarded, mismatch).
ACCEPTED_STATUSES = frozenset({0x0000, 0xB000, 0xB006, 0xB007})


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
        tls: DicomDestinationSettings | None = None,
        commitment_timeout_s: float | None = None,
    ) -> None:
        super().__init__(name)
        self.ae_title, self.host, self.port = ae_title, host, port
        self.calling_ae_title = calling_ae_title
        self.timeout_s = timeout_s
        #: The entry whose ``tls_*`` keys say how to speak TLS to this peer; None: plain TCP.
        self.tls = tls if tls is not None and tls.tls else None
        #: Seconds to wait for the peer's Storage Commitment report after each series; None: commitment not asked.
        self.commitment_timeout_s = commitment_timeout_s

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
            tls=entry,
            commitment_timeout_s=entry.storage_commitment_timeout_s if entry.storage_commitment else None,
        )

    def check(self) -> None:
        """Build the TLS context once: a certificate, key or CA file that cannot be used raises
        :class:`~codebrain_node.tls.TLSFileError` naming it."""
        self.tls_context()

    def tls_context(self) -> ssl.SSLContext | None:
        """A fresh client context from the entry's ``tls_*`` files, or None for plain TCP."""
        if self.tls is None:
            return None
        return client_context(
            ca_certificates=self.tls.tls_ca_certificates,
            certificate=self.tls.tls_certificate,
            private_key=self.tls.tls_private_key,
            password=self.tls.tls_private_key_password.get_secret_value(),
            where=f"export.destinations[{self.name}]",
        )

    def send(self, files: Sequence[Path], delivered: Delivered = ignore_delivery) -> None:
        metas = [read_file_meta_info(path) for path in files]
        ae = AE(ae_title=self.calling_ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout_s
        ae.connection_timeout = self.timeout_s
        contexts: dict[str, set[str]] = {}
        for meta in metas:
            contexts.setdefault(str(meta.MediaStorageSOPClassUID), set()).add(str(meta.TransferSyntaxUID))
        for sop_class, syntaxes in contexts.items():
            for syntax in syntaxes:
                ae.add_requested_context(sop_class, [syntax, ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        assoc, where = self._associate(ae)
        try:
            connection = assoc.dul.socket.socket if assoc.dul.socket else None
            if connection is not None:
                connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            as_written = {(str(c.abstract_syntax), str(c.transfer_syntax[0])) for c in assoc.accepted_contexts}
            for path, meta in zip(files, metas, strict=True):
                pause_reactor(assoc)
                own = (str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID))
                try:
                    reply = assoc.send_c_store(path if own in as_written else dcmread(path))
                except (ValueError, RuntimeError) as exc:  # no accepted context for this instance
                    raise DeliveryError(f"{where}: {exc}") from exc
                status = getattr(reply, "Status", None)
                if status is None:
                    raise DeliveryError(f"{where}: no C-STORE response (connection lost or timed out)")
                if status not in ACCEPTED_STATUSES:
                    raise DeliveryError(
                        f"{where}: C-STORE status 0x{status:04X} for sop={meta.MediaStorageSOPInstanceUID}"
                    )
                delivered(path)
        finally:
            if assoc.is_established:
                assoc.release()
            else:
                assoc.abort()
        log.info("sent %d instance(s) to %s", len(files), where)

    def _associate(self, ae: AE, handlers: list | None = None) -> tuple[Association, str]:  # type: ignore[type-arg]
        """An established association with the peer (over TLS when configured), and its name for messages;
        :class:`DeliveryError` says why there is none."""
        where = f"{self.ae_title}@{self.host}:{self.port}"
        try:
            context = self.tls_context()
        except TLSFileError as exc:
            raise DeliveryError(f"{where}: {exc}") from None
        connected: list[bool] = []  # pynetdicom calls a refused TCP connect "aborted"; the peer never answered
        handlers = [*(handlers or []), (evt.EVT_CONN_OPEN, lambda event: connected.append(True))]
        if context is not None and self.tls is not None:
            where += " (TLS)"
            tls_args = (context, self.tls.tls_server_name or self.host)
            assoc = ae.associate(self.host, self.port, ae_title=self.ae_title, tls_args=tls_args, evt_handlers=handlers)
        else:
            assoc = ae.associate(self.host, self.port, ae_title=self.ae_title, evt_handlers=handlers)
        if not assoc.is_established:
            if not connected and context is None:  # over TLS a failed handshake looks the same: told below
                raise DeliveryError(f"{where}: unreachable (connection refused, or no route to the host)")
            state = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "unreachable"
            if context is not None and not assoc.is_rejected:  # pynetdicom logs the TLS reason, but keeps it
                state += " (no connection, a failed TLS handshake or our certificate refused: see the log)"
            raise DeliveryError(f"{where}: association {state}")
        return assoc, where

    def request_commitment(
        self, request: CommitmentRequest, on_report: Callable[[CommitmentResult, str], None]
    ) -> None:
        """Ask the peer to commit ``request``'s instances (N-ACTION, Action Type 1, PS3.4 J.3.2); returns once it
        accepted the request (0x0000), else :class:`DeliveryError`. A report it sends before we release goes to
        ``on_report`` (and is acknowledged); the usual one comes later on a new association to our receiver."""
        ae = AE(ae_title=self.calling_ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout_s
        ae.connection_timeout = self.timeout_s
        ae.add_requested_context(StorageCommitmentPushModel)

        def report(event: evt.Event) -> tuple[int, None]:
            try:
                result = read_event_information(event.event_information)
            except (MalformedCommitment, ValueError, AttributeError) as exc:
                log.warning("storage commitment report from %s refused (0x0120): %s", self.ae_title, exc)
                return 0x0120, None
            on_report(result, self.ae_title)
            return 0x0000, None

        assoc, where = self._associate(ae, [(evt.EVT_N_EVENT_REPORT, report)])
        try:
            pause_reactor(assoc)
            try:
                status, _ = assoc.send_n_action(
                    action_information(request), REQUEST_COMMITMENT, StorageCommitmentPushModel, PUSH_MODEL_INSTANCE_UID
                )
            except (ValueError, RuntimeError) as exc:  # the peer accepted no Storage Commitment context
                raise DeliveryError(f"{where}: storage commitment not possible ({exc})") from exc
            code = getattr(status, "Status", None)
            if code is None:
                raise DeliveryError(f"{where}: no N-ACTION response (connection lost or timed out)")
            if code != 0x0000:
                raise DeliveryError(f"{where}: storage commitment request refused, N-ACTION status 0x{code:04X}")
        finally:
            if assoc.is_established:
                assoc.release()
            else:
                assoc.abort()
        log.info(
            "storage commitment %s asked of %s for %d instance(s)",
            request.transaction_uid,
            where,
            len(request.references),
        )
