"""The review page shows an Enhanced MR input frame by frame, in slice order, like its classic twin."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom

from codebrain_node.contrasts import Contrast
from codebrain_node.phantom.case import make_phantom_case
from codebrain_node.phantom.dicom_study import write_dicom_study
from codebrain_node.review import render
from tests.imaging.enhanced_mr import rescale_each_frame, to_enhanced_mr


def test_multi_frame_series_renders_every_frame_in_slice_order(tmp_path: Path) -> None:
    case = make_phantom_case([Contrast.T2], seed=2, resolution_mm=8.0)
    study = write_dicom_study(case.images, tmp_path / "study", seed=2)
    classic_paths = sorted(next(study.iterdir()).glob("*.dcm"))
    enhanced_path = tmp_path / "enhanced.dcm"
    to_enhanced_mr([pydicom.dcmread(p) for p in classic_paths]).save_as(enhanced_path, enforce_file_format=True)

    classic = render.load_geometry(classic_paths)
    enhanced = render.load_geometry([enhanced_path])
    assert len(enhanced.slices) == len(classic.slices) == len(classic_paths)
    assert sorted(ref.frame for ref in enhanced.slices) == list(range(1, len(classic_paths) + 1))
    for mine, theirs in zip(enhanced.slices, classic.slices, strict=True):
        assert mine.location == theirs.location and theirs.frame is None
        assert np.array_equal(render.read_slice(mine), render.read_slice(theirs))
    assert (enhanced.default_level, enhanced.default_width) == (classic.default_level, classic.default_width)


def test_each_frame_is_shown_in_its_own_rescale(tmp_path: Path) -> None:
    case = make_phantom_case([Contrast.T2], seed=2, resolution_mm=8.0)
    study = write_dicom_study(case.images, tmp_path / "study", seed=2)
    classic_paths = sorted(next(study.iterdir()).glob("*.dcm"))
    enhanced = to_enhanced_mr([pydicom.dcmread(p) for p in classic_paths])
    rescale_each_frame(enhanced)  # frame n: slope n, intercept -10 n
    path = tmp_path / "enhanced.dcm"
    enhanced.save_as(path, enforce_file_format=True)
    stored = pydicom.dcmread(path).pixel_array
    for ref in render.load_geometry([path]).slices:
        expected = stored[ref.frame - 1].astype(np.float32) * ref.frame - 10 * ref.frame
        assert np.array_equal(render.read_slice(ref), expected)


def test_a_single_frame_slice_is_shown_in_its_rescale(tmp_path: Path) -> None:
    case = make_phantom_case([Contrast.T2], seed=2, resolution_mm=8.0)
    study = write_dicom_study(case.images, tmp_path / "study", seed=2)
    path = sorted(next(study.iterdir()).glob("*.dcm"))[3]
    ds = pydicom.dcmread(path)
    ds.RescaleSlope, ds.RescaleIntercept = 2, -5
    ds.save_as(path)
    (ref,) = render.load_geometry([path]).slices
    assert np.array_equal(render.read_slice(ref), ds.pixel_array.astype(np.float32) * 2 - 5)
