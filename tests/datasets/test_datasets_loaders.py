"""find_cases layouts, slice datasets, subject splits, the cache, and NIfTI ≡ DICOM for one case."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from codebrain_node.contrasts import Contrast
from codebrain_node.phantom import PhantomCase, write_dicom_study, write_nifti_case
from training.datasets import build_datasets, find_cases, prepare_case, split_subjects


def _volume(seed: int, size: tuple[int, int, int] = (40, 40, 10), spacing: float = 4.0) -> sitk.Image:
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in reversed(size)], indexing="ij")
    inside = x**2 + y**2 + (z / 1.2) ** 2 < 0.6
    values = np.where(inside, 500 + 200 * np.sin(4 * x + seed) + rng.normal(0, 10, x.shape), 0)
    image = sitk.GetImageFromArray(values.astype(np.int16))
    image.SetSpacing((spacing, spacing, spacing))
    return image


def _write(image: sitk.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


def test_find_cases_in_every_layout(tmp_path: Path) -> None:
    _write(_volume(0), tmp_path / "BraTS-GLI-00002-000" / "BraTS-GLI-00002-000-t1n.nii.gz")
    _write(_volume(1), tmp_path / "BraTS-GLI-00002-000" / "BraTS-GLI-00002-000-t2f.nii.gz")
    _write(_volume(2), tmp_path / "plain" / "t1c.nii.gz")
    _write(_volume(3), tmp_path / "ixi" / "IXI012-HH-1211-T1.nii.gz")
    _write(_volume(4), tmp_path / "ixi" / "IXI012-HH-1211-PD.nii.gz")
    _write(_volume(5), tmp_path / "other" / "scan_a.nii.gz")
    (tmp_path / "cases.csv").write_text("subject,contrast,path\nmapped,T2,other/scan_a.nii.gz\n")
    cases = {case.subject: case for case in find_cases(tmp_path)}
    assert set(cases) == {"BraTS-GLI-00002-000", "plain", "IXI012-HH-1211", "mapped"}
    assert set(cases["BraTS-GLI-00002-000"].paths) == {Contrast.T1, Contrast.FLAIR}
    assert set(cases["plain"].paths) == {Contrast.T1GD}
    assert set(cases["IXI012-HH-1211"].paths) == {Contrast.T1, Contrast.PD} and cases["IXI012-HH-1211"].register
    assert cases["mapped"].paths[Contrast.T2] == tmp_path / "other" / "scan_a.nii.gz"


def test_toml_mapping(tmp_path: Path) -> None:
    _write(_volume(0), tmp_path / "x" / "a.nii.gz")
    (tmp_path / "cases.toml").write_text('[subject-7]\nT1 = "x/a.nii.gz"\nflair = "x/a.nii.gz"\n')
    (case,) = find_cases(tmp_path)
    assert case.subject == "subject-7" and set(case.paths) == {Contrast.T1, Contrast.FLAIR}


def test_ixi_series_on_another_grid_are_registered_onto_t1(tmp_path: Path) -> None:
    t1 = _volume(0, (40, 40, 12), 4.0)
    t2 = sitk.Resample(t1, _volume(0, (32, 32, 10), 5.0), sitk.TranslationTransform(3, (3.0, -2.0, 0.0)))
    _write(t1, tmp_path / "IXI002-Guys-0828-T1.nii.gz")
    _write(t2, tmp_path / "IXI002-Guys-0828-T2.nii.gz")
    (case,) = find_cases(tmp_path)
    arrays, mask = prepare_case(case, [Contrast.T1, Contrast.T2], size=160)
    assert arrays.shape == (2, 12, 160, 160) and mask.shape == (12, 160, 160)
    overlap = np.corrcoef(arrays[0][mask], arrays[1][mask])[0, 1]
    assert overlap > 0.9


def test_a_skull_on_training_case_is_prepared_as_served_with_brain_extraction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from codebrain_node.imaging import brain_extraction
    from training.datasets import load_case
    from training.train_config import DataConfig

    brain = _volume(0)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in (10, 40, 40)], indexing="ij")
    scalp = (x**2 + y**2 + (z / 1.2) ** 2 < 0.95) & (sitk.GetArrayFromImage(brain) == 0)
    rng = np.random.default_rng(1)
    for name, seed in (("t1n", 0), ("t2w", 1)):
        values = sitk.GetArrayFromImage(_volume(seed)).astype(np.float32)
        values = np.where(scalp, 1500.0, values) + rng.uniform(1, 9, values.shape)  # a bright scalp, noisy air
        image = sitk.GetImageFromArray(values.astype(np.int16))
        image.CopyInformation(brain)
        _write(image, tmp_path / "data" / "S00" / f"{name}.nii.gz")
    inside = sitk.GetArrayFromImage(brain) > 0
    monkeypatch.setattr(brain_extraction, "_deepbet_mask", lambda _image, _device: inside)
    (case,) = find_cases(tmp_path / "data")
    contrasts = [Contrast.T1, Contrast.T2]
    plain, head = prepare_case(case, contrasts, size=160)
    extracted, mask = load_case(case, contrasts, 160, tmp_path / "cache", brain_extraction="deepbet")
    assert mask.sum() < head.sum()  # the brain, not the head
    assert not np.asarray(extracted)[:, ~mask].any()  # zero outside it, scalp included
    assert plain[:, head & ~mask].mean() > 1.5 * plain[:, mask].mean()  # without: a bright scalp, a dark brain
    load_case(case, contrasts, 160, tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("*-image.npy"))) == 2  # cached apart
    with pytest.raises(ValueError, match="brain_extraction"):
        DataConfig(brain_extraction="bet")


def test_splits_are_by_subject_and_cached(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for i in range(10):
        _write(_volume(i), data / f"S{i:02d}" / "t1n.nii.gz")
        _write(_volume(i + 100), data / f"S{i:02d}" / "t2w.nii.gz")
    _write(_volume(99), data / "incomplete" / "t1n.nii.gz")
    cache = tmp_path / "cache"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        splits = build_datasets(
            data, [Contrast.T1, Contrast.T2], size=160, val_fraction=0.2, test_fraction=0.2, seed=3, cache_dir=cache
        )
    assert any("incomplete" in str(w.message) for w in caught)
    parts = [set(splits.train.subjects), set(splits.val.subjects), set(splits.test.subjects)]
    assert [len(p) for p in parts] == [6, 2, 2]
    assert set().union(*parts) == {f"S{i:02d}" for i in range(10)}
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    for dataset, subjects in zip((splits.train, splits.val, splits.test), parts, strict=True):
        assert {dataset[i]["subject"] for i in range(len(dataset))} <= subjects
    item = splits.train[0]
    assert item["image"].shape == (2, 160, 160) and item["image"].dtype.is_floating_point
    assert float(item["image"].min()) >= 0 and float(item["image"].max()) <= 1
    assert item["brain_mask"].shape == (160, 160) and item["brain_mask"].any()
    cached = sorted(cache.glob("*-image.npy"))
    assert len(cached) == 10
    stamps = [os.stat(p).st_mtime_ns for p in cached]
    with pytest.warns(UserWarning, match="incomplete"):
        again = build_datasets(
            data,
            [Contrast.T1, Contrast.T2],
            size=160,
            val_fraction=0.2,
            test_fraction=0.2,
            seed=3,
            cache_dir=cache,
        )
    assert [os.stat(p).st_mtime_ns for p in cached] == stamps  # read from the cache, not rebuilt
    assert set(again.train.subjects) == parts[0]
    assert set(again.train[0]) == {"image", "brain_mask", "subject", "slice_index"}  # 2-D slices only


def test_split_keeps_a_training_subject() -> None:
    train, val, test = split_subjects(["a", "b"], 0.5, 0.5, 0)
    assert len(train) == 1 and len(train) + len(val) + len(test) == 2


def test_nifti_and_dicom_forms_give_identical_slices(small_case: PhantomCase, tmp_path: Path) -> None:
    contrasts = [Contrast.T1, Contrast.T2, Contrast.FLAIR]
    nifti_root = tmp_path / "nifti"
    write_nifti_case(small_case, nifti_root)
    dicom_root = tmp_path / "dicom"
    images = {c: small_case.images[c] for c in contrasts}
    write_dicom_study(images, dicom_root / "study", sequences=small_case.sequences, seed=1)
    rows = ["subject,contrast,path"]
    for folder in sorted((dicom_root / "study").iterdir()):
        contrast = contrasts[int(folder.name[:3]) // 100 - 1]
        rows.append(f"{small_case.name},{contrast},study/{folder.name}")
    (dicom_root / "cases.csv").write_text("\n".join(rows) + "\n")
    from_nifti = build_datasets(nifti_root, contrasts, size=128, val_fraction=0, test_fraction=0).train
    from_dicom = build_datasets(dicom_root, contrasts, size=128, val_fraction=0, test_fraction=0).train
    assert len(from_nifti) == len(from_dicom) > 10
    for i in range(0, len(from_nifti), 3):
        a, b = from_nifti[i], from_dicom[i]
        assert a["slice_index"] == b["slice_index"]
        np.testing.assert_allclose(a["image"].numpy(), b["image"].numpy(), atol=2e-3)
        assert bool((a["brain_mask"] == b["brain_mask"]).all())


@pytest.mark.shared_data
def test_shared_brats_case_is_found() -> None:
    root = Path(os.environ.get("CODEBRAIN_SHARED_DATA", Path(__file__).resolve().parents[2] / ".." / "shared" / "data"))
    if not (root / "BraTS-GLI-00001-000").is_dir():
        pytest.skip(f"shared data absent: {root / 'BraTS-GLI-00001-000'} not found (set CODEBRAIN_SHARED_DATA)")
    cases = {case.subject: case for case in find_cases(root)}
    assert set(cases["BraTS-GLI-00001-000"].paths) == {Contrast.T1, Contrast.T1GD, Contrast.T2, Contrast.FLAIR}


def test_a_committed_split_names_every_subject_and_leaves_the_rest_out(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for name in ("A", "B", "C", "A-native"):
        _write(_volume(len(name)), data / name / "t1n.nii.gz")
        _write(_volume(len(name) + 100), data / name / "t2w.nii.gz")
    assignment = {"train": ["A", "B"], "val": [], "test": ["C"]}
    splits = build_datasets(data, [Contrast.T1, Contrast.T2], size=160, assignment=assignment)
    assert (set(splits.train.subjects), set(splits.test.subjects)) == ({"A", "B"}, {"C"})
    assert "A-native" not in set(splits.train.subjects) | set(splits.val.subjects) | set(splits.test.subjects)
    with pytest.raises(ValueError, match=r"lacks.*\['D'\]"):
        build_datasets(data, [Contrast.T1, Contrast.T2], size=160, assignment={"train": ["A", "D"]})


def test_sites_an_order_of_magnitude_apart_look_alike_after_normalisation(
    small_case: PhantomCase, tmp_path: Path
) -> None:
    """The same anatomy stored at 30x the scale (as TCIA10 against other BraTS sites) and with a background of
    small non-zero values (as the MS case) reaches the model with the same intensities; the figure draws both."""
    from training.datasets import intensity_samples
    from training.report import plot_normalisation

    write_nifti_case(small_case, tmp_path / "plain")
    contrasts = [Contrast.T1, Contrast.T2]
    (case,) = find_cases(tmp_path / "plain")
    scaled_root = tmp_path / "scaled" / case.subject
    rng = np.random.default_rng(0)
    for contrast in contrasts:
        image = sitk.ReadImage(str(case.paths[contrast]), sitk.sitkFloat32)
        array = sitk.GetArrayFromImage(image)
        noisy = np.where(array > 0, array * 30.0, rng.uniform(-0.009, 0.009, array.shape)).astype(np.float32)
        out = sitk.GetImageFromArray(noisy)
        out.CopyInformation(image)
        _write(out, scaled_root / case.paths[contrast].name)
    (scaled,) = find_cases(tmp_path / "scaled")
    raw_a, normalised_a = intensity_samples(case, contrasts)
    raw_b, normalised_b = intensity_samples(scaled, contrasts)
    for contrast in ("T1", "T2"):
        assert np.median(raw_b[contrast]) > 10 * np.median(raw_a[contrast])  # as stored: far apart
        a, b = (
            np.quantile(normalised_a[contrast], [0.1, 0.5, 0.9]),
            np.quantile(normalised_b[contrast], [0.1, 0.5, 0.9]),
        )
        np.testing.assert_allclose(a, b, atol=0.02)  # as the model sees them: alike
        assert normalised_b[contrast].min() >= 0.0 and normalised_b[contrast].max() <= 1.0
    png = plot_normalisation([("plain", raw_a, normalised_a), ("x30", raw_b, normalised_b)], tmp_path / "n.png")
    assert png.stat().st_size > 10_000
