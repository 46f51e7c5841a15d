"""Enhanced MR (multi-frame) series read, classified and ordered exactly like the classic series they hold."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from codebrain_node.contrasts import Contrast
from codebrain_node.imaging.series_io import frame_headers, read_dicom_series
from codebrain_node.phantom.case import make_phantom_case
from codebrain_node.phantom.dicom_study import write_dicom_study
from codebrain_node.route.classify import classify_paths, load_rules
from tests.imaging.enhanced_mr import rescale_each_frame, to_enhanced_mr


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    case = make_phantom_case([Contrast.T1, Contrast.T2, Contrast.FLAIR], seed=3, resolution_mm=6.0)
    return write_dicom_study(case.images, tmp_path_factory.mktemp("study"), seed=3)


def classic_files(study: Path, prefix: str) -> list[Path]:
    return sorted(next(p for p in study.iterdir() if p.name.startswith(prefix)).glob("*.dcm"))


def enhanced_file(study: Path, prefix: str, out: Path) -> Path:
    image = to_enhanced_mr([pydicom.dcmread(path) for path in classic_files(study, prefix)])
    path = out / f"{prefix}enhanced.dcm"
    image.save_as(path, enforce_file_format=True)
    return path


def test_enhanced_loadeds_voxel_for_voxel_like_the_classic_one(study: Path, tmp_path: Path) -> None:
    classic_series = read_dicom_series(classic_files(study, "101_"))
    classic_headers, classic = classic_series.headers, classic_series.image
    path = enhanced_file(study, "101_", tmp_path)  # frames stored in shuffled order
    loaded = read_dicom_series([path])
    headers, image = loaded.headers, loaded.image
    assert np.array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(classic).astype(np.float32))
    assert np.allclose(image.GetOrigin(), classic.GetOrigin())
    assert np.allclose(image.GetSpacing(), classic.GetSpacing())
    assert np.allclose(image.GetDirection(), classic.GetDirection())
    assert len(headers) == len(classic_headers)
    for header, classic_header in zip(headers, classic_headers, strict=True):
        assert "PixelData" not in header
        position = [float(v) for v in header.ImagePositionPatient]
        assert position == [float(v) for v in classic_header.ImagePositionPatient]
    enhanced = pydicom.dcmread(path, stop_before_pixels=True)
    assert {h.SOPInstanceUID for h in headers} == {enhanced.SOPInstanceUID}
    assert sorted(int(h.ReferencedFrameNumber) for h in headers) == list(range(1, len(headers) + 1))


def test_frame_headers_carry_the_classic_mr_parameters(study: Path, tmp_path: Path) -> None:
    flair = frame_headers(pydicom.dcmread(enhanced_file(study, "301_", tmp_path), stop_before_pixels=True))
    classic = pydicom.dcmread(classic_files(study, "301_")[0], stop_before_pixels=True)
    first = flair[0]
    assert "IR" in first.ScanningSequence and "SE" in first.ScanningSequence
    assert float(first.InversionTime) == pytest.approx(float(classic.InversionTime))
    assert float(first.EchoTime) == pytest.approx(float(classic.EchoTime))
    assert float(first.RepetitionTime) == pytest.approx(float(classic.RepetitionTime))
    assert first.PixelSpacing == classic.PixelSpacing and first.SeriesDescription.startswith(classic.SeriesDescription)


@pytest.mark.parametrize("prefix", ["101_", "201_", "301_"])
def test_enhanced_series_is_classified_as_its_classic_twin(study: Path, tmp_path: Path, prefix: str) -> None:
    rules = load_rules()
    path = enhanced_file(study, prefix, tmp_path)
    # the conversion appends to the description; strip the name so TR/TE/TI and the sequence must decide
    dataset = pydicom.dcmread(path)
    dataset.SeriesDescription = ""
    dataset.ProtocolName = ""
    dataset.save_as(path)
    classic = [pydicom.dcmread(p) for p in classic_files(study, prefix)]
    for ds in classic:
        ds.SeriesDescription = ""
        ds.ProtocolName = ""
    unnamed = tmp_path / f"{prefix}classic"
    unnamed.mkdir()
    for index, ds in enumerate(classic):
        ds.save_as(unnamed / f"{index}.dcm")
    expected = classify_paths(sorted(unnamed.glob("*.dcm")), rules)
    assert expected.contrast is not None
    assert classify_paths([path], rules).contrast == expected.contrast


def test_frames_in_two_orientations_are_refused(study: Path, tmp_path: Path) -> None:
    dataset = pydicom.dcmread(enhanced_file(study, "101_", tmp_path))
    dataset.PerFrameFunctionalGroupsSequence[0].PlaneOrientationSequence = [pydicom.Dataset()]
    dataset.PerFrameFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient = [
        0,
        1,
        0,
        0,
        0,
        -1,
    ]
    path = tmp_path / "mixed.dcm"
    dataset.save_as(path)
    with pytest.raises(ValueError, match="several stacks"):
        read_dicom_series([path])


def test_each_frame_is_read_in_its_own_rescale(study: Path, tmp_path: Path) -> None:
    enhanced = to_enhanced_mr([pydicom.dcmread(path) for path in classic_files(study, "201_")])
    rescale_each_frame(enhanced)  # frame n: slope n, intercept -10 n
    path = tmp_path / "rescaled.dcm"
    enhanced.save_as(path, enforce_file_format=True)
    stored = pydicom.dcmread(path).pixel_array
    loaded = read_dicom_series([path])
    headers, image = loaded.headers, loaded.image
    volume = sitk.GetArrayFromImage(image)
    for z, header in enumerate(headers):
        number = int(header.ReferencedFrameNumber)
        assert np.array_equal(volume[z], stored[number - 1].astype(np.float32) * number - 10 * number)


@pytest.mark.parametrize("multi_frame", [False, True])
def test_two_images_at_each_position_are_refused_not_stacked(study: Path, tmp_path: Path, multi_frame: bool) -> None:
    """A dual-echo series (classic) or a repeated acquisition (Enhanced MR) would stack into a wrong volume."""
    slices = [pydicom.dcmread(path) for path in classic_files(study, "201_")]
    again = [pydicom.dcmread(path) for path in classic_files(study, "201_")]
    for ds in again:
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        if not multi_frame:
            ds.EchoTime = float(ds.EchoTime) * 3  # the second echo
    if multi_frame:
        paths = [tmp_path / "repeated.dcm"]
        to_enhanced_mr(slices + again).save_as(paths[0], enforce_file_format=True)
        kind = "repeated or dynamic images"
    else:
        paths = []
        for index, ds in enumerate(slices + again):
            paths.append(tmp_path / f"{index}.dcm")
            ds.save_as(paths[-1], enforce_file_format=True)
        kind = "multi-echo series \\(2 echo times\\)"
    with pytest.raises(ValueError, match=f"{kind}: .* share a slice position"):
        read_dicom_series(paths)
