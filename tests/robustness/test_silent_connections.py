"""#16, defect 4: nobody blocks ingest by connecting and saying nothing. A connection is not an association until its
A-ASSOCIATE-RQ has arrived (PS3.8 9.1.4, the ARTIM timer): until then it has ``dicom.association_request_timeout_s``
of its own and does not count against ``dicom.max_associations``; one host holds at most
``dicom.max_associations_per_peer`` waiting connections and as many associations. The silent sockets come from
127.0.0.2 (all of 127/8 is loopback on Linux), the real sender, DCMTK storescu, from 127.0.0.1."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage
from sqlalchemy.orm import Session, sessionmaker

from codebrain_node.config import Settings
from codebrain_node.receive.service import ReceiveService, start_receive_service
from tests.dicom_fixtures import STORESCU, write_mr_series
from tests.robustness.conftest import CALLER, EXPLICIT, robust_settings

ATTACKER = "127.0.0.2"
SILENT = 12  # more than dicom.max_associations (10)
REQUEST_TIMEOUT_S = 2.0


def _settings(data_dir: Path, **dicom: object) -> Settings:
    settings = robust_settings(data_dir)
    return settings.model_copy(
        update={
            "dicom": settings.dicom.model_copy(
                update={"association_request_timeout_s": REQUEST_TIMEOUT_S, "acse_timeout_s": 30.0, **dicom}
            )
        }
    )


@pytest.fixture
def node(tmp_path: Path, any_factory: sessionmaker[Session]) -> Iterator[ReceiveService]:
    service = start_receive_service(_settings(tmp_path / "data", max_associations_per_peer=3), any_factory)
    try:
        yield service
    finally:
        service.stop()


def storescu(port: int, files: list[Path]) -> subprocess.CompletedProcess[str]:
    if not STORESCU.exists():
        pytest.skip(f"DCMTK storescu ({STORESCU}) is not installed")
    return subprocess.run(
        [str(STORESCU), "-aet", CALLER, "-aec", "CODEBRAIN", "127.0.0.1", str(port), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=60,  # generous: before the fix it is rejected at once, not slow
        env={**os.environ, "TCP_NODELAY": "1"},
        check=False,
    )


def silent_connection(port: int) -> socket.socket:
    connection = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(ATTACKER, 0))
    connection.settimeout(30)
    return connection


def closed_by_node(connection: socket.socket) -> bool:
    try:
        return connection.recv(1) == b""
    except ConnectionResetError:
        return True


def stored_files(service: ReceiveService) -> list[Path]:
    return list(service.spool.incoming.rglob("*.dcm"))


def test_silent_connections_do_not_block_a_real_sender(node: ReceiveService, tmp_path: Path) -> None:
    series = write_mr_series(tmp_path / "series", 3, rows=16, columns=16)
    silent = [silent_connection(node.port) for _ in range(SILENT)]
    try:
        time.sleep(0.5)  # every one accepted and waiting
        result = storescu(node.port, series)
        assert result.returncode == 0, result.stderr
        assert "Local Limit Exceeded" not in result.stderr + result.stdout
        assert len(stored_files(node)) == 3
        started = time.monotonic()
        assert all(closed_by_node(connection) for connection in silent)  # beyond the per-peer limit at once,
        assert time.monotonic() - started < 25  # the others when their request timeout ran out
    finally:
        for connection in silent:
            connection.close()


def test_one_peer_gets_at_most_its_share_of_associations(node: ReceiveService, tmp_path: Path) -> None:
    ae = AE(ae_title=CALLER)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    ae.add_requested_context(MRImageStorage, [EXPLICIT])
    held = [ae.associate("127.0.0.1", node.port, ae_title="CODEBRAIN", bind_address=(ATTACKER, 0)) for _ in range(3)]
    try:
        assert all(assoc.is_established for assoc in held)
        extra = ae.associate("127.0.0.1", node.port, ae_title="CODEBRAIN", bind_address=(ATTACKER, 0))
        assert extra.is_rejected
        assert (extra.acceptor.primitive.result, extra.acceptor.primitive.diagnostic) == (0x02, 0x02)
        # another host is still served
        result = storescu(node.port, write_mr_series(tmp_path / "series", 2, rows=16, columns=16))
        assert result.returncode == 0, result.stderr
        assert len(stored_files(node)) == 2
    finally:
        for assoc in held:
            assoc.release()
