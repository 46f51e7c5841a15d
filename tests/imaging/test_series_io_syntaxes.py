"""Series the receiver accepts in compressed or unusual transfer syntaxes read back voxel for voxel in the engine."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, JPEGLSLossless, RLELossless

from codebrain_node.contrasts import Contrast
from codebrain_node.imaging.series_io import read_dicom_slices
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
    _, original = read_dicom_slices(series)
    paths = []
    for index, path in enumerate(series):
        target = tmp_path / f"{index}.dcm"
        recoded(pydicom.dcmread(path), syntax).save_as(target, enforce_file_format=True)
        paths.append(target)
    headers, image = read_dicom_slices(paths)
    assert str(pydicom.dcmread(paths[0]).file_meta.TransferSyntaxUID) == syntax
    assert np.array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(original))
    assert len(headers) == len(series)


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless])
def test_compressed_enhanced_mr_reads_like_the_original(series: list[Path], tmp_path: Path, syntax: UID) -> None:
    _, original = read_dicom_slices(series)
    path = tmp_path / "enhanced.dcm"
    recoded(to_enhanced_mr([pydicom.dcmread(p) for p in series]), syntax).save_as(path, enforce_file_format=True)
    _, image = read_dicom_slices([path])
    assert np.array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(original).astype(np.float32))
