"""The phantom's contrasts follow MR physics: tissue order, CSF nulling, gadolinium, determinism, skull stripping."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from codebrain_node.contrasts import Contrast
from codebrain_node.phantom import PhantomCase, make_phantom_case
from codebrain_node.phantom.anatomy import Anatomy, Tissue, synthseg_tissues
from codebrain_node.phantom.physics import (
    TISSUES,
    Sequence,
    draw_sequences,
    null_inversion_time,
    signal_table,
    tissue_signal,
)


def _tissue_means(case: PhantomCase, anatomy: Anatomy, contrast: Contrast) -> dict[Tissue, float]:
    """Mean intensity per tissue over voxels whose 3×3×3 neighbourhood is that tissue only (no partial volume)."""
    image = case.images[contrast]
    labels = sitk.Resample(
        sitk.Cast(anatomy.image(anatomy.tissues), sitk.sitkUInt8), image, sitk.Transform(), sitk.sitkNearestNeighbor
    )
    values = sitk.GetArrayFromImage(image).astype(float)
    lesion = sitk.GetArrayFromImage(sitk.BinaryDilate(case.lesion > 0, [2, 2, 2])).astype(bool)
    means = {}
    for tissue in (Tissue.WM, Tissue.GM, Tissue.CSF):
        pure = sitk.GetArrayFromImage(sitk.BinaryErode(labels == int(tissue), [1, 1, 1])).astype(bool)
        means[tissue] = float(values[pure & ~lesion].mean())
    return means


@pytest.mark.parametrize("seed", [11, 13])
def test_tissue_order_in_each_contrast(coarse_mni: Anatomy, small_case: PhantomCase, seed: int) -> None:
    """Seed 11 is the shared small case (with a lesion, excluded from the means); 13 another draw."""
    case = (
        small_case if seed == small_case.seed else make_phantom_case(seed=seed, anatomy=coarse_mni, resolution_mm=2.0)
    )
    t1 = _tissue_means(case, coarse_mni, Contrast.T1)
    assert t1[Tissue.WM] > t1[Tissue.GM] > t1[Tissue.CSF], (case.sequences[Contrast.T1].kind, t1)
    t2 = _tissue_means(case, coarse_mni, Contrast.T2)
    assert t2[Tissue.CSF] > t2[Tissue.GM] > t2[Tissue.WM], t2
    flair = _tissue_means(case, coarse_mni, Contrast.FLAIR)
    assert flair[Tissue.CSF] < 0.5 * flair[Tissue.WM] and flair[Tissue.GM] > flair[Tissue.WM], flair
    pd = _tissue_means(case, coarse_mni, Contrast.PD)
    assert pd[Tissue.GM] > pd[Tissue.WM], pd  # CSF against the others depends on TR (T1 of CSF ≈ 4 s)


@pytest.mark.parametrize("field", [1.5, 3.0])
def test_signal_equations_order_tissues_for_every_drawn_protocol(field: float) -> None:
    """Over many scanner-variety draws: T1w WM ≥ GM > CSF, T2w CSF brightest, FLAIR CSF dark, rim on T1Gd only."""
    rng = np.random.default_rng(0)
    families = set()
    for _ in range(50):
        seqs = draw_sequences(list(Contrast), rng, field)
        families.add(seqs[Contrast.T1].kind)
        t1, t1gd = signal_table(seqs[Contrast.T1], {}), signal_table(seqs[Contrast.T1GD], {Tissue.ENHANCING: 0.3})
        t2, flair = signal_table(seqs[Contrast.T2]), signal_table(seqs[Contrast.FLAIR])
        assert t1[Tissue.WM] >= t1[Tissue.GM] > t1[Tissue.CSF]
        assert t2[Tissue.CSF] > t2[Tissue.GM] > t2[Tissue.WM] and t2[Tissue.CSF] > t2[Tissue.FAT]
        assert flair[Tissue.CSF] < 0.25 * flair[Tissue.WM]  # TI within ±3 % of the null point
        assert t1gd[Tissue.ENHANCING] > 1.2 * t1gd[Tissue.WM] and t1[Tissue.ENHANCING] < t1[Tissue.WM]
    assert families == {"SE", "GRE3D"}


def test_inversion_time_nulls_csf() -> None:
    csf = TISSUES[3.0][Tissue.CSF]
    ti = null_inversion_time(csf.t1, 9000.0)
    flair = Sequence(Contrast.FLAIR, "IR", 9000.0, 100.0, inversion_time=ti)
    assert tissue_signal(csf, flair) < 1e-9
    assert tissue_signal(TISSUES[3.0][Tissue.WM], flair) > 0.1


def test_enhancing_rim_bright_on_t1gd_only(small_case: PhantomCase, coarse_mni: Anatomy) -> None:
    lesion = sitk.GetArrayFromImage(small_case.lesion)
    assert {1, 2, 3} <= set(np.unique(lesion).tolist())
    rim = sitk.GetArrayFromImage(sitk.BinaryErode(small_case.lesion == 3, [1, 1, 1])).astype(bool)
    if not rim.any():
        rim = lesion == 3
    oedema = lesion == 2
    for contrast, brighter in ((Contrast.T1GD, True), (Contrast.T1, False)):
        values = sitk.GetArrayFromImage(small_case.images[contrast]).astype(float)
        wm = _tissue_means(small_case, coarse_mni, contrast)[Tissue.WM]
        assert bool(values[rim].mean() > 1.2 * wm) is brighter, (contrast, values[rim].mean(), wm)
    flair = sitk.GetArrayFromImage(small_case.images[Contrast.FLAIR]).astype(float)
    assert flair[oedema].mean() > _tissue_means(small_case, coarse_mni, Contrast.FLAIR)[Tissue.WM]


def test_same_seed_same_voxels_other_seed_other_case(coarse_mni: Anatomy) -> None:
    kwargs = {"anatomy": coarse_mni, "resolution_mm": 4.0}
    a = make_phantom_case([Contrast.T2], seed=3, **kwargs).images[Contrast.T2]
    b = make_phantom_case([Contrast.T2], seed=3, **kwargs).images[Contrast.T2]
    c = make_phantom_case([Contrast.T2], seed=4, **kwargs).images[Contrast.T2]
    assert np.array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))
    assert not np.array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(c))


def test_skull_stripped_keeps_only_intracranial_voxels(coarse_mni: Anatomy) -> None:
    stripped = make_phantom_case([Contrast.T1], seed=2, anatomy=coarse_mni, resolution_mm=4.0, skull=False)
    with_skull = make_phantom_case([Contrast.T1], seed=2, anatomy=coarse_mni, resolution_mm=4.0, skull=True)
    inside = sitk.GetArrayFromImage(stripped.intracranial).astype(bool)
    values = sitk.GetArrayFromImage(stripped.images[Contrast.T1])
    assert not values[~inside].any() and values[inside].mean() > 0
    assert sitk.GetArrayFromImage(with_skull.images[Contrast.T1])[~inside].mean() > 50


def test_synthseg_label_mapping() -> None:
    labels = np.array([0, 2, 3, 4, 24, 41, 42, 31, 62, 506, 511, 515, 516, 599, 17])
    tissues = synthseg_tissues(labels)
    expected = [
        Tissue.AIR, Tissue.WM, Tissue.GM, Tissue.CSF, Tissue.CSF, Tissue.WM, Tissue.GM, Tissue.CHOROID,
        Tissue.VESSEL, Tissue.EYE, Tissue.FAT, Tissue.BONE, Tissue.MARROW, Tissue.SOFT, Tissue.GM,
    ]  # fmt: skip
    assert tissues.tolist() == [int(t) for t in expected]
