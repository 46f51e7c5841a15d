"""Read one series, NIfTI/NRRD/MHA file or DICOM (a folder or a list of files), into a SimpleITK image.

DICOM slices are ordered by their position along the slice normal (ImagePositionPatient · normal), not by file name
or InstanceNumber, because PACS and modality numbering cannot be trusted; rescale slope/intercept are applied.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.errors import InvalidDicomError

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha", ".mhd")


def is_volume_file(path: Path) -> bool:
    """Whether ``path`` names a single-file volume format SimpleITK reads directly."""
    return path.is_file() and path.name.lower().endswith(VOLUME_SUFFIXES)


def sort_dicom_files(paths: Sequence[Path]) -> list[Path]:
    """Order the files of one series by slice position along the normal of their common orientation."""
    keyed: list[tuple[float, int, Path]] = []
    for path in paths:
        header = pydicom.dcmread(path, stop_before_pixels=True)
        orientation = np.array([float(v) for v in header.ImageOrientationPatient])
        normal = np.cross(orientation[:3], orientation[3:])
        position = np.array([float(v) for v in header.ImagePositionPatient])
        keyed.append((float(position @ normal), int(getattr(header, "InstanceNumber", 0) or 0), Path(path)))
    keyed.sort(key=lambda item: (item[0], item[1]))
    return [path for _, _, path in keyed]


def read_dicom_files(paths: Sequence[Path]) -> sitk.Image:
    """Read the files of ONE series (any order) into a 3-D image with its patient geometry."""
    if not paths:
        raise ValueError("no DICOM files given")
    ordered = sort_dicom_files(paths)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(p) for p in ordered])
    return reader.Execute()


def read_dicom_folder(folder: Path, series_uid: str | None = None) -> sitk.Image:
    """Read one DICOM series from a folder; ``series_uid`` picks one when the folder holds several."""
    folder = Path(folder)
    files = [p for p in sorted(folder.rglob("*")) if p.is_file()]
    by_series: dict[str, list[Path]] = {}
    for path in files:
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
        except (InvalidDicomError, OSError):
            continue
        uid = str(getattr(header, "SeriesInstanceUID", ""))
        if uid:
            by_series.setdefault(uid, []).append(path)
    if not by_series:
        raise ValueError(f"no DICOM series found in {folder}")
    if series_uid is None:
        if len(by_series) > 1:
            raise ValueError(f"{folder} holds {len(by_series)} series; pass series_uid to choose one")
        series_uid = next(iter(by_series))
    if series_uid not in by_series:
        raise ValueError(f"series {series_uid} not found in {folder}")
    return read_dicom_files(by_series[series_uid])


def read_series(path: Path | str, series_uid: str | None = None) -> sitk.Image:
    """Read a NIfTI (or other single-file volume) or a folder holding one DICOM series."""
    path = Path(path)
    if path.is_dir():
        return read_dicom_folder(path, series_uid)
    if is_volume_file(path):
        return sitk.ReadImage(str(path))
    if path.is_file():
        return read_dicom_files([path])
    raise FileNotFoundError(f"no series at {path}")
