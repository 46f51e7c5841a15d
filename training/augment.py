"""Tensor augmentations in plain torch, applied per sample and identically to every contrast of that sample.

A sample's contrasts (and its brain mask) are one anatomy seen N ways, so they must move
together: each augmentation draws one transform per sample and applies it to all of its channels. Everything is
drawn from a ``torch.Generator`` the caller seeds per step, so a resumed run sees exactly the same augmentations.

- flips: left-right and up-down, each with probability ½;
- rot90 (probability ``rot90_probability``): k·90° with k uniform in {1, 2, 3} (off by default: axial slices have a
  canonical orientation; the authors turn with probability ½);
- small affine (probability ``affine_probability``): rotation ±``max_rotation_degrees``, isotropic scale
  1 ± ``max_scale``, translation ±``max_translation`` of the field of view, bilinear with zero padding
  (the brain mask is resampled the same way and re-thresholded at ½);
- elastic (probability ``elastic_probability``): a smooth random displacement (a 5×5 grid of uniform offsets,
  upsampled bicubically) of at most ``elastic_max_px`` pixels, added to the affine grid so the slice is
  resampled once (kornia's RandomElasticTransform defaults, which the authors use, move pixels by about this
  much);
- crop (``crop`` > 0): a random ``crop``×``crop`` window per sample, drawn inside the brain's bounding box where
  possible. The network is fully convolutional, so training on crops and serving whole slices is the same
  model; it cuts CPU training time by (H·W)/crop² per step.

:func:`intensity_augment` is separate and per contrast: it changes what the network reads (a site's gamma, coil
bias field and contrast), never the anatomy or the loss's targets, so the model learns to read unseen sites.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from training.train_config import AugmentConfig


def augment_batch(
    images: Tensor,
    brain_mask: Tensor | None,
    cfg: AugmentConfig,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor | None]:
    """images ``[B, N, H, W]``, brain_mask ``[B, H, W]`` bool → same shapes."""
    batch, n = images.shape[:2]
    # One stack per sample: contrasts, then the mask, so one transform moves them all.
    parts = [images]
    if brain_mask is not None:
        parts.append(brain_mask.unsqueeze(1).to(images.dtype))
    stack = torch.cat(parts, dim=1)

    if cfg.flip:
        flip_lr = torch.rand(batch, generator=generator) < 0.5
        flip_ud = torch.rand(batch, generator=generator) < 0.5
        stack = _where_per_sample(flip_lr, stack.flip(-1), stack)
        stack = _where_per_sample(flip_ud, stack.flip(-2), stack)
    if cfg.rot90 and stack.shape[-1] == stack.shape[-2]:
        turns = torch.randint(1, 4, (batch,), generator=generator)
        turns = turns * (torch.rand(batch, generator=generator) < cfg.rot90_probability)
        stack = torch.stack([torch.rot90(s, int(k), dims=(-2, -1)) for s, k in zip(stack, turns, strict=True)])
    warp = cfg.affine and cfg.affine_probability > 0
    bend = cfg.elastic and cfg.elastic_probability > 0 and cfg.elastic_max_px > 0
    if warp or bend:
        theta = random_affine(batch, cfg, generator) if warp else _identity(batch)
        grid = F.affine_grid(theta.to(stack.device, stack.dtype), list(stack.shape), align_corners=False)
        if bend:
            grid = grid + random_displacement(batch, stack.shape[-2:], cfg, generator).to(grid)
        stack = F.grid_sample(stack, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    if cfg.crop and cfg.crop < stack.shape[-1]:
        stack = random_crop(stack, cfg.crop, generator, brain_channel=n if brain_mask is not None else None)

    images_out = stack[:, :n].clamp(0.0, 1.0)
    mask_out = None if brain_mask is None else stack[:, n] > 0.5
    return images_out.contiguous(), mask_out


def random_crop(stack: Tensor, size: int, generator: torch.Generator, brain_channel: int | None) -> Tensor:
    """One ``size``×``size`` window per sample; its centre is a random brain pixel when a brain mask is given."""
    batch, _, height, width = stack.shape
    size = min(size, height, width)
    crops = []
    for index in range(batch):
        top = int(torch.randint(0, height - size + 1, (1,), generator=generator))
        left = int(torch.randint(0, width - size + 1, (1,), generator=generator))
        if brain_channel is not None:
            rows, cols = torch.nonzero(stack[index, brain_channel] > 0.5, as_tuple=True)
            if len(rows):
                pick = int(torch.randint(0, len(rows), (1,), generator=generator))
                top = min(max(int(rows[pick]) - size // 2, 0), height - size)
                left = min(max(int(cols[pick]) - size // 2, 0), width - size)
        crops.append(stack[index, :, top : top + size, left : left + size])
    return torch.stack(crops)


def random_affine(batch: int, cfg: AugmentConfig, generator: torch.Generator) -> Tensor:
    """``[B, 2, 3]`` matrices for ``affine_grid``; samples not chosen (probability ``1 - p``) get the identity."""
    apply = torch.rand(batch, generator=generator) < cfg.affine_probability
    angle = (torch.rand(batch, generator=generator) * 2 - 1) * math.radians(cfg.max_rotation_degrees)
    scale = 1 + (torch.rand(batch, generator=generator) * 2 - 1) * cfg.max_scale
    # affine_grid works in [-1, 1] coordinates, so a shift of t·FOV is 2t there.
    shift = (torch.rand(batch, 2, generator=generator) * 2 - 1) * cfg.max_translation * 2
    angle, scale = angle * apply, torch.where(apply, scale, torch.ones_like(scale))
    shift = shift * apply.unsqueeze(1)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    return torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], dim=1), torch.stack([sin, cos, shift[:, 1]], dim=1)], dim=1
    )


def random_displacement(
    batch: int, size: tuple[int, int] | torch.Size, cfg: AugmentConfig, generator: torch.Generator
) -> Tensor:
    """``[B, H, W, 2]`` smooth offsets in ``grid_sample`` coordinates, at most ``elastic_max_px`` pixels; zero for
    samples not chosen (probability ``1 - elastic_probability``)."""
    height, width = int(size[0]), int(size[1])
    coarse = torch.rand(batch, 2, 5, 5, generator=generator) * 2 - 1
    coarse = coarse * (torch.rand(batch, 1, 1, 1, generator=generator) < cfg.elastic_probability)
    field = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=True).clamp(-1, 1)
    pixels_to_grid = torch.tensor([2.0 / width, 2.0 / height]).view(1, 2, 1, 1)  # x then y, as grid_sample reads
    return (field * cfg.elastic_max_px * pixels_to_grid).permute(0, 2, 3, 1)


def intensity_augment(images: Tensor, cfg: AugmentConfig, generator: torch.Generator) -> Tensor:
    """``[B, N, H, W]`` in [0, 1] → the same anatomy as another site might show it, per sample and contrast.

    Each (sample, contrast) is changed with probability ``intensity_probability``: ``x ** gamma`` (gamma
    ``exp(U(±gamma_log_range))``), times a smooth bias field ``exp(U(±bias_field))`` interpolated from a 4×4 grid,
    times ``1 + U(±contrast_jitter)``, clipped to [0, 1]. Zero stays zero (the background of skull-stripped data).
    """
    batch, n, height, width = images.shape
    chosen = (torch.rand(batch, n, 1, 1, generator=generator) < cfg.intensity_probability).to(images)
    gamma = torch.exp((torch.rand(batch, n, 1, 1, generator=generator) * 2 - 1) * cfg.gamma_log_range).to(images)
    coarse = (torch.rand(batch, n, 4, 4, generator=generator) * 2 - 1) * cfg.bias_field
    bias = torch.exp(F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=True)).to(images)
    scale = (1 + (torch.rand(batch, n, 1, 1, generator=generator) * 2 - 1) * cfg.contrast_jitter).to(images)
    changed = (images.clamp(0, 1) ** gamma * bias * scale).clamp(0.0, 1.0)
    return torch.lerp(images, changed, chosen)


def _identity(batch: int) -> Tensor:
    return torch.eye(2, 3).expand(batch, 2, 3).clone()


def _where_per_sample(choose: Tensor, if_true: Tensor, if_false: Tensor) -> Tensor:
    return torch.where(choose.to(if_true.device).view(-1, *([1] * (if_true.ndim - 1))), if_true, if_false)
