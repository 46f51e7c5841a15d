"""The authors' evaluation protocol, with the baselines in the same harness.

For N contrasts every *missing pattern* is scored: each non-empty proper subset of the contrasts is given as
input (2^N − 2 patterns: 6 for IXI's N = 3, 14 for BraTS' N = 4) and each contrast missing from it is a target,
giving Σ_k C(N,k)(N−k) (pattern, target) pairs (9 for N = 3, 28 for N = 4). Per test slice (slices with brain
content, as the dataset yields them) and pair: PSNR (data range 1), SSIM ×100 and MAE ×1000 on the [0, 1] slice,
also inside the brain mask; missing contrasts only. A pair's figure is the mean over slices; the overall figure
the mean over pairs; the one-input / multi-input figures the means over pairs with one / several inputs.

Rows: CodeBrain (prior path, what the node serves), CodeBrain with the Stage I posterior code (an upper bound on
what a perfect Stage II could give), direct regression (if its checkpoint is given) and the nearest-contrast
baseline (fitted on the training split). Also the Stage I reconstruction PSNR: the posterior path with the
complete set as input, and, for a model with the confidence output, how well that confidence ranks the errors
(``ConfidenceTally``): the error of brain pixels grouped by confidence, and the rank correlation of a slice's mean
confidence with its error. A confidence map is only worth showing a radiologist if low confidence means larger
errors.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from codebrain_node.model import (
    CodeBrain,
    DirectRegression,
    load_inference_checkpoint,
    read_checkpoint_metadata,
)
from training import report
from training.baselines import NearestContrast
from training.metrics import psnr, slice_metrics

log = logging.getLogger("training.evaluate")

Pattern = tuple[int, ...]  # indices of the available contrasts


# --- the protocol ---------------------------------------------------------------------------------------------
def missing_patterns(num_contrasts: int) -> list[Pattern]:
    """Every non-empty proper subset of ``range(N)`` (as available inputs), fewest inputs first."""
    if num_contrasts < 2:
        raise ValueError("the protocol needs at least 2 contrasts")
    indices = range(num_contrasts)
    return [p for k in range(1, num_contrasts) for p in itertools.combinations(indices, k)]


def pattern_pairs(num_contrasts: int) -> list[tuple[Pattern, int]]:
    """Every (available pattern, missing target) pair."""
    return [(p, t) for p in missing_patterns(num_contrasts) for t in range(num_contrasts) if t not in p]


def pattern_name(pattern: Pattern, contrasts: Sequence[str]) -> str:
    return "+".join(contrasts[i] for i in pattern)


# --- methods under test ---------------------------------------------------------------------------------------
class Method(Protocol):
    name: str

    def predict(self, images: Tensor, available: Tensor, context: Tensor | None, brain_mask: Tensor) -> Tensor: ...


class ConfidenceTally:
    """Brain-pixel absolute errors of the missing contrasts, binned by the model's confidence at that pixel.

    Fixed-width bins keep memory constant over any number of slices; groups of (nearly) equal pixel count are
    read off the cumulative histogram. Per (slice, target) the mean confidence and MAE inside the brain are kept
    for a rank correlation: negative when the model is least sure where it is most wrong.
    """

    def __init__(self, bins: int = 1000) -> None:
        self.bins = bins
        self.counts = torch.zeros(bins, dtype=torch.float64)
        self.error_sums = torch.zeros(bins, dtype=torch.float64)
        self.slice_confidence: list[float] = []
        self.slice_mae: list[float] = []

    def add(self, confidence: Tensor, prediction: Tensor, truth: Tensor, available: Tensor, brain_mask: Tensor) -> None:
        """``confidence`` ``[B, 1, H, W]``; ``prediction``/``truth`` ``[B, N, H, W]``; ``available`` ``[B, N]``."""
        confidence, error = confidence[:, 0].float().cpu(), (prediction - truth).abs().float().cpu()
        available, brain_mask = available.cpu(), brain_mask.cpu()
        for b, c in (~available).nonzero().tolist():
            mask = brain_mask[b]
            if not mask.any():
                continue
            sure, wrong = confidence[b][mask], error[b, c][mask]
            index = (sure * self.bins).long().clamp(0, self.bins - 1)
            self.counts += torch.bincount(index, minlength=self.bins).double()
            self.error_sums += torch.bincount(index, weights=wrong.double(), minlength=self.bins)
            self.slice_confidence.append(float(sure.mean()))
            self.slice_mae.append(float(wrong.mean()))

    def summary(self, groups: int = 5) -> dict[str, Any]:
        """MAE ×1000 per confidence group (least confident first), mean confidence, slice rank correlation."""
        total = float(self.counts.sum())
        if total == 0:
            return {}
        cumulative = torch.cumsum(self.counts, 0) / total
        edges = [0, *(int(torch.searchsorted(cumulative, q / groups)) + 1 for q in range(1, groups)), self.bins]
        mae_by_group, share = [], []
        for low, high in itertools.pairwise(edges):
            count = float(self.counts[low:high].sum())
            share.append(count / total)
            mae_by_group.append(1000 * float(self.error_sums[low:high].sum()) / count if count else float("nan"))
        centres = (torch.arange(self.bins, dtype=torch.float64) + 0.5) / self.bins
        return {
            "mean_confidence": float((self.counts * centres).sum() / total),
            "mae_by_confidence_group": mae_by_group,
            "pixel_share_by_group": share,
            "slice_spearman_confidence_vs_mae": spearman(self.slice_confidence, self.slice_mae),
            "slice_pairs": len(self.slice_mae),
        }


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Rank correlation (ties broken by order; fine for continuous values)."""
    if len(x) < 2:
        return float("nan")
    ranks = [torch.tensor(v, dtype=torch.float64).argsort().argsort().double() for v in (x, y)]
    return float(torch.corrcoef(torch.stack(ranks))[0, 1])


@dataclass
class ImputerMethod:
    """CodeBrain's or the direct baseline's ``impute`` — exactly the node's inference path."""

    model: CodeBrain | DirectRegression
    name: str
    tally: ConfidenceTally | None = None

    def predict(self, images: Tensor, available: Tensor, context: Tensor | None, brain_mask: Tensor) -> Tensor:
        output = self.model.impute(images, available, context)
        if self.tally is not None and output.confidence is not None:
            self.tally.add(output.confidence, output.images, images, available, brain_mask)
        return output.images


@dataclass
class PosteriorCodeMethod:
    """Stage I decoder fed the posterior code of the complete set: the ceiling for a perfect prior."""

    model: CodeBrain
    name: str = "CodeBrain posterior code (upper bound)"

    def predict(self, images: Tensor, available: Tensor, context: Tensor | None, brain_mask: Tensor) -> Tensor:
        with torch.inference_mode():
            recon = self.model.stage1_forward(images, available, context)["recon"].float().clamp(0, 1)
        return torch.where(available.view(*available.shape, 1, 1), images, recon)


@dataclass
class NearestMethod:
    baseline: NearestContrast
    name: str = "nearest contrast"

    def predict(self, images: Tensor, available: Tensor, context: Tensor | None, brain_mask: Tensor) -> Tensor:
        return self.baseline.predict(images, available, brain_mask)


# --- results --------------------------------------------------------------------------------------------------
@dataclass
class EvaluationResult:
    contrasts: tuple[str, ...]
    rows: list[dict[str, Any]]  # one per (method, pattern, target)
    summary: dict[str, dict[str, dict[str, float]]]  # method → all / one_input / multi_input → metric → value
    stage1_reconstruction_psnr: float | None
    slices: int
    settings: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    confidence: dict[str, Any] | None = None  # ConfidenceTally.summary() of the served model, if it has one

    def to_dict(self) -> dict[str, Any]:
        return {
            "contrasts": list(self.contrasts),
            "slices": self.slices,
            "stage1_reconstruction_psnr": self.stage1_reconstruction_psnr,
            "summary": self.summary,
            "confidence": self.confidence,
            "pairs": self.rows,
            "settings": self.settings,
        }


def summarise(rows: list[dict[str, Any]], metric_names: Sequence[str]) -> dict[str, dict[str, dict[str, float]]]:
    """Means over pairs: all, one-input and multi-input, per method."""
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        groups = {
            "all": mine,
            "one_input": [r for r in mine if r["inputs"] == 1],
            "multi_input": [r for r in mine if r["inputs"] > 1],
        }
        summary[method] = {
            group: {m: sum(r[m] for r in members) / len(members) for m in metric_names}
            for group, members in groups.items()
            if members
        }
    return summary


# --- the harness ----------------------------------------------------------------------------------------------
def score_methods(
    methods: Sequence[Method],
    dataset: Dataset,
    contrasts: Sequence[str],
    *,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    codebrain: CodeBrain | None = None,
) -> EvaluationResult:
    """Score every method on every (pattern, target) pair of every slice of ``dataset``."""
    device = torch.device(device)
    n = len(contrasts)
    pairs = pattern_pairs(n)
    # sums[method][pair index][metric] and one slice count for all (every method sees every slice)
    sums: dict[str, list[dict[str, float]]] = {m.name: [{} for _ in pairs] for m in methods}
    slices, recon_psnr_sum = 0, 0.0
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    for batch in loader:
        images = batch["image"].to(device).float()
        brain_mask = batch.get("brain_mask", torch.ones_like(images[:, 0], dtype=torch.bool)).to(device).bool()
        context = batch["context"].to(device).float() if "context" in batch else None
        b = images.shape[0]
        slices += b
        if codebrain is not None:
            recon_psnr_sum += float(stage1_reconstruction_psnr(codebrain, images, context).sum())
        for pattern in missing_patterns(n):
            available = torch.zeros(b, n, dtype=torch.bool, device=device)
            available[:, list(pattern)] = True
            for method in methods:
                prediction = method.predict(images, available, context, brain_mask)
                for index, (pair_pattern, target) in enumerate(pairs):
                    if pair_pattern != pattern:
                        continue
                    figures = slice_metrics(prediction[:, target], images[:, target], brain_mask)
                    bucket = sums[method.name][index]
                    for key, values in figures.items():
                        bucket[key] = bucket.get(key, 0.0) + float(values.double().sum())
    if slices == 0:
        raise ValueError("the evaluation set has no slices")

    rows = []
    metric_names: list[str] = []
    for method in methods:
        for (pattern, target), bucket in zip(pairs, sums[method.name], strict=True):
            metric_names = list(bucket)
            rows.append(
                {
                    "method": method.name,
                    "pattern": pattern_name(pattern, contrasts),
                    "target": contrasts[target],
                    "inputs": len(pattern),
                    **{key: value / slices for key, value in bucket.items()},
                    "slices": slices,
                }
            )
    recon = recon_psnr_sum / slices if codebrain is not None else None
    return EvaluationResult(tuple(contrasts), rows, summarise(rows, metric_names), recon, slices)


def stage1_reconstruction_psnr(model: CodeBrain, images: Tensor, context: Tensor | None) -> Tensor:
    """Per-slice PSNR (mean over contrasts) of the Stage I posterior path given the complete set."""
    available = torch.ones(images.shape[:2], dtype=torch.bool, device=images.device)
    with torch.inference_mode():
        recon = model.stage1_forward(images, available, context)["recon"].float().clamp(0, 1)
    return torch.stack([psnr(recon[:, c], images[:, c]) for c in range(images.shape[1])], dim=1).mean(dim=1)


# --- the command ----------------------------------------------------------------------------------------------
def evaluate(
    checkpoint: str | Path,
    data_dir: str | Path | None,
    out_dir: str | Path | None = None,
    *,
    direct_checkpoint: str | Path | None = None,
    split: str = "test",
    batch_size: int = 16,
    max_slices: int | None = None,
    device: str | None = None,
    datasets: Any = None,
    nearest_fit_slices: int = 64,
    examples: int = 2,
) -> EvaluationResult:
    """Score a CodeBrain inference checkpoint (and the baselines) on ``split``; write table, CSV, JSON, PNG.

    ``datasets``: pre-built splits (tests); otherwise built from ``data_dir`` with the split stored in the
    checkpoint, so the test subjects are the ones training never saw. ``max_slices`` evenly subsamples the split.
    """
    checkpoint = Path(checkpoint)
    chosen_device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = load_inference_checkpoint(checkpoint, map_location=chosen_device)
    contrasts = model.cfg.contrasts
    if datasets is None:
        if data_dir is None:
            raise ValueError("no data: pass --data DIR")
        datasets = _training_split(Path(data_dir), checkpoint, model.cfg, every_subject=split == "all")
    # "all": a folder held out as a whole (other anatomies, another site); every subject is scored, and the
    # nearest-contrast baseline is fitted on those same subjects (which can only flatter the baseline).
    evaluation_set = datasets.train if split == "all" else getattr(datasets, split)
    if max_slices is not None and len(evaluation_set) > max_slices:
        step = len(evaluation_set) / max_slices
        evaluation_set = Subset(evaluation_set, [int(i * step) for i in range(max_slices)])

    methods: list[Method] = []
    codebrain = model if isinstance(model, CodeBrain) else None
    tally = ConfidenceTally() if codebrain is not None and codebrain.cfg.confidence else None
    if codebrain is not None:
        methods += [ImputerMethod(codebrain, "CodeBrain", tally), PosteriorCodeMethod(codebrain)]
    else:
        methods.append(ImputerMethod(model, "direct regression"))
    if direct_checkpoint is not None:
        direct = load_inference_checkpoint(direct_checkpoint, map_location=chosen_device)
        if tuple(direct.cfg.contrasts) != tuple(contrasts):
            raise ValueError(f"{direct_checkpoint} was trained on {direct.cfg.contrasts}, not {contrasts}")
        methods.append(ImputerMethod(direct, "direct regression"))
    methods.append(NearestMethod(NearestContrast.fit(datasets.train, contrasts, max_slices=nearest_fit_slices)))

    log.info("evaluating %d methods on %d %s slices", len(methods), len(evaluation_set), split)
    result = score_methods(
        methods, evaluation_set, contrasts, batch_size=batch_size, device=chosen_device, codebrain=codebrain
    )
    result.settings = {
        "checkpoint": str(checkpoint),
        "direct_checkpoint": None if direct_checkpoint is None else str(direct_checkpoint),
        "split": split,
        "max_slices": max_slices,
        "device": str(chosen_device),
    }
    if tally is not None:
        result.confidence = tally.summary()
        methods[0].tally = None  # the example grid below must not count its slices twice
    print(report.format_table(result))
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        if examples > 0:
            samples = [evaluation_set[i] for i in _spread(len(evaluation_set), examples)]
            grid = report.example_grid(methods, samples, contrasts, out_dir / "examples.png", chosen_device)
            result.files["examples"] = str(grid)
        result.files.update(report.write_results(result, out_dir))
    return result


def _spread(length: int, count: int) -> list[int]:
    """``count`` indices spread over the set (the middle of the brain rather than its first slices)."""
    count = min(count, length)
    return [int((i + 0.5) * length / count) for i in range(count)]


def _training_split(data_dir: Path, checkpoint: Path, cfg: Any, every_subject: bool = False) -> Any:
    """The same subject split as training, read from the checkpoint's metadata (defaults otherwise).

    ``every_subject`` puts every subject of ``data_dir`` in the train split (for held-out folders)."""
    from training.datasets import SubjectSplit, datasets_for_model

    split = SubjectSplit.from_json(read_checkpoint_metadata(checkpoint).get("data_split"), cfg.image_size)
    if every_subject:
        split = replace(split, val_fraction=0.0, test_fraction=0.0)
    return datasets_for_model(data_dir, cfg, split)
