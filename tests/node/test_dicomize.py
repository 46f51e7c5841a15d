"""``codebrain-node dicomize``: NIfTI volumes become a vendor-like DICOM MR study on their own grids, whose series
the node's classifier names correctly and dciodvfy accepts."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from codebrain_node.cli import app
from codebrain_node.contrasts import Contrast
from codebrain_node.imaging.series_io import read_series
from codebrain_node.node.dicomize import contrast_volumes, dicomize_case
from codebrain_node.route.classify import classify_folder, load_rules
from tests.conftest import shared_data_dir
from tests.dicom_fixtures import DCIODVFY, dciodvfy_errors

FILES = {"t1n": Contrast.T1, "t1c": Contrast.T1GD, "t2w": Contrast.T2, "t2f": Contrast.FLAIR}


def _oblique_affine(spacing: tuple[float, float, float]) -> np.ndarray:
    """A RAS affine tilted 8 degrees about x and 3 about z, as an angled axial acquisition is."""
    a, b = np.radians(8.0), np.radians(3.0)
    tilt = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    turn = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = turn @ tilt @ np.diag(spacing)
    affine[:3, 3] = (-20.0, -15.0, -12.0)
    return affine


@pytest.fixture(scope="module")
def case_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four contrasts of a small head-like blob (24 x 20 columns x rows, 10 slices of 5 mm) plus a label map."""
    folder = tmp_path_factory.mktemp("case")
    rng = np.random.default_rng(0)
    x, y, z = np.meshgrid(np.arange(24), np.arange(20), np.arange(10), indexing="ij")
    blob = ((x - 12) / 10) ** 2 + ((y - 10) / 8) ** 2 + ((z - 5) / 5) ** 2 < 1
    for number, stem in enumerate(FILES):
        data = (blob * (300 + 200 * number) + rng.normal(0, 5, blob.shape)).astype(np.int16)
        data[0, 0, 0] = -3  # a resampling artefact of processed data: stored as 0
        nib.save(nib.Nifti1Image(data, _oblique_affine((0.9, 0.9, 5.0))), folder / f"case-{stem}.nii.gz")
    nib.save(nib.Nifti1Image(blob.astype(np.uint8), _oblique_affine((0.9, 0.9, 5.0))), folder / "case-seg.nii.gz")
    return folder


@pytest.mark.parametrize(
    ("vendor", "manufacturer", "t2_description"),
    [("siemens", "SIEMENS", "t2_tse_tra"), ("ge", "GE MEDICAL SYSTEMS", "AX T2 FSE"),
     ("philips", "Philips Medical Systems", "T2W_TSE_TRA")],
)  # fmt: skip
def test_each_vendor_study_classifies_and_keeps_the_grid(
    case_dir: Path, tmp_path: Path, vendor: str, manufacturer: str, t2_description: str
) -> None:
    out = tmp_path / "study"
    result = CliRunner().invoke(
        app, ["dicomize", str(case_dir), "--out", str(out), "--vendor", vendor, "--drop", "t1c"]
    )
    assert result.exit_code == 0, result.output
    assert "T1Gd   dropped" in result.output and "case-seg.nii.gz" in result.output

    found = {c.contrast: c for _, c in classify_folder(out, load_rules())}
    assert set(found) == {Contrast.T1, Contrast.T2, Contrast.FLAIR}
    assert found[Contrast.FLAIR].reason.startswith("name:")  # the vendor's own FLAIR name, not a physics guess
    t2_first = pydicom.dcmread(next(p for p in sorted(out.rglob("IM0001.dcm")) if p.parent.name.startswith("301_")))
    assert t2_first.Manufacturer == manufacturer
    assert t2_first.SeriesDescription == t2_description
    assert t2_first.ImageType[:2] == ["ORIGINAL", "PRIMARY"]
    assert float(t2_first.RepetitionTime) > 2000 and float(t2_first.EchoTime) > 80
    assert t2_first.SequenceName and not any(element.tag.is_private for element in t2_first)
    flair_first = pydicom.dcmread(next(p for p in out.rglob("IM0001.dcm") if p.parent.name.startswith("401_")))
    assert 1500 <= float(flair_first.InversionTime) <= 3000 and "IR" in flair_first.ScanningSequence

    # each series on its NIfTI's own oblique grid: the same voxels at the same physical places (LPS from RAS)
    for contrast, folder in dicomize_case(case_dir, tmp_path / "again", vendor=vendor).series.items():
        stem = next(s for s, c in FILES.items() if c is contrast)
        source = sitk.ReadImage(str(case_dir / f"case-{stem}.nii.gz"))
        written = read_series(folder)
        back = sitk.Resample(written, source, sitk.Transform(), sitk.sitkNearestNeighbor, -1.0)
        expected = np.clip(sitk.GetArrayFromImage(source), 0, None)
        assert np.array_equal(sitk.GetArrayFromImage(back), expected), contrast
        assert float(pydicom.dcmread(next(folder.glob("*.dcm"))).SliceThickness) == pytest.approx(5.0)


def test_names_map_onto_the_vocabulary_and_cases_share_no_uid(case_dir: Path, tmp_path: Path) -> None:
    files, ignored = contrast_volumes(case_dir)
    assert list(files) == [Contrast.T1, Contrast.T1GD, Contrast.T2, Contrast.FLAIR]
    assert "case-seg.nii.gz" in ignored
    other = tmp_path / "other-case"
    other.mkdir()
    for path in case_dir.glob("*t1n*"):
        (other / "t1.nii.gz").write_bytes(path.read_bytes())
    first = dicomize_case(case_dir, tmp_path / "a", vendor="ge")
    second = dicomize_case(other, tmp_path / "b", vendor="ge")
    uids = [{pydicom.dcmread(p).SOPInstanceUID for p in r.study.rglob("*.dcm")} for r in (first, second)]
    assert uids[0] and uids[1] and not uids[0] & uids[1]
    with pytest.raises(ValueError, match="unknown vendor"):
        dicomize_case(case_dir, tmp_path / "c", vendor="toshiba")
    with pytest.raises(ValueError, match="no such volume"):
        dicomize_case(other, tmp_path / "d", vendor="ge", drop=[Contrast.FLAIR])


@pytest.mark.skipif(not DCIODVFY.exists(), reason="dciodvfy (Debian dicom3tools) is not installed")
def test_every_vendor_series_passes_dciodvfy(case_dir: Path, tmp_path: Path) -> None:
    for vendor in ("siemens", "ge", "philips"):
        result = dicomize_case(case_dir, tmp_path / vendor, vendor=vendor)
        for folder in result.series.values():
            assert dciodvfy_errors(sorted(folder.glob("*.dcm"))[0]) == [], (vendor, folder.name)


@pytest.mark.shared_data
def test_native_tcga_study_classifies(tmp_path: Path) -> None:
    native = shared_data_dir() / "TCGA-FG-6692-native"
    if not (native / "t1n.nii.gz").exists():
        pytest.skip(f"shared data absent: {native} not found (set CODEBRAIN_SHARED_DATA)")
    result = dicomize_case(native, tmp_path / "study", vendor="siemens", drop=[Contrast.T1GD])
    found = {c.contrast: c.headers for _, c in classify_folder(result.study, load_rules())}
    assert set(found) == {Contrast.T1, Contrast.T2, Contrast.FLAIR}
    assert {h.n_slices for h in found.values()} == {26}
    assert {round(h.slice_thickness_mm or 0, 1) for h in found.values()} == {5.5}
