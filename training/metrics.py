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

import functools
import math

import torch
import torch.nn.functional as F
import torchmetrics
from torch import Tensor

MSE_FLOOR = 1e-10
METRIC_NAMES = ("psnr", "ssim", "mae")
SSIM_SINCE = (1, 4, 2)  # the first torchmetrics that reflect-pads and averages the full map
SSIM_IMPLEMENTATION = (
    f"torchmetrics {torchmetrics.__version__} structural_similarity_index_measure (the authors' metric), its "
    "11x11 Gaussian window as two 11-tap passes (equal within 1e-5): data_range 1, sigma 1.5, reflect padding, "
    "mean of the full map (brain: over brain pixels)"
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


SSIM_SIGMA = 1.5
SSIM_RADIUS = 5  # torchmetrics' Gaussian window: int(3.5·σ + 0.5)·2 + 1 = 11 taps


@functools.lru_cache(maxsize=8)
def _gaussian_taps() -> tuple[float, ...]:
    """torchmetrics' normalised 11-tap Gaussian (σ 1.5), computed in float64."""
    offsets = torch.arange(-SSIM_RADIUS, SSIM_RADIUS + 1, dtype=torch.float64)
    taps = torch.exp(-(offsets**2) / (2 * SSIM_SIGMA**2))
    return tuple((taps / taps.sum()).tolist())


def _filter(values: Tensor, dim: int) -> Tensor:
    """The 11-tap Gaussian along ``dim`` of a padded tensor (valid part only: 2r shorter), as a sum of eleven
    shifted, weighted copies: 11 multiply-adds a value, where a banded matrix product spends one per column and a
    depthwise convolution runs on a CPU's slowest kernels."""
    length = values.shape[dim] - 2 * SSIM_RADIUS
    taps = _gaussian_taps()
    out = values.narrow(dim, 0, length) * taps[0]
    for offset, weight in enumerate(taps[1:], 1):
        out.add_(values.narrow(dim, offset, length), alpha=weight)
    return out


def ssim_map(prediction: Tensor, target: Tensor) -> Tensor:
    """``[B, H, W]`` pairs → torchmetrics' SSIM map, one value per pixel ``[B, H, W]`` (its mean is the SSIM).

    torchmetrics' computation (reflect padding by the window radius, the five local moments, population
    statistics, K1 = 0.01, K2 = 0.03) with its 11×11 Gaussian window applied as a vertical and a horizontal 11-tap
    pass: the window is the outer product of the 1-D kernel, so this is the same map (tests hold it to
    torchmetrics' within 1e-5), in a fraction of the time that was most of an evaluation's scoring.
    """
    x, y = prediction.float().unsqueeze(1), target.float().unsqueeze(1)
    r = SSIM_RADIUS
    x = F.pad(x, (r, r, r, r), mode="reflect")
    y = F.pad(y, (r, r, r, r), mode="reflect")
    moments = torch.cat((x, y, x * x, y * y, x * y), dim=1)  # [B, 5, H + 2r, W + 2r]
    mu_x, mu_y, xx, yy, xy = _filter(_filter(moments, -2), -1).unbind(1)
    c1, c2 = 0.01**2, 0.03**2  # (K · data range)², data range 1
    var_x = (xx - mu_x**2).clamp_min(0.0)
    var_y = (yy - mu_y**2).clamp_min(0.0)
    cov = xy - mu_x * mu_y
    return ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))


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
