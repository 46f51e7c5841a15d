"""Finite Scalar Quantisation (Mentzer et al. 2023, arXiv 2309.15505), after lucidrains' ``vector-quantize-pytorch``.

Each of the D = len(levels) code channels is squashed and rounded onto L_d evenly spaced values:

    half_l = (L - 1)(1 + ε) / 2,   offset = 0.5 if L even else 0,   shift = atanh(offset / half_l)
    bound(z) = tanh(z + shift) · half_l − offset             ∈ (−L/2 − δ, L/2 − 1 + δ) for even L, (−(L−1)/2 − δ, …) odd
    q = round_ste(bound(z)) / (L // 2)                         the code, in [−1, 1]

``round_ste`` rounds forward and passes the gradient straight through. The per-channel *level* is
k = q·(L//2) + L//2 ∈ [0, L − 1] and the integer *index* is Σ_d k_d · Π_{e<d} L_e ∈ [0, Π L).
There is no codebook to learn, hence no commitment loss and no collapse. Quantisation runs in fp32 even under
autocast so that bf16 never moves a value across a rounding boundary.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn


def round_ste(z: Tensor) -> Tensor:
    """Round forward, identity backward."""
    return z + (z.round() - z).detach()


class FSQ(nn.Module):
    """Channel-first FSQ for code maps ``[B, D, H, W]`` (any ``[B, D, ...]`` works)."""

    def __init__(self, levels: Sequence[int], eps: float = 1e-3) -> None:
        super().__init__()
        levels_tensor = torch.tensor(list(levels), dtype=torch.long)
        basis = torch.cumprod(torch.tensor([1, *list(levels)[:-1]], dtype=torch.long), dim=0)
        self.register_buffer("_levels", levels_tensor, persistent=False)
        self.register_buffer("_basis", basis, persistent=False)
        self.levels = tuple(int(level) for level in levels)
        self.eps = eps
        self.codebook_size = math.prod(self.levels)

    @property
    def dim(self) -> int:
        return len(self.levels)

    def _per_channel(self, values: Tensor, like: Tensor) -> Tensor:
        """Shape a per-channel vector to broadcast against a channel-first tensor."""
        return values.view(1, -1, *([1] * (like.ndim - 2))).to(like.device)

    def bound(self, z: Tensor) -> Tensor:
        levels = self._per_channel(self._levels, z).to(z.dtype)
        half_l = (levels - 1) * (1 + self.eps) / 2
        offset = torch.where(levels % 2 == 0, 0.5, 0.0).to(z.dtype)
        shift = torch.atanh(offset / half_l)
        return torch.tanh(z + shift) * half_l - offset

    def half_width(self, like: Tensor) -> Tensor:
        return self._per_channel(self._levels // 2, like)

    def quantize(self, z: Tensor) -> Tensor:
        """Continuous ``[B, D, ...]`` → codes in [−1, 1] (fp32, straight-through gradient)."""
        with torch.autocast(device_type=z.device.type, enabled=False):
            z = z.float()
            return round_ste(self.bound(z)) / self.half_width(z)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(codes, indices)``: codes ``[B, D, ...]`` fp32, indices long ``[B, ...]``."""
        if z.shape[1] != self.dim:
            raise ValueError(f"FSQ expects {self.dim} channels, got {z.shape[1]}")
        codes = self.quantize(z)
        return codes, self.codes_to_indices(codes)

    # --- conversions (all exact, all channel-first) ---------------------------------------------------------
    def codes_to_levels(self, codes: Tensor) -> Tensor:
        """Codes in [−1, 1] → per-channel levels k ∈ [0, L − 1] (long)."""
        half = self.half_width(codes)
        return (codes.detach().float() * half + half).round().long()

    def levels_to_codes(self, levels: Tensor) -> Tensor:
        """Per-channel levels k → codes (fp32)."""
        half = self.half_width(levels).float()
        return (levels.float() - half) / half

    def levels_to_indices(self, levels: Tensor) -> Tensor:
        return (levels.long() * self._per_channel(self._basis, levels)).sum(dim=1)

    def indices_to_levels(self, indices: Tensor) -> Tensor:
        expanded = indices.long().unsqueeze(1)
        return (expanded // self._per_channel(self._basis, expanded)) % self._per_channel(self._levels, expanded)

    def codes_to_indices(self, codes: Tensor) -> Tensor:
        return self.levels_to_indices(self.codes_to_levels(codes))

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        return self.levels_to_codes(self.indices_to_levels(indices))
