"""Event-driven loops for the receiver's associations: threads that sleep until there is work, not every 1 ms.

pynetdicom runs two threads per association, and both poll. Its network thread (``DULServiceProvider.run_reactor``)
sleeps 1 ms between looks at the socket and at its queue of PDUs to send; its association thread
(``Association._run_reactor``) sleeps 1 ms before every look for a decoded DIMSE message. Each wake-up costs
about 27 us of CPU and takes the GIL: four idle associations cost 220 ms of CPU a second, and during a store
(while the file is fsynced) the other thread of the association keeps waking. On the saturated 2-core machine
of ``bench ingest`` that CPU is taken from the senders and receivers.

Here the same two loops, statement for statement, wait instead of sleeping:

  - the network thread waits in ``poll`` on its socket and on a wake-up pipe, which is written when another
    thread queues something for it (a PDU to send, an event) or stops it; it still looks at everything at least
    every :data:`WAKE_EVERY_S` (timers: ARTIM, a socket closed under it);
  - the association thread waits on a :class:`threading.Event` set when a DIMSE message or an ACSE primitive
    (release, abort) is queued for it, or when it is killed, and at least every :data:`WAKE_EVERY_S` (the
    network idle timer, a network thread that died). While it waits it reads as paused (``_is_paused``): it
    touches no queue before passing ``_reactor_checkpoint`` again, so ``pause_reactor``'s protocol holds.

One order differs, on purpose: EVT_RELEASED is raised just before the A-RELEASE-RP is queued rather than just
after. pynetdicom's network thread took up to 1 ms to send it; ours sends it at once, and the peer's closing of
the connection (EVT_CONN_CLOSE, from the network thread) then often came first, filing a released association as
"connection closed".

Also, the socket is read in one ``recv_into`` per PDU where pynetdicom reads 4 KiB per call (33 calls for a
128 KiB slice), the buffer growing only as bytes arrive (a PDU length a peer merely claims costs nothing).

Installed on each accepted association before its threads start (:class:`EventDrivenRequestHandler`, used by
``receive/scp.py``'s server); an association whose pynetdicom objects lack what these loops use keeps
pynetdicom's own loops.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import select
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

from pynetdicom import evt
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.transport import RequestHandler

log = logging.getLogger(__name__)
#: pynetdicom's loggers, for the lines its own loops write (kept word for word).
_DUL_LOG = logging.getLogger("pynetdicom.dul")
_ASSOC_LOG = logging.getLogger("pynetdicom.association")

#: The longest either thread waits without looking (timers, a closed socket, a dead sibling thread).
WAKE_EVERY_S = 0.05

#: The most a PDU read allocates ahead of the bytes that have arrived.
RECV_CHUNK = 1 << 20

_DUL_NEEDS = (
    "_run_loop_delay",
    "_kill_thread",
    "_idle_timer",
    "artim_timer",
    "_process_recv_primitive",
    "_is_transport_event",
    "event_queue",
    "to_provider_queue",
    "to_user_queue",
    "state_machine",
    "stop_dul",
    "kill_dul",
)
_ASSOC_NEEDS = ("_reactor_checkpoint", "_is_paused", "_kill", "_serve_request", "_dul_ready", "acse", "dimse")


class _WakeUp:
    """A pipe the network thread polls; any thread may write it. Closed by the network thread when it ends;
    a write after that is dropped (the lock keeps it from reaching a reused descriptor)."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        os.set_blocking(self.write_fd, False)
        self._lock = threading.Lock()
        self._closed = False

    def set(self) -> None:
        with self._lock:
            if self._closed:
                return
            with contextlib.suppress(BlockingIOError):  # a full pipe wakes the reader all the same
                os.write(self.write_fd, b"\0")

    def drain(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self.read_fd, 4096):
                pass

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                os.close(self.read_fd)
                os.close(self.write_fd)


def _after_put(target: queue.Queue[Any], then: Callable[[], None]) -> None:
    """``then()`` after every ``put`` (and ``put_nowait``) on this one queue object."""
    put = target.put

    def put_and_tell(item: Any, block: bool = True, timeout: float | None = None) -> None:
        put(item, block, timeout)
        then()

    target.put = put_and_tell  # type: ignore[method-assign]


def _recv_exactly(sock: Any) -> Callable[[int], bytearray]:
    """An ``AssociationSocket.recv`` reading straight into one buffer: ``nr_bytes`` or, if the peer closes first,
    what came (as pynetdicom's); errors propagate as from pynetdicom's."""

    def recv(nr_bytes: int) -> bytearray:
        raw = sock.socket
        buffer = bytearray(min(nr_bytes, RECV_CHUNK))
        got = 0
        while got < nr_bytes:
            if got == len(buffer):
                buffer += bytes(min(nr_bytes - got, RECV_CHUNK))
            with memoryview(buffer) as view:
                count = raw.recv_into(view[got:])
            if not count:
                break
            got += count
        if got < len(buffer):
            del buffer[got:]
        return buffer

    return recv


def install(assoc: Any) -> bool:
    """Give ``assoc`` (an acceptor, its socket set, no thread started) the event-driven loops; False when its
    pynetdicom objects lack something they use (it then keeps pynetdicom's)."""
    dul = getattr(assoc, "dul", None)
    sock = getattr(dul, "socket", None)
    if (
        dul is None
        or sock is None
        or dul.is_alive()
        or assoc.is_alive()
        or not all(hasattr(dul, name) for name in _DUL_NEEDS)
        or not all(hasattr(assoc, name) for name in _ASSOC_NEEDS)
        or not hasattr(assoc.dimse, "msg_queue")
        or not hasattr(sock, "socket")
    ):
        return False
    wake = _WakeUp()
    ready = threading.Event()  # the association thread's
    stop_dul, kill_dul, kill = dul.stop_dul, dul.kill_dul, assoc.kill

    def stop_network() -> bool:
        if dul.state_machine.current_state == "Sta1":
            dul._kill_thread = True
            wake.set()
        return bool(stop_dul())

    def kill_network() -> None:
        kill_dul()
        wake.set()

    def kill_association() -> None:
        ready.set()
        kill()

    dul.stop_dul, dul.kill_dul, assoc.kill = stop_network, kill_network, kill_association
    sock.recv = _recv_exactly(sock)
    _after_put(assoc.dimse.msg_queue, ready.set)
    _after_put(dul.to_user_queue, ready.set)
    dul.run = lambda: _run_network(dul, wake)
    assoc._run_reactor = lambda: _run_association(assoc, ready)
    return True


def _run_network(dul: Any, wake: _WakeUp) -> None:
    """The network thread: ``DULServiceProvider.run_reactor`` (pynetdicom 3.0) with its sleep made a wait."""
    me = threading.get_ident()

    def from_elsewhere() -> None:
        if threading.get_ident() != me:
            wake.set()

    _after_put(dul.to_provider_queue, from_elsewhere)
    _after_put(dul.event_queue, from_elsewhere)
    try:
        _network_loop(dul, wake)
    finally:
        wake.close()


def _wait(dul: Any, wake: _WakeUp) -> None:
    """Until the socket is readable, another thread wakes us, or WAKE_EVERY_S; at once if work is queued.

    ``poll``, not ``select``: no limit on descriptor numbers (a node with over 1,024 files open). A socket that
    cannot be waited on makes it sleep pynetdicom's own 1 ms, never spin."""
    raw = getattr(dul.socket, "socket", None) if dul.socket is not None else None
    if raw is None:
        time.sleep(dul._run_loop_delay)  # no connection (closing): pynetdicom's own pace
        return
    if not dul.to_provider_queue.empty() or not dul.event_queue.empty():
        return
    if isinstance(raw, ssl.SSLSocket) and raw.pending():
        return
    try:
        descriptor = raw.fileno()
        if descriptor < 0:
            raise ValueError("closed")
        waiting = select.poll()
        waiting.register(descriptor, select.POLLIN)
        waiting.register(wake.read_fd, select.POLLIN)
        events = waiting.poll(WAKE_EVERY_S * 1000)
    except (OSError, ValueError):  # closed under us: the loop's own look at the socket says so
        time.sleep(dul._run_loop_delay)
        return
    if any(fd == wake.read_fd for fd, _ in events):
        wake.drain()


def _network_loop(dul: Any, wake: _WakeUp) -> None:
    dul._idle_timer.start()
    pause = False
    while True:
        if not dul.assoc._dul_ready.is_set():
            dul.assoc._dul_ready.set()
            pause = True
        if pause:
            _wait(dul, wake)
        if dul._kill_thread:
            break
        if dul.artim_timer.expired:
            dul.event_queue.put("Evt18")
        try:
            if dul._process_recv_primitive():
                pass
            elif dul._is_transport_event():
                dul._idle_timer.restart()
        except Exception as exc:
            _DUL_LOG.error("Exception in DUL.run(), aborting association")
            _DUL_LOG.exception(exc)
            abort_pdu = A_ABORT_RQ()
            abort_pdu.source = 0x02
            abort_pdu.reason_diagnostic = 0x00
            dul.socket.send(abort_pdu.encode())
            dul.assoc.is_aborted = True
            dul.assoc.is_established = False
            dul.assoc._kill = True
            dul._kill_thread = True
            return
        try:
            event = dul.event_queue.get(block=False)
        except queue.Empty:
            pause = True
            continue
        dul.state_machine.do_action(event)
        pause = False


def _run_association(assoc: Any, ready: threading.Event) -> None:
    """The association thread: ``Association._run_reactor`` (pynetdicom 3.0, acceptor) with its 1 ms sleep
    made a wait on ``ready``, skipped while messages keep coming."""
    assoc._is_paused = False
    idle = False
    while not assoc._kill:
        if idle:
            assoc._is_paused = True  # nothing is touched before the checkpoint below
            ready.wait(WAKE_EVERY_S)
        ready.clear()  # before the looks below: whatever is queued after it sets it again
        assoc._is_paused = True
        assoc._reactor_checkpoint.wait()
        assoc._is_paused = False

        context_id, msg = assoc.dimse.get_msg(block=False)
        if msg:
            assoc._serve_request(msg, context_id)
        idle = not msg

        if assoc.is_established and assoc.acse.is_release_requested():
            # EVT_RELEASED before the A-RELEASE-RP is queued (pynetdicom: just after): the network thread sends it
            # at once now, and the peer's closing (EVT_CONN_CLOSE) would often come first otherwise
            assoc.is_released = True
            assoc.is_established = False
            evt.trigger(assoc, evt.EVT_RELEASED, {})
            assoc.acse.send_release(is_response=True)
            _ASSOC_LOG.info("Association Released")
            assoc.kill()
            return

        if assoc.acse.is_aborted():
            log_msg = "Association Aborted"
            if assoc.acse.is_aborted("a-p-abort"):
                log_msg += " (A-P-ABORT)"
            _ASSOC_LOG.info(log_msg)
            assoc.dul.receive_pdu(wait=False)
            assoc.is_aborted = True
            assoc.is_established = False
            evt.trigger(assoc, evt.EVT_ABORTED, {})
            assoc.kill()
            return

        if not assoc.dul.is_alive():
            assoc.kill()
            return

        if assoc.dul.idle_timer_expired():
            _ASSOC_LOG.error("Network timeout reached")
            if assoc.network_timeout_response == "A-RELEASE":
                assoc._is_paused = True
                assoc._reactor_checkpoint.wait()
                assoc.release()
                assoc._is_paused = False
            else:
                assoc.abort()
            assoc.kill()
            return


class EventDrivenRequestHandler(RequestHandler):
    """pynetdicom's request handler, its association given the event-driven loops before it starts."""

    def _create_association(self) -> Any:
        assoc = super()._create_association()
        if not install(assoc):
            log.debug("pynetdicom's own association loops kept (its internals differ from what reactor.py expects)")
        return assoc
