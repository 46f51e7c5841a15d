"""The IHE IOCM rejection note: a valid Key Object Selection Document (dciodvfy), titled (113001, DCM, "Rejected
for Quality Reasons"), in the rejected series' study, listing every rejected instance."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from codebrain_node.write.rejection_note import (
    REJECTED_FOR_QUALITY_REASONS,
    rejection_series_number,
    write_rejection_note,
)
from tests.dicom_fixtures import DCIODVFY, dciodvfy_errors, make_mr_instance

KOS_STORAGE = "1.2.840.10008.5.1.4.1.1.88.59"


@pytest.fixture
def rejected(tmp_path: Path) -> list[Path]:
    """Three instances of one synthetic series, as the node writes them (Synthetic Data = YES)."""
    study_uid, series_uid = generate_uid(), generate_uid()
    paths = []
    for index in range(3):
        dataset = make_mr_instance(study_uid, series_uid, index, rows=8, columns=8)
        dataset.SyntheticData = "YES"
        dataset.SeriesNumber = 1022
        path = tmp_path / "series" / f"{dataset.SOPInstanceUID}.dcm"
        path.parent.mkdir(exist_ok=True)
        dataset.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def test_the_note_rejects_every_instance_of_the_series(tmp_path: Path, rejected: list[Path]) -> None:
    note = write_rejection_note(
        rejected, tmp_path / "notes", series_number=rejection_series_number(1022), description="FLAIR acquired"
    )
    ds = pydicom.dcmread(note.path)
    source = pydicom.dcmread(rejected[0], stop_before_pixels=True)
    assert ds.SOPClassUID == KOS_STORAGE and ds.Modality == "KO"
    assert ds.SOPInstanceUID == note.sop_instance_uid and note.rejected == 3
    title = ds.ConceptNameCodeSequence[0]
    assert (title.CodeValue, title.CodingSchemeDesignator, title.CodeMeaning) == REJECTED_FOR_QUALITY_REASONS
    assert ds.StudyInstanceUID == source.StudyInstanceUID and ds.PatientID == source.PatientID
    assert ds.SeriesInstanceUID != source.SeriesInstanceUID and ds.SeriesNumber == 9022
    (evidence,) = ds.CurrentRequestedProcedureEvidenceSequence
    (series,) = evidence.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == source.SeriesInstanceUID
    listed = {item.ReferencedSOPInstanceUID for item in series.ReferencedSOPSequence}
    assert listed == {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in rejected}
    images = [item for item in ds.ContentSequence if item.ValueType == "IMAGE"]
    assert {item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for item in images} == listed
    texts = [item.TextValue for item in ds.ContentSequence if item.ValueType == "TEXT"]
    assert texts == ["FLAIR acquired"]


@pytest.mark.skipif(not DCIODVFY.exists(), reason="dciodvfy (Debian dicom3tools) is not installed")
def test_the_note_passes_dciodvfy(tmp_path: Path, rejected: list[Path]) -> None:
    note = write_rejection_note(rejected, tmp_path / "notes", series_number=9022, description="replaced")
    assert dciodvfy_errors(note.path) == []


def test_a_note_needs_something_to_reject(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one"):
        write_rejection_note([], tmp_path, series_number=9000, description="nothing")
