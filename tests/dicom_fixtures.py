"""Small DICOM fixtures the receive, export and end-to-end tests share: MR instances, a series on disk, a port."""

from __future__ import annotations

import re
import socket
import subprocess
from contextlib import closing
from pathlib import Path

import numpy as np
from pydicom import examples
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

#: DCMTK's tools by full path: pynetdicom installs a ``storescu`` of its own on PATH.
STORESCU = Path("/usr/bin/storescu")
STORESCP = Path("/usr/bin/storescp")
#: dicom3tools' IOD checker.
DCIODVFY = Path("/usr/bin/dciodvfy")


def dciodvfy_errors(path: Path) -> list[str]:
    """dciodvfy's "Error" lines for one file (warnings are not failures)."""
    run = subprocess.run([str(DCIODVFY), str(path)], capture_output=True, text=True, timeout=60, check=False)
    lines = (run.stdout + run.stderr).splitlines()
    errors = [line for line in lines if line.startswith("Error")]
    # Its dictionary predates Synthetic Data (0008,001C): the one error it may report.
    return [line for line in errors if not re.search(r"0x0008,0x001c", line, re.IGNORECASE)]


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def make_mr_instance(
    study_uid: str, series_uid: str, index: int, rows: int = 256, columns: int = 256, seed: int = 0
) -> Dataset:
    """Slice ``index`` of an axial MR series, from pydicom's example MR image: int16 noise, a dummy patient."""
    ds = Dataset(examples.mr)  # the example's elements, free of its file's encoding
    for stale in ("ContrastBolusAgent", "SmallestImagePixelValue", "LargestImagePixelValue", "SliceLocation"):
        del ds[stale]  # they would describe the example's own pixels and acquisition
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.FrameOfReferenceUID = generate_uid()
    ds.PatientName, ds.PatientID = "TEST^PHANTOM", "TEST-PATIENT"
    ds.StudyDate, ds.StudyDescription = "20260101", "fixture study"
    ds.SeriesDescription, ds.SeriesNumber, ds.InstanceNumber = "T1 fixture", 1, index + 1
    ds.ImagePositionPatient = [0.0, 0.0, float(index)]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing, ds.SliceThickness = [1.0, 1.0], 1.0
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    pixels = np.random.default_rng(seed + index).integers(0, 4096, size=(rows, columns), dtype=np.int16)
    ds.PixelData = pixels.tobytes()
    return ds


def write_mr_series(folder: Path, count: int, rows: int = 256, columns: int = 256) -> list[Path]:
    """``count`` slices of one new study and series as Part 10 files in ``folder``, one frame of reference."""
    folder.mkdir(parents=True, exist_ok=True)
    study_uid, series_uid, frame_of_reference = generate_uid(), generate_uid(), generate_uid()
    paths = []
    for index in range(count):
        dataset = make_mr_instance(study_uid, series_uid, index, rows, columns)
        dataset.FrameOfReferenceUID = frame_of_reference
        path = folder / f"mr{index:05d}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
