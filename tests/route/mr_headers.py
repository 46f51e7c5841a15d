"""Small, realistic MR headers and on-disk series for the routing tests (no dependency on the phantom)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid
from sqlalchemy.orm import Session

from codebrain_node.db.models import Instance, Series, Study


def mr_header(
    description: str = "",
    *,
    scanning: Sequence[str] = ("SE",),
    variant: Sequence[str] = ("NONE",),
    acquisition: str = "2D",
    tr: float | None = None,
    te: float | None = None,
    ti: float | None = None,
    agent: str | None = None,
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "M", "ND"),
    modality: str = "MR",
    series_number: int = 1,
    thickness: float = 5.0,
    synthetic: bool = False,
    protocol: str | None = None,
    **extra: Any,
) -> pydicom.Dataset:
    """Header attributes a scanner writes that classification reads."""
    ds = pydicom.Dataset()
    ds.Modality = modality
    ds.SeriesDescription = description
    ds.ProtocolName = description if protocol is None else protocol
    ds.ImageType = list(image_type)
    ds.ScanningSequence = list(scanning)
    ds.SequenceVariant = list(variant)
    ds.MRAcquisitionType = acquisition
    ds.SeriesNumber = series_number
    ds.SliceThickness = thickness
    if tr is not None:
        ds.RepetitionTime = tr
    if te is not None:
        ds.EchoTime = te
    if ti is not None:
        ds.InversionTime = ti
    if agent is not None:
        ds.ContrastBolusAgent = agent
    if synthetic:
        ds.SyntheticData = "YES"
    for key, value in extra.items():
        setattr(ds, key, value)
    return ds


def write_series(
    folder: Path,
    header: pydicom.Dataset,
    count: int,
    *,
    study_uid: str,
    series_uid: str | None = None,
    flags_on_last: dict[str, Any] | None = None,
) -> tuple[str, list[Path]]:
    """Write ``count`` tiny instances of one series (4×4 pixels) under ``folder``; returns (series uid, paths)."""
    series_uid = series_uid or generate_uid()
    out = folder / series_uid
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        ds = pydicom.Dataset()
        ds.update(header)
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.InstanceNumber = index + 1
        ds.Rows = ds.Columns = 4
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.PixelData = np.full((4, 4), index, dtype=np.uint16).tobytes()
        if flags_on_last and index == count - 1:
            for key, value in flags_on_last.items():
                setattr(ds, key, value)
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = out / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return series_uid, paths


def add_study(session: Session, study_uid: str, last_received_at: datetime) -> Study:
    study = Study(study_instance_uid=study_uid, last_received_at=last_received_at, first_received_at=last_received_at)
    session.add(study)
    session.flush()
    return study


def add_series(
    session: Session,
    study: Study,
    series_uid: str,
    paths: Sequence[Path],
    received_at: datetime,
    *,
    series_number: int = 1,
    is_synthetic: bool = False,
) -> Series:
    """Record a written series as the receiver would."""
    series = Series(
        study=study,
        series_instance_uid=series_uid,
        modality="MR",
        series_number=series_number,
        is_synthetic=is_synthetic,
    )
    for number, path in enumerate(paths, start=1):
        series.instances.append(
            Instance(
                sop_instance_uid=path.stem,
                sop_class_uid=MRImageStorage,
                instance_number=number,
                path=str(path),
                size_bytes=path.stat().st_size,
                received_at=received_at,
            )
        )
    session.add(series)
    session.flush()
    return series
