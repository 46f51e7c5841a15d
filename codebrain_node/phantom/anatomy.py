"""Anatomies for the phantom: a tissue label volume (1 mm, canonical LPS axial frame) plus an optional glioma.

Two sources:

- **SynthSeg label maps** (``../shared/data/SynthSeg-labels/training_seg_NN.nii.gz``): FreeSurfer brain labels and,
  at ≥ 500, non-brain head tissues. The ≥ 500 labels are undocumented; the mapping in :data:`SYNTHSEG_TISSUES` was
  read off their position (e.g. 515 the skull's cortical bone, 511 the scalp, 506 the eyeballs, 509 the nasal
  mucosa, 514 the dural venous sinuses, 516 the marrow of the skull base and vertebrae);
- **nilearn's MNI152** grey/white-matter probability maps and brain mask, shipped inside the nilearn package (no
  network), with CSF as brain mask minus GM and WM, and dura, skull (with a marrow layer), fat and skin built as
  concentric shells around the intracranial volume.
"""

from __future__ import annotations

import functools
import os
import tempfile
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

import numpy as np
import SimpleITK as sitk


class Tissue(IntEnum):
    """Tissue classes the physics knows relaxation times for."""

    AIR = 0
    WM = 1
    GM = 2
    CSF = 3
    FAT = 4
    SOFT = 5  # muscle, skin, other soft tissue
    BONE = 6  # cortical bone: almost no MR signal
    MARROW = 7
    EYE = 8  # vitreous
    MUCOSA = 9
    VESSEL = 10
    CHOROID = 11  # choroid plexus
    DURA = 12
    NECROSIS = 13
    ENHANCING = 14
    OEDEMA = 15


#: Tissues that belong to the intracranial volume a skull-stripped series keeps.
INTRACRANIAL = (
    Tissue.WM,
    Tissue.GM,
    Tissue.CSF,
    Tissue.CHOROID,
    Tissue.NECROSIS,
    Tissue.ENHANCING,
    Tissue.OEDEMA,
)

_WM_LABELS = (2, 7, 16, 28, 41, 46, 60, 77, 85, 512)
_CSF_LABELS = (4, 5, 14, 15, 24, 43, 44, 72)
_VESSEL_LABELS = (30, 62, 514, 530)
_CHOROID_LABELS = (31, 63)
#: SynthSeg non-brain labels (≥ 500) → tissue; any other label ≥ 500 is soft tissue, any other brain label GM.
SYNTHSEG_TISSUES: dict[int, Tissue] = {
    502: Tissue.SOFT,
    506: Tissue.EYE,
    507: Tissue.SOFT,
    508: Tissue.SOFT,
    509: Tissue.MUCOSA,
    511: Tissue.FAT,
    515: Tissue.BONE,
    516: Tissue.MARROW,
}

#: BraTS 2023 tumour labels, written as ``<case>-seg.nii.gz``.
BRATS_SEG = {Tissue.NECROSIS: 1, Tissue.OEDEMA: 2, Tissue.ENHANCING: 3}


@dataclass
class Anatomy:
    """A tissue label volume [Z, Y, X] (values :class:`Tissue`) with its 1 mm LPS geometry."""

    tissues: np.ndarray  # uint8 [Z, Y, X]
    geometry: sitk.Image  # an image carrying origin/spacing/direction (pixels unused)
    name: str

    def image(self, array: np.ndarray, pixel_type: int | None = None) -> sitk.Image:
        """Wrap an array of this anatomy's shape in its geometry."""
        image = sitk.GetImageFromArray(array)
        image.CopyInformation(self.geometry)
        return sitk.Cast(image, pixel_type) if pixel_type is not None else image

    def downsampled(self, factor: int) -> Anatomy:
        """Every ``factor``-th voxel (nearest neighbour): a coarse anatomy for quick tests and previews."""
        if factor <= 1:
            return self
        tissues = np.ascontiguousarray(self.tissues[::factor, ::factor, ::factor])
        geometry = sitk.GetImageFromArray(tissues)
        geometry.SetSpacing(tuple(s * factor for s in self.geometry.GetSpacing()))
        geometry.SetDirection(self.geometry.GetDirection())
        geometry.SetOrigin(self.geometry.GetOrigin())
        return Anatomy(tissues, geometry, self.name)


def synthseg_tissues(labels: np.ndarray) -> np.ndarray:
    """Map a SynthSeg/FreeSurfer label array onto :class:`Tissue` values."""
    out = np.full(labels.shape, Tissue.AIR, dtype=np.uint8)
    out[(labels > 0) & (labels < 500)] = Tissue.GM
    out[labels >= 500] = Tissue.SOFT
    for group, tissue in (
        (_WM_LABELS, Tissue.WM),
        (_CSF_LABELS, Tissue.CSF),
        (_VESSEL_LABELS, Tissue.VESSEL),
        (_CHOROID_LABELS, Tissue.CHOROID),
    ):
        out[np.isin(labels, group)] = tissue
    for label, tissue in SYNTHSEG_TISSUES.items():
        out[labels == label] = tissue
    return out


def _crop_to_content(image: sitk.Image, margin: int = 4) -> sitk.Image:
    array = sitk.GetArrayViewFromImage(image)
    nz = np.nonzero(array)
    if not nz[0].size:
        return image
    lower = [max(int(ax.min()) - margin, 0) for ax in nz][::-1]
    upper = [min(int(ax.max()) + margin + 1, n) for ax, n in zip(nz, array.shape, strict=True)][::-1]
    return image[lower[0] : upper[0], lower[1] : upper[1], lower[2] : upper[2]]


def load_synthseg(path: Path | str) -> Anatomy:
    """A SynthSeg whole-head label map as an :class:`Anatomy` (re-oriented to LPS, cropped to the head)."""
    labels = sitk.DICOMOrient(sitk.ReadImage(str(path), sitk.sitkInt32), "LPS")
    tissues = sitk.GetImageFromArray(synthseg_tissues(sitk.GetArrayFromImage(labels)))
    tissues.CopyInformation(labels)
    tissues = _crop_to_content(tissues)
    return Anatomy(sitk.GetArrayFromImage(tissues).astype(np.uint8), tissues, Path(path).name.split(".")[0])


def _nifti_to_sitk(nifti: object) -> sitk.Image:
    """nibabel image → SimpleITK image, through a temporary file so the RAS→LPS conversion stays ITK's."""
    import nibabel

    handle, name = tempfile.mkstemp(suffix=".nii.gz")
    os.close(handle)
    try:
        nibabel.save(nifti, name)
        return sitk.ReadImage(name, sitk.sitkFloat32)
    finally:
        os.unlink(name)


def _shell(inside: np.ndarray, outer_mm: int) -> np.ndarray:
    image = sitk.GetImageFromArray(inside.astype(np.uint8))
    grown = sitk.BinaryDilate(image, [outer_mm] * 3, sitk.sitkBall)
    return sitk.GetArrayFromImage(grown).astype(bool)


@functools.lru_cache(maxsize=1)
def _mni152_tissues() -> Anatomy:
    return _build_mni152()


def load_mni152() -> Anatomy:
    """nilearn's bundled MNI152 GM/WM maps and brain mask (offline) with a synthetic skull and scalp (cached)."""
    cached = _mni152_tissues()
    return Anatomy(cached.tissues.copy(), cached.geometry, cached.name)


def _build_mni152() -> Anatomy:
    from nilearn import datasets

    gm_image = _nifti_to_sitk(datasets.load_mni152_gm_template(resolution=1))
    wm = sitk.GetArrayFromImage(_nifti_to_sitk(datasets.load_mni152_wm_template(resolution=1)))
    brain = sitk.GetArrayFromImage(_nifti_to_sitk(datasets.load_mni152_brain_mask(resolution=1))) > 0.5
    gm = sitk.GetArrayFromImage(gm_image)
    pad = 20  # room for the skull and scalp outside the template's brain
    gm, wm, brain = (np.pad(a, pad) for a in (gm, wm, brain))
    csf = np.clip(brain.astype(np.float32) - gm - wm, 0, 1)
    tissues = np.full(gm.shape, Tissue.AIR, dtype=np.uint8)
    stacked = np.stack([wm, gm, csf])
    classes = np.array([Tissue.WM, Tissue.GM, Tissue.CSF], dtype=np.uint8)
    tissues[brain] = classes[np.argmax(stacked[:, brain], axis=0)]
    # shells, inside out: dura 1 mm, bone 2 mm, marrow 2 mm, bone 2 mm, fat 4 mm, skin 2 mm
    layers = [(1, Tissue.DURA), (3, Tissue.BONE), (5, Tissue.MARROW), (7, Tissue.BONE), (11, Tissue.FAT)]
    layers.append((13, Tissue.SOFT))
    previous = brain
    for outer, tissue in layers:
        grown = _shell(brain, outer)
        tissues[grown & ~previous] = tissue
        previous = grown
    geometry = sitk.GetImageFromArray(tissues)
    origin = gm_image.TransformIndexToPhysicalPoint((-pad, -pad, -pad))
    geometry.SetSpacing(gm_image.GetSpacing())
    geometry.SetDirection(gm_image.GetDirection())
    geometry.SetOrigin(origin)
    geometry = sitk.DICOMOrient(geometry, "LPS")
    return Anatomy(sitk.GetArrayFromImage(geometry).astype(np.uint8), geometry, "mni152")


def default_shared_data() -> Path:
    """``../shared/data`` beside the repository checkout."""
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"


def synthseg_paths(shared_data: Path) -> list[Path]:
    """The SynthSeg label maps in a shared data folder, sorted (``synthseg:N`` picks the N-th, from 1)."""
    return sorted((Path(shared_data) / "SynthSeg-labels").glob("*.nii*"))


def load_anatomy(spec: str, shared_data: Path | None = None) -> Anatomy:
    """``"mni"`` or ``"synthseg:N"`` (1-based index into ``shared_data/SynthSeg-labels``) or a label-map path."""
    if spec.lower() in ("mni", "mni152"):
        return load_mni152()
    if spec.lower().startswith("synthseg"):
        index = int(spec.split(":", 1)[1]) if ":" in spec else 1
        paths = synthseg_paths(shared_data if shared_data is not None else default_shared_data())
        if not paths:
            raise FileNotFoundError(f"no SynthSeg label maps under {shared_data}; use --anatomy mni")
        if not 1 <= index <= len(paths):
            raise ValueError(f"synthseg index {index} out of range 1..{len(paths)}")
        return load_synthseg(paths[index - 1])
    if Path(spec).is_file():
        return load_synthseg(Path(spec))
    raise ValueError(f"unknown anatomy {spec!r}: use 'mni', 'synthseg:N' or a label-map file")


# --- lesion ---------------------------------------------------------------------------------------------------


def _smooth_noise(shape: tuple[int, ...], rng: np.random.Generator, sigma: float) -> np.ndarray:
    noise = sitk.GetImageFromArray(rng.standard_normal(shape).astype(np.float32))
    smooth = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(noise, sigma))
    return smooth / max(float(np.abs(smooth).max()), 1e-6)


def add_glioma(anatomy: Anatomy, rng: np.random.Generator) -> Anatomy:
    """Insert a glioma-like lesion (necrotic core, enhancing rim, oedema) of random size and place into the brain.

    The centre is drawn among white-matter voxels deep enough for the tumour; the outline is an ellipsoid with a
    smooth random boundary. Oedema spreads only through brain tissue (WM, GM), never into CSF or outside the brain.
    """
    tissues = anatomy.tissues.copy()
    brain = np.isin(tissues, (Tissue.WM, Tissue.GM))
    spacing = np.array(anatomy.geometry.GetSpacing())[::-1]  # z, y, x
    depth = sitk.GetArrayFromImage(
        sitk.SignedMaurerDistanceMap(
            anatomy.image(np.isin(tissues, INTRACRANIAL).astype(np.uint8)), insideIsPositive=True, useImageSpacing=True
        )
    )
    enhancing_radius = float(rng.uniform(8.0, 20.0))
    candidates = np.argwhere((tissues == Tissue.WM) & (depth > enhancing_radius + 4))
    if len(candidates) == 0:
        candidates = np.argwhere(tissues == Tissue.WM)
    centre = candidates[rng.integers(len(candidates))]
    window = int(np.ceil((enhancing_radius * 2.6) / spacing.min()))
    lo = np.maximum(centre - window, 0)
    hi = np.minimum(centre + window + 1, tissues.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    grids = np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi, strict=True)], indexing="ij")
    axes = rng.uniform(0.75, 1.25, size=3)
    offsets = [(g - c) * s / a for g, c, s, a in zip(grids, centre, spacing, axes, strict=True)]
    radius = np.sqrt(sum(o**2 for o in offsets))
    radius = radius * (1.0 + 0.2 * _smooth_noise(radius.shape, rng, 4.0))
    necrotic_radius = enhancing_radius * float(rng.uniform(0.45, 0.75))
    oedema_radius = enhancing_radius + float(rng.uniform(6.0, 20.0))
    local = tissues[box]
    local_brain = brain[box] | np.isin(local, (Tissue.NECROSIS, Tissue.ENHANCING, Tissue.OEDEMA))
    local[(radius < oedema_radius) & local_brain] = Tissue.OEDEMA
    local[(radius < enhancing_radius) & (local_brain | (local == Tissue.CSF))] = Tissue.ENHANCING
    local[(radius < necrotic_radius) & (local == Tissue.ENHANCING)] = Tissue.NECROSIS
    tissues[box] = local
    return Anatomy(tissues, anatomy.geometry, anatomy.name)


def lesion_labels(tissues: np.ndarray) -> np.ndarray:
    """BraTS-style tumour labels (1 necrosis, 2 oedema, 3 enhancing, 0 elsewhere) from a tissue volume."""
    out = np.zeros(tissues.shape, dtype=np.uint8)
    for tissue, label in BRATS_SEG.items():
        out[tissues == tissue] = label
    return out
