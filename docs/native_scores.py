"""Score the synthetic series of both native studies inside the brain (issue #14): ``python docs/native_scores.py``.

Needs ../shared/data. Each native study (skull on, thick slices, its own grids) is written as DICOM by
``dicomize`` with one contrast left out and imputed by the node's offline path (``impute_folder``, the shipped
weights) twice: ``engine.brain_extraction`` off and deepbet. The left-out series and the nearest contrast (the
acquired series a radiologist would look at instead: T1 for T1Gd, T2 for FLAIR) are rigidly registered onto the
T1 reference and normalised on their p0.5–p99.5 inside deepbet's brain mask of the reference. The synthetic is
scored twice: as written, i.e. mapped back to the model's [0, 1] output through the window the engine restored it
with (the reference's, ``restore``) — how ``evaluate`` scores held-out cases — and re-normalised on its own
p0.5–p99.5 like the acquired volumes, which discards the model's intensity calibration (a synthetic without the
acquired T1Gd's bright vessels gets a lower p99.5, so its whole brain is shifted up). Scored inside that brain,
slice by slice on the reference's slices with brain (PSNR dB, SSIM ×100 as ``evaluate``: the SSIM map averaged
inside the brain). Prints a Markdown table.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from codebrain_node.config import load_settings
from codebrain_node.contrasts import Contrast
from codebrain_node.engine.weights import load_model
from codebrain_node.imaging.brain_extraction import extract_brain
from codebrain_node.imaging.preprocess import (
    intensity_window,
    normalise,
    prepare_study,
    register_rigid,
    resample_onto,
    serving_size,
)
from codebrain_node.imaging.series_io import read_dicom_folder
from codebrain_node.node.dicomize import dicomize_case
from codebrain_node.node.offline import impute_folder
from training.datasets import find_cases
from training.metrics import slice_metrics

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
#: (study, dropped contrast, the acquired contrast nearest to it)
STUDIES = (
    ("TCGA-FG-6692-native", Contrast.T1GD, Contrast.T1),
    ("TCGA-FG-6692-native", Contrast.FLAIR, Contrast.T2),
    ("OpenMS-patient01-study1-native", Contrast.FLAIR, Contrast.T2),
)


def on_reference(path: Path, reference: sitk.Image) -> np.ndarray:
    """A NIfTI series of the case rigidly registered and resampled onto the reference, as a [Z, Y, X] array."""
    image = sitk.ReadImage(str(path), sitk.sitkFloat32)
    return sitk.GetArrayFromImage(resample_onto(image, reference, register_rigid(reference, image)))


def normalised(volume: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """The volume on its own p0.5–p99.5 inside the brain, as the preprocessing normalises a series."""
    return normalise(volume, intensity_window(volume, brain))


def as_written(synthetic: np.ndarray, reference: sitk.Image, brain_extraction: str) -> np.ndarray:
    """The model's [0, 1] output back from a written series: ``restore`` scaled it by the reference's window, which
    ``prepare_study`` computes from the reference alone (on the head, or on the brain with extraction)."""
    size = serving_size(reference, minimum=256)
    prepared = prepare_study({Contrast.T1: reference}, Contrast.T1, size=size, brain_extraction=brain_extraction)
    return normalise(synthetic, prepared.windows[Contrast.T1])


def score(prediction: np.ndarray, truth: np.ndarray, brain: np.ndarray) -> tuple[float, float]:
    keep = brain.any(axis=(1, 2))
    pred, real, mask = (torch.from_numpy(np.ascontiguousarray(a[keep])) for a in (prediction, truth, brain))
    figures = slice_metrics(pred, real, mask)
    return float(figures["psnr_brain"].mean()), float(figures["ssim_brain"].mean())


def main() -> None:
    model = load_model(None)
    cases = {case.subject: case for case in find_cases(SHARED)}
    rows = []
    for study_name, dropped, nearest in STUDIES:
        folder = SHARED / study_name
        with tempfile.TemporaryDirectory() as work:
            study = dicomize_case(folder, Path(work) / "study", vendor="siemens", drop=[dropped])
            reference = read_dicom_folder(study.series[Contrast.T1])
            brain = sitk.GetArrayFromImage(extract_brain(reference).mask).astype(bool)
            paths = cases[study_name].paths
            truth = normalised(on_reference(paths[dropped], reference), brain)
            copied = normalised(on_reference(paths[nearest], reference), brain)
            scores = {"nearest": score(copied, truth, brain)}
            for mode in ("off", "deepbet"):
                settings = load_settings(None).model_copy(deep=True)
                settings.engine.brain_extraction = mode
                clock = time.perf_counter()
                impute_folder(settings, study.study, Path(work) / mode, synthesize=[dropped], model=model)
                seconds = time.perf_counter() - clock
                (series,) = [p for p in (Path(work) / mode).rglob("*") if p.is_dir() and any(p.glob("*.dcm"))]
                synthetic = sitk.GetArrayFromImage(sitk.Cast(read_dicom_folder(series), sitk.sitkFloat32))
                scores[mode] = score(as_written(synthetic, reference, mode), truth, brain)
                scores[f"{mode}, re-normalised"] = score(normalised(synthetic, brain), truth, brain)
                scores[f"{mode} s"] = (seconds,)
        rows.append((study_name, dropped, nearest, scores))
        print(rows[-1], flush=True)
    print(f"\nweights: {model.name} {model.version}")
    columns = ("nearest", "off", "deepbet", "off, re-normalised", "deepbet, re-normalised")
    print(f"| study, dropped | {' | '.join(columns)} | job time off / deepbet |")
    print("| --- " * (len(columns) + 2) + "|")
    for study_name, dropped, nearest, s in rows:
        cells = " | ".join(f"{s[c][0]:.2f} / {s[c][1]:.1f}" for c in columns)
        seconds = f"{s['off s'][0]:.0f} s / {s['deepbet s'][0]:.0f} s"
        print(f"| {study_name}, {dropped} (nearest: {nearest}) | {cells} | {seconds} |")


if __name__ == "__main__":
    main()
