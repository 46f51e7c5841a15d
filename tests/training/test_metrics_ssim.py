"""Our SSIM is the paper's: torchmetrics' ``structural_similarity_index_measure(preds, gts, data_range=1.0)``.

The authors score one slice at a time (``[1, 1, H, W]``, default reduction); we score batches ``[B, H, W]`` and
keep the map for the brain-masked figure. Agreement is asserted to 0.1 SSIM×100, on synthetic images (always) and
on real slices from ``../shared/data`` through the evaluation's own preprocessing (when the data are there).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

tm_image = pytest.importorskip("torchmetrics.functional.image", reason="torchmetrics not installed")

from training.metrics import slice_metrics, ssim, ssim_map  # noqa: E402 - needs torchmetrics

TOLERANCE = 0.1  # SSIM×100
SHARED_DATA = Path(os.environ.get("CODEBRAIN_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))
REAL_CASES = ("BraTS-GLI-00000-000", "Brats18_TCIA10_639_1")  # BraTS 2023, and the volume scaled to int16 max
REAL_SLICES = (50, 77, 100)


def authors_ssim(prediction: Tensor, target: Tensor) -> Tensor:
    """SSIM×100 per slice exactly as ``utils/metrics_set.py`` calls it: one ``[1, 1, H, W]`` slice at a time."""
    return torch.stack(
        [
            100.0 * tm_image.structural_similarity_index_measure(p[None, None], t[None, None], data_range=1.0)
            for p, t in zip(prediction.float(), target.float(), strict=True)
        ]
    )


def blur(images: Tensor) -> Tensor:
    kernel = torch.ones(1, 1, 5, 5) / 25
    return F.conv2d(F.pad(images[:, None], (2, 2, 2, 2), mode="replicate"), kernel)[:, 0]


def predictions_of(target: Tensor, other: Tensor, brain: Tensor, seed: int) -> dict[str, Tensor]:
    """Plausible syntheses of ``target``: blurred with noise in the brain, another contrast, an offset background."""
    generator = torch.Generator().manual_seed(seed)
    noise = 0.03 * torch.randn(target.shape, generator=generator)
    return {
        "blur+noise": (blur(target) + noise * brain).clamp(0, 1),
        "other contrast": other,
        "offset background": torch.where(brain, blur(target), blur(target) + 0.02).clamp(0, 1),
    }


def assert_matches_authors(prediction: Tensor, target: Tensor, brain: Tensor | None, label: str) -> None:
    """``ssim`` and the table's ``slice_metrics`` against the authors' per-slice call."""
    reference = authors_ssim(prediction, target)
    for source, ours in (
        ("ssim", 100.0 * ssim(prediction, target)),
        ("table", slice_metrics(prediction, target, brain)["ssim"]),
    ):
        worst = float((ours - reference).abs().max())
        assert worst < TOLERANCE, f"{label}, {source}: |ΔSSIM×100| = {worst:.4f}"


def test_ssim_matches_torchmetrics_on_synthetic_images():
    generator = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 96), torch.linspace(-1, 1, 80), indexing="ij")
    brain = (xx**2 + (yy / 1.2) ** 2 < 0.6).expand(4, -1, -1)  # zero background around an ellipse, as on MRI
    texture = blur(torch.rand(4, 96, 80, generator=generator))
    target = torch.where(brain, 0.3 + 0.6 * texture, torch.zeros(()))
    other = torch.where(brain, 1 - target, torch.zeros(()))
    for name, prediction in predictions_of(target, other, brain, seed=1).items():
        assert_matches_authors(prediction, target, brain, name)
    noise = torch.rand(2, 2, 33, 47, generator=generator)  # odd sizes, no structure at all
    assert_matches_authors(noise[0], noise[1], None, "uniform noise")


def test_ssim_is_the_full_reflect_padded_map_and_the_brain_figure_averages_it_inside_the_mask():
    generator = torch.Generator().manual_seed(2)
    target = torch.rand(3, 40, 48, generator=generator)
    prediction = (target + 0.1 * torch.randn(target.shape, generator=generator)).clamp(0, 1)
    values = ssim_map(prediction, target)
    assert values.shape == target.shape  # every pixel, not only the (H−10)×(W−10) valid windows
    assert torch.allclose(ssim(prediction, target), values.mean(dim=(-2, -1)))
    mask = torch.zeros(3, 40, 48, dtype=torch.bool)
    mask[:, 4:20, 6:30] = True
    inside = torch.stack([values[b][mask[b]].mean() for b in range(3)])
    assert torch.allclose(ssim(prediction, target, mask), inside)
    assert torch.allclose(ssim(prediction, target, torch.ones_like(mask)), ssim(prediction, target))


@pytest.fixture(scope="module")
def real_slices() -> list[tuple[str, Tensor, Tensor, Tensor]]:
    """(case, T2 target, T1 as a wrong-contrast prediction, brain mask) on the evaluation's 256² grid."""
    from codebrain_node.contrasts import Contrast
    from training.datasets import find_cases, prepare_case

    folders = [SHARED_DATA / name for name in REAL_CASES]
    if not all((folder / "t2w.nii.gz").is_file() for folder in folders):
        pytest.skip(f"shared data absent: {', '.join(REAL_CASES)} not under {SHARED_DATA} (set CODEBRAIN_SHARED_DATA)")
    out = []
    for folder in folders:
        (case,) = find_cases(folder)
        arrays, mask = prepare_case(case, [Contrast("T1"), Contrast("T2")])
        z = list(REAL_SLICES)
        out.append(
            (case.subject, torch.from_numpy(arrays[1, z]), torch.from_numpy(arrays[0, z]), torch.from_numpy(mask[z]))
        )
    return out


@pytest.mark.shared_data
def test_ssim_matches_torchmetrics_on_real_slices(real_slices):
    for subject, target, other, brain in real_slices:
        for name, prediction in predictions_of(target, other, brain, seed=3).items():
            assert_matches_authors(prediction, target, brain, f"{subject} slices {REAL_SLICES}, {name}")
