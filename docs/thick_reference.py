"""What the model sees when the reference series is thick, measured (issue #14): ``python docs/thick_reference.py``.

Needs ../shared/data. Held-out co-registered cases (1 mm isotropic, skull-stripped) are turned into thick-slice
studies by averaging every ``SLAB`` consecutive axial slices into one slab (what a 5 mm acquisition integrates), all
contrasts alike, so the reference (T1) itself is thick. Both studies go through the engine's own steps
(``prepare_study`` → ``run_model``) with the shipped weights; each synthetic contrast is scored against the same
contrast prepared the same way (thin against thin, thick against thick), inside the brain, on [0, 1] intensities
(PSNR dB, SSIM ×100 as ``evaluate``), beside the nearest contrast (the prepared source copied, no intensity
mapping: T1 for T1Gd, T2 for FLAIR). Prints a Markdown table.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from codebrain_node.contrasts import Contrast
from codebrain_node.engine.weights import load_model
from codebrain_node.engine.worker import run_model
from codebrain_node.imaging.preprocess import prepare_study, serving_size
from training.datasets import find_cases
from training.metrics import slice_metrics

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CASES = ("Brats18_CBICA_AVG_1", "TCGA-FG-6692", "Brats18_2013_11_1")
FOUR = (Contrast.T1, Contrast.T1GD, Contrast.T2, Contrast.FLAIR)
SLAB = 5
#: (inputs, target, the contrast the nearest baseline copies)
PATTERNS = (
    ((Contrast.T1, Contrast.T2, Contrast.FLAIR), Contrast.T1GD, Contrast.T1),
    ((Contrast.T1, Contrast.T1GD, Contrast.T2), Contrast.FLAIR, Contrast.T2),
)


def thick(image: sitk.Image, slab: int) -> sitk.Image:
    """Average every ``slab`` axial slices into one (BinShrink: the mean of each block, spacing × slab)."""
    return sitk.BinShrink(image, [1, 1, slab])


def score(prediction: np.ndarray, truth: np.ndarray, brain: np.ndarray) -> tuple[float, float]:
    """Mean brain PSNR and SSIM×100 over the slices with brain."""
    keep = brain.any(axis=(1, 2))
    figures = slice_metrics(
        torch.from_numpy(prediction[keep]), torch.from_numpy(truth[keep]), torch.from_numpy(brain[keep])
    )
    return float(figures["psnr_brain"].mean()), float(figures["ssim_brain"].mean())


def main() -> None:
    model = load_model(None)
    cases = {case.subject: case for case in find_cases(SHARED)}
    rows = []
    for case in CASES:
        volumes = {c: sitk.ReadImage(str(cases[case].paths[c]), sitk.sitkFloat32) for c in FOUR}
        for label, study in (("1 mm", volumes), (f"{SLAB} mm", {c: thick(v, SLAB) for c, v in volumes.items()})):
            for inputs, target, nearest in PATTERNS:
                size = serving_size(study[Contrast.T1])
                given = prepare_study({c: study[c] for c in inputs}, Contrast.T1, size=size, register=False)
                truth = prepare_study({Contrast.T1: study[Contrast.T1], target: study[target]}, Contrast.T1, size=size)
                stacked = np.stack([given.array(c) for c in inputs])
                output, _ = run_model(model, stacked, list(inputs), 8, given.brain_mask.any(axis=(1, 2)))
                synthetic = output[model.contrasts.index(target)]
                brain = given.brain_mask
                ours = score(synthetic, truth.array(target), brain)
                copy = score(given.array(nearest), truth.array(target), brain)
                slices = int(brain.any(axis=(1, 2)).sum())
                rows.append((case, label, slices, "+".join(map(str, inputs)), str(target), *ours, *copy))
                print(rows[-1], flush=True)
    print("\n| case | reference | slices | inputs → target | CodeBrain PSNR / SSIM | nearest PSNR / SSIM |")
    print("| --- | --- | --- | --- | --- | --- |")
    for case, label, slices, inputs, target, p, s, np_, ns in rows:
        print(f"| {case} | {label} | {slices} | {inputs} → {target} | {p:.2f} / {s:.1f} | {np_:.2f} / {ns:.1f} |")
    for label in ("1 mm", f"{SLAB} mm"):
        mine = [r for r in rows if r[1] == label]
        print(
            f"| mean | {label} | | | {np.mean([r[5] for r in mine]):.2f} / {np.mean([r[6] for r in mine]):.1f} "
            f"| {np.mean([r[7] for r in mine]):.2f} / {np.mean([r[8] for r in mine]):.1f} |"
        )


if __name__ == "__main__":
    main()
