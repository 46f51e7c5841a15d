"""A phantom DICOM study reads back with pydicom and highdicom with the asked geometry and plausible headers."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from codebrain_node.contrasts import Contrast
from codebrain_node.imaging.series_io import read_dicom_files, read_series
from codebrain_node.phantom import PhantomCase, SeriesLayout, write_dicom_study
from codebrain_node.phantom.dicom_study import read_study_headers


def _series(folder: Path) -> dict[str, list[pydicom.Dataset]]:
    by_description: dict[str, list[pydicom.Dataset]] = {}
    for path in sorted(folder.rglob("*.dcm")):
        ds = pydicom.dcmread(path)
        by_description.setdefault(ds.SeriesDescription, []).append(ds)
    return by_description


@pytest.fixture(scope="module")
def study(small_case: PhantomCase, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("study")
    layouts = {
        Contrast.T2: SeriesLayout("sagittal", matrix=(96, 80), slice_thickness=4.0),
        Contrast.FLAIR: SeriesLayout("axial", matrix=(64, 64), slice_thickness=5.0),
    }
    return write_dicom_study(
        small_case.images, out, sequences=small_case.sequences, layouts=layouts, omit=[Contrast.PD], seed=21
    )


def test_series_geometry_as_asked(study: Path, small_case: PhantomCase) -> None:
    series = _series(study)
    assert len(series) == 4  # PD left out
    assert len({ds.StudyInstanceUID for group in series.values() for ds in group}) == 1
    assert len({ds.FrameOfReferenceUID for group in series.values() for ds in group}) == 1
    by_contrast = {}
    for description, datasets in series.items():
        lowered = description.lower()
        if "flair" in lowered or "tirm" in lowered:
            by_contrast[Contrast.FLAIR] = datasets
        elif "t2" in lowered:
            by_contrast[Contrast.T2] = datasets
        elif any(k in lowered for k in ("km", "gad", "+c", "post")):
            by_contrast[Contrast.T1GD] = datasets
        else:
            by_contrast[Contrast.T1] = datasets
    assert set(by_contrast) == {Contrast.T1, Contrast.T1GD, Contrast.T2, Contrast.FLAIR}

    t2 = hd.get_volume_from_series(by_contrast[Contrast.T2])
    first = by_contrast[Contrast.T2][0]
    assert (first.Rows, first.Columns) == (96, 80)
    assert [round(float(v), 3) for v in first.ImageOrientationPatient] == [0, 1, 0, 0, 0, -1]
    assert float(first.SliceThickness) == pytest.approx(4.0) and float(first.SpacingBetweenSlices) == pytest.approx(4.0)
    assert t2.spacing[0] == pytest.approx(4.0)  # highdicom: slice axis first
    assert t2.spatial_shape[1:] == (96, 80)

    flair = hd.get_volume_from_series(by_contrast[Contrast.FLAIR])
    assert flair.spatial_shape[1:] == (64, 64) and flair.spacing[0] == pytest.approx(5.0)
    assert by_contrast[Contrast.FLAIR][0].ScanningSequence == ["SE", "IR"]
    assert float(by_contrast[Contrast.FLAIR][0].InversionTime) == pytest.approx(
        small_case.sequences[Contrast.FLAIR].inversion_time, abs=0.01
    )

    t1 = hd.get_volume_from_series(by_contrast[Contrast.T1])
    source = small_case.images[Contrast.T1]
    assert t1.spatial_shape == tuple(reversed(source.GetSize()))
    assert np.allclose(t1.spacing, source.GetSpacing())
    assert "ContrastBolusAgent" in by_contrast[Contrast.T1GD][0]
    assert all("ContrastBolusAgent" not in group[0] for c, group in by_contrast.items() if c != Contrast.T1GD)
    assert float(by_contrast[Contrast.T1][0].RepetitionTime) == pytest.approx(
        small_case.sequences[Contrast.T1].repetition_time, abs=0.01
    )


def test_unchanged_series_reads_back_voxel_for_voxel(study: Path, small_case: PhantomCase) -> None:
    t1_folder = next(p for p in sorted(study.iterdir()) if p.name.startswith("101_"))
    image = read_series(t1_folder)
    source = small_case.images[Contrast.T1]
    assert np.array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(source))
    assert np.allclose(image.GetOrigin(), source.GetOrigin(), atol=1e-4)
    assert np.allclose(image.GetDirection(), source.GetDirection(), atol=1e-6)
    shuffled = list(t1_folder.glob("*.dcm"))
    random.Random(0).shuffle(shuffled)
    assert np.array_equal(sitk.GetArrayFromImage(read_dicom_files(shuffled)), sitk.GetArrayFromImage(source))


def test_resampled_series_keeps_the_anatomy_in_place(study: Path, small_case: PhantomCase) -> None:
    sagittal = read_series(next(p for p in sorted(study.iterdir()) if p.name.startswith("301_")))
    back = sitk.Resample(sagittal, small_case.images[Contrast.T2], sitk.Transform(), sitk.sitkLinear, 0.0)
    a = sitk.GetArrayFromImage(back).astype(float)
    b = sitk.GetArrayFromImage(small_case.images[Contrast.T2]).astype(float)
    inside = (a > 0) & (b > 0)
    assert np.corrcoef(a[inside], b[inside])[0, 1] > 0.8


def test_same_seed_same_uids_and_several_series_need_a_choice(small_case: PhantomCase, tmp_path: Path) -> None:
    images = {
        Contrast.T1: small_case.images[Contrast.T1][:, :, :6],
        Contrast.T2: small_case.images[Contrast.T2][:, :, :6],
    }
    first = write_dicom_study(images, tmp_path / "a", seed=4)
    second = write_dicom_study(images, tmp_path / "b", seed=4)
    uids_a = [ds.SOPInstanceUID for ds in read_study_headers(first)]
    uids_b = [ds.SOPInstanceUID for ds in read_study_headers(second)]
    assert uids_a == uids_b and len(set(uids_a)) == len(uids_a) == 12
    merged = tmp_path / "merged"
    merged.mkdir()
    for path in first.rglob("*.dcm"):
        shutil.copy(path, merged / f"{path.parent.name}-{path.name}")
    with pytest.raises(ValueError, match="holds 2 series"):
        read_series(merged)
