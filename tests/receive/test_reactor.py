"""The event-driven association loops (receive/reactor.py): the same bytes read, the same outcome on the wire."""

from __future__ import annotations

import functools
import socket
import threading
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pynetdicom import AE, evt
from pynetdicom.sop_class import MRImageStorage, Verification
from pynetdicom.transport import AssociationSocket

from codebrain_node.config import DicomSettings
from codebrain_node.receive import reactor
from codebrain_node.receive.scp import Receiver
from codebrain_node.receive.spool import Spool
from codebrain_node.receive.store_request import _FastStoreReceive
from tests.dicom_fixtures import free_port, write_mr_series


class _Sock:
    """Just what ``AssociationSocket.recv`` uses of its owner."""

    def __init__(self, raw: socket.socket) -> None:
        self.socket = raw


def _send(sock: socket.socket, stream: bytes, close_after: bool) -> None:
    sock.sendall(stream)
    if close_after:
        sock.close()


def _both_reads(stream: bytes, lengths: list[int], close_after: bool) -> tuple[list[bytes], list[bytes]]:
    """What pynetdicom's ``AssociationSocket.recv`` and ours return for the same stream and read lengths."""
    results = []
    for ours in (False, True):
        left, right = socket.socketpair()
        try:
            sender = threading.Thread(target=_send, args=(left, stream, close_after))
            sender.start()
            holder = _Sock(right)
            theirs = functools.partial(AssociationSocket.recv, holder)  # type: ignore[arg-type]
            read = reactor._recv_exactly(holder) if ours else theirs
            results.append([bytes(read(n)) for n in lengths])
            sender.join()
        finally:
            left.close()
            right.close()
    return results[0], results[1]


@pytest.mark.parametrize(
    ("lengths", "close_after"),
    [([6, 131_706], False), ([6, 10, 4096, 4097, 1], False), ([6, 300_000], True), ([0, 6], False)],
)
def test_recv_returns_what_pynetdicom_returns(lengths: list[int], close_after: bool) -> None:
    stream = bytes(range(256)) * 600  # 153,600 bytes
    stream = stream[: min(len(stream), sum(lengths))]
    theirs, ours = _both_reads(stream, lengths, close_after)
    assert ours == theirs
    assert all(isinstance(chunk, bytes) for chunk in ours)


def test_recv_allocates_only_what_arrives(monkeypatch: pytest.MonkeyPatch) -> None:
    """A PDU length a peer claims (here 3 GB) costs memory only as its bytes come."""
    monkeypatch.setattr(reactor, "RECV_CHUNK", 1024)
    left, right = socket.socketpair()
    try:
        left.sendall(b"x" * 5000)
        left.close()
        got = reactor._recv_exactly(_Sock(right))(3_000_000_000)
    finally:
        right.close()
    assert got == bytearray(b"x" * 5000)


def test_install_leaves_unknown_internals_alone() -> None:
    assert reactor.install(object()) is False


def _receiver(tmp_path: Path, received: list[Any]) -> Receiver:
    dicom = DicomSettings(
        ae_title="CODEBRAIN",
        bind_address="127.0.0.1",
        port=free_port(),
        allowed_callers=["STORESCU"],
        min_free_disk_mb=0,
    )
    return Receiver(dicom, Spool(tmp_path / "data"), received.append).start()


def test_associations_get_the_event_driven_loops_and_store_as_before(tmp_path: Path) -> None:
    """Stores, echoes and the release run through the installed loops: every file is spooled byte for byte as
    sent (File Meta added), each answered Success, and the association's threads end with it."""
    files = write_mr_series(tmp_path / "files", 5, rows=64, columns=64)
    received: list[Any] = []
    seen: list[Any] = []
    receiver = _receiver(tmp_path, received)
    try:
        ae = AE(ae_title="STORESCU")
        ae.add_requested_context(MRImageStorage)
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", receiver.port, ae_title="CODEBRAIN")
        assert assoc.is_established
        (ours,) = receiver.ae.active_associations
        seen.append(ours)
        assert "_run_reactor" in vars(ours) and "run" in vars(ours.dul)
        assert isinstance(ours.dimse.receive_primitive, _FastStoreReceive)  # and the hand-read C-STORE-RQ
        assert assoc.send_c_echo().Status == 0x0000
        statuses = [assoc.send_c_store(dcmread(path)).Status for path in files]
        assoc.release()
        assert assoc.is_released
    finally:
        receiver.stop()
    assert statuses == [0x0000] * len(files)
    assert len(received) == len(files)
    for path, instance in zip(files, sorted(received, key=lambda i: i.instance_number), strict=True):
        sent = dcmread(path)
        stored = dcmread(instance.path)
        assert stored.SOPInstanceUID == sent.SOPInstanceUID
        assert stored.PixelData == sent.PixelData
    seen[0].join(timeout=5)
    seen[0].dul.join(timeout=5)
    assert not seen[0].is_alive() and not seen[0].dul.is_alive()


def test_an_abort_from_the_peer_ends_the_association(tmp_path: Path) -> None:
    received: list[Any] = []
    ended: list[str] = []
    receiver = _receiver(tmp_path, received)
    receiver.on_association = lambda event: ended.append(type(event).__name__)
    done = threading.Event()
    try:
        ae = AE(ae_title="STORESCU")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", receiver.port, ae_title="CODEBRAIN")
        assert assoc.is_established
        (ours,) = receiver.ae.active_associations
        ours.bind(evt.EVT_ABORTED, lambda event: done.set())
        assoc.abort()
        assert done.wait(timeout=5)
        ours.join(timeout=5)
        assert not ours.is_alive()
    finally:
        receiver.stop()
    assert ended == ["AssociationOpened", "AssociationEnded"]
