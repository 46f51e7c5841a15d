"""PatchGAN discriminator (pix2pix, Isola et al. 2017) with least-squares GAN losses, as in the CodeBrain code.

D sees ``[image, condition]`` stacked on channels (image: the N-contrast set to judge; condition: the set it is
conditioned on, e.g. the zero-filled input or the real set as the authors do) and emits one score map per
contrast, ``[B, N, H/16, W/16]``.

Our reading of "fake target = availability mask": the discriminator is asked *which contrasts are real*. For a
real set every channel's target is 1; for a composed set (available contrasts copied, missing ones synthesised)
channel n's target is 1 if contrast n was available and 0 if it was synthesised. The generator wants every
channel scored 1. LSGAN (Mao et al. 2017) uses squared error to these targets.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _down(in_channels: int, out_channels: int, normalise: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, 4, stride=2, padding=1)]
    if normalise:
        layers.append(nn.InstanceNorm2d(out_channels))
    layers.append(nn.LeakyReLU(0.2, inplace=True))
    return layers


class PatchDiscriminator(nn.Module):
    def __init__(self, num_contrasts: int, condition_channels: int | None = None, dim: int = 64) -> None:
        super().__init__()
        condition_channels = num_contrasts if condition_channels is None else condition_channels
        self.net = nn.Sequential(
            *_down(num_contrasts + condition_channels, dim, normalise=False),
            *_down(dim, 2 * dim, normalise=True),
            *_down(2 * dim, 4 * dim, normalise=True),
            *_down(4 * dim, 8 * dim, normalise=True),
            nn.ZeroPad2d((1, 0, 1, 0)),
            nn.Conv2d(8 * dim, num_contrasts, 4, padding=1, bias=False),
        )

    def forward(self, image: Tensor, condition: Tensor) -> Tensor:
        return self.net(torch.cat([image, condition], dim=1))


def fake_target(available: Tensor, scores: Tensor) -> Tensor:
    """Per-contrast target for a composed set: 1 where the contrast was available, 0 where synthesised."""
    return available.to(scores.dtype).view(*available.shape, 1, 1).expand_as(scores)


def discriminator_loss(real_scores: Tensor, fake_scores: Tensor, available: Tensor) -> Tensor:
    """LSGAN discriminator loss: ½(‖D(real) − 1‖² + ‖D(composed) − mask‖²)."""
    real_loss = F.mse_loss(real_scores.float(), torch.ones_like(real_scores, dtype=torch.float32))
    fake_loss = F.mse_loss(fake_scores.float(), fake_target(available, fake_scores).float())
    return 0.5 * (real_loss + fake_loss)


def generator_adversarial_loss(fake_scores: Tensor) -> Tensor:
    """LSGAN generator loss: ‖D(composed) − 1‖² (every channel should look real)."""
    return F.mse_loss(fake_scores.float(), torch.ones_like(fake_scores, dtype=torch.float32))
