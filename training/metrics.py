"""Per-slice image-quality figures on [0, 1] intensities, as the CodeBrain paper reports them.

- PSNR with data range 1: 10·log10(1 / MSE), MSE floored at 1e-10 so a perfect slice scores 100 dB, not ∞;
- SSIM ×100: torchmetrics' ``structural_similarity_index_measure(preds, target, data_range=1.0)``, the call the
  authors make (``utils/metrics_set.py``): Wang et al. (2004) with an 11×11 Gaussian window (σ = 1.5), K1 = 0.01,
  K2 = 0.03, population statistics. Since torchmetrics 1.4.2 the image is reflect-padded by 5 px and the SSIM map
  is averaged over every pixel; older versions (and scikit-image) average only the windows fully inside the image,
  which differs by up to ±2 SSIM×100 on brain slices, hence the version floor below;
- MAE ×1000.

Brain-masked variants average the squared/absolute error and the same full-size SSIM map over brain pixels only.
"""

from __future__ import annotations

import math

import torch
import torchmetrics
from torch import Tensor
from torchmetrics.functional.image import structural_similarity_index_measure

MSE_FLOOR = 1e-10
METRIC_NAMES = ("psnr", "ssim", "mae")
SSIM_SINCE = (1, 4, 2)  # the first torchmetrics that reflect-pads and averages the full map
SSIM_IMPLEMENTATION = (
    f"torchmetrics {torchmetrics.__version__} structural_similarity_index_measure: data_range 1, "
    "Gaussian 11x11 sigma 1.5, reflect padding, mean of the full map (brain: over brain pixels)"
)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("+")[0].split(".")[:3] if part.isdigit())


if _version(torchmetrics.__version__) < SSIM_SINCE:
    raise ImportError(
        f"torchmetrics {torchmetrics.__version__} computes SSIM over valid windows only; "
        f"the paper's figures need torchmetrics >= {'.'.join(map(str, SSIM_SINCE))}"
    )


def _masked_mean(values: Tensor, mask: Tensor | None) -> Tensor:
    """Mean over the last two dims of ``[B, H, W]``, inside ``mask`` when given (NaN for an empty mask)."""
    if mask is None:
        return values.mean(dim=(-2, -1))
    weights = mask.to(values.dtype)
    return (values * weights).sum(dim=(-2, -1)) / weights.sum(dim=(-2, -1))


def psnr(prediction: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """``[B, H, W]`` pairs → PSNR in dB per slice (data range 1)."""
    mse = _masked_mean((prediction.float() - target.float()).pow(2), mask)
    return 10.0 * torch.log10(1.0 / mse.clamp_min(MSE_FLOOR))


def mae(prediction: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """``[B, H, W]`` pairs → mean absolute error per slice (not scaled)."""
    return _masked_mean((prediction.float() - target.float()).abs(), mask)


def ssim_map(prediction: Tensor, target: Tensor) -> Tensor:
    """``[B, H, W]`` pairs → torchmetrics' SSIM map, one value per pixel ``[B, H, W]`` (its mean is the SSIM)."""
    _, values = structural_similarity_index_measure(
        prediction.float().unsqueeze(1), target.float().unsqueeze(1), data_range=1.0, return_full_image=True
    )
    return values.squeeze(1)


def ssim(prediction: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """``[B, H, W]`` pairs → mean SSIM per slice (in [−1, 1]); masked: over brain pixels of the same map."""
    return _masked_mean(ssim_map(prediction, target), mask)


def slice_metrics(prediction: Tensor, target: Tensor, brain_mask: Tensor | None = None) -> dict[str, Tensor]:
    """The table's figures per slice: psnr, ssim (×100), mae (×1000), and each again inside the brain."""
    similarity = ssim_map(prediction, target)  # one map serves the whole-slice and the brain figure
    out = {
        "psnr": psnr(prediction, target),
        "ssim": 100.0 * _masked_mean(similarity, None),
        "mae": 1000.0 * mae(prediction, target),
    }
    if brain_mask is not None:
        out["psnr_brain"] = psnr(prediction, target, brain_mask)
        out["ssim_brain"] = 100.0 * _masked_mean(similarity, brain_mask)
        out["mae_brain"] = 1000.0 * mae(prediction, target, brain_mask)
    return out


def psnr_of_mse(mse: float) -> float:
    return 10.0 * math.log10(1.0 / max(mse, MSE_FLOOR))
