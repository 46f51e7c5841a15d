"""Series read for the engine: every transfer syntax the receiver accepts voxel for voxel; missing or misplaced
slices handled on a regular grid or refused."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, JPEGLSLossless, RLELossless

from codebrain_node.contrasts import Contrast
from codebrain_node.imaging.series_io import UnusableSeriesError, read_dicom_series
from codebrain_node.phantom.case import make_phantom_case
from codebrain_node.phantom.dicom_study import write_dicom_study
from tests.imaging.enhanced_mr import to_enhanced_mr


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    case = make_phantom_case([Contrast.T2], seed=4, resolution_mm=8.0)
    study = write_dicom_study(case.images, tmp_path_factory.mktemp("study"), seed=4)
    return sorted(next(study.iterdir()).glob("*.dcm"))


def recoded(dataset: pydicom.Dataset, syntax: UID) -> pydicom.Dataset:
    if syntax.is_compressed:
        dataset.compress(syntax)
    else:
        dataset.file_meta.TransferSyntaxUID = syntax
    return dataset


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, DeflatedExplicitVRLittleEndian])
def test_classic_series_in_each_syntax_reads_like_the_original(series: list[Path], tmp_path: Path, syntax: UID):
    original = read_dicom_series(series).image
    paths = []
    for index, path in enumerate(series):
        target = tmp_path / f"{index}.dcm"
        recoded(pydicom.dcmread(path), syntax).save_as(target, enforce_file_format=True)
        paths.append(target)
    loaded = read_dicom_series(paths)
    headers, image = loaded.headers, loaded.image
    assert str(pydicom.dcmread(paths[0]).file_meta.TransferSyntaxUID) == syntax
    assert np.array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(original))
    assert len(headers) == len(series)


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless])
def test_compressed_enhanced_mr_reads_like_the_original(series: list[Path], tmp_path: Path, syntax: UID) -> None:
    original = read_dicom_series(series).image
    path = tmp_path / "enhanced.dcm"
    recoded(to_enhanced_mr([pydicom.dcmread(p) for p in series]), syntax).save_as(path, enforce_file_format=True)
    image = read_dicom_series([path]).image
    assert np.array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(original).astype(np.float32))


def test_a_missing_slice_is_interpolated_on_the_regular_grid(series: list[Path]) -> None:
    files = series
    complete = read_dicom_series(files)
    gapped = read_dicom_series(files[:10] + files[11:])  # one instance never arrived
    assert gapped.image.GetDepth() == complete.image.GetDepth()
    assert gapped.slice_index == [*range(10), *range(11, len(files))]
    assert np.allclose(gapped.image.GetSpacing(), complete.image.GetSpacing())
    assert np.allclose(gapped.image.GetOrigin(), complete.image.GetOrigin())
    for header, z in zip(gapped.headers, gapped.slice_index, strict=True):  # every image lies where it was acquired
        placed = gapped.image.TransformIndexToPhysicalPoint((0, 0, z))
        assert np.allclose(placed, [float(v) for v in header.ImagePositionPatient], atol=1e-3)
    volume, truth = sitk.GetArrayFromImage(gapped.image), sitk.GetArrayFromImage(complete.image)
    assert np.array_equal(volume[gapped.slice_index], truth[gapped.slice_index])
    assert np.allclose(volume[10], (truth[9].astype(np.float32) + truth[11]) / 2, atol=0.5)


def rewritten(series: list[Path], folder: Path, change: Callable[[int, pydicom.Dataset], None]) -> list[Path]:
    """The series copied to ``folder`` with ``change(index, dataset)`` applied to each slice."""
    paths = []
    for index, path in enumerate(series):
        dataset = pydicom.dcmread(path)
        change(index, dataset)
        paths.append(folder / f"{index}.dcm")
        dataset.save_as(paths[-1])
    return paths


def test_slices_off_a_regular_spacing_are_refused(series: list[Path], tmp_path: Path) -> None:
    def second_package(index: int, ds: pydicom.Dataset) -> None:  # 1.5 slices further on
        if index >= 20:
            ds.ImagePositionPatient[2] = float(ds.ImagePositionPatient[2]) + 1.5 * float(ds.SpacingBetweenSlices)

    with pytest.raises(UnusableSeriesError, match="irregular slice spacing"):
        read_dicom_series(rewritten(series, tmp_path, second_package))


def test_a_classic_series_in_two_orientations_is_refused(series: list[Path], tmp_path: Path) -> None:
    def reformatted(index: int, ds: pydicom.Dataset) -> None:  # one image in another plane, in the same series
        if index == 3:
            ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]

    with pytest.raises(UnusableSeriesError, match="several stacks"):
        read_dicom_series(rewritten(series, tmp_path, reformatted))


def test_a_classic_series_with_images_of_two_sizes_is_refused(series: list[Path], tmp_path: Path) -> None:
    def half_matrix(index: int, ds: pydicom.Dataset) -> None:  # one image at another matrix
        if index == 5:
            ds.PixelData = ds.pixel_array[::2, ::2].copy().tobytes()
            ds.Rows, ds.Columns = ds.Rows // 2, ds.Columns // 2

    with pytest.raises(UnusableSeriesError, match="images of different sizes"):
        read_dicom_series(rewritten(series, tmp_path, half_matrix))
