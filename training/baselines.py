"""The nearest-contrast baseline: answer a missing contrast with an available one, intensity-matched.

Fitted on the *training* split only, so it never sees the test target:

- intensity matching is histogram (quantile) matching, separately inside and outside the brain mask: the source
  contrast's pooled quantiles are mapped piecewise-linearly onto the target contrast's (a monotone mapping;
  a contrast inversion such as T1 → T2 is exactly what it cannot do, which is the point of the baseline);
- "nearest" is the available source whose matched version had the lowest mean absolute error against the target
  on the training slices (e.g. T1 for T1Gd, T2 for FLAIR when both exist).

The other baseline, direct regression, is ``codebrain_node.model.DirectRegression`` trained by the same loop
(``--arch direct``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset

QUANTILES = 101
MAX_PIXELS = 200_000


class NearestContrast:
    """Histogram-matched copy of the best available contrast, per target."""

    name = "nearest contrast"

    def __init__(self, contrasts: Sequence[str], brain_quantiles: Tensor, background_quantiles: Tensor, error: Tensor):
        self.contrasts = tuple(contrasts)
        self.brain_quantiles = brain_quantiles  # [N, Q]
        self.background_quantiles = background_quantiles  # [N, Q]
        self.error = error  # [N source, N target]: training MAE of the matched source

    @classmethod
    def fit(cls, dataset: Dataset, contrasts: Sequence[str], max_slices: int = 64, seed: int = 0) -> NearestContrast:
        """Pool quantiles over up to ``max_slices`` training slices, then rank sources by matched MAE."""
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(dataset), generator=generator)[:max_slices].tolist()
        samples = [dataset[i] for i in order]
        if not samples:
            raise ValueError("cannot fit the nearest-contrast baseline on an empty training set")
        images = torch.stack([s["image"].float() for s in samples])  # [S, N, H, W]
        masks = torch.stack([_brain_mask(s) for s in samples])  # [S, H, W]
        n = images.shape[1]
        brain = torch.stack([_quantiles(images[:, c][masks], generator) for c in range(n)])
        background = torch.stack([_quantiles(images[:, c][~masks], generator) for c in range(n)])
        model = cls(contrasts, brain, background, torch.zeros(n, n))
        error = torch.zeros(n, n)
        for source in range(n):
            for target in range(n):
                matched = model.match(images[:, source], source, target, masks)
                error[source, target] = (matched - images[:, target]).abs().mean()
        model.error = error
        return model

    def match(self, source_image: Tensor, source: int, target: int, brain_mask: Tensor) -> Tensor:
        """Map ``[B, H, W]`` intensities of contrast ``source`` onto contrast ``target``'s histogram."""
        inside = _interp(source_image, self.brain_quantiles[source], self.brain_quantiles[target])
        outside = _interp(source_image, self.background_quantiles[source], self.background_quantiles[target])
        return torch.where(brain_mask, inside, outside).clamp(0.0, 1.0)

    def source_for(self, target: int, available: Sequence[int]) -> int:
        return min(available, key=lambda source: float(self.error[source, target]))

    def predict(self, images: Tensor, available: Tensor, brain_mask: Tensor | None = None) -> Tensor:
        """``[B, N, H, W]`` + availability ``[B, N]`` → every contrast (available ones copied through).

        A source's mapping onto a target does not depend on the pattern it came from, so each (source, target)
        is matched once, on every row that uses it (the evaluation passes every pattern of several slices at
        once: 12 matchings instead of 28 for four contrasts)."""
        mask = brain_mask if brain_mask is not None else torch.ones_like(images[:, 0], dtype=torch.bool)
        out = images.clone()
        device = images.device
        self.brain_quantiles = self.brain_quantiles.to(device)
        self.background_quantiles = self.background_quantiles.to(device)
        rows_of: dict[tuple[int, int], list[int]] = {}
        for row, pattern in enumerate(available.bool().tolist()):
            present = [c for c, given in enumerate(pattern) if given]
            for target in range(images.shape[1]):
                if not pattern[target]:
                    rows_of.setdefault((self.source_for(target, present), target), []).append(row)
        for (source, target), rows in rows_of.items():
            index = torch.tensor(rows, device=device)
            out[index, target] = self.match(images[index, source], source, target, mask[index])
        return out


def _brain_mask(sample: dict) -> Tensor:
    mask = sample.get("brain_mask")
    if mask is None:
        return torch.ones_like(sample["image"][0], dtype=torch.bool)
    return mask.bool()


def _quantiles(values: Tensor, generator: torch.Generator) -> Tensor:
    if values.numel() == 0:
        return torch.zeros(QUANTILES)
    if values.numel() > MAX_PIXELS:
        values = values[torch.randint(0, values.numel(), (MAX_PIXELS,), generator=generator)]
    return torch.quantile(values.float(), torch.linspace(0, 1, QUANTILES))


def _interp(x: Tensor, xp: Tensor, fp: Tensor) -> Tensor:
    """Piecewise-linear ``np.interp`` in torch (values outside ``xp`` clamp to the end points)."""
    xp, fp = xp.to(x.device, x.dtype), fp.to(x.device, x.dtype)
    # Ties in xp (flat histograms, e.g. an all-zero background) would divide by zero: nudge them apart.
    xp = xp + torch.arange(xp.numel(), device=x.device, dtype=x.dtype) * 1e-7
    index = torch.searchsorted(xp, x.contiguous().clamp(xp[0], xp[-1])).clamp(1, xp.numel() - 1)
    x0, x1 = xp[index - 1], xp[index]
    y0, y1 = fp[index - 1], fp[index]
    weight = ((x.clamp(xp[0], xp[-1]) - x0) / (x1 - x0)).clamp(0, 1)
    return y0 + weight * (y1 - y0)
