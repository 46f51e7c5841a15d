"""The C-STORE-RSP, packed by hand: pynetdicom builds it as a pydicom Dataset and encodes it twice (once for the
group length), which cost about as much CPU per instance as everything the spool does.

The command set of a C-STORE response (PS3.7 9.3.1.2, Table 9.3-2) is always Implicit VR Little Endian
(PS3.7 6.3.1): Command Group Length, Affected SOP Class UID, Command Field 0x8001, Message ID Being Responded To,
Command Data Set Type 0x0101 (no data set), Status, Affected SOP Instance UID, each element a 4-byte tag, a
4-byte length and the value (UIDs padded with NUL to an even length, PS3.5 6.2). It travels as one PDV whose
message control header is 0x03: a command, its last fragment (PS3.8 E.2).

Only the plain response takes this path: one with an Error Comment or Offending Element, a peer whose maximum
PDU is too small for it in one fragment, or an association with an EVT_DIMSE_SENT handler bound (the
standard logging handlers are) goes through pynetdicom as before.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from pynetdicom import evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import P_DATA

_UL = struct.Struct("<HHII")
_US = struct.Struct("<HHIH")
_C_STORE_RSP = 0x8001
_NO_DATA_SET = 0x0101
#: Message control header: command information, last fragment (PS3.8 E.2).
_LAST_COMMAND_FRAGMENT = b"\x03"


def _uid(element: int, value: str) -> bytes:
    encoded = value.encode("ascii")
    if len(encoded) % 2:
        encoded += b"\x00"
    return struct.pack("<HHI", 0x0000, element, len(encoded)) + encoded


def encode_store_response(sop_class_uid: str, sop_instance_uid: str, message_id: int, status: int) -> bytes:
    """The encoded command set of a C-STORE-RSP without a data set (PS3.7 9.3.1.2, E.1)."""
    body = b"".join(
        (
            _uid(0x0002, sop_class_uid),
            _US.pack(0x0000, 0x0100, 2, _C_STORE_RSP),
            _US.pack(0x0000, 0x0120, 2, message_id),
            _US.pack(0x0000, 0x0800, 2, _NO_DATA_SET),
            _US.pack(0x0000, 0x0900, 2, status),
            _uid(0x1000, sop_instance_uid),
        )
    )
    return _UL.pack(0x0000, 0x0000, 4, len(body)) + body


def _plain_store_response(primitive: Any) -> bool:
    return (
        isinstance(primitive, C_STORE)
        and primitive.MessageIDBeingRespondedTo is not None
        and primitive.Status is not None
        and primitive.ErrorComment is None
        and primitive.OffendingElement is None
        and primitive.AffectedSOPClassUID is not None
        and primitive.AffectedSOPInstanceUID is not None
    )


def install_fast_store_response(assoc: Any) -> None:
    """Route ``assoc``'s plain C-STORE responses around pynetdicom's encoder (call before any DIMSE message,
    e.g. on EVT_REQUESTED); every other message still goes through ``DIMSEServiceProvider.send_msg``."""
    dimse = assoc.dimse
    original: Callable[[Any, int], None] = dimse.send_msg

    def send_msg(primitive: Any, context_id: int) -> None:
        command = None
        if _plain_store_response(primitive) and not assoc.get_handlers(evt.EVT_DIMSE_SENT):
            command = encode_store_response(
                str(primitive.AffectedSOPClassUID),
                str(primitive.AffectedSOPInstanceUID),
                int(primitive.MessageIDBeingRespondedTo),
                int(primitive.Status),
            )
            limit = dimse.maximum_pdu_size
            if limit and len(command) + 6 > limit:  # 6: the PDV item length and context ID, before the header
                command = None
        if command is None:
            original(primitive, context_id)
            return
        pdata = P_DATA()
        pdata.presentation_data_value_list.append((context_id, _LAST_COMMAND_FRAGMENT + command))
        dimse.dul.send_pdu(pdata)

    dimse.send_msg = send_msg
