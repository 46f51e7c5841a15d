"""Per-slice image-quality figures on [0, 1] intensities, as the CodeBrain paper reports them.

- PSNR with data range 1: 10·log10(1 / MSE), MSE floored at 1e-10 so a perfect slice scores 100 dB, not ∞;
- SSIM ×100: Wang et al. (2004) with an 11×11 Gaussian window (σ = 1.5), K1 = 0.01, K2 = 0.03, data range 1,
  population statistics, averaged over the window positions fully inside the image — the same definition as
  scikit-image's ``structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
  data_range=1)``, written in torch so it runs batched on the evaluation device;
- MAE ×1000.

Brain-masked variants average the squared/absolute error (and the SSIM map) over brain pixels only.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

MSE_FLOOR = 1e-10
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
K1, K2 = 0.01, 0.03
METRIC_NAMES = ("psnr", "ssim", "mae")


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


def _gaussian_window(device: torch.device) -> Tensor:
    coords = torch.arange(SSIM_WINDOW, dtype=torch.float32, device=device) - SSIM_WINDOW // 2
    g = torch.exp(-(coords**2) / (2 * SSIM_SIGMA**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).view(1, 1, SSIM_WINDOW, SSIM_WINDOW)


def ssim_map(prediction: Tensor, target: Tensor) -> Tensor:
    """``[B, H, W]`` pairs → SSIM at every window position fully inside the image, ``[B, H-10, W-10]``."""
    x = prediction.float().unsqueeze(1)
    y = target.float().unsqueeze(1)
    window = _gaussian_window(x.device)
    mu_x, mu_y = F.conv2d(x, window), F.conv2d(y, window)
    var_x = F.conv2d(x * x, window) - mu_x.pow(2)
    var_y = F.conv2d(y * y, window) - mu_y.pow(2)
    cov = F.conv2d(x * y, window) - mu_x * mu_y
    c1, c2 = K1**2, K2**2
    numerator = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    denominator = (mu_x.pow(2) + mu_y.pow(2) + c1) * (var_x + var_y + c2)
    return (numerator / denominator).squeeze(1)


def ssim(prediction: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """``[B, H, W]`` pairs → mean SSIM per slice (in [−1, 1]); masked: over brain window centres only."""
    values = ssim_map(prediction, target)
    if mask is not None:
        crop = SSIM_WINDOW // 2
        mask = mask[..., crop : mask.shape[-2] - crop, crop : mask.shape[-1] - crop]
    return _masked_mean(values, mask)


def slice_metrics(prediction: Tensor, target: Tensor, brain_mask: Tensor | None = None) -> dict[str, Tensor]:
    """The table's figures per slice: psnr, ssim (×100), mae (×1000), and each again inside the brain."""
    out = {
        "psnr": psnr(prediction, target),
        "ssim": 100.0 * ssim(prediction, target),
        "mae": 1000.0 * mae(prediction, target),
    }
    if brain_mask is not None:
        out["psnr_brain"] = psnr(prediction, target, brain_mask)
        out["ssim_brain"] = 100.0 * ssim(prediction, target, brain_mask)
        out["mae_brain"] = 1000.0 * mae(prediction, target, brain_mask)
    return out


def psnr_of_mse(mse: float) -> float:
    return 10.0 * math.log10(1.0 / max(mse, MSE_FLOOR))
