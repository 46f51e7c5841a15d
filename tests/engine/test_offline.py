"""``impute`` on a folder: the node's own stages, offline; the result lies on the reference series, flagged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from codebrain_node.config import load_settings
from codebrain_node.contrasts import Contrast
from codebrain_node.model import CodeBrain, ModelConfig, save_inference_checkpoint
from codebrain_node.offline import impute_folder
from codebrain_node.phantom.case import make_phantom_case
from codebrain_node.phantom.dicom_study import write_dicom_study

TINY = {
    "contrasts": ["T1", "T1Gd", "T2", "FLAIR"],
    "naf_dim": 4,
    "width_multiplier": 1,
    "naf_depth": 1,
    "stage_blocks": [0, 0, 1],
    "image_size": 256,
    "confidence": True,
}


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("study")
    case = make_phantom_case([Contrast.T1, Contrast.T2, Contrast.FLAIR], seed=3, resolution_mm=4.0)
    return write_dicom_study(case.images, folder, seed=3)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    return save_inference_checkpoint(
        CodeBrain(ModelConfig.from_dict(TINY)).eval(), path, {"model_name": "tiny-test", "model_version": "7"}
    )


def test_impute_folder_writes_flagged_series_on_the_reference_grid(study: Path, checkpoint: Path, tmp_path: Path):
    settings = load_settings(environ={"CODEBRAIN_MODEL__WEIGHTS": str(checkpoint)})
    out = tmp_path / "out"
    result = impute_folder(settings, study, out, synthesize=[Contrast.T1GD])
    assert list(result.written.values()) == [["T1Gd"]]
    assert list(result.studies.values()) == ["exported"]
    synthetic = [pydicom.dcmread(p) for p in sorted(out.rglob("*.dcm"))]
    reference = [
        pydicom.dcmread(p) for p in sorted(study.rglob("*.dcm")) if p.parent.name.startswith("101_")
    ]  # T1: written first
    assert len(synthetic) == len(reference) > 0
    first = synthetic[0]
    assert first.SyntheticData == "YES"
    assert list(first.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert "SYNTHETIC T1Gd" in first.SeriesDescription and "tiny-test" in first.SeriesDescription
    assert first.StudyInstanceUID == reference[0].StudyInstanceUID
    assert first.SeriesInstanceUID != reference[0].SeriesInstanceUID
    assert first.FrameOfReferenceUID == reference[0].FrameOfReferenceUID
    positions = sorted(tuple(float(v) for v in ds.ImagePositionPatient) for ds in reference)
    written = sorted(tuple(float(v) for v in ds.ImagePositionPatient) for ds in synthetic)
    np.testing.assert_allclose(written, positions, atol=1e-3)
    assert (first.Rows, first.Columns) == (reference[0].Rows, reference[0].Columns)
    np.testing.assert_allclose([float(v) for v in first.PixelSpacing], [float(v) for v in reference[0].PixelSpacing])


def test_folder_with_nothing_to_do_writes_nothing(tmp_path: Path, checkpoint: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.txt").write_text("not DICOM")
    settings = load_settings(environ={"CODEBRAIN_MODEL__WEIGHTS": str(checkpoint)})
    result = impute_folder(settings, tmp_path / "in", tmp_path / "out")
    assert result.studies == {} and result.skipped_files == ["notes.txt: InvalidDicomError"]
