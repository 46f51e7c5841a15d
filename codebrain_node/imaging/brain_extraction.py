"""Brain extraction for the shared preprocessing: the model was trained on skull-stripped volumes, so it should see
the brain only, normalised on the brain.

The extractor is deepbet (Fisch L et al., "deepbet: Fast brain extraction of T1-weighted MRI using Convolutional
Neural Networks", Comput Biol Med 2024; PyPI ``deepbet``, MIT licence): two small 3-D U-Nets, a bounding-box
network at 128³ and the mask network at 256³ inside that box, whose TorchScript weights ship inside its wheel, so
nothing is downloaded at run time; it runs on the CPU with the torch the node already has. Chosen over
``brainextractor`` (a Python port of FSL BET, no weights) for its masks: on TCGA-FG-6692's native T1 (26 slices
of 5.5 mm, skull and neck on) against the brain of its skull-stripped, co-registered twin, Dice 0.968 against
BET's 0.894 (which leaks into the orbits and the scalp) and Otsu's head mask's 0.671; 11 s against 38 s a study
on two CPU cores. Though trained on T1-weighted images it also masks the T2 series (Dice 0.950): every contrast
can be the reference.

Both networks expect a volume on about 1 mm voxels in nibabel's closest-canonical (RAS) voxel order (deepbet
squeezes its box into 256³ voxels whatever their size), so the reference is resampled linearly (B-spline costs
5 s more and deepbet itself resizes by nearest neighbour) onto a 1 mm isotropic grid in that order, masked there,
and the mask brought back onto the reference's own grid (linear interpolation of the binary mask, > 0.5: the
partial volume of a thick slice).

**Already skull-stripped.** A volume whose voxels outside its foreground are (almost) all exactly zero, with a
foreground no larger than a brain (``MAX_BRAIN_ML``), has been skull-stripped already (BraTS, the training data):
its foreground is its brain (the mask training normalises on), and deepbet is not run (it would cost 7–10 s a
study and only shave the edge of a mask someone already drew).

**Fallback.** When deepbet is not installed, fails, or gives an implausible mask (under ``MIN_BRAIN_ML`` or over
``MAX_BRAIN_ML``, or mostly outside the head), the head mask of :func:`~codebrain_node.imaging.preprocess.
foreground_mask` (Otsu, largest component, holes filled: the whole head on skull-on data) is used instead, which
is the preprocessing without brain extraction; :class:`BrainMask` says which and why, for the job's log.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import SimpleITK as sitk

log = logging.getLogger(__name__)

#: The values of ``engine.brain_extraction``: ``off`` keeps the head mask (the preprocessing before #14).
BRAIN_EXTRACTION_METHODS = ("off", "deepbet")

#: A mask outside these volumes (ml) is no brain: a partial-coverage slab holds far more than 50 ml of brain, and
#: adult intracranial volumes stay near or under 2,000 ml (the MNI152 head, larger than most, holds 2,000).
MIN_BRAIN_ML = 50.0
MAX_BRAIN_ML = 2500.0
#: A volume with at least this fraction of exact zeros outside its foreground has been skull-stripped already
#: (acquired MR carries noise in the air; a skull-stripped volume is 0 there).
MIN_ZERO_OUTSIDE = 0.99
#: At least this fraction of the brain mask must lie inside the head mask.
MIN_INSIDE_HEAD = 0.9
#: The grid the networks see (mm).
WORKING_SPACING_MM = 1.0


@dataclass(frozen=True)
class BrainMask:
    """A brain (or fallback head) mask on an image's own grid, and how it was made."""

    mask: sitk.Image  # uint8, the image's size, spacing, origin and direction
    method: str  # "deepbet" or "head mask"
    volume_ml: float
    seconds: float
    fallback_reason: str = ""

    @property
    def is_brain(self) -> bool:
        """True when this is a brain mask, not the fallback head mask."""
        return not self.fallback_reason

    def describe(self) -> str:
        """One line for the job's log and audit."""
        if self.is_brain:
            return f"brain extraction: {self.method}, {self.volume_ml:.0f} ml in {self.seconds:.1f} s"
        return f"brain extraction fell back to the head mask ({self.fallback_reason}): {self.volume_ml:.0f} ml"


def extract_brain(image: sitk.Image, method: str = "deepbet", *, device: str = "cpu") -> BrainMask:
    """The brain of a (skull-on or skull-stripped) 3-D MR volume, or the head mask with the reason."""
    if method not in BRAIN_EXTRACTION_METHODS or method == "off":
        raise ValueError(f"brain extraction method must be one of {BRAIN_EXTRACTION_METHODS[1:]}, got {method!r}")
    clock = time.perf_counter()
    head = _head_mask(image)
    if skull_stripped_already(sitk.GetArrayViewFromImage(image), head, _voxel_ml(image)):
        seconds = time.perf_counter() - clock
        result = BrainMask(_as_image(head, image), "already skull-stripped", _volume_ml(head, image), seconds)
        log.info("%s", result.describe())
        return result
    try:
        brain = _deepbet_mask(image, device)
    except ImportError as exc:
        return _fallback(image, head, clock, f"deepbet is not installed: {exc}")
    except Exception as exc:  # the network's own failure must not fail the study: the head mask still works
        return _fallback(image, head, clock, f"deepbet failed: {type(exc).__name__}: {exc}")
    reason = implausible(brain, head, _voxel_ml(image))
    if reason:
        return _fallback(image, head, clock, reason)
    result = BrainMask(_as_image(brain, image), method, _volume_ml(brain, image), time.perf_counter() - clock)
    log.info("%s", result.describe())
    return result


def skull_stripped_already(volume: np.ndarray, foreground: np.ndarray, voxel_ml: float) -> bool:
    """True when ``volume`` is a brain already: exact zeros outside its ``foreground``, which is brain-sized."""
    outside = ~foreground
    if not outside.any() or not foreground.any():
        return False
    if float(foreground.sum()) * voxel_ml > MAX_BRAIN_ML:
        return False
    return float((volume[outside] == 0).mean()) >= MIN_ZERO_OUTSIDE


def implausible(brain: np.ndarray, head: np.ndarray, voxel_ml: float) -> str:
    """Why a mask cannot be a brain ("" when it can): too small, too large, or outside the head."""
    volume = float(brain.sum()) * voxel_ml
    if volume < MIN_BRAIN_ML:
        return f"mask of {volume:.0f} ml is under {MIN_BRAIN_ML:.0f} ml"
    if volume > MAX_BRAIN_ML:
        return f"mask of {volume:.0f} ml is over {MAX_BRAIN_ML:.0f} ml"
    inside = float((brain & head).sum()) / float(brain.sum())
    if inside < MIN_INSIDE_HEAD:
        return f"only {100 * inside:.0f} % of the mask lies inside the head"
    return ""


def _fallback(image: sitk.Image, head: np.ndarray, clock: float, reason: str) -> BrainMask:
    seconds = time.perf_counter() - clock
    result = BrainMask(_as_image(head, image), "head mask", _volume_ml(head, image), seconds, reason)
    log.warning("%s", result.describe())
    return result


def _head_mask(image: sitk.Image) -> np.ndarray:
    from codebrain_node.imaging.preprocess import foreground_mask  # preprocess imports this module

    return foreground_mask(sitk.GetArrayFromImage(image))


def _voxel_ml(image: sitk.Image) -> float:
    return float(np.prod(image.GetSpacing())) / 1000.0


def _volume_ml(mask: np.ndarray, image: sitk.Image) -> float:
    return float(mask.sum()) * _voxel_ml(image)


def _as_image(mask: np.ndarray, like: sitk.Image) -> sitk.Image:
    out = sitk.GetImageFromArray(mask.astype(np.uint8))
    out.CopyInformation(like)
    return out


def working_grid(image: sitk.Image, spacing_mm: float = WORKING_SPACING_MM) -> sitk.Image:
    """An isotropic grid covering ``image`` in closest-canonical RAS voxel order (what deepbet reads)."""
    canonical = sitk.DICOMOrient(image, "RAS")  # i towards the right, j anterior, k superior: nibabel's canonical
    old_spacing = np.array(canonical.GetSpacing())
    size = [max(round(n * s / spacing_mm), 1) for n, s in zip(canonical.GetSize(), old_spacing, strict=True)]
    direction = np.array(canonical.GetDirection()).reshape(3, 3)
    # same outer edges: the first voxel centre moves by half the difference of the voxel sizes
    origin = np.array(canonical.GetOrigin()) + direction @ ((spacing_mm - old_spacing) / 2)
    grid = sitk.Image(size, sitk.sitkFloat32)
    grid.SetSpacing([spacing_mm] * 3)
    grid.SetDirection(canonical.GetDirection())
    grid.SetOrigin([float(v) for v in origin])
    return grid


@lru_cache(maxsize=2)
def _deepbet(device: str) -> Any:
    """deepbet's two networks, loaded once a process (about 3 s)."""
    from deepbet.bet import BrainExtraction

    return BrainExtraction(no_gpu=device != "cuda")


def _deepbet_mask(image: sitk.Image, device: str) -> np.ndarray:
    """deepbet's mask of ``image`` ([Z, Y, X] bool on the image's own grid)."""
    extractor = _deepbet(device)
    grid = working_grid(image)
    working = sitk.Resample(sitk.Cast(image, sitk.sitkFloat32), grid, sitk.Transform(), sitk.sitkLinear, 0.0)
    volume = np.clip(sitk.GetArrayFromImage(working), 0.0, None).transpose(2, 1, 0).copy()  # [i, j, k] as nibabel
    probability = extractor.run_model(volume)
    mask = extractor.postprocess(probability > 0.5)  # largest component, voids filled
    on_grid = sitk.GetImageFromArray(np.asarray(mask, dtype=np.float32).transpose(2, 1, 0).copy())
    on_grid.CopyInformation(grid)
    back = sitk.Resample(on_grid, image, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(back) > 0.5
