"""Every kind of object the node writes passes dciodvfy (PS3.3 IOD checks: every Type 1, 2 and required 2C
attribute present, values valid), even when the series it was made from has only the attributes needed to read it:
the synthetic MR image, the model's confidence in it as a Parametric Map, and the IOCM rejection note (Key Object
Selection Document) that withdraws either. The one error allowed is dciodvfy's own: its dictionary predates
Synthetic Data (0008,001C) (``dciodvfy_errors`` drops it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from reference_mr import acquired_series, minimal_series

from codebrain_node.contrasts import Contrast
from codebrain_node.imaging.series_io import read_dicom_series
from codebrain_node.write.parametric_map import write_confidence_map
from codebrain_node.write.rejection_note import rejection_series_number, write_rejection_note
from codebrain_node.write.synthetic_series import WrittenSeries, write_synthetic_series
from tests.dicom_fixtures import DCIODVFY, dciodvfy_errors

pytestmark = pytest.mark.skipif(not DCIODVFY.exists(), reason="dciodvfy (Debian dicom3tools) is not installed")


def _write_from(reference: list[pydicom.Dataset], folder: Path) -> WrittenSeries:
    """Save ``reference`` as received files, read them as the engine does and write a synthetic T1Gd on them."""
    folder.mkdir()
    for index, dataset in enumerate(reference):
        dataset.save_as(folder / f"{index}.dcm", enforce_file_format=True)
    series = read_dicom_series(sorted(folder.glob("*.dcm")))
    pixels = np.random.default_rng(3).uniform(0, 3000, size=(len(series.headers), *reference[0].pixel_array.shape))
    return write_synthetic_series(
        series.headers,
        pixels,
        Contrast.T1GD,
        model_name="codebrain-small",
        model_version="0.1.0",
        sources={Contrast.T1: series.headers},
        out_dir=folder.parent / "synthetic",
        series_number=1021,
    )


@pytest.fixture(scope="module")
def from_minimal(tmp_path_factory: pytest.TempPathFactory) -> WrittenSeries:
    return _write_from(minimal_series(), tmp_path_factory.mktemp("minimal") / "received")


def test_synthetic_mr_from_a_minimal_reference_validates(from_minimal: WrittenSeries) -> None:
    for path in from_minimal.paths:
        assert dciodvfy_errors(path) == [], path


def test_what_the_minimal_reference_lacked_is_filled_not_invented(from_minimal: WrittenSeries) -> None:
    """Type 2 and 2C present and empty; one new Frame of Reference for the series; no made-up scanner."""
    datasets = [pydicom.dcmread(path, stop_before_pixels=True) for path in from_minimal.paths]
    for ds in datasets:
        for keyword in ("PatientPosition", "PatientName", "PatientID", "StudyDate", "AccessionNumber"):
            assert keyword in ds and ds[keyword].value in ("", None), keyword
        (synthesizer,) = ds.ContributingEquipmentSequence
        assert synthesizer.PurposeOfReferenceCodeSequence[0].CodeValue == "109100"
    frames_of_reference = {str(ds.FrameOfReferenceUID) for ds in datasets}
    assert frames_of_reference == {from_minimal.frame_of_reference_uid}


def test_synthetic_mr_from_a_full_reference_validates_and_keeps_its_values(tmp_path: Path) -> None:
    reference = acquired_series("t1_se_tra", slices=4)
    written = _write_from(reference, tmp_path / "received")
    for path in written.paths:
        assert dciodvfy_errors(path) == [], path
    first = pydicom.dcmread(written.paths[0], stop_before_pixels=True)
    assert first.PatientPosition == "HFS"
    assert first.FrameOfReferenceUID == reference[0].FrameOfReferenceUID
    assert [item.Manufacturer for item in first.ContributingEquipmentSequence] == ["codebrain-node", "SIEMENS"]


def test_rejection_note_of_a_series_from_a_minimal_reference_validates(
    from_minimal: WrittenSeries, tmp_path: Path
) -> None:
    note = write_rejection_note(
        from_minimal.paths,
        tmp_path / "notes",
        series_number=rejection_series_number(from_minimal.series_number),
        description="Synthetic T1Gd series 1021 superseded: T1Gd acquired",
    )
    assert note.rejected == len(from_minimal.paths)
    assert dciodvfy_errors(note.path) == []


def test_confidence_map_of_a_series_from_a_minimal_reference_validates(
    from_minimal: WrittenSeries, tmp_path: Path
) -> None:
    """The Parametric Map takes patient, study and frame of reference from the synthetic series (PS3.3 A.75), so
    what the minimal reference lacked is as complete there; its rejection note validates too."""
    shape = (len(from_minimal.paths), *pydicom.dcmread(from_minimal.paths[0]).pixel_array.shape)
    confidence = np.random.default_rng(5).uniform(0, 1, size=shape)
    written = write_confidence_map(
        from_minimal,
        confidence,
        tmp_path / "maps",
        model_name="codebrain-small",
        model_version="0.1.0",
        series_number=5021,
    )
    assert dciodvfy_errors(written.instance.path) == []
    assert written.frame_of_reference_uid == from_minimal.frame_of_reference_uid
    note = write_rejection_note(
        [written.instance.path], tmp_path / "notes", series_number=9021, description="Confidence of series 1021"
    )
    assert dciodvfy_errors(note.path) == []
