"""Rebuild docs/img/native_study.png (needs ../shared/data): ``python docs/native_figure.py``.

A real patient's series as acquired (TCGA-FG-6692-native: skull on, 26 axial slices of 5.5 mm) written as a DICOM
study by ``dicomize`` with FLAIR left out, imputed by the node's offline path with brain extraction (deepbet) and
the shipped weights. Rows: three slices; columns: the acquired T1 (the reference), the acquired T2, the synthetic
FLAIR as the node writes it (on the T1's grid, zero outside the brain), and the real FLAIR the node never saw,
rigidly registered onto the T1 for comparison. Whole field of view, each shown at its own 1st–99th percentile.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import matplotlib
import numpy as np
import SimpleITK as sitk

from codebrain_node.config import load_settings
from codebrain_node.contrasts import Contrast
from codebrain_node.imaging.preprocess import register_rigid, resample_onto, to_canonical
from codebrain_node.imaging.series_io import read_dicom_folder
from codebrain_node.node.dicomize import dicomize_case
from codebrain_node.node.offline import impute_folder

matplotlib.use("Agg")
import matplotlib.pyplot as plt

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
NATIVE = SHARED / "TCGA-FG-6692-native"
OUT = Path(__file__).resolve().parent / "img" / "native_study.png"


def _shown(volume: np.ndarray) -> tuple[float, float]:
    values = volume[volume > 0]
    return (0.0, 1.0) if values.size == 0 else tuple(np.percentile(values, [1, 99]))


def main() -> None:
    with tempfile.TemporaryDirectory() as work:
        study = dicomize_case(NATIVE, Path(work) / "study", vendor="siemens", drop=[Contrast.FLAIR])
        settings = load_settings(None).model_copy(deep=True)
        settings.engine.brain_extraction = "deepbet"
        impute_folder(settings, study.study, Path(work) / "out")
        (synthetic_dir,) = [p for p in (Path(work) / "out").rglob("*") if p.is_dir() and any(p.glob("*.dcm"))]
        t1 = read_dicom_folder(study.series[Contrast.T1])
        t2 = read_dicom_folder(study.series[Contrast.T2])
        synthetic = read_dicom_folder(synthetic_dir)
    real = sitk.ReadImage(str(NATIVE / "t2f.nii.gz"), sitk.sitkFloat32)
    real_on_t1 = resample_onto(real, t1, register_rigid(t1, real))
    columns = {
        "acquired T1 (reference)": to_canonical(t1),
        "acquired T2": to_canonical(resample_onto(t2, t1, register_rigid(t1, t2))),
        "SYNTHETIC FLAIR (node output)": to_canonical(synthetic),
        "real FLAIR (never sent; registered)": to_canonical(real_on_t1),
    }
    arrays = {name: sitk.GetArrayFromImage(image).astype(np.float32) for name, image in columns.items()}
    depth = next(iter(arrays.values())).shape[0]
    rows = [int(depth * f) for f in (0.35, 0.55, 0.75)]
    figure, axes = plt.subplots(len(rows), len(arrays), figsize=(3.2 * len(arrays), 3.4 * len(rows)))
    for column, (name, volume) in enumerate(arrays.items()):
        low, high = _shown(volume)
        for row, z in enumerate(rows):
            axis = axes[row, column]
            axis.imshow(volume[z], cmap="gray", vmin=low, vmax=high)
            axis.set_xticks([]), axis.set_yticks([])
            if row == 0:
                axis.set_title(name, fontsize=10)
            if column == 0:
                axis.set_ylabel(f"slice {z + 1} of {depth}", fontsize=9)
    figure.suptitle("TCGA-FG-6692 as acquired (skull on, 5.5 mm slices): FLAIR withheld and synthesised", fontsize=11)
    figure.tight_layout()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(OUT, dpi=80)
    print(OUT)


if __name__ == "__main__":
    main()
