"""What the SCP tells the recorder about associations: one opened, one ended.

pynetdicom raises EVT_ACCEPTED, EVT_RELEASED, EVT_ABORTED and EVT_CONN_CLOSE on the association's own thread
(``receive/scp.py``); the handlers turn them into these small records and hand them to the recorder's queue, the
same queue as the instances, so the database sees an association open before its first instance and closed only
after its last. The receiver names each association itself (``key``) so instances can point at it before its row
exists. The timestamps are taken when the event happened, not when the row is written.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime


def new_association_key() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class AssociationOpened:
    """A-ASSOCIATE-AC sent (PS3.8 7.1.1): the peer may now send instances."""

    key: str
    receiver: str
    calling_ae_title: str | None
    called_ae_title: str | None
    peer_address: str | None
    peer_port: int | None
    at: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass(frozen=True)
class AssociationEnded:
    """Released (A-RELEASE, PS3.8 7.2), aborted (A-ABORT / A-P-ABORT, 7.3-7.4), or the connection went away."""

    key: str
    reason: str
    at: datetime = field(default_factory=lambda: datetime.now(UTC))


AssociationEvent = AssociationOpened | AssociationEnded
