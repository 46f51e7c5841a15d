"""The hand-packed C-STORE-RSP is byte for byte what pynetdicom's encoder makes of the same response."""

from __future__ import annotations

import pytest
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE

from codebrain_node.receive.store_response import _plain_store_response, encode_store_response

MR = "1.2.840.10008.5.1.4.1.1.4"


def _response(sop_instance_uid: str, message_id: int, status: int) -> C_STORE:
    response = C_STORE()
    response.MessageIDBeingRespondedTo = message_id
    response.AffectedSOPClassUID = MR
    response.AffectedSOPInstanceUID = sop_instance_uid
    response.Status = status
    return response


@pytest.mark.parametrize(
    ("sop_instance_uid", "message_id", "status"),
    [("1.2.3.4", 1, 0x0000), ("1.2.826.0.1.3680043.8.498.12345", 65535, 0xA900), ("1.22", 7, 0xC000)],
)
def test_same_bytes_as_pynetdicom(sop_instance_uid: str, message_id: int, status: int) -> None:
    message = C_STORE_RSP()
    message.primitive_to_message(_response(sop_instance_uid, message_id, status))
    (pdata,) = message.encode_msg(1, 16_384)
    ((context_id, pdv),) = pdata.presentation_data_value_list
    assert context_id == 1 and pdv[:1] == b"\x03"
    assert encode_store_response(MR, sop_instance_uid, message_id, status) == pdv[1:]


def test_only_plain_responses_take_the_fast_path() -> None:
    assert _plain_store_response(_response("1.2.3", 1, 0))
    with_comment = _response("1.2.3", 1, 0xC000)
    with_comment.ErrorComment = "why"
    assert not _plain_store_response(with_comment)
    request = C_STORE()
    request.MessageID = 1
    assert not _plain_store_response(request)
