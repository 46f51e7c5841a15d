"""Folder destination: the series' files under ``path/<StudyInstanceUID>/<SeriesInstanceUID>/``, durably."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from pydicom import dcmread

from codebrain_node.config import FolderDestinationSettings, Settings
from codebrain_node.durable import durable_file
from codebrain_node.export.base import Delivered, DeliveryError, Destination, ignore_delivery, register


@register(FolderDestinationSettings)
class FolderDestination(Destination[FolderDestinationSettings]):
    def __init__(self, name: str, path: Path) -> None:
        super().__init__(name)
        self.path = Path(path)

    @classmethod
    def from_settings(cls, entry: FolderDestinationSettings, settings: Settings) -> FolderDestination:
        return cls(entry.name, entry.path)

    def send(self, files: Sequence[Path], delivered: Delivered = ignore_delivery) -> None:
        try:
            for source in files:
                header = dcmread(
                    source, stop_before_pixels=True, specific_tags=["StudyInstanceUID", "SeriesInstanceUID"]
                )
                target_dir = self.path / str(header.StudyInstanceUID) / str(header.SeriesInstanceUID)
                # a reader of the folder sees whole files only
                with source.open("rb") as reading, durable_file(target_dir / source.name) as writing:
                    shutil.copyfileobj(reading, writing, 1 << 20)
                delivered(source)
        except OSError as exc:
            raise DeliveryError(f"folder {self.path}: {exc.strerror or exc}") from exc
