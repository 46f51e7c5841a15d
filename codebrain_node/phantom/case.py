"""A whole phantom case: anatomy → (lesion) → physics → NIfTI in the BraTS layout or a DICOM study.

This is what ``codebrain-node phantom`` calls (:func:`run_phantom`); tests and the trainer call
:func:`make_phantom_case` directly.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from codebrain_node.contrasts import Contrast
from codebrain_node.phantom.anatomy import Anatomy, add_glioma, lesion_labels, load_anatomy
from codebrain_node.phantom.physics import Sequence, SimulationOptions, simulate

log = logging.getLogger(__name__)

#: File stem per contrast in the BraTS 2023 layout (plus ``pd``, which BraTS lacks).
PHANTOM_FILE_STEMS: dict[Contrast, str] = {
    Contrast.T1: "t1n",
    Contrast.T1GD: "t1c",
    Contrast.T2: "t2w",
    Contrast.FLAIR: "t2f",
    Contrast.PD: "pd",
}
ALL_CONTRASTS = [Contrast.T1, Contrast.T1GD, Contrast.T2, Contrast.PD, Contrast.FLAIR]


@dataclass
class PhantomCase:
    """Co-registered simulated series of one head, with the truth they were simulated from."""

    name: str
    images: dict[Contrast, sitk.Image]
    sequences: dict[Contrast, Sequence]
    lesion: sitk.Image  # BraTS labels: 1 necrosis, 2 oedema, 3 enhancing
    intracranial: sitk.Image  # uint8 mask
    seed: int
    anatomy: str


def make_phantom_case(
    contrasts: list[Contrast] | None = None,
    *,
    seed: int = 0,
    anatomy: str | Anatomy = "mni",
    shared_data: Path | None = None,
    lesion: bool = True,
    skull: bool = True,
    field_strength: float = 3.0,
    resolution_mm: float = 1.0,
    name: str | None = None,
) -> PhantomCase:
    """Simulate one case; the same arguments and seed always give the same voxels."""
    contrasts = list(contrasts or ALL_CONTRASTS)
    rng = np.random.default_rng(seed)
    head = anatomy if isinstance(anatomy, Anatomy) else load_anatomy(anatomy, shared_data)
    # partial volume needs labels finer than the output voxel, not 1 mm under a 4 mm voxel: keep ≥ 2 labels a voxel
    factor = int(resolution_mm / (2 * min(head.geometry.GetSpacing())))
    head = head.downsampled(factor) if factor > 1 else head
    if lesion:
        head = add_glioma(head, rng)
    options = SimulationOptions(field_strength=field_strength, resolution_mm=resolution_mm, skull=skull)
    images, sequences, intracranial = simulate(head, contrasts, rng, options)
    labels = head.image(lesion_labels(head.tissues))
    lesion_image = sitk.Resample(labels, intracranial, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    case_name = name or f"Phantom-{head.name}-{seed:05d}"
    return PhantomCase(case_name, images, sequences, lesion_image, intracranial, seed, head.name)


def write_nifti_case(case: PhantomCase, out_dir: Path) -> Path:
    """Write ``<out>/<case>/<case>-t1n.nii.gz`` … (BraTS layout), ``-seg.nii.gz`` and ``-sequences.json``."""
    folder = Path(out_dir) / case.name
    folder.mkdir(parents=True, exist_ok=True)
    for contrast, image in case.images.items():
        sitk.WriteImage(image, str(folder / f"{case.name}-{PHANTOM_FILE_STEMS[contrast]}.nii.gz"), True)
    sitk.WriteImage(case.lesion, str(folder / f"{case.name}-seg.nii.gz"), True)
    meta = {
        "seed": case.seed,
        "anatomy": case.anatomy,
        "sequences": {str(c): s.as_dict() for c, s in case.sequences.items()},
    }
    (folder / f"{case.name}-sequences.json").write_text(json.dumps(meta, indent=2, default=str))
    return folder


def run_phantom(
    out: Path,
    contrasts: list[Contrast],
    fmt: str = "nifti",
    seed: int = 0,
    anatomy: str = "mni",
    *,
    shared_data: Path | None = None,
    lesion: bool = True,
    skull: bool = True,
    field_strength: float = 3.0,
    resolution_mm: float = 1.0,
) -> Path:
    """Simulate one case and write it as NIfTI (BraTS layout) or as a DICOM study; returns the case folder."""
    fmt = fmt.lower()
    if fmt not in ("nifti", "dicom"):
        raise ValueError(f"format must be 'nifti' or 'dicom', got {fmt!r}")
    case = make_phantom_case(
        contrasts,
        seed=seed,
        anatomy=anatomy,
        shared_data=shared_data,
        lesion=lesion,
        skull=skull,
        field_strength=field_strength,
        resolution_mm=resolution_mm,
    )
    if fmt == "nifti":
        folder = write_nifti_case(case, out)
    else:
        from codebrain_node.phantom.dicom_study import write_dicom_study

        folder = write_dicom_study(case.images, Path(out) / case.name, sequences=case.sequences, seed=seed)
    log.info("phantom %s written to %s", case.name, folder)
    return folder
