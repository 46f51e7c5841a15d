"""The one durable write: a temporary name, fdatasync, rename into place, fsync of the folder.

A reader (or a restart after a power cut) sees either the whole new file under its final name or no file at all,
never a torn one: the contents reach the disk before the rename makes them visible, and the folder's own fsync
makes the new name (and any folder created for it) survive a crash. The spool, the synthetic-series writer, the
folder export, the review key and the trainer's checkpoints all write through here.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


def fsync_directory(directory: Path) -> None:
    """Make the names in ``directory`` (a rename, a new file, a new sub-folder) durable."""
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def make_dirs_durably(directory: Path) -> None:
    """``mkdir -p``, fsyncing the parent of every folder it creates so the new names survive a crash too."""
    missing: list[Path] = []
    probe = Path(directory)
    while not probe.is_dir():
        missing.append(probe)
        probe = probe.parent
    if not missing:
        return
    Path(directory).mkdir(parents=True, exist_ok=True)
    for created in reversed(missing):
        fsync_directory(created.parent)


@contextmanager
def durable_file(
    final: Path, *, tmp_dir: Path | None = None, mode: int = 0o644, sync_directory: bool = True
) -> Iterator[BinaryIO]:
    """Write ``final`` through a binary handle; it appears, whole and on disk, only when the block ends cleanly.

    ``tmp_dir`` holds the partial file (default: ``final``'s folder; it must be on the same filesystem).
    ``sync_directory=False`` leaves the folder's fsync to the caller, who writes many files and syncs once.
    An exception inside the block removes the partial file and leaves any earlier ``final`` untouched.
    """
    final = Path(final)
    if tmp_dir is None:
        make_dirs_durably(final.parent)
    partial = Path(tmp_dir or final.parent) / f".{uuid.uuid4().hex}.part"
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            yield handle
            handle.flush()
            os.fdatasync(handle.fileno())
        _publish(partial, final, sync_directory)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def write_durably(
    final: Path, parts: bytes | Iterable[bytes], *, tmp_dir: Path | None = None, mode: int = 0o644
) -> int:
    """Write ``parts`` (bytes, or pieces written one after another) durably to ``final``; returns the size.

    Unbuffered: the caller's buffers go to the kernel as they are (the pieces of a tuple or list in one
    ``os.writev``), so the receiver's hot path copies nothing it need not and makes one write call per file.
    """
    final = Path(final)
    if tmp_dir is None:
        make_dirs_durably(final.parent)
    partial = Path(tmp_dir or final.parent) / f".{uuid.uuid4().hex}.part"
    size = 0
    try:
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            if isinstance(parts, bytes | bytearray | memoryview):
                parts = (parts,)
            if isinstance(parts, tuple | list):
                views = [memoryview(part).cast("B") for part in parts]
                size = sum(len(view) for view in views)
                _write_all(descriptor, views)
            else:
                for part in parts:
                    view = memoryview(part).cast("B")
                    size += len(view)
                    _write_all(descriptor, [view])
            os.fdatasync(descriptor)  # contents and size; the name is made durable by the folder's fsync
        finally:
            os.close(descriptor)
        _publish(partial, final, sync_directory=True)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return size


def _write_all(descriptor: int, views: list[memoryview]) -> None:
    """All of ``views`` in order, in as few ``writev`` calls as the kernel allows (it may write less)."""
    views = [view for view in views if len(view)]
    while views:
        written = os.writev(descriptor, views)
        while written:
            if written >= len(views[0]):
                written -= len(views.pop(0))
            else:
                views[0] = views[0][written:]
                written = 0


def _publish(partial: Path, final: Path, sync_directory: bool) -> None:
    """Rename into place (first making ``final``'s folder, durably, only if the rename says it is missing: no
    look at the folder on every file), then fsync the folder so the new name survives a crash."""
    try:
        os.replace(partial, final)
    except FileNotFoundError:
        if not partial.exists():
            raise
        # the folder was missing; another writer may be making it this very moment (mkdir is idempotent here)
        make_dirs_durably(final.parent)
        os.replace(partial, final)
    if sync_directory:
        fsync_directory(final.parent)
