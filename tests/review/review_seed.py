"""A tiny reviewed study on disk and in the database: an acquired T1 and a synthetic T2 (with confidence map).

Slices are 32×32 ellipses whose brightness depends on the slice, so a test can tell which slice was rendered.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid
from sqlalchemy.orm import Session, sessionmaker

from codebrain_node.config import Settings, load_settings
from codebrain_node.db.lifecycle import transition
from codebrain_node.db.models import Instance, Job, JobStatus, Series, Study, StudyState, utcnow
from codebrain_node.review.auth import hash_password
from codebrain_node.write.synthetic_series import CONFIDENCE_FILE

PASSWORDS = {"alice": "correct horse battery", "victor": "viewer password 1"}
SLICES = 6
SIZE = 32


def slice_pixels(index: int, scale: float) -> np.ndarray:
    """An ellipse whose inside value is ``scale * (index + 1)``: each slice has its own brightness."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    inside = ((yy - SIZE / 2) / 12) ** 2 + ((xx - SIZE / 2) / 9) ** 2 <= 1
    return (inside * scale * (index + 1)).astype(np.uint16)


def write_series(
    folder: Path,
    study_uid: str,
    series_uid: str,
    description: str,
    scale: float,
    z_step: float = 5.0,
    z_offset: float = 0.0,
    slices: int = SLICES,
    synthetic: bool = False,
    volume: np.ndarray | None = None,
    spacing: float = 5.0,
) -> list[Path]:
    """Single-frame MR instances (the test ellipses, or ``volume`` [Z, H, W]), written in shuffled order."""
    folder.mkdir(parents=True, exist_ok=True)
    if volume is not None:
        slices = volume.shape[0]
    rows, columns = (SIZE, SIZE) if volume is None else volume.shape[1:]
    paths = []
    for index in [*range(1, slices, 2), *range(0, slices, 2)]:
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.Modality = "MR"
        ds.PatientName = "Doe^Jane"
        ds.PatientID = "PID-0042"
        ds.SeriesDescription = description
        ds.InstanceNumber = index + 1
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-80.0, -80.0, z_offset + index * z_step]
        ds.PixelSpacing = [spacing, spacing]
        ds.SliceThickness = z_step
        ds.Rows, ds.Columns = rows, columns
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        if synthetic:
            ds.ImageType = ["DERIVED", "SECONDARY", "SYNTHETIC"]
        pixels = slice_pixels(index, scale) if volume is None else volume[index].astype(np.uint16)
        ds.PixelData = np.ascontiguousarray(pixels).tobytes()
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


@dataclass
class Seeded:
    settings: Settings
    factory: sessionmaker[Session]
    study_id: int
    input_series_id: int
    synthetic_series_id: int
    study_uid: str
    synthetic_folder: Path


@functools.cache
def password_hash(name: str) -> str:
    """Hashed once per test run: Argon2 is slow on purpose."""
    return hash_password(PASSWORDS[name])


def make_settings(tmp_path: Path, **review: object) -> Settings:
    users = [
        {"name": "alice", "password_hash": password_hash("alice"), "role": "reviewer"},
        {"name": "victor", "password_hash": password_hash("victor"), "role": "viewer"},
    ]
    settings = load_settings(environ={})
    settings.paths.data_dir = tmp_path / "data"
    settings.export.policy = "review"
    settings.review = settings.review.model_validate({"users": users, "port": 0, **review})
    return settings


def seed_study(
    settings: Settings,
    factory: sessionmaker[Session],
    accession: str = "ACC1",
    patient_name: str = "Doe^Jane",
    with_confidence: bool = True,
    volumes: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    z_step: float = 5.0,
    pixel_spacing: float = 5.0,
) -> Seeded:
    """A study awaiting review: acquired T1 (input) and synthetic T2, the job that made it, its audit trail.

    ``volumes`` (input, synthetic, confidence), each [Z, H, W], replace the test ellipses (for the screenshot).
    """
    data = Path(settings.paths.data_dir)
    study_uid, t1_uid, t2_uid = generate_uid(), generate_uid(), generate_uid()
    t1_volume, t2_volume, confidence = volumes if volumes is not None else (None, None, None)
    t1_paths = write_series(
        data / "incoming" / study_uid / t1_uid,
        study_uid,
        t1_uid,
        "T1 MPRAGE",
        100,
        z_step,
        0.0,
        volume=t1_volume,
        spacing=pixel_spacing,
    )
    synthetic_folder = data / "synthetic" / study_uid / t2_uid
    t2_paths = write_series(
        synthetic_folder,
        study_uid,
        t2_uid,
        "SYNTHETIC T2",
        10,
        z_step,
        0.0,
        synthetic=True,
        volume=t2_volume,
        spacing=pixel_spacing,
    )
    if confidence is None and with_confidence:
        confidence = np.stack([np.full((SIZE, SIZE), (z + 1) / (SLICES + 1), np.float32) for z in range(SLICES)])
    if confidence is not None:
        np.save(synthetic_folder / CONFIDENCE_FILE, confidence.astype(np.float32))
    with factory() as session, session.begin():
        study = Study(
            study_instance_uid=study_uid,
            patient_name=patient_name,
            patient_id="PID-0042",
            accession_number=accession,
            study_description="MR BRAIN",
            study_date="20260101",
            calling_ae_title="STORESCU",
        )
        session.add(study)
        t1 = Series(series_instance_uid=t1_uid, modality="MR", series_number=3, series_description="T1 MPRAGE")
        t1.contrast = "T1"
        t2 = Series(series_instance_uid=t2_uid, modality="MR", series_number=1031, series_description="SYNTHETIC T2")
        t2.contrast, t2.is_synthetic = "T2", True
        for series, paths in ((t1, t1_paths), (t2, t2_paths)):
            for path in paths:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
                series.instances.append(
                    Instance(
                        sop_instance_uid=ds.SOPInstanceUID,
                        sop_class_uid=ds.SOPClassUID,
                        transfer_syntax_uid=ExplicitVRLittleEndian,
                        instance_number=int(ds.InstanceNumber),
                        path=str(path),
                        size_bytes=path.stat().st_size,
                    )
                )
            study.series.append(series)
        session.flush()
        for target in (StudyState.STABLE, StudyState.QUEUED, StudyState.IMPUTING, StudyState.WRITTEN):
            transition(session, study, target, "scheduler" if target is not StudyState.WRITTEN else "engine:test")
        transition(session, study, StudyState.AWAITING_REVIEW, "policy:review")
        session.add(
            Job(
                study=study,
                status=JobStatus.DONE,
                inputs={"T1": t1_uid},
                targets=["T2"],
                attempts=1,
                worker="engine:test",
                timings={"load_s": 0.12, "model_s": 1.5, "write_s": 0.3},
                model_name="codebrain-small 0.1.0",
                finished_at=utcnow(),
            )
        )
        session.flush()
        return Seeded(settings, factory, study.id, t1.id, t2.id, study_uid, synthetic_folder)
