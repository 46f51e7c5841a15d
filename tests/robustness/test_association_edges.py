"""#16, defect 9 (receive): the called AE title is checked (a wrong one rejected, reason 7, unless
``dicom.accept_any_called_ae_title``), and garbage PDUs cost one log line each, never a traceback."""

from __future__ import annotations

import logging
import socket
import struct
import time
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification
from sqlalchemy.orm import Session, sessionmaker

from codebrain_node.receive.service import start_receive_service
from tests.robustness.conftest import CALLER, robust_settings


def _echo(port: int, called: str) -> AE:
    ae = AE(ae_title=CALLER)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    ae.add_requested_context(Verification)
    return ae.associate("127.0.0.1", port, ae_title=called)


@pytest.mark.parametrize("accept_any", [False, True])
def test_called_ae_title_is_checked(tmp_path: Path, any_factory: sessionmaker[Session], accept_any: bool) -> None:
    settings = robust_settings(tmp_path / "data")
    dicom = settings.dicom.model_copy(update={"accept_any_called_ae_title": accept_any})
    service = start_receive_service(settings.model_copy(update={"dicom": dicom}), any_factory)
    try:
        right = _echo(service.port, "CODEBRAIN")
        assert right.is_established
        right.release()
        wrong = _echo(service.port, "SOMEONEELSE")
        if accept_any:
            assert wrong.is_established
            wrong.release()
        else:
            assert wrong.is_rejected
            primitive = wrong.acceptor.primitive
            assert (primitive.result, primitive.result_source, primitive.diagnostic) == (0x01, 0x01, 0x07)
    finally:
        service.stop()


def _rq_pdu_garbage() -> bytes:
    """An A-ASSOCIATE-RQ whose length is right and whose items are noise."""
    body = b"\x00\x01\x00\x00" + b"CODEBRAIN".ljust(16) + b"STORESCU".ljust(16) + bytes(32) + b"\x10\xff" * 20
    return struct.pack(">BBI", 0x01, 0, len(body)) + body


#: Bytes a broken or hostile peer sends instead of DICOM.
GARBAGE = {
    "HTTP request": b"GET / HTTP/1.1\r\nHost: node\r\n\r\n",
    "unknown PDU type": b"\x09\x00\x00\x00\x00\x04abcd",
    "A-ASSOCIATE-RQ of noise": _rq_pdu_garbage(),
    "A-ASSOCIATE-RQ cut short": struct.pack(">BBI", 0x01, 0, 400) + b"\x00\x01" + bytes(50),
}


def test_garbage_pdus_log_one_line_without_traceback(
    running_node,
    caplog: pytest.LogCaptureFixture,  # type: ignore[no-untyped-def]
) -> None:
    caplog.set_level(logging.DEBUG)
    for payload in GARBAGE.values():
        with socket.create_connection(("127.0.0.1", running_node.port), timeout=20) as connection:
            connection.sendall(payload)
            connection.shutdown(socket.SHUT_WR)
            try:
                while connection.recv(4096):
                    pass
            except OSError:
                pass
    time.sleep(0.5)
    loud = [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert not [record for record in caplog.records if record.exc_info], [r.getMessage() for r in loud]
    assert len(loud) <= len(GARBAGE), [record.getMessage() for record in loud]
    # and the node still serves
    assert _echo(running_node.port, "CODEBRAIN").is_established
