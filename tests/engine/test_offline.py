"""``impute`` on a folder: the node's own stages, offline; the result lies on the reference series, flagged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from codebrain_node.config import load_settings
from codebrain_node.contrasts import Contrast
from codebrain_node.imaging.preprocess import prepare_study
from codebrain_node.imaging.series_io import read_dicom_series
from codebrain_node.model import CodeBrain, ModelConfig, save_inference_checkpoint
from codebrain_node.node.offline import impute_folder
from codebrain_node.phantom.case import make_phantom_case
from codebrain_node.phantom.dicom_study import write_dicom_study
from tests.imaging.enhanced_mr import to_enhanced_mr

TINY = {
    "contrasts": ["T1", "T1Gd", "T2", "FLAIR"],
    "naf_dim": 4,
    "width_multiplier": 1,
    "naf_depth": 1,
    "stage_blocks": [0, 0, 1],
    "image_size": 256,
    "confidence": True,
}


PARAMETRIC_MAP_STORAGE = "1.2.840.10008.5.1.4.1.1.30"


def synthetic_mr(out: Path) -> list[Path]:
    """The synthetic MR instances under ``out``, without the confidence map (a Parametric Map) the tiny model's
    confidence output adds beside each series."""
    return sorted(
        p
        for p in out.rglob("*.dcm")
        if pydicom.dcmread(p, stop_before_pixels=True).SOPClassUID != PARAMETRIC_MAP_STORAGE
    )


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
    synthetic = [pydicom.dcmread(p) for p in synthetic_mr(out)]
    reference = [
        pydicom.dcmread(p) for p in sorted(study.rglob("*.dcm")) if p.parent.name.startswith("101_")
    ]  # T1: written first
    assert len(synthetic) == len(reference) > 0
    # the model's confidence goes out beside the series, as one Parametric Map referencing it
    mr_paths = set(synthetic_mr(out))
    (confidence_map,) = [pydicom.dcmread(p) for p in out.rglob("*.dcm") if p not in mr_paths]
    assert confidence_map.SOPClassUID == PARAMETRIC_MAP_STORAGE and int(confidence_map.NumberOfFrames) == len(synthetic)
    assert confidence_map.ReferencedSeriesSequence[0].SeriesInstanceUID == synthetic[0].SeriesInstanceUID
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


def test_enhanced_mr_inputs_give_one_synthetic_instance_per_frame(study: Path, checkpoint: Path, tmp_path: Path):
    """T1 and FLAIR as multi-frame Enhanced MR (as newer scanners send them), T2 classic: the synthetic series lies
    frame for frame on the enhanced T1 and its Source Image Sequence names the frames it came from."""
    folder = tmp_path / "in"
    enhanced: dict[str, pydicom.Dataset] = {}
    for series_dir in sorted(study.iterdir()):
        slices = [pydicom.dcmread(p) for p in sorted(series_dir.glob("*.dcm"))]
        (folder / series_dir.name).mkdir(parents=True)
        if series_dir.name.startswith(("101_", "301_")):
            image = to_enhanced_mr(slices)
            image.save_as(folder / series_dir.name / "enhanced.dcm", enforce_file_format=True)
            enhanced[series_dir.name[:3]] = image
        else:
            for path in sorted(series_dir.glob("*.dcm")):
                (folder / series_dir.name / path.name).write_bytes(path.read_bytes())
    settings = load_settings(environ={"CODEBRAIN_MODEL__WEIGHTS": str(checkpoint)})
    out = tmp_path / "out"
    result = impute_folder(settings, folder, out, synthesize=[Contrast.T1GD])
    assert list(result.written.values()) == [["T1Gd"]]
    synthetic = [pydicom.dcmread(p) for p in synthetic_mr(out)]
    t1 = enhanced["101"]
    assert len(synthetic) == int(t1.NumberOfFrames)
    frame_positions = sorted(
        tuple(float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient)
        for frame in t1.PerFrameFunctionalGroupsSequence
    )
    written = sorted(tuple(float(v) for v in ds.ImagePositionPatient) for ds in synthetic)
    np.testing.assert_allclose(written, frame_positions, atol=1e-3)
    assert synthetic[0].FrameOfReferenceUID == t1.FrameOfReferenceUID
    for ds in synthetic:
        sources = {str(item.ReferencedSOPInstanceUID): item for item in ds.SourceImageSequence}
        assert len(sources) == 3  # T1 and FLAIR (frames of one instance each) and a T2 slice
        frame = sources[str(t1.SOPInstanceUID)]
        referenced = t1.PerFrameFunctionalGroupsSequence[int(frame.ReferencedFrameNumber) - 1]
        position = [float(v) for v in referenced.PlanePositionSequence[0].ImagePositionPatient]
        np.testing.assert_allclose(position, [float(v) for v in ds.ImagePositionPatient], atol=1e-3)
        assert "ReferencedFrameNumber" in sources[str(enhanced["301"].SOPInstanceUID)]
        assert all(
            "ReferencedFrameNumber" not in item
            for uid, item in sources.items()
            if uid not in (str(t1.SOPInstanceUID), str(enhanced["301"].SOPInstanceUID))
        )


def _with_dual_echo_t1(study: Path, folder: Path, keep: tuple[str, ...] = ("101_", "201_", "301_")) -> None:
    """Copy ``study`` with the T1 series turned into a dual-echo one (a second echo at every position)."""
    for series_dir in sorted(study.iterdir()):
        if not series_dir.name.startswith(keep):
            continue
        (folder / series_dir.name).mkdir(parents=True)
        for path in sorted(series_dir.glob("*.dcm")):
            (folder / series_dir.name / path.name).write_bytes(path.read_bytes())
            if series_dir.name.startswith("101_"):
                echo = pydicom.dcmread(path)
                echo.SOPInstanceUID = pydicom.uid.generate_uid()
                echo.EchoTime = float(echo.EchoTime) * 4
                echo.save_as(folder / series_dir.name / f"echo2-{path.name}", enforce_file_format=True)


def test_an_unusable_input_is_left_out_and_the_rest_still_used(
    study: Path, checkpoint: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    _with_dual_echo_t1(study, tmp_path / "in")
    settings = load_settings(environ={"CODEBRAIN_MODEL__WEIGHTS": str(checkpoint)})
    with caplog.at_level("WARNING", logger="codebrain_node.engine.worker"):
        result = impute_folder(settings, tmp_path / "in", tmp_path / "out", synthesize=[Contrast.T1GD])
    assert list(result.studies.values()) == ["exported"] and list(result.written.values()) == [["T1Gd"]]
    skipped = [r.getMessage() for r in caplog.records if "input left out" in r.getMessage()]
    assert len(skipped) == 1 and "T1 series #101: multi-echo series (2 echo times)" in skipped[0]
    written = pydicom.dcmread(synthetic_mr(tmp_path / "out")[0])
    assert "T1 series" not in written.DerivationDescription and "T2 series" in written.DerivationDescription
    t2 = [pydicom.dcmread(p) for p in next(study.glob("201_*")).glob("*.dcm")]  # the reference now
    synthetic = [pydicom.dcmread(p) for p in synthetic_mr(tmp_path / "out")]
    assert sorted(float(ds.ImagePositionPatient[2]) for ds in synthetic) == pytest.approx(
        sorted(float(ds.ImagePositionPatient[2]) for ds in t2)
    )


def test_a_study_with_no_usable_input_fails_at_once_with_the_reason(
    study: Path, checkpoint: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    _with_dual_echo_t1(study, tmp_path / "in", keep=("101_",))
    settings = load_settings(environ={"CODEBRAIN_MODEL__WEIGHTS": str(checkpoint)})
    with caplog.at_level("WARNING", logger="codebrain_node.engine.worker"):
        result = impute_folder(settings, tmp_path / "in", tmp_path / "out", synthesize=[Contrast.T1GD])
    assert list(result.studies.values()) == ["failed"]
    assert not list((tmp_path / "out").rglob("*.dcm"))
    failures = [r.getMessage() for r in caplog.records if "failed" in r.getMessage()]
    assert len(failures) == 1  # not retried: the same files would fail the same way
    assert "T1 series #101: multi-echo series (2 echo times)" in failures[0]


def test_a_reference_with_a_missing_slice_gets_a_synthetic_slice_on_each_acquired_one(
    study: Path, checkpoint: Path, tmp_path: Path
):
    """One T1 instance never arrived: the synthetic series has a slice on each acquired T1 slice, and the other
    series are sampled where the T1 slices really lie (as for the complete study), not on a stretched grid."""
    t1, t2 = (
        sorted(
            next(study.glob(f"{prefix}*")).glob("*.dcm"),
            key=lambda p: float(pydicom.dcmread(p).ImagePositionPatient[2]),
        )
        for prefix in ("101_", "201_")
    )
    kept = t1[:12] + t1[13:]
    folder = tmp_path / "in"
    for path in [*kept, *t2]:
        (folder / path.parent.name).mkdir(parents=True, exist_ok=True)
        (folder / path.parent.name / path.name).write_bytes(path.read_bytes())
    settings = load_settings(environ={"CODEBRAIN_MODEL__WEIGHTS": str(checkpoint)})
    impute_folder(settings, folder, tmp_path / "out", synthesize=[Contrast.T1GD])
    written = sorted(float(pydicom.dcmread(p).ImagePositionPatient[2]) for p in synthetic_mr(tmp_path / "out"))
    assert written == pytest.approx([float(pydicom.dcmread(p).ImagePositionPatient[2]) for p in kept])

    def t2_on_t1_grid(t1_files: list[Path]) -> np.ndarray:
        volumes = {Contrast.T1: read_dicom_series(t1_files).image, Contrast.T2: read_dicom_series(t2).image}
        prepared = prepare_study(volumes, Contrast.T1, size=64)
        return prepared.arrays[prepared.contrasts.index(Contrast.T2)]

    np.testing.assert_allclose(t2_on_t1_grid(kept), t2_on_t1_grid(t1), atol=0.01)
