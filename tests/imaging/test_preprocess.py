"""prepare_study / restore: the grid, the [0, 1] rule, registration and the exact way back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from codebrain_node.contrasts import Contrast
from codebrain_node.imaging.preprocess import (
    close_within_bounds,
    fill_holes_in_plane,
    normalised_mutual_information,
    prepare_study,
    restore,
    same_grid,
    serving_size,
)
from codebrain_node.phantom import PhantomCase


def _head(size: tuple[int, int, int], spacing: tuple[float, float, float], seed: int = 0) -> sitk.Image:
    """An ellipsoidal 'head' with texture, as int16 like scanner data."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in reversed(size)], indexing="ij")
    inside = (x / 0.8) ** 2 + (y / 0.9) ** 2 + (z / 0.9) ** 2 < 1
    values = np.where(inside, 800 + 300 * np.sin(6 * x) * np.cos(5 * y) + rng.normal(0, 5, x.shape), 5)
    image = sitk.GetImageFromArray(np.clip(values, 0, None).astype(np.int16))
    image.SetSpacing(spacing)
    image.SetOrigin((-100.0, -120.0, -40.0))
    return image


def test_one_mm_volume_is_padded_without_interpolation() -> None:
    image = _head((240, 240, 12), (1.0, 1.0, 1.0))
    prepared = prepare_study({Contrast.T1: image}, Contrast.T1, size=256, register=False)
    assert prepared.arrays.shape == (1, 12, 256, 256)
    assert prepared.arrays.min() >= 0 and prepared.arrays.max() <= 1
    low, high = prepared.windows[Contrast.T1]
    expected = np.clip((sitk.GetArrayFromImage(image).astype(np.float32) - low) / (high - low), 0, 1)
    np.testing.assert_allclose(prepared.arrays[0][:, 8:248, 8:248], expected, atol=1e-5)
    assert not prepared.arrays[0][:, :8].any() and not prepared.arrays[0][:, :, 248:].any()


def test_restore_lands_on_the_reference_grid_and_range() -> None:
    reference = _head((200, 180, 9), (0.9, 0.9, 5.0))
    oblique = sitk.Euler3DTransform()
    oblique.SetRotation(0.1, 0.0, 0.0)  # a slightly oblique axial acquisition
    direction = oblique.GetMatrix()
    reference.SetDirection(direction)
    prepared = prepare_study({Contrast.T2: reference}, Contrast.T2, size=256, register=False)
    assert prepared.arrays.shape[1] == 9  # slice for slice
    restored = restore(prepared, prepared.array(Contrast.T2))
    assert same_grid(restored, reference, tolerance=1e-6)
    assert restored.GetPixelID() == reference.GetPixelID()
    a = sitk.GetArrayFromImage(restored).astype(float)
    b = sitk.GetArrayFromImage(reference).astype(float)
    inside = b > 100
    low, high = prepared.windows[Contrast.T2]
    unclipped = inside & (b > low) & (b < high)
    error = np.abs(a - b)[unclipped].mean() / (high - low)
    assert error < 0.02, error
    assert np.corrcoef(a[inside], b[inside])[0, 1] > 0.97


def test_restore_refuses_a_wrong_shape() -> None:
    prepared = prepare_study({Contrast.T1: _head((64, 64, 4), (2.0, 2.0, 2.0))}, Contrast.T1, size=64, register=False)
    with pytest.raises(ValueError, match="expected"):
        restore(prepared, np.zeros((5, 64, 64), np.float32))


def test_registration_undoes_a_known_rigid_motion(small_case: PhantomCase) -> None:
    fixed = small_case.images[Contrast.T1]
    moving_truth = sitk.Euler3DTransform()
    moving_truth.SetCenter(fixed.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in fixed.GetSize()]))
    moving_truth.SetRotation(0.0, 0.0, np.deg2rad(6.0))
    moving_truth.SetTranslation((4.0, -3.0, 2.0))
    other_grid = sitk.Image([int(n * 0.8) for n in fixed.GetSize()], sitk.sitkFloat32)
    other_grid.SetSpacing([2.5, 2.5, 2.5])
    other_grid.SetOrigin(fixed.GetOrigin())
    # moved(q) = T2(truth⁻¹(q)): the head moved by ``truth`` and was scanned on another grid
    moved = sitk.Resample(small_case.images[Contrast.T2], other_grid, moving_truth.GetInverse(), sitk.sitkLinear, 0.0)
    prepared = prepare_study({Contrast.T1: fixed, Contrast.T2: moved}, Contrast.T1, size=128, register=True)
    result = prepared.registrations[Contrast.T2]
    print(f"phantom T2→T1 NMI before {result.similarity_before:.4f}, after {result.similarity_after:.4f}")
    assert result.similarity_after > result.similarity_before + 0.02
    found = result.transform
    probe = np.array(fixed.TransformContinuousIndexToPhysicalPoint([20.0, 30.0, 20.0]))
    truth_point = np.array(moving_truth.TransformPoint(tuple(probe)))
    assert np.linalg.norm(np.array(found.TransformPoint(tuple(probe))) - truth_point) < 2.0


def test_nmi_ranks_identical_above_shuffled() -> None:
    rng = np.random.default_rng(0)
    a = rng.random((10, 20, 20))
    assert normalised_mutual_information(a, a) > normalised_mutual_information(
        a, rng.permutation(a.ravel()).reshape(a.shape)
    )


@pytest.mark.shared_data
def test_native_series_resample_register_and_map_back(native_dir: Path) -> None:
    """The four raw TCGA series (three matrices, 5.5 mm, not registered, skull on) onto the T1 grid and back."""
    names = {Contrast.T1: "t1n", Contrast.T1GD: "t1c", Contrast.T2: "t2w", Contrast.FLAIR: "t2f"}
    volumes = {c: sitk.ReadImage(str(native_dir / f"{n}.nii.gz")) for c, n in names.items()}
    assert len({v.GetSize() for v in volumes.values()}) == 3
    prepared = prepare_study(volumes, Contrast.T1, size=256, register=True)
    reference = volumes[Contrast.T1]
    assert prepared.arrays.shape == (4, reference.GetSize()[2], 256, 256)
    assert {Contrast.T2, Contrast.FLAIR} <= set(prepared.registrations)
    for contrast, result in prepared.registrations.items():
        print(
            f"{contrast}→T1 NMI inside the head: "
            f"before {result.similarity_before:.4f}, after {result.similarity_after:.4f}"
        )
        assert result.similarity_after > result.similarity_before
    restored = restore(prepared, prepared.array(Contrast.T1))
    assert same_grid(restored, reference, tolerance=1e-6)
    a = sitk.GetArrayFromImage(restored).astype(float)
    b = sitk.GetArrayFromImage(reference).astype(float)
    low, high = prepared.windows[Contrast.T1]
    head = b > low + 0.05 * (high - low)
    relative_error = np.abs(a - b)[head & (b < high)].mean() / (high - low)
    correlation = np.corrcoef(a[head], b[head])[0, 1]
    print(f"T1 restored onto itself: mean |error| {relative_error:.4f} of the window, correlation {correlation:.4f}")
    assert relative_error < 0.03
    assert correlation > 0.98


def test_fine_series_is_smoothed_before_going_onto_the_coarser_grid() -> None:
    """Stripes at the 0.5 mm Nyquist limit must average out on a 1 mm grid, not alias into a pattern."""
    columns = np.arange(255)
    stripes = np.where(columns % 2 == 0, 1000, 200).astype(np.int16)
    volume = np.broadcast_to(stripes, (4, 255, 255)).copy()
    volume[:, :, :20] = 0  # some background so the mask and window are defined
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing((0.5, 0.5, 3.0))
    prepared = prepare_study({Contrast.T1: image}, Contrast.T1, size=128, register=False)
    low, high = prepared.windows[Contrast.T1]
    inside = prepared.array(Contrast.T1)[:, 40:90, 40:90] * (high - low) + low
    assert abs(float(inside.mean()) - 600) < 60 and float(inside.std()) < 60


def test_a_field_of_view_over_256_mm_is_served_whole_up_to_320_mm() -> None:
    """#14: a 300 mm wide-FOV series gets a 304-pixel grid and comes back whole, edge to edge; on the training
    size its edges would be cut (the black band the demo once showed)."""
    assert serving_size(_head((240, 240, 4), (1.0, 1.0, 3.0))) == 256
    assert serving_size(_head((200, 200, 4), (1.5, 1.5, 3.0))) == 304
    assert serving_size(_head((512, 512, 4), (0.8, 0.8, 3.0))) == 320  # 410 mm: the most synthesised
    wide = sitk.GetImageFromArray(np.full((4, 200, 200), 900, dtype=np.int16))  # content to every edge
    wide.SetSpacing((1.5, 1.5, 3.0))
    acquired = sitk.GetArrayFromImage(wide).astype(np.float32)
    for size, whole in ((serving_size(wide), True), (256, False)):
        prepared = prepare_study({Contrast.T1: wide}, Contrast.T1, size=size, register=False)
        assert prepared.arrays.shape[-2:] == (size, size)
        back = sitk.GetArrayFromImage(restore(prepared, prepared.array(Contrast.T1))).astype(np.float32)
        edges = np.concatenate([back[:, :, 0], back[:, :, -1], back[:, 0, :], back[:, -1, :]], axis=None)
        if whole:
            np.testing.assert_allclose(back, acquired, rtol=0.02)
        else:
            assert float(edges.min()) < 0.5 * 900  # cut: the band outside 256 mm comes back empty


def test_the_mask_closing_on_its_bounding_box_is_the_closing_of_the_whole_grid() -> None:
    rng = np.random.default_rng(0)
    for trial in range(4):
        blobs = np.zeros((24, 70, 64), np.uint8)
        z, y, x = rng.integers(0, 10), rng.integers(0, 20), rng.integers(0, 20)
        blobs[z : z + 12, y : y + 40, x : x + 36] = rng.random((12, 40, 36)) > 0.3
        if trial == 3:
            blobs[:, :2, :] = 1  # touching the grid's edge
        image = sitk.GetImageFromArray(blobs)
        whole = sitk.GetArrayFromImage(sitk.BinaryMorphologicalClosing(image, [2, 2, 1])).astype(bool)
        assert np.array_equal(close_within_bounds(image, (2, 2, 1)), whole)
    assert not close_within_bounds(sitk.Image(8, 8, 4, sitk.sitkUInt8), (2, 2, 1)).any()


def test_in_plane_hole_filling_is_simpleitks_fill_hole_slice_by_slice() -> None:
    """Random masks with holes, some open to a slice's edge, some only closed across slices (a tube): each slice
    filled as BinaryFillhole fills it on its own."""
    rng = np.random.default_rng(1)
    for trial in range(6):
        mask = rng.random((9, 40, 36)) > (0.35 if trial % 2 else 0.6)
        if trial == 4:
            mask[:, 10:30, 10:30] = True
            mask[:, 15:25, 15:25] = False  # a tube: a hole in every slice, open only through the volume's faces
        expected = np.stack(
            [sitk.GetArrayFromImage(sitk.BinaryFillhole(sitk.GetImageFromArray(s.astype(np.uint8)))) > 0 for s in mask]
        )
        assert np.array_equal(fill_holes_in_plane(mask), expected)
    assert fill_holes_in_plane(np.zeros((2, 5, 5), bool)).sum() == 0
