"""Folder destination: the series' files under ``path/<StudyInstanceUID>/<SeriesInstanceUID>/``, durably."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path

from pydicom import dcmread

from codebrain_node.export.base import DeliveryError, Destination


class FolderDestination(Destination):
    kind = "folder"

    def __init__(self, name: str, path: Path) -> None:
        super().__init__(name)
        self.path = Path(path)

    def send(self, files: Sequence[Path]) -> None:
        try:
            for source in files:
                header = dcmread(
                    source, stop_before_pixels=True, specific_tags=["StudyInstanceUID", "SeriesInstanceUID"]
                )
                target_dir = self.path / str(header.StudyInstanceUID) / str(header.SeriesInstanceUID)
                target_dir.mkdir(parents=True, exist_ok=True)
                target = target_dir / source.name
                partial = target_dir / f".{uuid.uuid4().hex}.part"
                try:
                    # a reader of the folder sees whole files only: copy aside, fsync, rename
                    with source.open("rb") as reading, partial.open("wb") as writing:
                        shutil.copyfileobj(reading, writing, 1 << 20)
                        writing.flush()
                        os.fsync(writing.fileno())
                    os.replace(partial, target)
                finally:
                    partial.unlink(missing_ok=True)
                directory = os.open(target_dir, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.fsync(directory)
                finally:
                    os.close(directory)
        except OSError as exc:
            raise DeliveryError(f"folder {self.path}: {exc.strerror or exc}") from exc
