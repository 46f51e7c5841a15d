"""A small, valid acquired MR series (as a scanner writes it) to write synthetic series against."""

from __future__ import annotations

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid
from pydicom.valuerep import DS

STUDY_UID = generate_uid()
FRAME_OF_REFERENCE_UID = generate_uid()


def acquired_series(
    description: str,
    *,
    slices: int = 6,
    rows: int = 16,
    columns: int = 12,
    spacing: tuple[float, float] = (0.9375, 0.9375),
    thickness: float = 3.0,
    step: float = 3.3,
    oblique_deg: float = 0.0,
    series_number: int = 2,
    scanning: tuple[str, ...] = ("SE",),
    tr: float = 500.0,
    te: float = 10.0,
) -> list[pydicom.Dataset]:
    """Slices sorted along the normal; an axial stack tilted by ``oblique_deg`` about the left-right axis."""
    angle = np.deg2rad(oblique_deg)
    row_dir = np.array([1.0, 0.0, 0.0])
    col_dir = np.array([0.0, np.cos(angle), -np.sin(angle)])
    normal = np.cross(row_dir, col_dir)
    origin = np.array([-120.123456789, -110.987654321, -30.5])
    series_uid = generate_uid()
    rng = np.random.default_rng(series_number)
    datasets = []
    for index in range(slices):
        ds = pydicom.Dataset()
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.StudyInstanceUID = STUDY_UID
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = FRAME_OF_REFERENCE_UID
        ds.PositionReferenceIndicator = ""
        ds.PatientName = "Müller^Jörg"
        ds.PatientID = "PAT-0001"
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "M"
        ds.StudyDate, ds.StudyTime = "20260105", "090000"
        ds.ReferringPhysicianName = ""
        ds.StudyID = "1"
        ds.AccessionNumber = "ACC123"
        ds.StudyDescription = "MRI BRAIN"
        ds.Modality = "MR"
        ds.Manufacturer = "SIEMENS"
        ds.ManufacturerModelName = "Prisma"
        ds.InstitutionName = "Test Hospital"
        ds.SeriesNumber = series_number
        ds.SeriesDescription = description
        ds.ProtocolName = description
        ds.PatientPosition = "HFS"
        ds.InstanceNumber = index + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
        ds.ScanningSequence = list(scanning)
        ds.SequenceVariant = ["SK", "SP"]
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "2D"
        ds.RepetitionTime = tr
        ds.EchoTime = te
        ds.EchoTrainLength = 1
        ds.MagneticFieldStrength = 3
        position = origin + normal * step * index
        ds.ImagePositionPatient = [DS(v, auto_format=True) for v in position]
        ds.ImageOrientationPatient = [DS(v, auto_format=True) for v in (*row_dir, *col_dir)]
        ds.PixelSpacing = list(spacing)
        ds.SliceThickness = thickness
        ds.SliceLocation = DS(float(np.dot(position, normal)), auto_format=True)
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = rows, columns
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = rng.integers(0, 4000, size=(rows, columns), dtype=np.uint16).tobytes()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        datasets.append(ds)
    return datasets


def minimal_series(slices: int = 4, rows: int = 16, columns: int = 12) -> list[pydicom.Dataset]:
    """An MR series with only what the node needs to receive and read it (the SOP, study and series UIDs, the
    geometry, the pixels): no patient or study attributes, no Frame of Reference, Patient Position or
    Manufacturer, as an anonymiser or a sparse PACS export may leave it."""
    study_uid, series_uid = generate_uid(), generate_uid()
    rng = np.random.default_rng(1)
    datasets = []
    for index in range(slices):
        ds = pydicom.Dataset()
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.Modality = "MR"
        ds.ImagePositionPatient = [0.0, 0.0, 3.0 * index]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [1.0, 1.0]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = rows, columns
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = rng.integers(0, 4000, size=(rows, columns), dtype=np.uint16).tobytes()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        datasets.append(ds)
    return datasets
