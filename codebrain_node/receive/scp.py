"""The Storage SCP: pynetdicom raises events, these handlers decide; storage is one call into the spool.

Accepted: Verification, Storage Commitment Push Model (both roles, ``receive/commitment.py``), and MR Image
Storage / Enhanced MR Image Storage in the uncompressed syntaxes (implicit and explicit little endian, deflate,
explicit big endian) and the compressed ones (JPEG baseline/extended/lossless,
JPEG-LS, JPEG 2000, HTJ2K, RLE). Compressed pixel data is stored as sent; the engine decodes it later (pydicom
with the pylibjpeg plugins, ``imaging/series_io.py``), so nothing here decodes or transcodes. Any other SOP class
gets its presentation context rejected ("abstract syntax not supported").

Association policy, checked on EVT_REQUESTED before negotiation:
  - calling AE title not in ``dicom.allowed_callers`` (unless ``accept_unknown_callers``): A-ASSOCIATE-RJ
    permanent, service user, "calling AE title not recognised";
  - called AE title other than ``dicom.ae_title`` (unless ``accept_any_called_ae_title``): permanent, service
    user, "called AE title not recognised";
  - peer address not in ``dicom.allowed_hosts`` (when set): permanent, service user, no reason given;
  - more than ``dicom.max_associations_per_peer`` from the peer's address: transient, service provider, "local
    limit exceeded";
  - free disk below ``dicom.min_free_disk_mb``: transient, service provider, "local limit exceeded";
  - more than ``dicom.max_associations`` at once: pynetdicom rejects transient, "local limit exceeded".

Before that, a connection is no association (PS3.8 9.1.4, the ARTIM timer): its thread waits, up to
``dicom.association_request_timeout_s``, until the whole A-ASSOCIATE-RQ PDU has arrived (peeked, left in the
socket for pynetdicom), and only then hands the socket to pynetdicom, whose association threads are what
``dicom.max_associations`` counts. So connections that say nothing cost a thread each for a few seconds, count
against nobody's limit, and a host may have at most ``dicom.max_associations_per_peer`` of them waiting (further
ones are closed at once). Such closings are logged once a minute per host and kind, not per connection.

With several receiver processes on one port (``dicom.receiver_processes``, ``receive/processes.py``) the two
association limits are the node's, not each process's: they are counted in one table the processes share
(``receive/limits.py``) and refused alike (transient, service provider, "local limit exceeded"). The connections
waiting to associate are bounded per process. The processes accept on the parent's listening socket
(:class:`NoDelayAssociationServer` with ``listening_socket``).

DICOM TLS (PS3.15 Annex B.9, the BCP 195 TLS profile; ``codebrain_node/tls.py``): with ``dicom.tls = "both"`` a
second listener on ``dicom.tls_port`` speaks TLS beside the plain one on ``dicom.port``; with ``"only"`` it is the
only one. Both listeners are one AE with the same handlers and policy. The TLS handshake runs in the
connection's own thread, bounded by ``dicom.acse_timeout_s`` (pynetdicom does it in the accepting thread, where one
client that connects and says nothing would stop every other one from being accepted); a failed handshake (a
plain DICOM client, no or an untrusted client certificate when ``dicom.tls_client_ca`` is set, TLS below 1.2) is
logged with the peer's address and closes the connection before any association exists.

Associations: EVT_ACCEPTED, EVT_RELEASED, EVT_ABORTED and EVT_CONN_CLOSE become :class:`AssociationOpened` /
:class:`AssociationEnded` records for ``on_association`` (the recorder), and every stored instance carries its
association's key, so the database knows which studies an open association may still be sending
(``route/stable.py``). Nothing here waits on the database.

Speed: accepted sockets get TCP_NODELAY (pynetdicom leaves Nagle on, which holds back the small C-STORE-RSP
until the peer's delayed ACK); the dataset is never decoded (the C-STORE primitive's bytes are written as sent,
the header is read only up to group 0020, the File Meta and the C-STORE-RSP are packed by hand,
``receive/store_response.py``, the C-STORE-RQ's command set is read by hand, ``receive/store_request.py``);
pynetdicom's per-PDU logging handlers are not bound; a larger maximum PDU means fewer PDUs per instance; an
association's two threads wait for work instead of polling every millisecond, and read each PDU in one call
(``receive/reactor.py``; an association whose pynetdicom internals differ keeps pynetdicom's loops, its network
thread polling every 0.2 ms when it is the only one open). ``bench ingest`` measures all of this.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import ssl
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from pydicom import uid as uids
from pynetdicom import AE, _config, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import EnhancedMRImageStorage, MRImageStorage, StorageCommitmentPushModel, Verification
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

from codebrain_node import metrics
from codebrain_node.config import DicomSettings
from codebrain_node.db.associations import ABORTED, CONNECTION_CLOSED, RECEIVER_STOPPED, RELEASED, receiver_identity
from codebrain_node.receive.associations import (
    AssociationEnded,
    AssociationEvent,
    AssociationOpened,
    new_association_key,
)
from codebrain_node.receive.commitment import CommitmentReported, CommitmentResponder, report_of
from codebrain_node.receive.limits import SharedAssociationCount
from codebrain_node.receive.reactor import EventDrivenRequestHandler
from codebrain_node.receive.spool import CANNOT_UNDERSTAND, InstanceConflict, ReceivedInstance, Spool
from codebrain_node.receive.store_request import install_fast_store_request
from codebrain_node.receive.store_response import install_fast_store_response
from codebrain_node.tls import server_context
from codebrain_node.write.storage_commitment import (
    PUSH_MODEL_INSTANCE_UID,
    REQUEST_COMMITMENT,
    MalformedCommitment,
    read_action_information,
    read_event_information,
)

log = logging.getLogger(__name__)

STORAGE_CLASSES = (MRImageStorage, EnhancedMRImageStorage)

TRANSFER_SYNTAXES = (
    uids.ExplicitVRLittleEndian,
    uids.ImplicitVRLittleEndian,
    uids.DeflatedExplicitVRLittleEndian,
    uids.ExplicitVRBigEndian,
    uids.JPEGBaseline8Bit,
    uids.JPEGExtended12Bit,
    uids.JPEGLossless,
    uids.JPEGLosslessSV1,
    uids.JPEGLSLossless,
    uids.JPEGLSNearLossless,
    uids.JPEG2000Lossless,
    uids.JPEG2000,
    uids.HTJ2KLossless,
    uids.HTJ2KLosslessRPCL,
    uids.HTJ2K,
    uids.RLELossless,
)

#: How long an idle association's network thread sleeps between polls (pynetdicom's default: 1 ms).
NETWORK_POLL_S = 0.0002

#: Our maximum PDU receive length: 16 x the DCMTK default, so a 128 KiB slice arrives in one or two PDUs.
MAX_PDU_BYTES = 262_144

# A-ASSOCIATE-RJ (result, source, diagnostic), PS3.8 9.3.4.
REJECT_UNKNOWN_CALLER = (0x01, 0x01, 0x03)
REJECT_WRONG_CALLED = (0x01, 0x01, 0x07)
REJECT_HOST = (0x01, 0x01, 0x01)
REJECT_LOW_DISK = (0x02, 0x03, 0x02)
REJECT_PEER_LIMIT = (0x02, 0x03, 0x02)

#: How long a receiver process with associations open defers its accept() on a shared socket, per association.
ACCEPT_DEFER_S = 0.002

#: The most of an A-ASSOCIATE-RQ waited for before pynetdicom gets the socket (a usual one is under 2 KiB).
MAX_REQUEST_PEEK = 16_384

_WAITING_LOCK = threading.Lock()
#: (host, what) → when it was last logged: a flood of silent connections writes one line a minute, not one each.
_NOTED: dict[tuple[str, str], float] = {}
NOTE_EVERY_S = 60.0


def _note(host: str, what: str) -> None:
    now = time.monotonic()
    with _WAITING_LOCK:
        if len(_NOTED) > 1024:
            _NOTED.clear()
        last = _NOTED.get((host, what))
        if last is not None and now - last < NOTE_EVERY_S:
            return
        _NOTED[(host, what)] = now
    log.warning("connection from %s %s (more such from it are not logged for %d s)", host, what, NOTE_EVERY_S)


def _host_of(client_address: tuple[str, int] | str) -> str:
    return client_address[0] if isinstance(client_address, tuple) else client_address


def _await_request(connection: socket.socket, timeout_s: float) -> str | None:
    """Wait until the connection's first PDU (the A-ASSOCIATE-RQ) has wholly arrived, reading nothing: None when
    it has (or when the first PDU is something else, which pynetdicom answers), else why not."""
    deadline = time.monotonic() + timeout_s
    need = 6  # the PDU header: type, reserved, length (PS3.8 9.3.1)
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "sent no A-ASSOCIATE-RQ within dicom.association_request_timeout_s: closed"
            if isinstance(connection, ssl.SSLSocket):  # no peeking through TLS: the first bytes will do
                if connection.pending() or select.select([connection], [], [], remaining)[0]:
                    return None
                continue
            connection.settimeout(remaining)
            try:
                seen = connection.recv(need, socket.MSG_PEEK)
            except TimeoutError:
                continue
            if not seen:
                return ""  # closed before saying anything: a port probe, not worth a line
            if need == 6 and len(seen) >= 6:
                if seen[0] != 0x01:
                    return None
                need = 6 + min(int.from_bytes(seen[2:6], "big"), MAX_REQUEST_PEEK)
            if len(seen) >= need:
                return None
            time.sleep(0.01)  # part of it is here: wait for the rest
    except OSError:
        return ""
    finally:
        with contextlib.suppress(OSError):
            connection.settimeout(None)


class PeerNoiseFilter(logging.Filter):
    """pynetdicom's log records about what a peer sent, as one line per association thread and no traceback.

    On garbage (an HTTP request, an unknown PDU type, an A-ASSOCIATE-RQ of noise) pynetdicom logs an ERROR for each
    byte it cannot place and ``LOGGER.exception`` for a PDU it cannot decode: a traceback of its own code for every
    hostile connection. This filter drops those bare exception records, strips the traceback off any other, and
    lets through the first WARNING-or-worse record of each thread (each association runs in its own), later ones
    at DEBUG only."""

    LOGGERS = ("pynetdicom.dul", "pynetdicom.acse", "pynetdicom.association", "pynetdicom.transport")

    def __init__(self) -> None:
        super().__init__()
        self._seen: weakref.WeakKeyDictionary[threading.Thread, bool] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info:
            if isinstance(record.msg, BaseException) or not str(record.msg).strip():
                return False  # LOGGER.exception(exc): nothing but the traceback
            record.exc_info, record.exc_text, record.stack_info = None, None, None
        if record.levelno < logging.WARNING:
            return True
        with self._lock:
            thread = threading.current_thread()
            if self._seen.get(thread):
                record.levelno, record.levelname = logging.DEBUG, "DEBUG"
                return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
            self._seen[thread] = True
        return True

    @classmethod
    def install(cls) -> None:
        """On pynetdicom's loggers, once per process."""
        for name in cls.LOGGERS:
            logger = logging.getLogger(name)
            if not any(isinstance(existing, cls) for existing in logger.filters):
                logger.addFilter(cls())


class NoDelayAssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with TCP_NODELAY on every accepted connection: each C-STORE-RSP leaves at once
    instead of waiting for Nagle's timer while the sender waits for it.

    A connection becomes an association (a pynetdicom thread, counted by ``maximum_associations``) only once its
    A-ASSOCIATE-RQ has arrived within ``request_timeout_s``; until then it waits in its own thread, and one host
    may have at most ``max_waiting_per_peer`` connections waiting (0: no limit)."""

    request_timeout_s: float = 5.0
    max_waiting_per_peer: int = 0

    def __init__(self, *args: Any, listening_socket: socket.socket | None = None, **kwargs: Any) -> None:
        #: A listening socket made by the parent and shared by several receiver processes (``receive/processes.py``):
        #: used as it is (not bound, not listened on, never shut down: the others accept on it too).
        self.listening_socket = listening_socket
        super().__init__(*args, **kwargs)
        if self.RequestHandlerClass is RequestHandler:  # the threads of each association wait, not poll
            self.RequestHandlerClass = EventDrivenRequestHandler

    def server_bind(self) -> None:
        if self.listening_socket is None:
            super().server_bind()
            return
        if self.socket is not None:
            self.socket.close()  # the one socketserver made, never bound
        self.socket = self.listening_socket
        # non-blocking: a sibling process may take the connection between the wake-up and our accept()
        self.socket.setblocking(False)
        self.server_address = self.socket.getsockname()

    def server_activate(self) -> None:
        if self.listening_socket is None:
            super().server_activate()

    def server_close(self) -> None:
        if self.listening_socket is None:
            super().server_close()
        elif self.socket is not None:
            self.socket.close()  # only this process's descriptor: shutdown() would stop every process listening

    def _accept(self) -> tuple[socket.socket, tuple[str, int]]:
        """accept() with TCP_NODELAY on. On a shared socket every process wakes for each connection; one with
        associations open waits a moment first (2 ms each, at most 16 ms), so an idle sibling usually takes it and
        the associations spread evenly (the kernel's choice among waiting accept()s would not look at load). A
        connection a sibling took first raises BlockingIOError, which socketserver's loop ignores."""
        if self.socket is None:
            raise RuntimeError("the server has no socket")
        if self.listening_socket is not None:
            busy = len(self.active_associations) + sum(self._waiting().values())
            if busy:
                time.sleep(min(busy, 8) * ACCEPT_DEFER_S)
        client, address = self.socket.accept()
        if self.listening_socket is not None:
            client.setblocking(True)  # as accepted from pynetdicom's own (blocking, with a timeout) socket
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return client, address

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        client, address = self._accept()
        if self.ssl_context:  # as pynetdicom's get_request (TLSAssociationServer does the handshake later)
            client = self.ssl_context.wrap_socket(client, server_side=True)
        return client, address

    def _waiting(self) -> dict[str, int]:
        return self.__dict__.setdefault("_waiting_by_host", {})  # type: ignore[no-any-return]

    def process_request(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: tuple[str, int] | str
    ) -> None:
        """In the accepting thread: count the connection against its host's waiting ones, or close it at once."""
        host = _host_of(client_address)
        with _WAITING_LOCK:
            waiting = self._waiting().get(host, 0)
            admitted = not self.max_waiting_per_peer or waiting < self.max_waiting_per_peer
            if admitted:
                self._waiting()[host] = waiting + 1
        if not admitted:
            _note(host, "refused: dicom.max_associations_per_peer connections from it already wait to associate")
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            self._done_waiting(host)
            raise

    def _done_waiting(self, host: str) -> None:
        with _WAITING_LOCK:
            left = self._waiting().get(host, 1) - 1
            if left > 0:
                self._waiting()[host] = left
            else:
                self._waiting().pop(host, None)

    def process_request_thread(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: tuple[str, int] | str
    ) -> None:
        host = _host_of(client_address)
        try:
            ready = self._before_association(request, host)  # type: ignore[arg-type]
        finally:
            self._done_waiting(host)
        if not ready:
            self.shutdown_request(request)
            return
        super().process_request_thread(request, client_address)

    def _before_association(self, connection: socket.socket, host: str) -> bool:
        """Whether the connection may become an association: its A-ASSOCIATE-RQ is here."""
        why_not = _await_request(connection, self.request_timeout_s)
        if why_not:
            _note(host, why_not)
        return why_not is None


class TLSAssociationServer(NoDelayAssociationServer):
    """The TLS listener: ``ssl_context`` wraps each accepted connection, and the handshake is done in the
    connection's thread within ``handshake_timeout_s``, so a slow or silent client holds up only itself."""

    handshake_timeout_s: float = 30.0

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        if self.socket is None or self.ssl_context is None:
            raise RuntimeError("TLSAssociationServer needs a socket and an ssl_context")
        # not super(): pynetdicom's get_request would wrap and shake hands right here, in the accepting thread
        client, address = self._accept()
        return self.ssl_context.wrap_socket(client, server_side=True, do_handshake_on_connect=False), address

    def _before_association(self, connection: socket.socket, host: str) -> bool:
        """The handshake, then (as for plain connections) the wait for the A-ASSOCIATE-RQ."""
        if not isinstance(connection, ssl.SSLSocket):  # get_request above makes every request one
            raise TypeError(f"expected a TLS socket, got {type(connection).__name__}")
        try:
            connection.settimeout(self.handshake_timeout_s)
            connection.do_handshake()
            connection.settimeout(None)
        except (OSError, ValueError) as exc:  # ssl.SSLError and timeouts are OSErrors
            log.warning("TLS handshake with %s failed: %s", host, _handshake_failure(exc))
            return False
        log.debug(
            "TLS from %s: %s, %s, client %s", host, connection.version(), connection.cipher(), _subject(connection)
        )
        return super()._before_association(connection, host)


#: OpenSSL's reasons for the usual failed handshakes, said for the person reading the log.
_HANDSHAKE_REASONS = {
    "WRONG_VERSION_NUMBER": "not TLS (a plain DICOM client on the TLS port?)",
    "HTTP_REQUEST": "not TLS (an HTTP request)",
    "UNSUPPORTED_PROTOCOL": "the client offers only TLS below 1.2",
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "no client certificate (dicom.tls_client_ca requires one)",
    "CERTIFICATE_VERIFY_FAILED": "client certificate not signed by a CA of dicom.tls_client_ca (or expired)",
    "NO_SHARED_CIPHER": "no cipher suite in common",
}


def _handshake_failure(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no handshake within dicom.acse_timeout_s"
    reason = getattr(exc, "reason", None)
    if reason:
        return f"{_HANDSHAKE_REASONS.get(reason, reason)} [{reason}]"
    return str(exc) or type(exc).__name__


def _subject(connection: ssl.SSLSocket) -> str:
    """The client certificate's subject common name, or "no certificate"."""
    peer = connection.getpeercert() or {}
    names = [value for rdn in peer.get("subject", ()) for key, value in rdn if key == "commonName"]
    return names[0] if names else "no certificate"


@dataclass
class ReceiverStats:
    stored: int = 0
    duplicates: int = 0
    failed: int = 0
    rejected_associations: int = 0


class Receiver:
    """The listening SCP. ``on_stored`` gets each newly spooled instance and ``on_association`` each association
    opened or ended (both the recorder's ``submit``, which keeps them in order)."""

    def __init__(
        self,
        dicom: DicomSettings,
        spool: Spool,
        on_stored: Callable[[ReceivedInstance], None],
        *,
        on_association: Callable[[AssociationEvent], None] | None = None,
        on_conflict: Callable[[InstanceConflict], None] | None = None,
        commitments: CommitmentResponder | None = None,
        on_commitment_report: Callable[[CommitmentReported], None] | None = None,
        server_class: type[ThreadedAssociationServer] = NoDelayAssociationServer,
        shared_count: SharedAssociationCount | None = None,
        listening_sockets: dict[str, socket.socket] | None = None,
    ) -> None:
        self.dicom = dicom
        self.spool = spool
        self.on_stored = on_stored
        self.on_association = on_association
        #: Gets each SOP Instance UID received again with other content or in another series (the recorder audits).
        self.on_conflict = on_conflict
        #: Answers Storage Commitment requests (we are the SCP); None: N-ACTION is refused.
        self.commitments = commitments
        #: Gets each N-EVENT-REPORT answering a request of ours (we are the SCU: the exporter asked).
        self.on_commitment_report = on_commitment_report
        self.server_class = server_class
        #: Several receiver processes on one port: the node-wide association limits are counted here.
        self.shared_count = shared_count
        #: Listening sockets made by the parent of several receiver processes, by kind ("plain", "tls").
        self.listening_sockets = dict(listening_sockets or {})
        #: Associations admitted by ``shared_count`` → their peer, until released.
        self._admitted: dict[object, str] = {}
        self._admitted_lock = threading.Lock()
        self.identity = receiver_identity()
        self.stats = ReceiverStats()
        self._stats_lock = threading.Lock()
        #: Open associations → their keys (pynetdicom's Association objects are threads, hashed by identity).
        self._keys: dict[object, str] = {}
        self._keys_lock = threading.Lock()
        #: The listeners, plain first: ("plain" | "tls", server, its serve_forever thread).
        self._listeners: list[tuple[str, ThreadedAssociationServer, threading.Thread]] = []
        #: Built here so a missing or unreadable certificate or key fails before anything listens.
        self.tls_context = receiver_tls_context(dicom)
        self.ae = self._make_ae()

    def _make_ae(self) -> AE:
        ae = AE(ae_title=self.dicom.ae_title)
        ae.add_supported_context(Verification)
        # either role: a peer asks us (N-ACTION), or answers a request of ours on a new association (N-EVENT-REPORT)
        ae.add_supported_context(StorageCommitmentPushModel, scu_role=True, scp_role=True)
        for storage_class in STORAGE_CLASSES:
            ae.add_supported_context(storage_class, list(TRANSFER_SYNTAXES))
        ae.maximum_associations = self.dicom.max_associations
        ae.acse_timeout = self.dicom.acse_timeout_s
        ae.dimse_timeout = self.dicom.dimse_timeout_s
        ae.network_timeout = self.dicom.network_timeout_s
        ae.maximum_pdu_size = MAX_PDU_BYTES
        return ae

    @property
    def port(self) -> int:
        """The plain port; with ``dicom.tls = "only"`` the TLS port, the one there is."""
        if not self._listeners:
            raise RuntimeError("receiver not started")
        return int(self._listeners[0][1].server_address[1])

    @property
    def tls_port(self) -> int | None:
        """The TLS port, or None without TLS."""
        if not self._listeners:
            raise RuntimeError("receiver not started")
        ports = [int(server.server_address[1]) for kind, server, _ in self._listeners if kind == "tls"]
        return ports[0] if ports else None

    def start(self) -> Receiver:
        """Listen on ``dicom.bind_address:dicom.port`` and, with TLS, on ``dicom.tls_port`` (port 0: any free port,
        see :attr:`port` and :attr:`tls_port`)."""
        # The standard handlers log every PDU and DIMSE message; they cost time on each instance.
        _config.LOG_HANDLER_LEVEL = "none"
        PeerNoiseFilter.install()  # garbage from a peer: one line, no traceback
        handlers = [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_REJECTED, self._on_limit_rejected),
            (evt.EVT_RELEASED, self._on_ended, [RELEASED]),
            (evt.EVT_ABORTED, self._on_ended, [ABORTED]),
            (evt.EVT_CONN_CLOSE, self._on_ended, [CONNECTION_CLOSED]),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_N_ACTION, self._on_commitment_request),
            (evt.EVT_N_EVENT_REPORT, self._on_commitment_report),
        ]
        if self.dicom.tls != "only":
            self._listen("plain", self.dicom.port, handlers)
        if self.tls_context is not None:
            self._listen("tls", self.dicom.tls_port, handlers)
        return self

    def _listen(self, kind: str, port: int, handlers: list) -> None:  # type: ignore[type-arg]
        address = (self.dicom.bind_address, port)
        shared = self.listening_sockets.get(kind)
        extra: dict[str, Any] = {"listening_socket": shared} if shared is not None else {}
        if kind == "tls":
            server = self.ae.make_server(
                address,
                evt_handlers=handlers,
                server_class=TLSAssociationServer,
                ssl_context=self.tls_context,
                **extra,
            )
            server.handshake_timeout_s = self.dicom.acse_timeout_s  # type: ignore[attr-defined]
        else:
            server = self.ae.make_server(address, evt_handlers=handlers, server_class=self.server_class, **extra)
        if isinstance(server, NoDelayAssociationServer):
            server.request_timeout_s = self.dicom.association_request_timeout_s
            server.max_waiting_per_peer = self.dicom.max_associations_per_peer
        self.ae._servers.append(server)  # as AE.start_server does, so AE.shutdown() stops it too
        name = "codebrain-scp" if kind == "plain" else "codebrain-scp-tls"
        thread = threading.Thread(target=server.serve_forever, name=name, daemon=True)
        thread.start()
        self._listeners.append((kind, server, thread))
        where = f"{self.dicom.bind_address}:{server.server_address[1]}"
        if kind == "tls":
            verify = "client certificates required" if self.dicom.tls_client_ca else "no client certificates asked"
            log.info("DICOM receiver %s listening on %s (TLS, %s)", self.dicom.ae_title, where, verify)
        else:
            log.info("DICOM receiver %s listening on %s", self.dicom.ae_title, where)

    def stop(self) -> None:
        """Stop listening, then abort the open associations: a store being written still completes (its peer,
        having no success status, sends it again and gets the idempotent duplicate answer)."""
        listeners, self._listeners = self._listeners, []
        for _, server, _ in listeners:
            server.shutdown()  # also takes it out of the AE's list of servers
        self.ae.shutdown()
        if self.commitments is not None:
            self.commitments.join(timeout_s=5.0)
        # Whatever pynetdicom did not report as ended is over now too (the first end recorded wins).
        with self._keys_lock:
            left, self._keys = list(self._keys.values()), {}
        for key in left:
            self._tell(AssociationEnded(key, RECEIVER_STOPPED))
        with self._admitted_lock:
            admitted, self._admitted = list(self._admitted.values()), {}
        if self.shared_count is not None:
            for host in admitted:
                self.shared_count.release(host)

    # --- handlers -------------------------------------------------------------------------------------------

    def _on_requested(self, event: Event) -> None:
        requestor = event.assoc.requestor
        # pynetdicom fills requestor.ae_title only during negotiation, which comes after this event.
        calling = (requestor.primitive.calling_ae_title or "").strip()
        called = (requestor.primitive.called_ae_title or "").strip()
        host = requestor.address
        reason = None
        if not self.dicom.accept_unknown_callers and calling not in self.dicom.allowed_callers:
            reason, rejection = "calling AE title not recognised", REJECT_UNKNOWN_CALLER
        elif not self.dicom.accept_any_called_ae_title and called != self.dicom.ae_title.strip():
            reason, rejection = "called AE title not recognised", REJECT_WRONG_CALLED
        elif self.dicom.allowed_hosts and host not in self.dicom.allowed_hosts:
            reason, rejection = "host not allowed", REJECT_HOST
        elif self.shared_count is None and self._associations_from(host) > self.dicom.max_associations_per_peer:
            reason, rejection = "more than dicom.max_associations_per_peer from this host", REJECT_PEER_LIMIT
        elif not self.spool.has_room():
            reason, rejection = "free disk below dicom.min_free_disk_mb", REJECT_LOW_DISK
        elif self.shared_count is not None:
            reason = self._admit_shared(event.assoc, host)
            rejection = REJECT_PEER_LIMIT  # both limits: transient, service provider, "local limit exceeded"
        if reason is None:
            # pynetdicom's documented latency/idle-CPU trade-off (DULServiceProvider._run_loop_delay): worth it for
            # a lone sender; with others open, their wake-ups would compete for the interpreter
            if len(self.ae.active_associations) <= 1:
                event.assoc.dul._run_loop_delay = NETWORK_POLL_S
            install_fast_store_response(event.assoc)  # the C-STORE-RSP packed by hand, not through pydicom
            install_fast_store_request(event.assoc)  # and the C-STORE-RQ's command set read by hand
            return
        with self._stats_lock:
            self.stats.rejected_associations += 1
        metrics.ASSOCIATIONS_REJECTED.labels(reason).inc()
        log.warning("association from %s at %s rejected: %s", calling, host, reason)
        event.assoc.acse.send_reject(*rejection)
        # As pynetdicom does for its own rejections: wait until the A-ASSOCIATE-RJ is out before the socket closes.
        event.assoc.kill()

    def _admit_shared(self, assoc: object, host: str) -> str | None:
        """The node-wide count (several receiver processes): None and counted, or why not. Associations whose
        thread has ended without an end event are released first, so nothing is held for ever."""
        assert self.shared_count is not None
        with self._admitted_lock:
            gone = [(a, h) for a, h in self._admitted.items() if not a.is_alive()]  # type: ignore[attr-defined]
            for ended, _ in gone:
                del self._admitted[ended]
        for _, peer in gone:
            self.shared_count.release(peer)
        why_not = self.shared_count.admit(host, self.dicom.max_associations, self.dicom.max_associations_per_peer)
        if why_not is None:
            with self._admitted_lock:
                self._admitted[assoc] = host
        return why_not

    def _release_shared(self, assoc: object) -> None:
        if self.shared_count is None:
            return
        with self._admitted_lock:
            host = self._admitted.pop(assoc, None)
        if host is not None:
            self.shared_count.release(host)

    def _associations_from(self, host: str) -> int:
        """Associations (this one included) whose peer is ``host``."""
        return sum(1 for assoc in self.ae.active_associations if assoc.is_acceptor and assoc.requestor.address == host)

    def _on_limit_rejected(self, event: Event) -> None:
        """pynetdicom's own rejection (ours, above, do not raise this event): more than max_associations at once."""
        metrics.ASSOCIATIONS_REJECTED.labels("more than dicom.max_associations at once").inc()

    def _on_accepted(self, event: Event) -> None:
        """A-ASSOCIATE-AC is out: from now on this peer may deliver instances of any study."""
        key = new_association_key()
        with self._keys_lock:
            self._keys[event.assoc] = key
        requestor, acceptor = event.assoc.requestor, event.assoc.acceptor
        self._tell(
            AssociationOpened(
                key=key,
                receiver=self.identity,
                calling_ae_title=(requestor.ae_title or "").strip() or None,
                called_ae_title=(acceptor.ae_title or "").strip() or None,
                peer_address=requestor.address or None,
                peer_port=requestor.port or None,
            )
        )

    def _on_ended(self, event: Event, reason: str) -> None:
        """Released, aborted or the connection closed: only the first of these for an association counts."""
        self._release_shared(event.assoc)
        with self._keys_lock:
            key = self._keys.pop(event.assoc, None)
        if key is not None:  # rejected associations were never opened
            self._tell(AssociationEnded(key, reason))

    def _tell(self, event: AssociationEvent) -> None:
        if isinstance(event, AssociationEnded):
            metrics.ASSOCIATIONS_ENDED.labels(event.reason).inc()
        else:
            metrics.ASSOCIATIONS_OPENED.inc()
        if self.on_association is not None:
            self.on_association(event)

    def _key_of(self, assoc: object) -> str | None:
        with self._keys_lock:
            return self._keys.get(assoc)

    def _on_echo(self, event: Event) -> int:
        return 0x0000

    def _on_commitment_request(self, event: Event) -> tuple[int, None]:
        """N-ACTION "Request Storage Commitment" (PS3.4 J.3.2): accepted here (0x0000), answered later by an
        N-EVENT-REPORT from the responder; refused 0x0123 for another action, 0x0117 for another SOP Instance than
        the well-known one, 0x0120 without a Transaction UID or references, 0x0213 while too many are being
        answered, 0x0110 when we are no SCP."""
        calling = (event.assoc.requestor.ae_title or "").strip()
        request = event.request
        if request.ActionTypeID != REQUEST_COMMITMENT:
            log.warning("N-ACTION from %s with Action Type ID %s refused (0x0123)", calling, request.ActionTypeID)
            return 0x0123, None
        if str(request.RequestedSOPInstanceUID) != PUSH_MODEL_INSTANCE_UID:
            log.warning(
                "storage commitment from %s on SOP Instance %s refused (0x0117)",
                calling,
                request.RequestedSOPInstanceUID,
            )
            return 0x0117, None
        try:
            commitment = read_action_information(event.action_information)
        except (MalformedCommitment, ValueError, AttributeError) as exc:
            log.warning("storage commitment from %s refused (0x0120): %s", calling, exc)
            return 0x0120, None
        if self.commitments is None:
            return 0x0110, None
        log.info(
            "storage commitment %s requested by %s for %d instance(s)",
            commitment.transaction_uid,
            calling,
            len(commitment.references),
        )
        if not self.commitments.accept(commitment, event.assoc, calling):
            log.warning(
                "storage commitment %s from %s refused (0x0213): too many under way",
                commitment.transaction_uid,
                calling,
            )
            return 0x0213, None
        return 0x0000, None

    def _on_commitment_report(self, event: Event) -> tuple[int, None]:
        """N-EVENT-REPORT answering a request of ours (PS3.4 J.3.3): handed to ``on_commitment_report`` (the
        recorder) and acknowledged; one without a Transaction UID is refused 0x0120."""
        calling = (event.assoc.requestor.ae_title or "").strip()
        try:
            result = read_event_information(event.event_information)
        except (MalformedCommitment, ValueError, AttributeError) as exc:
            log.warning("storage commitment report from %s refused (0x0120): %s", calling, exc)
            return 0x0120, None
        log.info(
            "storage commitment report %s from %s: %d committed, %d failed",
            result.transaction_uid,
            calling,
            len(result.committed),
            len(result.failed),
        )
        if self.on_commitment_report is not None:
            self.on_commitment_report(report_of(event.event_type, result, calling))
        return 0x0000, None

    def _on_store(self, event: Event) -> int:
        request = event.request
        calling = (event.assoc.requestor.ae_title or "").strip()
        try:
            outcome = self.spool.store(
                # the dataset bytes exactly as the peer sent them; the spool adds the File Meta itself
                request.DataSet.getvalue(),
                sop_class_uid=str(request.AffectedSOPClassUID),
                sop_instance_uid=str(request.AffectedSOPInstanceUID),
                transfer_syntax_uid=str(event.context.transfer_syntax),
                calling_ae_title=calling,
            )
        except Exception:
            log.exception("store failed 0xC000: unexpected error (sop=%s)", request.AffectedSOPInstanceUID)
            with self._stats_lock:
                self.stats.failed += 1
            metrics.count_store(CANNOT_UNDERSTAND)
            return CANNOT_UNDERSTAND
        with self._stats_lock:
            if outcome.instance is not None:
                self.stats.stored += 1
            elif outcome.duplicate:
                self.stats.duplicates += 1
            elif outcome.status != 0:
                self.stats.failed += 1
        stored_bytes = outcome.instance.size_bytes if outcome.instance is not None else None
        metrics.count_store(outcome.status, stored_bytes, outcome.duplicate)
        if outcome.instance is not None:
            self.on_stored(replace(outcome.instance, association_key=self._key_of(event.assoc)))
        if outcome.conflict is not None and self.on_conflict is not None:
            self.on_conflict(outcome.conflict)
        return outcome.status


def receiver_tls_context(dicom: DicomSettings) -> ssl.SSLContext | None:
    """The TLS listener's context from ``dicom.tls_*`` (None with ``dicom.tls = "off"``);
    :class:`~codebrain_node.tls.TLSFileError` names the setting and file that cannot be used."""
    if dicom.tls == "off" or dicom.tls_certificate is None or dicom.tls_private_key is None:
        return None
    return server_context(
        dicom.tls_certificate,
        dicom.tls_private_key,
        password=dicom.tls_private_key_password.get_secret_value(),
        client_ca=dicom.tls_client_ca,
        where="dicom",
    )
