"""engine.brain_extraction = "deepbet": a skull-on study's synthetic series shows the brain only, zero outside it
(never grey, never scalp), and the job says what the extraction did."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from codebrain_node.config import load_settings
from codebrain_node.contrasts import Contrast
from codebrain_node.imaging.series_io import read_dicom_files, read_series
from codebrain_node.model import CodeBrain, ModelConfig, save_inference_checkpoint
from codebrain_node.node.offline import impute_folder
from codebrain_node.phantom.case import make_phantom_case
from codebrain_node.phantom.dicom_study import write_dicom_study
from tests.engine.test_offline import TINY, synthetic_mr

pytestmark = pytest.mark.skipif(importlib.util.find_spec("deepbet") is None, reason="deepbet is not installed")


def test_synthetic_series_is_brain_only_on_a_skull_on_study(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    case = make_phantom_case([Contrast.T1, Contrast.T2, Contrast.FLAIR], seed=4, resolution_mm=4.0, skull=True)
    study = write_dicom_study(case.images, tmp_path / "study", seed=4)
    checkpoint = save_inference_checkpoint(
        CodeBrain(ModelConfig.from_dict(TINY)).eval(), tmp_path / "tiny.safetensors", {"model_name": "tiny-test"}
    )
    runs = {}
    for method in ("off", "deepbet"):
        settings = load_settings(
            environ={"CODEBRAIN_MODEL__WEIGHTS": str(checkpoint), "CODEBRAIN_ENGINE__BRAIN_EXTRACTION": method}
        )
        with caplog.at_level(logging.INFO, logger="codebrain_node.engine.worker"):
            impute_folder(settings, study, tmp_path / method, synthesize=[Contrast.T1GD])
        paths = synthetic_mr(tmp_path / method)
        assert paths
        runs[method] = sitk.GetArrayFromImage(read_dicom_files(paths))
    assert "brain extraction: deepbet" in caplog.text

    reference = read_series(next(p for p in sorted(study.iterdir()) if p.name.startswith("101_")))
    intracranial = sitk.Resample(case.intracranial, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    brain = sitk.GetArrayFromImage(intracranial) > 0
    near_brain = sitk.GetArrayFromImage(sitk.BinaryDilate(intracranial, [2, 2, 2])) > 0
    head = sitk.GetArrayFromImage(reference) > 0
    outside = head & ~near_brain  # scalp, skull, face, neck
    assert (runs["off"][outside] > 0).mean() > 0.5  # without extraction the model paints the whole head
    # with it, zero outside deepbet's brain, which strays past the phantom's own (dilated) one in a few dozen
    # voxels at the skull base (its Dice against it: 0.97)
    assert (runs["deepbet"][outside] > 0).mean() < 0.01
    assert not runs["deepbet"][~head].any()  # air stays zero too
    assert (runs["deepbet"][brain] > 0).mean() > 0.95
    first = pydicom.dcmread(synthetic_mr(tmp_path / "deepbet")[0])
    assert first.SyntheticData == "YES" and len(synthetic_mr(tmp_path / "deepbet")) == reference.GetSize()[2]
    assert np.array_equal(runs["deepbet"].shape, runs["off"].shape)
