"""The C-STORE-RQ unpacked by hand (receive/store_request.py) gives the primitive pynetdicom's decoding gives."""

from __future__ import annotations

import struct
from io import BytesIO
from typing import Any

import pytest
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.dimse_messages import C_ECHO_RQ, C_STORE_RQ
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.pdu_primitives import P_DATA

from codebrain_node.receive.store_request import _FastStoreReceive, decode_store_request, install_fast_store_request

SOP_CLASS = "1.2.840.10008.5.1.4.1.1.4"
SOP_INSTANCE = "1.2.826.0.1.3680043.8.498.1234567890123456789012345"  # odd length: padded with a NUL


def _store(move_originator: str | None = None, move_id: int | None = None, priority: int = 2) -> C_STORE:
    primitive = C_STORE()
    primitive.MessageID = 7
    primitive.AffectedSOPClassUID = SOP_CLASS
    primitive.AffectedSOPInstanceUID = SOP_INSTANCE
    primitive.Priority = priority
    if move_originator is not None:
        primitive.MoveOriginatorApplicationEntityTitle = move_originator
    if move_id is not None:
        primitive.MoveOriginatorMessageID = move_id
    primitive.DataSet = BytesIO(bytes(range(256)) * 40)
    return primitive


def _p_datas(primitive: Any, max_pdu: int = 4096, context_id: int = 3) -> list[P_DATA]:
    """The P-DATA primitives pynetdicom's DUL hands the DIMSE provider for this message."""
    message = C_STORE_RQ() if isinstance(primitive, C_STORE) else C_ECHO_RQ()
    message.primitive_to_message(primitive)
    return list(message.encode_msg(context_id, max_pdu))


def _association() -> Association:
    ae = AE()
    return Association(ae, "acceptor")


def _received(p_datas: list[P_DATA], fast: bool) -> tuple[list[Any], list[str]]:
    """(what the DIMSE provider queued, the events its DUL got) for these P-DATAs, by either path."""
    assoc = _association()
    if fast:
        assert install_fast_store_request(assoc)
    for p_data in p_datas:
        assoc.dimse.receive_primitive(p_data)
    queued = []
    while not assoc.dimse.msg_queue.empty():
        queued.append(assoc.dimse.msg_queue.get())
    events = []
    while not assoc.dul.event_queue.empty():
        events.append(assoc.dul.event_queue.get())
    return queued, events


_FIELDS = (
    "MessageID",
    "AffectedSOPClassUID",
    "AffectedSOPInstanceUID",
    "Priority",
    "MoveOriginatorApplicationEntityTitle",
    "MoveOriginatorMessageID",
)


def _view(item: tuple[int, Any]) -> tuple[Any, ...]:
    context_id, primitive = item
    data = primitive.DataSet.getvalue() if getattr(primitive, "DataSet", None) is not None else None
    fields = tuple((name, getattr(primitive, name, None), type(getattr(primitive, name, None))) for name in _FIELDS)
    return context_id, type(primitive), primitive._context_id, fields, data


@pytest.mark.parametrize(
    "primitive",
    [_store(), _store("MOVER", 12, priority=1), _store(" PACS ", 0), _store(priority=0)],
)
@pytest.mark.parametrize("max_pdu", [0, 4096, 60])
def test_same_primitive_as_pynetdicom(primitive: C_STORE, max_pdu: int) -> None:
    """Whole or in many fragments (a 60-byte PDU splits the command set too), the queued primitive is the same."""
    p_datas = _p_datas(primitive, max_pdu)
    theirs, their_events = _received(p_datas, fast=False)
    ours, our_events = _received(p_datas, fast=True)
    assert [_view(item) for item in ours] == [_view(item) for item in theirs]
    assert our_events == their_events == []
    assert len(ours) == 1


def test_several_messages_in_a_row_and_other_messages_pass_through() -> None:
    echo = C_ECHO()
    echo.MessageID = 9
    echo.AffectedSOPClassUID = "1.2.840.10008.1.1"
    p_datas = _p_datas(_store()) + _p_datas(echo) + _p_datas(_store("X", 3), 200)
    theirs, _ = _received(p_datas, fast=False)
    ours, _ = _received(p_datas, fast=True)
    assert [type(p) for _, p in ours] == [C_STORE, C_ECHO, C_STORE]
    assert [_view(item) for item in ours] == [_view(item) for item in theirs]


def _command(elements: list[tuple[int, bytes]]) -> bytes:
    return b"".join(struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(value)) + value for tag, value in elements)


def _raw_store(extra: list[tuple[int, bytes]] = (), **override: bytes) -> bytes:  # type: ignore[assignment]
    values = {
        0x00000002: b"1.2.840.10008.5.1.4.1.1.4\x00",
        0x00000100: struct.pack("<H", 0x0001),
        0x00000110: struct.pack("<H", 5),
        0x00000700: struct.pack("<H", 2),
        0x00000800: struct.pack("<H", 0x0000),
        0x00001000: b"1.2.3.4",
    }
    for name, value in override.items():
        values[int(name[1:], 16)] = value
    elements = sorted(values.items()) + list(extra)
    body = _command(elements)
    return _command([(0x00000000, struct.pack("<I", len(body)))]) + body


@pytest.mark.parametrize(
    "command",
    [
        _raw_store(extra=[(0x00000600, b"1.2\x00")]),  # an element a C-STORE-RQ has no place for
        _raw_store(t00000700=b"\x02"),  # a US of one byte
        _raw_store(t00001000=b"1.2\\3.4"),  # two values
        _raw_store(t00000800=struct.pack("<H", 0x0101)),  # no data set follows
        _raw_store(t00000100=struct.pack("<H", 0x0030)),  # C-ECHO-RQ
        _raw_store()[:-3],  # cut short
    ],
)
def test_anything_unusual_is_left_to_pynetdicom(command: bytes) -> None:
    assert decode_store_request(command) is None


@pytest.mark.parametrize(
    "command",
    [
        _raw_store(extra=[(0x00000600, b"1.2\x00")]),
        _raw_store(t00001000=b"not a uid"),
        _raw_store(t00000800=struct.pack("<H", 0x0101)),
        _raw_store(t00001000=b"1.2\\3.4"),
    ],
)
def test_what_is_left_to_pynetdicom_ends_as_pynetdicom_ends_it(command: bytes) -> None:
    """Replayed, the same fragments give pynetdicom's outcome: its primitive, or its Evt19 for the invalid."""
    half = len(command) // 2
    p_datas = []
    for fragments in (
        [(1, b"\x01" + command[:half])],
        [(1, b"\x03" + command[half:]), (1, b"\x00" + b"dataset-")],
        [(1, b"\x02" + b"bytes")],
    ):
        p_data = P_DATA()
        p_data.presentation_data_value_list = [list(fragment) for fragment in fragments]
        p_datas.append(p_data)
    theirs, their_events = _received(p_datas, fast=False)
    ours, our_events = _received(p_datas, fast=True)
    assert our_events == their_events
    assert [_view(item) for item in ours] == [_view(item) for item in theirs]


def test_a_data_set_before_any_command_is_pynetdicom_s() -> None:
    p_data = P_DATA()
    p_data.presentation_data_value_list = [[1, b"\x02" + b"stray"]]
    assert _received([p_data], fast=True) == _received([p_data], fast=False)


def test_nothing_is_left_half_done() -> None:
    assoc = _association()
    install_fast_store_request(assoc)
    for p_data in _p_datas(_store(), 512):
        assoc.dimse.receive_primitive(p_data)
    receive = assoc.dimse.receive_primitive
    assert isinstance(receive, _FastStoreReceive)
    assert not receive.pending and assoc.dimse.message is None
