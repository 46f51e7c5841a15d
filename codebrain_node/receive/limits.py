"""Association limits shared by the receiver processes of one node (``dicom.receiver_processes`` > 1).

With one process the SCP counts its own associations (``receive/scp.py``). With several on one port, each sees only
its own, so ``dicom.max_associations`` and ``dicom.max_associations_per_peer`` are counted here instead, node-wide:
a small JSON table (process slot → its pid and its open associations by peer address) in one file, read and
written under an exclusive ``flock`` on EVT_REQUESTED (admit) and when the association ends (release). That is one
lock, one small read and one small write per association, never per instance; the table is runtime state only
(not fsynced, rebuilt at every start).

A process that dies cannot release what it held: every admission first drops the slots whose pid is gone, and a
restarted process starts its slot empty, so a crash frees its share at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: Reasons of a refusal, as the SCP logs them and the rejection metric labels them.
TOO_MANY = "more than dicom.max_associations at once"
TOO_MANY_FROM_PEER = "more than dicom.max_associations_per_peer from this host"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's pid now: not ours, but leave it
        return True
    return True


class SharedAssociationCount:
    """This process's view of the node-wide table at ``path``, as slot ``slot``."""

    def __init__(self, path: Path, slot: int) -> None:
        self.path = Path(path)
        self.slot = str(slot)
        self.pid = os.getpid()

    @contextlib.contextmanager
    def _table(self) -> Iterator[dict[str, Any]]:
        """The table, locked; what the block leaves in it is written back."""
        descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            raw = b""
            while chunk := os.read(descriptor, 65536):
                raw += chunk
            try:
                table = json.loads(raw) if raw else {}
            except ValueError:  # a torn write of a process killed mid-way: the live ones re-add themselves
                table = {}
            if not isinstance(table, dict):
                table = {}
            for slot, entry in list(table.items()):
                if not isinstance(entry, dict) or not _alive(int(entry.get("pid", 0))):
                    del table[slot]
            yield table
            data = json.dumps(table, separators=(",", ":")).encode()
            os.lseek(descriptor, 0, os.SEEK_SET)
            os.ftruncate(descriptor, 0)
            os.write(descriptor, data)
        finally:
            os.close(descriptor)  # releases the lock

    def reset(self) -> None:
        """Start this slot empty (at a process's start: a predecessor in the slot held nothing that is still open)."""
        with self._table() as table:
            table[self.slot] = {"pid": self.pid, "hosts": {}}

    def admit(self, host: str, max_total: int, max_per_host: int) -> str | None:
        """Count one more association from ``host`` if the node's limits allow it; else the reason it does not."""
        with self._table() as table:
            total = sum(sum(entry["hosts"].values()) for entry in table.values())
            from_host = sum(entry["hosts"].get(host, 0) for entry in table.values())
            if total >= max_total:
                return TOO_MANY
            if from_host >= max_per_host:
                return TOO_MANY_FROM_PEER
            mine = table.setdefault(self.slot, {"pid": self.pid, "hosts": {}})
            mine["pid"] = self.pid
            mine["hosts"][host] = mine["hosts"].get(host, 0) + 1
            return None

    def release(self, host: str) -> None:
        """One association from ``host`` admitted here has ended."""
        with self._table() as table:
            hosts = table.setdefault(self.slot, {"pid": self.pid, "hosts": {}})["hosts"]
            left = hosts.get(host, 0) - 1
            if left > 0:
                hosts[host] = left
            else:
                hosts.pop(host, None)

    def open_counts(self) -> dict[str, int]:
        """Open associations by peer over every live process (tests, status)."""
        counts: dict[str, int] = {}
        with self._table() as table:
            for entry in table.values():
                for host, count in entry["hosts"].items():
                    counts[host] = counts.get(host, 0) + count
        return counts
