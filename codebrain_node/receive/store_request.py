"""The C-STORE-RQ, unpacked by hand: pynetdicom decodes every command set into a pydicom Dataset and copies its
elements one by one onto the primitive, about 110 us of CPU per instance (more than reading our own header).

The command set (PS3.7 9.3.1.1, Table 9.3-1) is Implicit VR Little Endian (PS3.7 6.3.1): each element a 4-byte tag,
a 4-byte length and the value. Here it is walked directly and its values go onto the ``C_STORE`` primitive through
the primitive's own setters (pynetdicom's validation of the UIDs and numbers applies as before), with the values
pydicom would have decoded: UIDs without trailing NULs or spaces, AE titles without surrounding spaces, US as
integers. The data set fragments are gathered into one ``BytesIO`` as pynetdicom does, one copy fewer.

Only a plain C-STORE-RQ takes this path: the command elements of Table 9.3-1 each at most once, single-valued,
of the lengths their VR allows, Command Data Set Type saying a data set follows. Anything else (another DIMSE
message, an unexpected element, a fragment out of order, a setter that refuses a value), an association with an
EVT_DIMSE_RECV handler bound, or pynetdicom's chunked-dataset mode goes to pynetdicom's
``DIMSEServiceProvider.receive_primitive`` with the fragments seen so far replayed: it then answers, logs and
aborts exactly as it would have.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from io import BytesIO
from typing import Any

from pynetdicom import _config, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import P_DATA

_ELEMENT_HEADER = struct.Struct("<HHI")
_US = struct.Struct("<H")

_GROUP_LENGTH = 0x00000000
_SOP_CLASS = 0x00000002
_COMMAND_FIELD = 0x00000100
_MESSAGE_ID = 0x00000110
_PRIORITY = 0x00000700
_DATA_SET_TYPE = 0x00000800
_SOP_INSTANCE = 0x00001000
_MOVE_ORIGINATOR_AE = 0x00001030
_MOVE_ORIGINATOR_ID = 0x00001031

#: The elements of a C-STORE-RQ (PS3.7 Table 9.3-1) → their VR.
_ELEMENTS = {
    _GROUP_LENGTH: "UL",
    _SOP_CLASS: "UI",
    _COMMAND_FIELD: "US",
    _MESSAGE_ID: "US",
    _PRIORITY: "US",
    _DATA_SET_TYPE: "US",
    _SOP_INSTANCE: "UI",
    _MOVE_ORIGINATOR_AE: "AE",
    _MOVE_ORIGINATOR_ID: "US",
}
_REQUIRED = frozenset({_SOP_CLASS, _COMMAND_FIELD, _MESSAGE_ID, _PRIORITY, _DATA_SET_TYPE, _SOP_INSTANCE})
_C_STORE_RQ = 0x0001
_NO_DATA_SET = 0x0101


def _elements(command: bytes) -> dict[int, bytes] | None:
    """Tag → value bytes, or None unless every element is one of a C-STORE-RQ's, once each, within the bytes."""
    values: dict[int, bytes] = {}
    position, end = 0, len(command)
    while position < end:
        if position + 8 > end:
            return None
        group, element, length = _ELEMENT_HEADER.unpack_from(command, position)
        tag = (group << 16) | element
        position += 8
        if tag not in _ELEMENTS or tag in values or position + length > end:
            return None
        values[tag] = command[position : position + length]
        position += length
    return values


def _text(value: bytes) -> str | None:
    """An ASCII single value (no backslash: pynetdicom would warn and take the first of several), else None."""
    if b"\\" in value or not value.isascii():
        return None
    return value.decode("ascii")


def decode_store_request(command: bytes) -> C_STORE | None:
    """The C_STORE primitive of a plain C-STORE-RQ command set (without its data set), or None when pynetdicom must
    decode it. A value a setter refuses also gives None (pynetdicom then refuses it in its own way)."""
    values = _elements(command)
    if values is None or not values.keys() >= _REQUIRED:
        return None
    numbers: dict[int, int] = {}
    for tag, value in values.items():
        kind = _ELEMENTS[tag]
        if kind == "US":
            if len(value) != 2:
                return None
            (numbers[tag],) = _US.unpack(value)
        elif kind == "UL" and len(value) != 4:
            return None
    if numbers[_COMMAND_FIELD] != _C_STORE_RQ or numbers[_DATA_SET_TYPE] == _NO_DATA_SET:
        return None
    sop_class, sop_instance = _text(values[_SOP_CLASS]), _text(values[_SOP_INSTANCE])
    if sop_class is None or sop_instance is None:
        return None
    request = C_STORE()
    try:
        request.AffectedSOPClassUID = sop_class.rstrip("\0 ")
        request.MessageID = numbers[_MESSAGE_ID]
        request.Priority = numbers[_PRIORITY]
        request.AffectedSOPInstanceUID = sop_instance.rstrip("\0 ")
        if _MOVE_ORIGINATOR_AE in values:
            title = _text(values[_MOVE_ORIGINATOR_AE])
            if title is None:
                return None
            request.MoveOriginatorApplicationEntityTitle = title.strip()
        if _MOVE_ORIGINATOR_ID in numbers:
            request.MoveOriginatorMessageID = numbers[_MOVE_ORIGINATOR_ID]
    except (ValueError, TypeError):
        return None
    return request


class _FastStoreReceive:
    """``DIMSEServiceProvider.receive_primitive`` for one association: plain C-STORE-RQs here, all else (and any
    message it has started) pynetdicom's."""

    def __init__(self, assoc: Any, original: Callable[[P_DATA], None]) -> None:
        self.assoc = assoc
        self.original = original
        self._reset()

    def _reset(self) -> None:
        self.command = bytearray()
        self.request: C_STORE | None = None
        self.context_id: int | None = None
        self.dataset = BytesIO()
        self.has_dataset = False

    def __call__(self, primitive: P_DATA) -> None:
        dimse = self.assoc.dimse
        if (
            dimse.message is not None  # pynetdicom's own, under way
            or primitive.__class__ is not P_DATA
            or _config.STORE_RECV_CHUNKED_DATASET
            or self.assoc.get_handlers(evt.EVT_DIMSE_RECV)
        ):
            self._delegate(primitive.presentation_data_value_list if primitive.__class__ is P_DATA else None, primitive)
            return
        fragments = primitive.presentation_data_value_list
        for index, (context_id, data) in enumerate(fragments):
            control = data[0]
            if self.request is None:  # the command set
                if not control & 1:  # data set before the command is whole: pynetdicom's to judge
                    self._delegate(fragments[index:])
                    return
                self.command += memoryview(data)[1:]
                if control & 2:
                    request = decode_store_request(bytes(self.command))
                    if request is None:
                        self.context_id = context_id
                        self._delegate(fragments[index + 1 :], command_complete=True)
                        return
                    self.request, self.context_id = request, context_id
                continue
            if control & 1:  # a command fragment inside the data set
                self._delegate(fragments[index:], command_complete=True)
                return
            self.dataset.write(memoryview(data)[1:])
            self.has_dataset = True
            if control & 2:
                self._deliver()
                return  # as pynetdicom: the message ends with its last fragment

    def _deliver(self) -> None:
        request, context_id = self.request, self.context_id
        if request is None or context_id is None:
            raise RuntimeError("a C-STORE-RQ was delivered before its command set")
        request.DataSet = self.dataset
        request._context_id = context_id
        self._reset()
        self.assoc.dimse.msg_queue.put((context_id, request))

    def _delegate(
        self, rest: list[tuple[int, bytes]] | None, primitive: Any = None, command_complete: bool = False
    ) -> None:
        """Hand pynetdicom what this message has brought so far, then ``rest`` (or ``primitive`` as it came)."""
        replay: list[tuple[int, bytes]] = []
        if self.command or command_complete:
            context_id = self.context_id if self.context_id is not None else (rest[0][0] if rest else 1)
            replay.append((context_id, (b"\x03" if command_complete else b"\x01") + bytes(self.command)))
            if self.has_dataset:
                replay.append((context_id, b"\x00" + self.dataset.getvalue()))
        self._reset()
        if not replay:
            self.original(primitive if primitive is not None else _p_data(rest or []))
            return
        self.original(_p_data(replay + list(rest or [])))

    @property
    def pending(self) -> bool:
        """Whether a message is part-way here (tests)."""
        return bool(self.command) or self.request is not None


def _p_data(fragments: list[Any]) -> P_DATA:
    primitive = P_DATA()
    primitive.presentation_data_value_list = [[context_id, bytes(data)] for context_id, data in fragments]
    return primitive


def install_fast_store_request(assoc: Any) -> bool:
    """Route ``assoc``'s plain C-STORE-RQs around pynetdicom's command decoding (before any DIMSE message arrives,
    e.g. on EVT_REQUESTED); False where its DIMSE provider is not what this expects."""
    dimse = getattr(assoc, "dimse", None)
    if dimse is None or not hasattr(dimse, "msg_queue") or not hasattr(dimse, "message"):
        return False
    if not hasattr(C_STORE(), "_context_id"):
        return False
    dimse.receive_primitive = _FastStoreReceive(assoc, dimse.receive_primitive)
    return True
