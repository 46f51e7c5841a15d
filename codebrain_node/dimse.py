"""What pynetdicom's associations need from us to send DIMSE requests safely from a thread of our own."""

from __future__ import annotations

import time

from pynetdicom.association import Association


def pause_reactor(assoc: Association, timeout_s: float = 5.0) -> None:
    """Park the association's reactor thread before a send, closing a pynetdicom race.

    ``send_c_store`` clears the reactor checkpoint and proceeds as soon as ``_is_paused`` reads True, but the
    reactor may have just returned from its checkpoint wait and not yet reset the flag; it then takes our
    C-STORE-RSP off the queue itself ("Received unexpected C-STORE service message", a DIMSE timeout and an
    aborted association), seen here under CPU contention. The reactor loop sleeps 1 ms a turn, so a flag that
    still reads True 3 ms after the checkpoint was cleared means the reactor is parked at the checkpoint."""
    assoc._reactor_checkpoint.clear()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if assoc._is_paused:
            time.sleep(0.003)
            if assoc._is_paused:
                return
        time.sleep(0.0005)
