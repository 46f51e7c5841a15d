"""#16, the campaign: what tests/robustness/test_silent_connections.py (sockets that say nothing) and
test_association_edges.py (garbage PDUs) leave out. Half-open peers, which vanish without closing their side: one in
the middle of its A-ASSOCIATE-RQ, one in the middle of a C-STORE's data set; and a full disk, the free-disk
watermark (``dicom.min_free_disk_mb``) raised above the free space while an association is open. Each time the node
keeps nothing partial, serves a real sender meanwhile and afterwards; on SQLite and on PostgreSQL."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from codebrain_node.db.models import Instance
from codebrain_node.receive.service import ReceiveService, start_receive_service
from tests.dicom_fixtures import make_mr_instance
from tests.e2e.e2e_support import wait_for
from tests.robustness import campaign_report
from tests.robustness.conftest import CALLER, EXPLICIT, associate, robust_settings

REQUEST_TIMEOUT_S = 2.0
NETWORK_TIMEOUT_S = 3.0


@pytest.fixture
def node(tmp_path: Path, any_factory: sessionmaker[Session]) -> Iterator[ReceiveService]:
    settings = robust_settings(tmp_path / "data")
    dicom = settings.dicom.model_copy(
        update={"association_request_timeout_s": REQUEST_TIMEOUT_S, "network_timeout_s": NETWORK_TIMEOUT_S}
    )
    service = start_receive_service(settings.model_copy(update={"dicom": dicom}), any_factory)
    try:
        yield service
    finally:
        service.stop()


def _store_one(port: int) -> int:
    """A real sender's one instance on its own association: its status."""
    assoc = associate(port)
    try:
        return int(assoc.send_c_store(make_mr_instance(generate_uid(), generate_uid(), 0, rows=8, columns=8)).Status)
    finally:
        assoc.release()


def _closed_by_node(connection: socket.socket) -> bool:
    try:
        return connection.recv(4096) == b""
    except ConnectionResetError:
        return True


def _backend(factory: sessionmaker[Session]) -> str:
    return factory.kw["bind"].dialect.name


def test_half_open_peers_cost_a_timeout_and_keep_nothing(
    node: ReceiveService, any_factory: sessionmaker[Session]
) -> None:
    health: dict[str, str] = {}
    # 1. half an A-ASSOCIATE-RQ, then nothing (the peer is gone, its side never closed)
    body = b"\x00\x01\x00\x00" + b"CODEBRAIN".ljust(16) + CALLER.encode().ljust(16) + bytes(32)
    half = struct.pack(">BBI", 0x01, 0, len(body) + 200) + body
    with socket.create_connection(("127.0.0.1", node.port), timeout=30) as silent:
        silent.sendall(half)
        assert _store_one(node.port) == 0x0000  # served while the half request waits
        silent.settimeout(REQUEST_TIMEOUT_S + 20)
        assert _closed_by_node(silent)  # closed once its request timeout ran out, not held for good
    health["after half an A-ASSOCIATE-RQ"] = "stores" if _store_one(node.port) == 0x0000 else "REFUSES"

    # 2. an association whose C-STORE data set stops half-way: the sender's socket stops sending, stays open
    ae = AE(ae_title=CALLER)
    ae.acse_timeout = 20
    ae.dimse_timeout = ae.network_timeout = 5  # the vanished sender's own side gives up soon after
    ae.add_requested_context(MRImageStorage, [EXPLICIT])
    assoc = ae.associate("127.0.0.1", node.port, ae_title="CODEBRAIN")
    assert assoc.is_established
    stalled, release = threading.Event(), threading.Event()
    transport = assoc.dul.socket
    original_send = transport.send

    def send_then_vanish(data: bytes) -> None:
        if len(data) < 4096:  # the command (and anything small) goes out whole
            original_send(data)
            return
        original_send(data[: len(data) // 2])  # half the data set's PDU, then nothing ever again
        stalled.set()
        release.wait(30)
        # and then the rest of the PDU is never sent: the sender's own timeouts end its side

    transport.send = send_then_vanish  # type: ignore[method-assign]
    cut = make_mr_instance(generate_uid(), generate_uid(), 0, rows=256, columns=256)  # 128 KiB: many fragments
    thread = threading.Thread(target=lambda: assoc.send_c_store(cut), daemon=True)
    thread.start()
    try:
        assert stalled.wait(30)
        assert _store_one(node.port) == 0x0000  # served while the cut one hangs
        wait_for(
            lambda: not any(a.is_acceptor and a.is_established for a in node.receiver.ae.active_associations),
            NETWORK_TIMEOUT_S + 30,
            "the node to abort the stalled association",
        )
    finally:
        release.set()
        thread.join(15)
    assert not list(node.spool.incoming.rglob(f"{cut.SOPInstanceUID}.dcm"))
    assert not [p for p in node.spool.tmp.iterdir() if p.is_file()]  # nothing partial left behind
    health["after a C-STORE cut half-way"] = "stores" if _store_one(node.port) == 0x0000 else "REFUSES"
    assert node.recorder.flush(20)
    with any_factory() as session:
        assert str(cut.SOPInstanceUID) not in set(session.scalars(select(Instance.sop_instance_uid)))
    campaign_report.record(f"half-open peers ({_backend(any_factory)})", health)
    assert set(health.values()) == {"stores"}


def test_a_full_disk_refuses_out_of_resources_and_recovers(
    node: ReceiveService, any_factory: sessionmaker[Session]
) -> None:
    """PS3.4 B.2.3: below the watermark a C-STORE is answered 0xA700 (Out of Resources) and a new association is
    rejected transient (PS3.8 7.1.1.9: service provider, local limit exceeded); back above it, both go through."""
    figures: dict[str, str] = {}
    assoc = associate(node.port)
    try:
        node.spool.min_free_bytes = node.spool.free_bytes() + (1 << 30)  # as if the disk had filled meanwhile
        refused = make_mr_instance(generate_uid(), generate_uid(), 0, rows=8, columns=8)
        status = int(assoc.send_c_store(refused).Status)
        figures["C-STORE below the watermark"] = f"0x{status:04X}"
        late = AE(ae_title=CALLER)
        late.add_requested_context(MRImageStorage, [EXPLICIT])
        rejected = late.associate("127.0.0.1", node.port, ae_title="CODEBRAIN")
        reply = rejected.acceptor.primitive if rejected.is_rejected else None
        figures["new association below the watermark"] = "rejected" if reply is not None else "ACCEPTED"
        if rejected.is_established:
            rejected.release()
        node.spool.min_free_bytes = 0  # space again
        accepted = make_mr_instance(generate_uid(), generate_uid(), 0, rows=8, columns=8)
        after = int(assoc.send_c_store(accepted).Status)
        figures["C-STORE with space again"] = f"0x{after:04X}"
    finally:
        assoc.release()
    assert status == 0xA700
    assert reply is not None and (reply.result, reply.result_source, reply.diagnostic) == (0x02, 0x03, 0x02)
    assert after == 0x0000
    assert node.recorder.flush(20)
    with any_factory() as session:
        recorded = set(session.scalars(select(Instance.sop_instance_uid)))
    assert str(accepted.SOPInstanceUID) in recorded and str(refused.SOPInstanceUID) not in recorded
    assert [p.stem for p in node.spool.incoming.rglob("*.dcm")] == [str(accepted.SOPInstanceUID)]
    figures["node afterwards"] = "stores" if _store_one(node.port) == 0x0000 else "REFUSES"
    campaign_report.record(f"disk full, watermark above the free space ({_backend(any_factory)})", figures)
    assert figures["node afterwards"] == "stores"
