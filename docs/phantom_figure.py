"""Rebuild docs/img/phantom_vs_real.png (needs ../shared/data): ``python docs/phantom_figure.py [SEED]``."""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib
import numpy as np
import SimpleITK as sitk

from codebrain_node.contrasts import Contrast
from codebrain_node.imaging.preprocess import prepare_study
from codebrain_node.phantom import make_phantom_case

matplotlib.use("Agg")
import matplotlib.pyplot as plt

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
REAL_CASE = SHARED / "BraTS-GLI-00001-000"
REAL_FILES = {Contrast.T1: "t1n", Contrast.T1GD: "t1c", Contrast.T2: "t2w", Contrast.FLAIR: "t2f"}
ORDER = [Contrast.T1, Contrast.T1GD, Contrast.T2, Contrast.PD, Contrast.FLAIR]


def main(seed: int = 14) -> None:
    volumes = {c: sitk.ReadImage(str(REAL_CASE / f"{n}.nii.gz")) for c, n in REAL_FILES.items()}
    real = prepare_study(volumes, Contrast.T1, register=False)
    case = make_phantom_case(ORDER, seed=seed, anatomy="synthseg:1", shared_data=SHARED, skull=False)
    phantom = prepare_study(case.images, Contrast.T1, register=False)
    lesion = sitk.GetArrayFromImage(
        sitk.Resample(case.lesion, phantom.grid, sitk.Transform(), sitk.sitkNearestNeighbor)
    )
    # the slice through the enhancing rim closest to the level where the brain is widest (lateral ventricles)
    rim_slices = np.nonzero((lesion == 3).sum(axis=(1, 2)) > 20)[0]
    widest = np.argmax(phantom.brain_mask.sum(axis=(1, 2)))
    z_phantom = int(rim_slices[np.argmin(np.abs(rim_slices - widest))])
    z_real = 75
    fig, axes = plt.subplots(2, len(ORDER), figsize=(15, 6.4), facecolor="black")
    for j, contrast in enumerate(ORDER):
        for i, (prepared, z, label) in enumerate(((phantom, z_phantom, "phantom"), (real, z_real, REAL_CASE.name))):
            ax = axes[i, j]
            ax.set_facecolor("black")
            ax.set_xticks([])
            ax.set_yticks([])
            if contrast in prepared.contrasts:
                ax.imshow(prepared.array(contrast)[z][16:240, 16:240], cmap="gray", vmin=0, vmax=1)
            else:
                ax.text(0.5, 0.5, "not acquired", color="gray", ha="center", va="center", transform=ax.transAxes)
            ax.set_title(f"{label} {contrast}", color="white", fontsize=10)
    fig.suptitle(
        f"Phantom (SynthSeg label map 1, 3 T, seed {seed}, skull-stripped) vs the real BraTS case; "
        "both through prepare_study",
        color="white",
        fontsize=11,
    )
    plt.tight_layout()
    plt.savefig(Path(__file__).parent / "img" / "phantom_vs_real.png", dpi=80, facecolor="black")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 14)
