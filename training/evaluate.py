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

Cost: each method is called with a few slices under all P patterns at once (one forward pass of S·P incomplete
inputs, not P small ones); the posterior code reads the complete set, so the posterior row runs its encoder once
per slice (and reuses that code for the Stage I reconstruction); the nearest contrast runs no network. SSIM is
torchmetrics' (see ``training.metrics``), named in the table's footnote.
"""

from __future__ import annotations

import itertools
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from codebrain_node.model import (
    CodeBrain,
    DirectRegression,
    load_inference_checkpoint,
    read_checkpoint_metadata,
)
from training import report
from training.baselines import NearestContrast
from training.metrics import SSIM_IMPLEMENTATION, psnr, slice_metrics

Pattern = tuple[int, ...]  # indices of the available contrasts
# Work per call, by device. A GPU needs large batches to be busy. A CPU is fastest when a call's tensors stay in
# cache (measured on 2 cores with the small BraTS model: ~50 ms an input at 4 inputs a forward pass, ~85 ms at
# 16; SSIM ~7 ms a slice one at a time, ~15 ms two or more at once).
FORWARD_BATCH = {"cpu": 4, "cuda": 128}  # incomplete inputs per forward pass
METRIC_BATCH = {"cpu": 1, "cuda": 1024}  # (prediction, truth) slices per metric call


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
    """A way to fill in missing contrasts, called with a batch of slices and several patterns at once, so that
    one forward pass covers every pattern of a few slices (and a method can share work across a slice's patterns).

    ``images`` ``[S, N, H, W]`` (the complete set), ``available`` ``[S, P, N]``, ``brain_mask`` ``[S, H, W]`` →
    every contrast ``[S, P, N, H, W]``, available ones copied through.
    """

    name: str

    def predict(self, images: Tensor, available: Tensor, brain_mask: Tensor) -> Tensor: ...


def for_device(sizes: dict[str, int], device: torch.device) -> int:
    return sizes.get(device.type, sizes["cpu"])


def passes(size: int | None, *tensors: Tensor) -> Iterator[tuple[Any, ...]]:
    """The tensors cut along their first axis into forward passes of at most ``size`` (None: one pass)."""
    total = tensors[0].shape[0]
    size = size or total
    for start in range(0, total, size):
        yield tuple(t[start : start + size] for t in tensors)


def per_pattern(values: Tensor, patterns: int) -> Tensor:
    """``[S, ...]`` → ``[S·P, ...]``: each slice's tensor once for each of its ``patterns`` (slice-major), in the
    memory format it came in (channels_last is what the model runs fastest on)."""
    channels_last = values.ndim == 4 and values.is_contiguous(memory_format=torch.channels_last)
    repeated = values.repeat_interleave(patterns, dim=0)
    return repeated.contiguous(memory_format=torch.channels_last) if channels_last else repeated


#: How much larger the least confident fifth's errors must be than the most confident fifth's before a map may be
#: shown to a radiologist as confidence (issue #13); below it a model ships with the confidence output off.
CONFIDENCE_MIN_RATIO = 1.5


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
        """MAE ×1000 per confidence group (least confident first), mean confidence, slice rank correlation, and
        whether the least confident group's error is :data:`CONFIDENCE_MIN_RATIO` times the most confident's."""
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
        ratio = mae_by_group[0] / mae_by_group[-1] if mae_by_group[-1] > 0 else float("nan")
        return {
            "mean_confidence": float((self.counts * centres).sum() / total),
            "mae_by_confidence_group": mae_by_group,
            "pixel_share_by_group": share,
            "slice_spearman_confidence_vs_mae": spearman(self.slice_confidence, self.slice_mae),
            "slice_pairs": len(self.slice_mae),
            "least_vs_most_confident": ratio,
            "worth_showing_at": CONFIDENCE_MIN_RATIO,
        }


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Rank correlation (ties broken by order; fine for continuous values)."""
    if len(x) < 2:
        return float("nan")
    ranks = [torch.tensor(v, dtype=torch.float64).argsort().argsort().double() for v in (x, y)]
    return float(torch.corrcoef(torch.stack(ranks))[0, 1])


@dataclass
class ImputerMethod:
    """CodeBrain's or the direct baseline's ``impute`` — exactly the node's inference path — on every pattern of
    the batch's slices, in forward passes of at most ``batch_size`` inputs (None: all at once)."""

    model: CodeBrain | DirectRegression
    name: str
    tally: ConfidenceTally | None = None
    batch_size: int | None = None
    keep_features: bool = False  # keep F_c of the last call's inputs (``features``) for the posterior row
    features: Tensor | None = None

    def predict(self, images: Tensor, available: Tensor, brain_mask: Tensor) -> Tensor:
        s, p = available.shape[:2]
        inputs = per_pattern(images, p), available.flatten(0, 1), per_pattern(brain_mask, p)
        outputs, features = [], []
        for pass_images, pass_available, pass_mask in passes(self.batch_size, *inputs):
            output = self.model.impute(pass_images, pass_available, keep_features=self.keep_features)
            if self.tally is not None and output.confidence is not None:
                self.tally.add(output.confidence, output.images, pass_images, pass_available, pass_mask)
            outputs.append(output.images)
            if output.features is not None:
                features.append(output.features)
        self.features = torch.cat(features) if features else None
        return torch.cat(outputs).unflatten(0, (s, p))


@dataclass
class PosteriorCodeMethod:
    """Stage I decoder fed the posterior code of the complete set: the ceiling for a perfect prior.

    The code reads the complete set, so it is the same for every pattern: the posterior encoder runs once per
    slice and only the common encoder and decoder (which read the incomplete set) run once per pattern; with
    ``features_from`` (the CodeBrain row, scored first on the same batch with ``keep_features``) not even the
    common encoder: its F_c of the same incomplete inputs is decoded with the posterior code. Decoding
    the complete set as well gives the Stage I reconstruction PSNR per slice, kept in ``reconstruction_psnr``
    (set it to None to stop recording). In the model's own weights' precision: the served (bf16 where native)
    copy in ``evaluate``, fp32 in training's validation.
    """

    model: CodeBrain
    name: str = "CodeBrain posterior code (upper bound)"
    reconstruction_psnr: list[Tensor] | None = field(default_factory=list)
    batch_size: int | None = None  # inputs per forward pass (None: all at once)
    features_from: ImputerMethod | None = None

    def predict(self, images: Tensor, available: Tensor, brain_mask: Tensor) -> Tensor:
        s, p = available.shape[:2]
        dtype = next(self.model.parameters()).dtype
        images = images.to(dtype).contiguous(memory_format=torch.channels_last)  # as impute(): ~25 % faster on CPU
        with torch.inference_mode():
            codes, _ = self.model.encode_codes(images)
            codes = codes.contiguous(memory_format=torch.channels_last)
            if self.reconstruction_psnr is not None:
                complete = torch.ones(images.shape[:2], dtype=torch.bool, device=images.device)
                recon = self.model.decode(codes, images, complete).float().clamp(0, 1)
                per_contrast = [psnr(recon[:, c], images[:, c].float()) for c in range(images.shape[1])]
                self.reconstruction_psnr.append(torch.stack(per_contrast, dim=1).mean(dim=1).cpu())
            inputs = per_pattern(codes, p), per_pattern(images, p), available.flatten(0, 1)
            shared = self.features_from.features if self.features_from is not None else None
            if shared is not None and shared.shape[0] != s * p:
                raise ValueError("features_from holds another batch's features: score it first, on this batch")
            outputs, start = [], 0
            for pass_codes, pass_images, pass_available in passes(self.batch_size, *inputs):
                if shared is None:
                    recon = self.model.decode(pass_codes, pass_images, pass_available)
                else:
                    features = shared[start : start + pass_codes.shape[0]]
                    recon = self.model.decoder(pass_codes.to(features.dtype), features)
                start += pass_codes.shape[0]
                recon = recon.float().clamp(0, 1)
                outputs.append(torch.where(pass_available[..., None, None], pass_images.float(), recon))
        return torch.cat(outputs).unflatten(0, (s, p))

    def mean_reconstruction_psnr(self) -> float | None:
        if not self.reconstruction_psnr:
            return None
        return float(torch.cat(self.reconstruction_psnr).double().mean())


@dataclass
class NearestMethod:
    """The nearest-contrast baseline: intensity mapping only, no network."""

    baseline: NearestContrast
    name: str = "nearest contrast"

    def predict(self, images: Tensor, available: Tensor, brain_mask: Tensor) -> Tensor:
        s, p = available.shape[:2]
        flat = self.baseline.predict(per_pattern(images, p), available.flatten(0, 1), per_pattern(brain_mask, p))
        return flat.unflatten(0, (s, p))


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
    batch_size: int | None = None,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> EvaluationResult:
    """Score every method on every (pattern, target) pair of every slice of ``dataset``.

    Slices come ⌊batch_size / P⌋ at a time (at least one; ``batch_size`` by default ``FORWARD_BATCH`` for the
    device), each under all P patterns; methods cut them into their own forward passes. ``progress`` reports
    slices done, slices/s and the time left on stderr.
    """
    device = torch.device(device)
    batch_size = batch_size or for_device(FORWARD_BATCH, device)
    metric_batch = for_device(METRIC_BATCH, device)
    n = len(contrasts)
    patterns, pairs = missing_patterns(n), pattern_pairs(n)
    available = torch.zeros(len(patterns), n, dtype=torch.bool, device=device)  # [P, N], the same for every slice
    pair_of = torch.full((len(patterns), n), -1, dtype=torch.long, device=device)  # [P, N] → index into pairs
    for index, (pattern, target) in enumerate(pairs):
        available[patterns.index(pattern), list(pattern)] = True
        pair_of[patterns.index(pattern), target] = index
    # sums[method][metric]: float64 [pairs], summed over slices (every method sees every slice)
    sums: dict[str, dict[str, Tensor]] = {m.name: {} for m in methods}
    slices = 0
    meter = Progress(len(dataset), enabled=progress)
    loader = DataLoader(dataset, batch_size=max(1, batch_size // len(patterns)), shuffle=False, num_workers=0)
    for batch in loader:
        images = batch["image"].to(device).float()
        brain_mask = batch.get("brain_mask", torch.ones_like(images[:, 0], dtype=torch.bool)).to(device).bool()
        s = images.shape[0]
        for method in methods:
            prediction = method.predict(images, available.expand(s, -1, -1), brain_mask)
            for key, values in pair_figures(prediction, images, brain_mask, pair_of, len(pairs), metric_batch).items():
                bucket = sums[method.name].setdefault(key, torch.zeros(len(pairs), dtype=torch.float64))
                bucket += values
        slices += s
        meter.update(s)
    meter.close()
    if slices == 0:
        raise ValueError("the evaluation set has no slices")

    rows = []
    for method in methods:
        per_pair = {key: (values / slices).tolist() for key, values in sums[method.name].items()}
        for index, (pattern, target) in enumerate(pairs):
            rows.append(
                {
                    "method": method.name,
                    "pattern": pattern_name(pattern, contrasts),
                    "target": contrasts[target],
                    "inputs": len(pattern),
                    **{key: values[index] for key, values in per_pair.items()},
                    "slices": slices,
                }
            )
    metric_names = list(sums[methods[-1].name]) if methods else []
    result = EvaluationResult(tuple(contrasts), rows, summarise(rows, metric_names), None, slices)
    result.settings = {"ssim": SSIM_IMPLEMENTATION, "seconds": meter.elapsed, "slices_per_s": meter.rate}
    return result


def pair_figures(
    prediction: Tensor, images: Tensor, brain_mask: Tensor, pair_of: Tensor, pair_count: int, batch_size: int
) -> dict[str, Tensor]:
    """Every (slice, pattern, missing target) of a batch scored, ``batch_size`` slices a metric call, and summed
    per (pattern, target) pair.

    ``prediction`` ``[S, P, N, H, W]``, ``pair_of`` ``[P, N]`` (index into the ``pair_count`` pairs, −1 where
    the target is an input) → metric → float64 ``[pair_count]`` sums over the batch's slices.
    """
    s = prediction.shape[0]
    slice_i, pattern_i, target_i = (pair_of >= 0).expand(s, -1, -1).nonzero(as_tuple=True)
    sums: dict[str, Tensor] = {}
    for slices, patterns, targets in passes(batch_size, slice_i, pattern_i, target_i):
        figures = slice_metrics(prediction[slices, patterns, targets], images[slices, targets], brain_mask[slices])
        index = pair_of[patterns, targets].cpu()
        for key, values in figures.items():
            bucket = sums.setdefault(key, torch.zeros(pair_count, dtype=torch.float64))
            bucket.index_add_(0, index, values.double().cpu())
    return sums


class Progress:
    """Slices done / total, slices/s and the time left, on stderr: a live bar on a terminal, else a line every
    ``interval`` seconds (logs and CI stay readable)."""

    def __init__(self, total: int, enabled: bool = True, interval: float = 15.0) -> None:
        self.total, self.done, self.enabled, self.interval = total, 0, enabled, interval
        self.start = self.last = time.perf_counter()
        self.bar = tqdm(total=total, unit="slice", file=sys.stderr) if enabled and sys.stderr.isatty() else None

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    @property
    def rate(self) -> float:
        return self.done / max(self.elapsed, 1e-9)

    def update(self, count: int) -> None:
        self.done += count
        if self.bar is not None:
            self.bar.update(count)
        elif self.enabled and (time.perf_counter() - self.last >= self.interval or self.done == count):
            self.last = time.perf_counter()
            left = (self.total - self.done) / max(self.rate, 1e-9)
            _say(f"scored {self.done}/{self.total} slices, {self.rate:.2f} slices/s, {left:.0f} s left")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# --- the command ----------------------------------------------------------------------------------------------
def evaluate(
    checkpoint: str | Path,
    data_dir: str | Path | None,
    out_dir: str | Path | None = None,
    *,
    direct_checkpoint: str | Path | None = None,
    split: str = "test",
    split_file: str | Path | None = None,
    batch_size: int | None = None,
    max_slices: int | None = None,
    device: str | None = None,
    datasets: Any = None,
    nearest_fit_slices: int = 64,
    examples: int = 2,
    precision: str = "auto",
) -> EvaluationResult:
    """Score a CodeBrain inference checkpoint (and the baselines) on ``split``; write table, CSV, JSON, PNG.

    ``datasets``: pre-built splits (tests); otherwise built from ``data_dir`` with the split stored in the
    checkpoint, so the test subjects are the ones training never saw (``split_file``, a committed split such as
    ``real22``, names them for a checkpoint that stores none: a shipped file keeps only its weights).
    ``max_slices`` evenly subsamples the split.
    Progress and timings go to stderr (a long run is never silent); the table and where the files are, to stdout.
    ``precision``: the model rows' weights, as the node runs them (``auto``: bf16 where native).
    """
    checkpoint = Path(checkpoint)
    chosen_device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = load_inference_checkpoint(checkpoint, map_location=chosen_device)
    contrasts = model.cfg.contrasts
    if datasets is None:
        if data_dir is None:
            raise ValueError("no data: pass --data DIR")
        started = time.perf_counter()
        _say(f"reading and preparing every case under {data_dir} (resampled on the fly, no cache) ...")
        datasets = _training_split(Path(data_dir), checkpoint, model.cfg, split, split_file)
        _say(f"prepared the cases in {time.perf_counter() - started:.0f} s")
    # "all": a folder held out as a whole (other anatomies, another site); every subject is scored, and the
    # nearest-contrast baseline is fitted on those same subjects (which can only flatter the baseline).
    evaluation_set = datasets.train if split == "all" else getattr(datasets, split)
    if max_slices is not None and len(evaluation_set) > max_slices:
        step = len(evaluation_set) / max_slices
        evaluation_set = Subset(evaluation_set, [int(i * step) for i in range(max_slices)])

    # The rows: the served model and its Stage I ceiling (or a direct model alone), the direct baseline, the
    # nearest contrast (fitted on the training split; no network).
    forward_batch = batch_size or for_device(FORWARD_BATCH, chosen_device)
    methods: list[Method] = []
    tally = posterior = None
    served = model.for_inference(chosen_device, precision)  # as the node loads it
    if isinstance(model, CodeBrain):
        tally = ConfidenceTally() if model.cfg.confidence else None
        served_row = ImputerMethod(served, "CodeBrain", tally, forward_batch, keep_features=True)
        posterior = PosteriorCodeMethod(served, batch_size=forward_batch, features_from=served_row)
        methods += [served_row, posterior]
    else:
        methods.append(ImputerMethod(served, "direct regression", batch_size=forward_batch))
    if direct_checkpoint is not None:
        direct = load_inference_checkpoint(direct_checkpoint, map_location=chosen_device)
        direct = direct.for_inference(chosen_device, precision)
        if tuple(direct.cfg.contrasts) != tuple(contrasts):
            raise ValueError(f"{direct_checkpoint} was trained on {direct.cfg.contrasts}, not {contrasts}")
        methods.append(ImputerMethod(direct, "direct regression", batch_size=forward_batch))
    methods.append(NearestMethod(NearestContrast.fit(datasets.train, contrasts, max_slices=nearest_fit_slices)))

    patterns = len(missing_patterns(len(contrasts)))
    _say(f"scoring {len(methods)} methods on {len(evaluation_set)} {split} slices, {patterns} patterns each")
    result = score_methods(
        methods, evaluation_set, contrasts, batch_size=forward_batch, device=chosen_device, progress=True
    )
    seconds, rate = result.settings["seconds"], result.settings["slices_per_s"]
    _say(f"scored {result.slices} slices in {seconds:.1f} s ({rate:.2f} slices/s)")
    result.settings |= {
        "checkpoint": str(checkpoint),
        "direct_checkpoint": None if direct_checkpoint is None else str(direct_checkpoint),
        "split": split,
        "max_slices": max_slices,
        "device": str(chosen_device),
        "precision": str(next(served.parameters()).dtype).removeprefix("torch."),
    }
    # The recorders stop here: the example grid below must not count its slices again.
    if posterior is not None:
        result.stage1_reconstruction_psnr = posterior.mean_reconstruction_psnr()
        posterior.reconstruction_psnr = None
    if tally is not None:
        result.confidence = tally.summary()
        methods[0].tally = None
    print(report.format_table(result))
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        if examples > 0:
            samples = [evaluation_set[i] for i in _spread(len(evaluation_set), examples)]
            grid = report.example_grid(methods, samples, contrasts, out_dir / "examples.png", chosen_device)
            result.files["examples"] = str(grid)
        result.files.update(report.write_results(result, out_dir))
        print(report.format_files(result.files))
    return result


def _say(message: str) -> None:
    """Progress for the person waiting: stderr, so the table on stdout stays clean to pipe."""
    print(message, file=sys.stderr, flush=True)


def _spread(length: int, count: int) -> list[int]:
    """``count`` indices spread over the set (the middle of the brain rather than its first slices)."""
    count = min(count, length)
    return [int((i + 0.5) * length / count) for i in range(count)]


def _training_split(
    data_dir: Path, checkpoint: Path, cfg: Any, split_name: str, split_file: str | Path | None = None
) -> Any:
    """The same subject split as training: ``split_file``'s, or the one the checkpoint's metadata records.

    ``split_name == "all"`` puts every subject of ``data_dir`` in the train split (for held-out folders), whatever
    subjects a committed split (``assignment``) named. Any other split of a checkpoint that records none, with no
    ``split_file``, is an error: the default fractions would pick subjects training may have seen."""
    from training.datasets import SubjectSplit, datasets_for_model, read_split_file

    recorded = read_checkpoint_metadata(checkpoint).get("data_split")
    if split_name != "all" and recorded is None and split_file is None:
        raise ValueError(
            f"{checkpoint} records no subject split (a shipped file keeps only its weights), so its {split_name} "
            "subjects are unknown: pass --split-file NAME (the committed split it was trained on, e.g. real22), "
            "or --split all on a folder of held-out cases"
        )
    split = SubjectSplit.from_json(recorded, cfg.image_size)
    if split_file is not None:
        split = replace(split, assignment=read_split_file(split_file))
    if split_name == "all":
        split = replace(split, val_fraction=0.0, test_fraction=0.0, assignment=None)
    return datasets_for_model(data_dir, cfg, split)
