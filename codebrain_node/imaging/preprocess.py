"""One preprocessing for training, evaluation and serving, and its exact inverse.

Published synthesis models most often break on new data at this step, so there is exactly one copy of it and the
trainer (``training/datasets.py``) and the node's engine both call :func:`prepare_study` / :func:`restore`.

The rules, in order:

1. **Canonical axial frame.** The reference series is re-oriented with ``DICOMOrient(..., "LPS")``: a pure
   permutation/flip of its axes (no interpolation), so array axes are ``[Z (inferior→superior), Y (anterior→
   posterior), X (right→left)]`` and, for an axial acquisition, every prepared slice *is* a reference slice.
   An oblique reference keeps its obliquity: we never resample across the reference's slices.
2. **Prepared grid.** In-plane the grid has a fixed spacing (``spacing_mm``, default 1 mm) and ``size × size``
   pixels centred on the reference's in-plane field of view (256 mm at the defaults: any adult head; serving takes
   :func:`serving_size`, wider for a field of view up to 320 mm, so it is synthesised whole). A fixed
   physical pixel size keeps anatomy the same size in pixels for training and serving. A 1 mm 240×240 BraTS volume
   is therefore padded by 8 pixels each side, with no interpolation at all. Through-plane the grid keeps the
   reference's slices one for one (``Z`` equals the reference's slice count).
3. **Registration** (optional): every other series is rigidly registered onto the reference (SimpleITK, Euler 3-D,
   Mattes mutual information, multi-resolution), starting from the scanner geometry; then everything is resampled
   with linear interpolation onto the prepared grid (after an anti-aliasing blur when a series is much finer).
4. **Foreground mask** from the reference: Otsu threshold of the smoothed image, largest connected component,
   holes filled slice by slice. For skull-stripped data this is the brain; for skull-on data it is the head.
   With ``brain_extraction="deepbet"`` (``engine.brain_extraction``) the mask is the reference's brain instead
   (:mod:`codebrain_node.imaging.brain_extraction`, with its documented fallback to the head mask), every
   prepared volume is zero outside it, as the skull-stripped training volumes are.
5. **Intensity to [0, 1]**, per volume: ``(x − p0.5) / (p99.5 − p0.5)`` clipped to [0, 1], where the percentiles
   are taken over that volume's voxels inside the foreground (or brain) mask. The window of each series is kept.

The inverse (:func:`restore`) resamples a prepared-grid volume back onto the *original* reference series' grid
(size, spacing, origin, direction, pixel type) and scales [0, 1] onto the reference series' own window
``p0.5 + y·(p99.5 − p0.5)``: a synthetic contrast has no acquired range of its own, so it borrows the reference's,
which keeps viewer windowing sensible. Restoring the reference's own prepared array reproduces the reference
(exactly up to float rounding when no in-plane resampling was needed; up to interpolation otherwise). After brain
extraction the restored volume is zero outside the brain mask on the reference's own grid: a synthetic series shows
the brain only, and a reference slice without brain becomes a zero image (still one image per reference slice, so
the series stays slice for slice with its reference).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from codebrain_node.contrasts import Contrast
from codebrain_node.imaging.brain_extraction import BrainMask, extract_brain

log = logging.getLogger(__name__)

#: Percentiles (inside the foreground) that define each volume's [0, 1] window.
WINDOW_PERCENTILES: tuple[float, float] = (0.5, 99.5)


@dataclass
class RegistrationResult:
    """A rigid transform (moving → reference physical space) and the similarity it achieved."""

    transform: sitk.Transform
    similarity_before: float
    similarity_after: float


@dataclass
class PreparedStudy:
    """Volumes on the prepared grid plus everything :func:`restore` needs to undo the preparation."""

    arrays: np.ndarray  # float32 [N, Z, size, size] in [0, 1]
    contrasts: list[Contrast]
    brain_mask: np.ndarray  # bool [Z, size, size]
    reference: Contrast
    grid: sitk.Image  # geometry of the prepared grid (float32, zeros)
    reference_image: sitk.Image  # the original reference series, untouched
    windows: dict[Contrast, tuple[float, float]]  # (low, high) intensity window of each series
    registrations: dict[Contrast, RegistrationResult] = field(default_factory=dict)
    #: The brain extraction's mask on the reference's own grid (None: ``brain_extraction="off"``).
    brain_extraction: BrainMask | None = None

    def array(self, contrast: Contrast) -> np.ndarray:
        """The prepared [Z, size, size] volume of one contrast."""
        return self.arrays[self.contrasts.index(contrast)]


# --- geometry -------------------------------------------------------------------------------------------------


def to_canonical(image: sitk.Image) -> sitk.Image:
    """Permute/flip axes so the array reads [Z inferior→superior, Y anterior→posterior, X right→left]; no resampling."""
    return sitk.DICOMOrient(image, "LPS")


def same_grid(a: sitk.Image, b: sitk.Image, tolerance: float = 1e-3) -> bool:
    """Whether two images share size, spacing, origin and direction (so no registration/resampling is needed)."""
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tolerance)
        and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tolerance)
        and np.allclose(a.GetDirection(), b.GetDirection(), atol=tolerance)
    )


#: The widest in-plane field of view synthesised whole (mm): wide-FOV head and neck series reach about 300 mm.
MAX_FIELD_OF_VIEW_MM = 320.0
#: Grid sizes are multiples of this (the network downsamples by 8).
GRID_MULTIPLE = 8


def serving_size(reference: sitk.Image, minimum: int = 256, spacing_mm: float = 1.0) -> int:
    """The prepared grid's side in pixels for serving ``reference``: ``minimum`` (the training size) or, for a
    field of view wider than that, enough ``spacing_mm`` pixels to hold all of it (a multiple of 8, at most
    ``MAX_FIELD_OF_VIEW_MM``), so nothing is cut; the network is fully convolutional and the anatomy keeps its
    trained pixel size. Wider fields of view are centred and cut at the maximum (``prepare_study`` logs it)."""
    canonical = to_canonical(reference)
    (nx, ny, _), (sx, sy, _) = canonical.GetSize(), canonical.GetSpacing()
    extent = min(max(nx * sx, ny * sy), MAX_FIELD_OF_VIEW_MM)
    needed = int(np.ceil(extent / spacing_mm / GRID_MULTIPLE - 1e-6)) * GRID_MULTIPLE
    return max(minimum, needed)


def prepared_grid(reference: sitk.Image, size: int = 256, spacing_mm: float | None = 1.0) -> sitk.Image:
    """The ``size × size × Z`` grid in the reference's canonical frame, centred on its in-plane field of view.

    ``spacing_mm=None`` fits the reference's larger in-plane extent into ``size`` pixels instead of a fixed spacing.
    """
    canonical = to_canonical(reference)
    nx, ny, nz = canonical.GetSize()
    sx, sy, sz = canonical.GetSpacing()
    if spacing_mm is None:
        spacing_mm = max(nx * sx, ny * sy) / size
    centre = np.array([(nx - 1) / 2 * sx, (ny - 1) / 2 * sy, 0.0])
    offset = centre - np.array([(size - 1) / 2 * spacing_mm, (size - 1) / 2 * spacing_mm, 0.0])
    direction = np.array(canonical.GetDirection()).reshape(3, 3)
    origin = np.array(canonical.GetOrigin()) + direction @ offset
    grid = sitk.Image([size, size, nz], sitk.sitkFloat32)
    grid.SetSpacing((spacing_mm, spacing_mm, sz))
    grid.SetDirection(canonical.GetDirection())
    grid.SetOrigin(tuple(float(v) for v in origin))
    return grid


def resample_onto(
    image: sitk.Image,
    grid: sitk.Image,
    transform: sitk.Transform | None = None,
    interpolator: int = sitk.sitkLinear,
) -> sitk.Image:
    """Resample ``image`` onto ``grid`` (float32); ``transform`` maps grid points into ``image`` space.

    Axes much finer than the grid's in-plane pixel (a 512² series onto 1 mm) are Gaussian-smoothed first, with
    σ = √(s_grid² − s_image²)/2.355, so the coarser sampling does not alias.
    """
    source = sitk.Cast(image, sitk.sitkFloat32)
    target = min(grid.GetSpacing()[:2])
    sigmas = [
        float(np.sqrt(max(target**2 - s**2, 0.0)) / 2.355) if s < 0.7 * target else 0.0 for s in image.GetSpacing()
    ]
    if any(sigmas):
        source = sitk.SmoothingRecursiveGaussian(source, [max(v, 1e-3) for v in sigmas])
    return sitk.Resample(
        source,
        grid,
        transform or sitk.Transform(),
        interpolator,
        0.0,
        sitk.sitkFloat32,
    )


# --- registration ---------------------------------------------------------------------------------------------


def normalised_mutual_information(
    a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None, bins: int = 32
) -> float:
    """Studholme's NMI ``(H(A)+H(B))/H(A,B)`` (1 = independent, 2 = identical); a registration quality figure."""
    if mask is not None:
        a, b = a[mask], b[mask]
    a, b = a.ravel(), b.ravel()
    joint, _, _ = np.histogram2d(a, b, bins=bins)
    joint = joint / max(joint.sum(), 1.0)

    def entropy(p: np.ndarray) -> float:
        p = p[p > 0]
        return float(-(p * np.log(p)).sum())

    return (entropy(joint.sum(1)) + entropy(joint.sum(0))) / max(entropy(joint), 1e-12)


def register_rigid(
    fixed: sitk.Image,
    moving: sitk.Image,
    *,
    shrink_factors: tuple[int, ...] = (4, 2, 1),
    iterations: int = 60,
    sampling_fraction: float = 0.05,
    seed: int = 0,
) -> sitk.Transform:
    """Rigid (Euler 3-D) transform mapping ``fixed`` physical points into ``moving``, by Mattes mutual information.

    Starts from the scanner geometry (identity, rotation centre at the fixed image's centre): series of one
    session share the scanner frame, so this start is close and the search stays local and fast.
    """
    fixed_f = sitk.Cast(fixed, sitk.sitkFloat32)
    moving_f = sitk.Cast(moving, sitk.sitkFloat32)
    initial = sitk.CenteredTransformInitializer(
        fixed_f, moving_f, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.GEOMETRY
    )
    # GEOMETRY centring would shift series with different fields of view; keep the scanner frame, only the centre.
    initial = sitk.Euler3DTransform(initial)
    initial.SetTranslation((0.0, 0.0, 0.0))
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(sampling_fraction, seed)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0, minStep=1e-3, numberOfIterations=iterations, gradientMagnitudeTolerance=1e-6
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(list(shrink_factors))
    method.SetSmoothingSigmasPerLevel([max(f - 1, 0) for f in shrink_factors])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    method.SetInitialTransform(initial, inPlace=False)
    return method.Execute(fixed_f, moving_f)


# --- mask and intensities -------------------------------------------------------------------------------------


#: The foreground mask's closing radius in voxels (x, y, z): bridges small gaps at the surface.
CLOSING_RADIUS = (2, 2, 1)


def close_within_bounds(mask: sitk.Image, radius: tuple[int, int, int]) -> np.ndarray:
    """``BinaryMorphologicalClosing(mask, radius)`` as a [Z, Y, X] array, computed on the mask's bounding box plus
    the radius and pasted back: the same voxels (the closing cannot reach further), in a fraction of the time on a
    skull-stripped volume, where most of the grid is background."""
    closed = np.zeros(mask.GetSize()[::-1], dtype=bool)
    shape = sitk.LabelShapeStatisticsImageFilter()
    shape.Execute(mask)
    if not shape.HasLabel(1):
        return closed
    box = shape.GetBoundingBox(1)  # x, y, z start, then x, y, z size
    start = [max(0, box[i] - 2 * radius[i]) for i in range(3)]
    stop = [min(mask.GetSize()[i], box[i] + box[i + 3] + 2 * radius[i]) for i in range(3)]
    region = sitk.RegionOfInterest(mask, [b - a for a, b in zip(start, stop, strict=True)], start)
    inner = sitk.GetArrayFromImage(sitk.BinaryMorphologicalClosing(region, list(radius))).astype(bool)
    closed[start[2] : stop[2], start[1] : stop[1], start[0] : stop[0]] = inner
    return closed


def foreground_mask(volume: np.ndarray) -> np.ndarray:
    """Head/brain voxels of a [Z, Y, X] volume: Otsu on the smoothed image, largest component, holes filled."""
    image = sitk.GetImageFromArray(volume.astype(np.float32))
    if float(volume.max()) <= float(volume.min()):
        return np.zeros(volume.shape, dtype=bool)
    smooth = sitk.SmoothingRecursiveGaussian(image, 1.0)
    binary = sitk.OtsuThreshold(smooth, 0, 1)
    if float(volume.min()) >= 0 and (volume == 0).mean() > 0.2:
        # skull-stripped data: everything non-zero is brain, including dark CSF that Otsu would drop
        binary = sitk.Or(binary, sitk.Cast(image > 0, binary.GetPixelID()))
    components = sitk.ConnectedComponent(binary)
    largest = sitk.RelabelComponent(components, sortByObjectSize=True) == 1
    return fill_holes_in_plane(close_within_bounds(largest, CLOSING_RADIUS))


def fill_holes_in_plane(mask: np.ndarray) -> np.ndarray:
    """Fill each axial slice's holes (ventricles, dark necrosis) of a [Z, Y, X] mask: background regions, 4-connected
    within the slice, that do not reach the slice's edge. One labelling of the whole volume with an in-plane
    structure (no connection across slices) gives what SimpleITK's BinaryFillhole gives slice by slice, voxel for
    voxel (compared on four real volumes), without a call per slice."""
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[1] = ndimage.generate_binary_structure(2, 1)
    labels, count = ndimage.label(~mask, structure=in_plane)
    hole = np.ones(count + 1, dtype=bool)
    hole[0] = False  # the mask itself
    hole[labels[:, [0, -1], :]] = False  # background that reaches an edge of its slice
    hole[labels[:, :, [0, -1]]] = False
    return mask | hole[labels]


def mask_on_grid(reference: sitk.Image, grid: sitk.Image) -> np.ndarray:
    """The reference's foreground mask, computed on its own voxels (padding never counts), carried onto ``grid``."""
    canonical = to_canonical(reference)
    mask = sitk.GetImageFromArray(foreground_mask(sitk.GetArrayFromImage(canonical)).astype(np.uint8))
    mask.CopyInformation(canonical)
    on_grid = sitk.Resample(mask, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(on_grid).astype(bool)


def intensity_window(volume: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """The (p0.5, p99.5) window of a volume inside ``mask`` (whole volume when the mask is empty)."""
    values = volume[mask] if mask.any() else volume.ravel()
    low, high = np.percentile(values, WINDOW_PERCENTILES)
    if high <= low:
        high = low + 1.0
    return float(low), float(high)


def normalise(volume: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Map a window onto [0, 1], clipping outside."""
    low, high = window
    return np.clip((volume.astype(np.float32) - low) / (high - low), 0.0, 1.0).astype(np.float32)


# --- the two public steps -------------------------------------------------------------------------------------

#: Training and serving put a study on the first available of these (T1Gd is acquired on the T1 geometry in most
#: protocols, and T1/T2 are usually the highest-resolution axial series of a brain study).
REFERENCE_PREFERENCE = (Contrast.T1, Contrast.T1GD, Contrast.T2, Contrast.FLAIR, Contrast.PD)


def choose_reference(available: Sequence[Contrast]) -> Contrast:
    """The series whose grid the study is prepared on and the synthetic series are written on."""
    for contrast in REFERENCE_PREFERENCE:
        if contrast in available:
            return contrast
    raise ValueError(f"no known contrast among {list(available)}")


def prepare_study(
    volumes: Mapping[Contrast, sitk.Image],
    reference: Contrast,
    *,
    size: int = 256,
    register: bool = True,
    spacing_mm: float | None = 1.0,
    brain_extraction: str = "off",
) -> PreparedStudy:
    """Bring the available series of one study onto the reference's prepared grid, normalised to [0, 1].

    ``register=True`` rigidly registers every series whose grid differs from the reference's; series already on
    the reference grid (co-registered data) are never moved. ``brain_extraction="deepbet"`` masks every volume
    with the reference's brain and normalises it on the brain (rule 4).
    """
    if reference not in volumes:
        raise ValueError(f"reference contrast {reference} is not among the volumes {sorted(volumes)}")
    reference_image = volumes[reference]
    if reference_image.GetDimension() != 3:
        raise ValueError(f"expected a 3-D reference series, got {reference_image.GetDimension()}-D")
    grid = prepared_grid(reference_image, size=size, spacing_mm=spacing_mm)
    canonical = to_canonical(reference_image)
    extent = [n * sp for n, sp in zip(canonical.GetSize()[:2], canonical.GetSpacing()[:2], strict=True)]
    covered = size * grid.GetSpacing()[0]
    if max(extent) > covered + 1e-3:
        log.warning("field of view %.0f mm is wider than the prepared %.0f mm: its edges are cut", max(extent), covered)
    order = [reference, *[c for c in volumes if c != reference]]
    resampled: dict[Contrast, np.ndarray] = {}
    registrations: dict[Contrast, RegistrationResult] = {}
    for contrast in order:
        image = volumes[contrast]
        if image.GetNumberOfComponentsPerPixel() != 1:
            raise ValueError(f"{contrast}: expected a scalar (grey-level) series")
        transform = None
        if register and contrast != reference and not same_grid(image, reference_image):
            transform = register_rigid(reference_image, image)
        resampled[contrast] = sitk.GetArrayFromImage(resample_onto(image, grid, transform))
        if transform is not None:
            registrations[contrast] = RegistrationResult(transform, float("nan"), float("nan"))
    extracted = None
    if brain_extraction == "off":
        mask = mask_on_grid(reference_image, grid)
    else:
        extracted = extract_brain(reference_image, brain_extraction)
        brain = sitk.Resample(extracted.mask, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
        mask = sitk.GetArrayFromImage(brain).astype(bool)
    for contrast, result in registrations.items():
        before = sitk.GetArrayFromImage(resample_onto(volumes[contrast], grid))
        result.similarity_before = normalised_mutual_information(resampled[reference], before, mask)
        result.similarity_after = normalised_mutual_information(resampled[reference], resampled[contrast], mask)
        log.info(
            "registered %s onto %s: NMI %.4f -> %.4f",
            contrast,
            reference,
            result.similarity_before,
            result.similarity_after,
        )
    windows = {c: intensity_window(resampled[c], mask) for c in order}
    arrays = np.stack([normalise(resampled[c], windows[c]) for c in order])
    if extracted is not None and extracted.is_brain:
        arrays *= mask[None]  # the brain only, as the skull-stripped training volumes
    return PreparedStudy(
        arrays=arrays,
        contrasts=order,
        brain_mask=mask,
        reference=reference,
        grid=grid,
        reference_image=reference_image,
        windows=windows,
        registrations=registrations,
        brain_extraction=extracted,
    )


def restore(prepared: PreparedStudy, synthetic: np.ndarray, *, window_of: Contrast | None = None) -> sitk.Image:
    """Map a [Z, size, size] volume in [0, 1] back onto the reference series' grid and intensity range.

    The result has the reference's size, spacing, origin, direction and pixel type; intensities are
    ``low + y·(high − low)`` with the reference's window (or ``window_of``'s, when that series was available);
    integer series are rounded and clipped to [0, dtype max] (MR magnitudes are never negative). After brain
    extraction everything outside the reference's brain mask is 0.
    """
    low, high = prepared.windows[window_of or prepared.reference]
    scaled = low + np.clip(synthetic.astype(np.float32), 0.0, 1.0) * (high - low)
    restored = _onto_reference(prepared, scaled)
    extracted = prepared.brain_extraction
    if extracted is not None and extracted.is_brain:
        restored = sitk.Mask(restored, extracted.mask, 0.0)
    target = prepared.reference_image
    pixel_type = target.GetPixelID()
    if pixel_type in (sitk.sitkFloat32, sitk.sitkFloat64):
        return sitk.Cast(restored, pixel_type)
    array = np.rint(sitk.GetArrayFromImage(restored))
    info = np.iinfo(sitk.GetArrayViewFromImage(target).dtype)
    out = sitk.GetImageFromArray(np.clip(array, max(info.min, 0), info.max).astype(info.dtype))
    out.CopyInformation(target)
    return out


def restore_map(prepared: PreparedStudy, values: np.ndarray) -> np.ndarray:
    """A [Z, size, size] map (e.g. confidence in [0, 1]) onto the reference grid, values kept as they are."""
    return sitk.GetArrayFromImage(_onto_reference(prepared, values))


def _onto_reference(prepared: PreparedStudy, values: np.ndarray) -> sitk.Image:
    """Float32 values on the prepared grid, resampled (linear) onto the reference series' own grid."""
    expected = tuple(reversed(prepared.grid.GetSize()))
    if values.shape != expected:
        raise ValueError(f"volume has shape {values.shape}, expected {expected} (Z, size, size)")
    on_grid = sitk.GetImageFromArray(values.astype(np.float32))
    on_grid.CopyInformation(prepared.grid)
    return sitk.Resample(on_grid, prepared.reference_image, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
