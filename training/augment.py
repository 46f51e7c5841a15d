"""Tensor augmentations in plain torch, applied per sample and identically to every contrast of that sample.

A sample's contrasts (and its 2.5-D neighbours and brain mask) are one anatomy seen N ways, so they must move
together: each augmentation draws one transform per sample and applies it to all of its channels. Everything is
drawn from a ``torch.Generator`` the caller seeds per step, so a resumed run sees exactly the same augmentations.

- flips: left-right and up-down, each with probability ½;
- rot90: k·90° with k uniform in {0, 1, 2, 3} (off by default: axial slices have a canonical orientation);
- small affine (probability ``affine_probability``): rotation ±``max_rotation_degrees``, isotropic scale
  1 ± ``max_scale``, translation ±``max_translation`` of the field of view, bilinear with zero padding
  (the brain mask is resampled the same way and re-thresholded at ½);
- crop (``crop`` > 0): a random ``crop``×``crop`` window per sample, drawn inside the brain's bounding box where
  possible. The network is fully convolutional, so training on crops and serving whole slices is the same
  model; it cuts CPU training time by (H·W)/crop² per step.
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
    context: Tensor | None,
    cfg: AugmentConfig,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """images ``[B, N, H, W]``, brain_mask ``[B, H, W]`` bool, context ``[B, N, 2k, H, W]`` → same shapes."""
    batch, n = images.shape[:2]
    context_channels = 0 if context is None else context.shape[1] * context.shape[2]
    # One stack per sample: contrasts, then neighbours, then the mask, so one transform moves them all.
    parts = [images]
    if context is not None:
        parts.append(context.flatten(1, 2))
    if brain_mask is not None:
        parts.append(brain_mask.unsqueeze(1).to(images.dtype))
    stack = torch.cat(parts, dim=1)

    if cfg.flip:
        flip_lr = torch.rand(batch, generator=generator) < 0.5
        flip_ud = torch.rand(batch, generator=generator) < 0.5
        stack = _where_per_sample(flip_lr, stack.flip(-1), stack)
        stack = _where_per_sample(flip_ud, stack.flip(-2), stack)
    if cfg.rot90 and stack.shape[-1] == stack.shape[-2]:
        turns = torch.randint(0, 4, (batch,), generator=generator)
        stack = torch.stack([torch.rot90(s, int(k), dims=(-2, -1)) for s, k in zip(stack, turns, strict=True)])
    if cfg.affine and cfg.affine_probability > 0:
        theta = random_affine(batch, cfg, generator).to(stack.device, stack.dtype)
        grid = F.affine_grid(theta, list(stack.shape), align_corners=False)
        stack = F.grid_sample(stack, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    if cfg.crop and cfg.crop < stack.shape[-1]:
        stack = random_crop(
            stack, cfg.crop, generator, brain_channel=n + context_channels if brain_mask is not None else None
        )

    images_out = stack[:, :n].clamp(0.0, 1.0)
    context_out = None
    if context is not None:
        context_out = stack[:, n : n + context_channels].reshape(*context.shape[:3], *stack.shape[-2:]).clamp(0.0, 1.0)
    mask_out = None if brain_mask is None else stack[:, n + context_channels] > 0.5
    return images_out.contiguous(), mask_out, context_out


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


def _where_per_sample(choose: Tensor, if_true: Tensor, if_false: Tensor) -> Tensor:
    return torch.where(choose.to(if_true.device).view(-1, *([1] * (if_true.ndim - 1))), if_true, if_false)
