"""The synthetic series: every synthetic flag, the reference geometry, read back by pydicom/highdicom, dciodvfy."""

from __future__ import annotations

import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from reference_mr import FRAME_OF_REFERENCE_UID, STUDY_UID, acquired_series

from codebrain_node.contrasts import Contrast
from codebrain_node.route.classify import classify_paths, load_rules
from codebrain_node.write.synthetic_series import series_description, slice_centre, write_synthetic_series
from tests.dicom_fixtures import DCIODVFY, dciodvfy_errors

DCENTVFY = Path("/usr/bin/dcentvfy")


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory):
    """A synthetic T1Gd on an oblique T1 reference, from T1 and a T2 on a different grid."""
    reference = acquired_series("t1_se_tra", slices=6, oblique_deg=12.3, series_number=2)
    t2 = acquired_series("t2_tse_tra", slices=9, rows=20, columns=20, step=2.0, series_number=3, tr=4000, te=90)
    rng = np.random.default_rng(7)
    pixels = rng.uniform(0, 3000, size=(6, 16, 12))
    pixels[0, 0, 0] = -20.0  # out of range: clipped, never wrapped
    pixels[1, 0, 0] = np.nan
    confidence = np.full((6, 16, 12), 0.8)
    out_dir = tmp_path_factory.mktemp("synthetic")
    series = write_synthetic_series(
        reference,
        pixels,
        Contrast.T1GD,
        model_name="codebrain-small",
        model_version="0.1.0",
        sources={Contrast.T1: reference, Contrast.T2: t2},
        out_dir=out_dir,
        series_number=1021,
        confidence=confidence,
    )
    return {
        "reference": reference,
        "t2": t2,
        "pixels": pixels,
        "paths": series.paths,
        "series": series,
        "out_dir": out_dir,
    }


def test_the_writer_reports_what_it_wrote(written) -> None:
    """The database records these values without reading the files back: they must be the files' own."""
    series = written["series"]
    assert series.contrast is Contrast.T1GD and series.series_number == 1021
    for instance in series.instances:
        ds = pydicom.dcmread(instance.path, stop_before_pixels=True)
        assert ds.SeriesInstanceUID == series.series_instance_uid
        assert ds.SeriesDescription == series.series_description
        assert ds.FrameOfReferenceUID == series.frame_of_reference_uid
        assert (ds.SOPInstanceUID, ds.SOPClassUID, ds.InstanceNumber) == (
            instance.sop_instance_uid,
            instance.sop_class_uid,
            instance.instance_number,
        )
        assert ds.file_meta.TransferSyntaxUID == instance.transfer_syntax_uid
        assert instance.path.stat().st_size == instance.size_bytes


def test_one_instance_per_reference_slice_in_one_new_series(written) -> None:
    paths, reference = written["paths"], written["reference"]
    assert len(paths) == len(reference)
    datasets = [pydicom.dcmread(path) for path in paths]
    series_uids = {ds.SeriesInstanceUID for ds in datasets}
    assert len(series_uids) == 1 and reference[0].SeriesInstanceUID not in series_uids
    assert len({ds.SOPInstanceUID for ds in datasets}) == len(datasets)
    assert {ds.SOPInstanceUID for ds in datasets}.isdisjoint(ds.SOPInstanceUID for ds in reference)
    assert all(path.parent == written["out_dir"] / datasets[0].SeriesInstanceUID for path in paths)
    assert not list(written["out_dir"].rglob("*.part"))
    assert [ds.InstanceNumber for ds in datasets] == list(range(1, len(paths) + 1))
    assert {ds.SOPClassUID for ds in datasets} == {pydicom.uid.MRImageStorage}
    assert {str(ds.file_meta.TransferSyntaxUID) for ds in datasets} == {pydicom.uid.ExplicitVRLittleEndian}


def test_every_synthetic_flag_is_set(written) -> None:
    ds = pydicom.dcmread(written["paths"][2])
    assert ds.SyntheticData == "YES"
    assert ds[0x0008, 0x001C].VR == "CS"
    assert list(ds.ImageType) == ["DERIVED", "SECONDARY", "OTHER"]
    assert ds.SeriesDescription == "SYNTHETIC T1Gd (codebrain-small)"
    assert ds.SeriesNumber == 1021
    assert ds.BurnedInAnnotation == "NO"
    assert "SYNTHETIC" in ds.ImageComments and "not for primary diagnosis" in ds.ImageComments
    assert "0.800" in ds.ImageComments  # the confidence summary
    for text in ("codebrain-small", "0.1.0", "T1 series", "T2 series", written["t2"][0].SeriesInstanceUID):
        assert text in ds.DerivationDescription
    (code,) = ds.DerivationCodeSequence
    assert (code.CodeValue, code.CodingSchemeDesignator) == ("123110", "DCM")
    synthesizer, scanner = ds.ContributingEquipmentSequence
    purpose = synthesizer.PurposeOfReferenceCodeSequence[0]
    assert (purpose.CodeValue, purpose.CodingSchemeDesignator, purpose.CodeMeaning) == (
        "109100",
        "DCM",
        "Synthesizing Equipment",
    )
    assert synthesizer.Manufacturer == "codebrain-node" and synthesizer.ManufacturerModelName == "codebrain-small"
    assert any("0.1.0" in version for version in synthesizer.SoftwareVersions)
    assert scanner.PurposeOfReferenceCodeSequence[0].CodeValue == "109101" and scanner.Manufacturer == "SIEMENS"
    assert ds.Manufacturer == "codebrain-node"
    assert "ContrastBolusAgent" not in ds  # no agent was given to make this image
    assert ds.BodyPartExamined == "HEAD" and "Laterality" not in ds


def test_source_images_reference_the_nearest_slice_of_each_input(written) -> None:
    reference, t2 = written["reference"], written["t2"]
    for index, path in enumerate(written["paths"]):
        ds = pydicom.dcmread(path)
        referenced = [item.ReferencedSOPInstanceUID for item in ds.SourceImageSequence]
        assert len(referenced) == 2
        assert referenced[0] == reference[index].SOPInstanceUID  # the reference slice itself
        centre = slice_centre(reference[index])
        nearest_t2 = min(t2, key=lambda s: np.linalg.norm(slice_centre(s) - centre))
        assert referenced[1] == nearest_t2.SOPInstanceUID
        for item in ds.SourceImageSequence:
            purpose = item.PurposeOfReferenceCodeSequence[0]
            assert (purpose.CodeValue, purpose.CodingSchemeDesignator) == ("121322", "DCM")
            assert item.ReferencedSOPClassUID == pydicom.uid.MRImageStorage


def test_geometry_patient_and_study_from_the_reference(written) -> None:
    for ref, path in zip(written["reference"], written["paths"], strict=True):
        ds = pydicom.dcmread(path)
        for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
            assert np.allclose(np.array(ds[keyword].value, float), np.array(ref[keyword].value, float), atol=1e-6)
        assert float(ds.SliceThickness) == float(ref.SliceThickness)
        assert float(ds.SpacingBetweenSlices) == pytest.approx(3.3, abs=1e-6)
        assert (ds.Rows, ds.Columns) == (ref.Rows, ref.Columns)
        assert ds.FrameOfReferenceUID == FRAME_OF_REFERENCE_UID
        assert ds.StudyInstanceUID == STUDY_UID
        for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID"):
            assert ds[keyword].value == ref[keyword].value
        assert ds.SpecificCharacterSet == "ISO_IR 100"
        for element in ds.iterall():
            if element.VR == "DS":
                values = element.value if element.VM > 1 else [element.value]
                assert all(len(str(v)) <= 16 for v in values), element


def test_pixels_are_unsigned_16_bit_with_a_window_from_the_data(written) -> None:
    datasets = [pydicom.dcmread(path) for path in written["paths"]]
    stored = np.stack([ds.pixel_array for ds in datasets])
    assert stored.dtype == np.uint16
    expected = np.clip(np.rint(np.nan_to_num(written["pixels"], nan=0.0)), 0, 65535)
    assert np.array_equal(stored, expected)
    assert stored[0, 0, 0] == 0 and stored[1, 0, 0] == 0
    ds = datasets[0]
    assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (16, 16, 15, 0)
    low, high = float(ds.WindowCenter) - float(ds.WindowWidth) / 2, float(ds.WindowCenter) + float(ds.WindowWidth) / 2
    assert 0 <= low < 100 and 2900 < high <= 3000
    assert len({(str(d.WindowCenter), str(d.WindowWidth)) for d in datasets}) == 1


def test_reads_back_with_highdicom(written) -> None:
    datasets = [pydicom.dcmread(path) for path in written["paths"]]
    image = hd.Image.from_dataset(datasets[0], copy=True)
    assert image.SyntheticData == "YES"
    # Converting the classic series into one Legacy Converted Enhanced MR object checks the series is coherent
    # (one study, series, frame of reference; consistent pixel description) by highdicom's own validation.
    converted = hd.legacy.LegacyConvertedEnhancedMRImage(
        legacy_datasets=datasets,
        series_instance_uid=hd.UID(),
        series_number=1,
        sop_instance_uid=hd.UID(),
        instance_number=1,
    )
    assert int(converted.NumberOfFrames) == len(datasets)
    assert converted.FrameOfReferenceUID == FRAME_OF_REFERENCE_UID


def test_the_node_never_takes_its_own_output_as_input(written) -> None:
    result = classify_paths(written["paths"], load_rules())
    assert result.contrast is None
    assert result.reason == "Synthetic Data (0008,001C) = YES"


@pytest.mark.skipif(not DCIODVFY.exists(), reason="dciodvfy (Debian dicom3tools) is not installed")
def test_every_file_passes_dciodvfy(written) -> None:
    for path in written["paths"]:
        assert dciodvfy_errors(path) == [], path


@pytest.mark.skipif(not DCIODVFY.exists(), reason="dciodvfy (Debian dicom3tools) is not installed")
def test_dciodvfy_check_can_fail(tmp_path: Path, written) -> None:
    """The dciodvfy check above really detects errors (a type 1 attribute removed)."""
    ds = pydicom.dcmread(written["paths"][0])
    del ds.SOPInstanceUID
    broken = tmp_path / "broken.dcm"
    ds.save_as(broken)
    assert dciodvfy_errors(broken)


@pytest.mark.skipif(not DCENTVFY.exists(), reason="dcentvfy (Debian dicom3tools) is not installed")
def test_series_is_consistent_across_instances(written) -> None:
    run = subprocess.run(
        [str(DCENTVFY), *map(str, written["paths"])], capture_output=True, text=True, timeout=60, check=False
    )
    assert not [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


def test_mismatched_pixels_are_refused(tmp_path: Path) -> None:
    reference = acquired_series("t1", slices=3)
    with pytest.raises(ValueError, match="3 reference slices"):
        write_synthetic_series(reference, np.zeros((4, 16, 12)), Contrast.T2, "m", "1", {}, tmp_path)
    with pytest.raises(ValueError, match="16x12"):
        write_synthetic_series(reference, np.zeros((3, 8, 8)), Contrast.T2, "m", "1", {}, tmp_path)
    assert not any(tmp_path.iterdir())


@pytest.mark.skipif(not DCIODVFY.exists(), reason="dciodvfy (Debian dicom3tools) is not installed")
def test_written_on_a_phantom_study_passes_dciodvfy(tmp_path: Path) -> None:
    """Against headers as the phantom scanner writes them (another orientation and matrix per series)."""
    dicom_study = pytest.importorskip("codebrain_node.phantom.dicom_study", reason="phantom DICOM writer absent")
    sitk = pytest.importorskip("SimpleITK")
    rng = np.random.default_rng(3)
    images = {}
    for contrast in (Contrast.T1, Contrast.T2):
        image = sitk.GetImageFromArray(rng.uniform(0, 1000, size=(12, 16, 16)).astype(np.float32))
        image.SetSpacing((1.5, 1.5, 2.0))
        images[contrast] = image
    layouts = {Contrast.T2: dicom_study.SeriesLayout(orientation="coronal", matrix=(12, 20))}
    study = dicom_study.write_dicom_study(images, tmp_path / "study", layouts=layouts, seed=2)
    series = []
    for folder in sorted(p for p in study.iterdir() if p.is_dir()):  # 101_<T1 name>, 201_<T2 name>
        datasets = [pydicom.dcmread(path, stop_before_pixels=True) for path in sorted(folder.glob("*.dcm"))]
        normal = np.cross(*np.array(datasets[0].ImageOrientationPatient, float).reshape(2, 3))
        datasets.sort(key=lambda ds: float(np.dot(normal, np.array(ds.ImagePositionPatient, float))))
        series.append(datasets)
    reference, t2 = series
    pixels = rng.uniform(0, 2000, size=(len(reference), int(reference[0].Rows), int(reference[0].Columns)))
    paths = write_synthetic_series(
        reference,
        pixels,
        Contrast.FLAIR,
        "codebrain-small",
        "0.1.0",
        {Contrast.T1: reference, Contrast.T2: t2},
        tmp_path / "out",
    ).paths
    assert len(paths) == len(reference)
    for path in paths:
        assert dciodvfy_errors(path) == [], path
    first = pydicom.dcmread(paths[0])
    assert first.StudyInstanceUID == reference[0].StudyInstanceUID
    assert first.PatientID == reference[0].PatientID
    assert np.allclose(np.array(first.ImagePositionPatient, float), np.array(reference[0].ImagePositionPatient, float))


def test_a_replacement_says_what_it_replaces_within_64_characters(tmp_path: Path) -> None:
    """Series Description is LO (PS3.5 6.2, 64 characters of the default repertoire): the model name gives way,
    so the contrast and the series replaced always show."""
    assert series_description(Contrast.T1GD, "codebrain-brats-small") == "SYNTHETIC T1Gd (codebrain-brats-small)"
    replaced = series_description(Contrast.T1GD, "codebrain-brats-small", replaces=1021)
    assert replaced == "SYNTHETIC T1Gd (codebrain-brats-small) - replaces series 1021"
    long = series_description(Contrast.FLAIR, "a-very-long-model-name-" * 4, replaces=1121)
    assert len(long) <= 64 and long.startswith("SYNTHETIC FLAIR (a-very") and long.endswith(") - replaces series 1121")
    assert long.isascii()
    reference = acquired_series("t1_se_tra", slices=2, series_number=2)
    series = write_synthetic_series(
        reference,
        np.ones((2, 16, 12)),
        Contrast.T1GD,
        model_name="codebrain-small",
        model_version="0.1.0",
        sources={Contrast.T1: reference},
        out_dir=tmp_path,
        series_number=1121,
        replaces=1021,
    )
    ds = pydicom.dcmread(series.paths[0], stop_before_pixels=True)
    assert (
        ds.SeriesDescription == series.series_description == "SYNTHETIC T1Gd (codebrain-small) - replaces series 1021"
    )
    assert "Replaces synthetic series 1021" in ds.ImageComments
