"""Grading: how the prior encoder predicts the Stage I code levels from an incomplete set (Stage II).

Ordinal mode (the paper's). A code channel with L levels holds k ∈ [0, L−1]; it is written as L − 1 ordered
binary targets t_j = [k > j], j = 0 … L−2 (k = 3, L = 5 → 1 1 1 0). The prior emits one logit per target
(Σ(L−1) channels, 33 for [8,8,8,5,5,5]) trained with BCE-with-logits, averaged per code channel and then over
channels. Because neighbouring levels share most targets, a near miss costs little: the loss respects the order
of the levels, unlike cross-entropy.

Decoding must give one consistent level even when the sigmoids p_j = P(k > j) are not monotone. We enforce
monotonicity by a running minimum, p̃_j = min_{i ≤ j} p_i (P(k > j) cannot rise with j), and read

    k̂ = #{ j : p̃_j > 0.5 }        (the number of leading thresholds passed),
    P(k̂) = p̃_{k̂−1} − p̃_{k̂}      with p̃_{−1} = 1, p̃_{L−1} = 0,

a proper distribution over levels whose value at k̂ is the per-code confidence. When the p_j happen to be
monotone, k̂ equals the authors' count of p_j > 0.5.

Classification mode (the ablation): Σ L logits, cross-entropy per code channel, argmax decoding, softmax
probability of the argmax as confidence.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def _group_sizes(level_counts: Sequence[int], mode: str) -> list[int]:
    if mode == "ordinal":
        return [count - 1 for count in level_counts]
    if mode == "classification":
        return list(level_counts)
    raise ValueError(f"unknown grading mode {mode!r}")


def split_logits(logits: Tensor, level_counts: Sequence[int], mode: str = "ordinal") -> tuple[Tensor, ...]:
    """``[B, ΣG, h, w]`` → one ``[B, G_d, h, w]`` tensor per code channel."""
    sizes = _group_sizes(level_counts, mode)
    if logits.shape[1] != sum(sizes):
        raise ValueError(
            f"{mode} grading of levels {list(level_counts)} needs {sum(sizes)} logits, got {logits.shape[1]}"
        )
    return torch.split(logits, sizes, dim=1)


def ordinal_targets(levels: Tensor, level_counts: Sequence[int]) -> Tensor:
    """Levels long ``[B, D, h, w]`` → float ``[B, Σ(L−1), h, w]`` with t_j = [k > j]."""
    targets = []
    for channel, count in enumerate(level_counts):
        thresholds = torch.arange(count - 1, device=levels.device).view(1, -1, 1, 1)
        targets.append((levels[:, channel : channel + 1] > thresholds).float())
    return torch.cat(targets, dim=1)


def grading_loss(logits: Tensor, levels: Tensor, level_counts: Sequence[int], mode: str = "ordinal") -> Tensor:
    """Mean over code channels of the per-channel BCE (ordinal) or cross-entropy (classification)."""
    logits = logits.float()
    groups = split_logits(logits, level_counts, mode)
    losses = []
    for channel, group in enumerate(groups):
        target = levels[:, channel]
        if mode == "ordinal":
            thresholds = torch.arange(group.shape[1], device=group.device).view(1, -1, 1, 1)
            losses.append(F.binary_cross_entropy_with_logits(group, (target.unsqueeze(1) > thresholds).float()))
        else:
            losses.append(F.cross_entropy(group, target.long()))
    return torch.stack(losses).mean()


def monotone_exceedance(logits_group: Tensor) -> Tensor:
    """Sigmoids of one channel's ordinal logits made non-increasing over thresholds: p̃_j = min_{i≤j} p_i."""
    return torch.cummin(torch.sigmoid(logits_group.float()), dim=1).values


def ordinal_level(exceedance: Tensor) -> Tensor:
    """One channel's decoded level from its monotone exceedances: how many thresholds it passes (p̃_j > 0.5).
    The one rule the served codes and Stage II's straight-through codes share."""
    return (exceedance > 0.5).sum(dim=1)


def decode_grades(logits: Tensor, level_counts: Sequence[int], mode: str = "ordinal") -> tuple[Tensor, Tensor]:
    """Logits → ``(levels long [B, D, h, w], probability of each decoded level float [B, D, h, w])``."""
    levels, probabilities = [], []
    for group in split_logits(logits, level_counts, mode):
        if mode == "ordinal":
            exceed = monotone_exceedance(group)
            level = ordinal_level(exceed)
            ones = torch.ones_like(exceed[:, :1])
            padded = torch.cat([ones, exceed, torch.zeros_like(ones)], dim=1)  # p̃_{-1}=1 … p̃_{L-1}=0
            upper = padded.gather(1, level.unsqueeze(1))
            lower = padded.gather(1, level.unsqueeze(1) + 1)
            probability = (upper - lower).squeeze(1)
        else:
            soft = torch.softmax(group.float(), dim=1)
            probability, level = soft.max(dim=1)
        levels.append(level)
        probabilities.append(probability)
    return torch.stack(levels, dim=1), torch.stack(probabilities, dim=1)


def grading_accuracy(logits: Tensor, levels: Tensor, level_counts: Sequence[int], mode: str = "ordinal") -> Tensor:
    """Fraction of code entries whose decoded level is exactly right (a Stage II progress figure)."""
    predicted, _ = decode_grades(logits, level_counts, mode)
    return (predicted == levels).float().mean()
