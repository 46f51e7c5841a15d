"""Human-facing output of training and evaluation: loss-curve PNG, result tables (text, CSV, JSON), slice grids."""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt
import numpy as np

SKIP_CURVES = {"step", "split", "lr", "images_per_s", "grad_norm"}


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_loss_curves(metrics_path: str | Path, png_path: str | Path) -> Path:
    """One panel per logged quantity, train and validation on the same axes."""
    records = read_metrics(metrics_path)
    series: dict[str, dict[str, tuple[list[int], list[float]]]] = defaultdict(dict)
    for record in records:
        for key, value in record.items():
            if key in SKIP_CURVES or not isinstance(value, int | float):
                continue
            steps, values = series[key].setdefault(record.get("split", "train"), ([], []))
            steps.append(record["step"])
            values.append(float(value))
    keys = sorted(series) or ["loss"]
    columns = min(3, len(keys))
    rows = (len(keys) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(4.5 * columns, 3.2 * rows), squeeze=False)
    for axis, key in zip(axes.flat, keys, strict=False):
        for split, (steps, values) in sorted(series.get(key, {}).items()):
            axis.plot(steps, values, label=split, marker="." if len(steps) < 30 else None)
        axis.set_title(key)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
        if series.get(key):
            axis.legend(fontsize=8)
    for axis in list(axes.flat)[len(keys) :]:
        axis.axis("off")
    figure.tight_layout()
    png_path = Path(png_path)
    figure.savefig(png_path, dpi=100)
    plt.close(figure)
    return png_path


# --- evaluation tables ----------------------------------------------------------------------------------------
TABLE_METRICS = ("psnr", "ssim", "mae", "psnr_brain", "ssim_brain", "mae_brain")
GROUP_LABELS = {"all": "mean", "one_input": "1-input", "multi_input": "multi-input"}


def format_table(result: Any) -> str:
    """A paper-like text table: summary per method, then PSNR / SSIM per (pattern → target) pair."""
    lines = [
        f"Evaluation on {result.slices} slices, contrasts {', '.join(result.contrasts)} "
        "(PSNR dB, SSIM x100, MAE x1000; *_brain inside the brain mask)"
    ]
    if result.stage1_reconstruction_psnr is not None:
        lines.append(
            f"Stage I reconstruction PSNR (posterior code, complete set): {result.stage1_reconstruction_psnr:.2f}"
        )
    header = f"{'method':<46} {'group':<12}" + "".join(f"{m:>11}" for m in TABLE_METRICS)
    lines += ["", header, "-" * len(header)]
    for method, groups in result.summary.items():
        for group, values in groups.items():
            cells = "".join(f"{values.get(m, float('nan')):>11.2f}" for m in TABLE_METRICS)
            lines.append(f"{method:<46} {GROUP_LABELS[group]:<12}{cells}")
    if ssim_source := getattr(result, "settings", {}).get("ssim"):
        lines.append(f"SSIM: {ssim_source}")
    lines += format_confidence(getattr(result, "confidence", None))
    methods = list(result.summary)
    pair_header = f"{'inputs -> target':<28}" + "".join(f"{_short(m):>22}" for m in methods)
    lines += ["", "PSNR / SSIM per (pattern, target)", pair_header, "-" * len(pair_header)]
    by_pair: dict[tuple[str, str], dict[str, dict]] = defaultdict(dict)
    for row in result.rows:
        by_pair[(row["pattern"], row["target"])][row["method"]] = row
    for (pattern, target), per_method in by_pair.items():
        cells = "".join(
            f"{per_method[m]['psnr']:>13.2f} /{per_method[m]['ssim']:>6.2f}" if m in per_method else f"{'':>22}"
            for m in methods
        )
        lines.append(f"{pattern + ' -> ' + target:<28}{cells}")
    return "\n".join(lines)


def format_confidence(confidence: dict[str, Any] | None) -> list[str]:
    """Does the confidence map rank the errors? Brain MAE per equal-size confidence group, least sure first."""
    if not confidence:
        return []
    groups = confidence["mae_by_confidence_group"]
    cells = "  ".join(f"{value:.1f}" for value in groups)
    ratio, bar = confidence["least_vs_most_confident"], confidence["worth_showing_at"]
    return [
        "",
        f"Confidence (CodeBrain, brain pixels of missing contrasts; mean {confidence['mean_confidence']:.3f}):",
        f"  MAE x1000 by confidence group, {len(groups)} groups of ~equal size, least confident first: {cells}",
        f"  rank correlation of a slice's mean confidence with its MAE: "
        f"{confidence['slice_spearman_confidence_vs_mae']:+.3f} over {confidence['slice_pairs']} (slice, target) pairs",
        f"  least / most confident group: {ratio:.2f}x ({'at least' if ratio >= bar else 'below'} the {bar}x a map "
        "needs before it is shown as confidence)",
    ]


def plot_confidence(confidence: dict[str, Any], png_path: Path) -> Path:
    """Bar chart: brain MAE of each confidence group (a useful map falls from left to right)."""
    groups = confidence["mae_by_confidence_group"]
    figure, axis = plt.subplots(figsize=(5, 3.2))
    axis.bar(range(1, len(groups) + 1), groups, color="tab:purple")
    bar = confidence["worth_showing_at"] * groups[-1]  # where the least confident bar must reach to mean something
    axis.axhline(bar, color="black", linestyle="--", linewidth=1)
    axis.annotate(
        f"{confidence['worth_showing_at']}x the most confident",
        (0.5, bar),
        xytext=(0, 3),
        textcoords="offset points",
        fontsize=8,
    )
    axis.set_xlabel("confidence group (1 = least confident)")
    axis.set_ylabel("brain MAE x1000")
    axis.set_title(f"Error by confidence (slice rank corr. {confidence['slice_spearman_confidence_vs_mae']:+.2f})")
    axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(png_path, dpi=100)
    plt.close(figure)
    return Path(png_path)


def _short(method: str) -> str:
    return method if len(method) <= 20 else method[:19] + "…"


def format_files(files: dict[str, str]) -> str:
    """Where the outputs went, one per line (``files`` as ``EvaluationResult.files``)."""
    width = max((len(key) for key in files), default=0)
    return "\n".join(["", "Outputs:", *(f"  {key:<{width}}  {path}" for key, path in files.items())])


def write_results(result: Any, out_dir: Path) -> dict[str, str]:
    """table.txt, pairs.csv (one row per method and pair), summary.csv and results.json."""
    out_dir = Path(out_dir)
    files = {
        "table": out_dir / "table.txt",
        "pairs_csv": out_dir / "pairs.csv",
        "summary_csv": out_dir / "summary.csv",
        "json": out_dir / "results.json",
    }
    files["table"].write_text(format_table(result) + "\n")
    if result.rows:
        with files["pairs_csv"].open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(result.rows[0]))
            writer.writeheader()
            writer.writerows(result.rows)
    with files["summary_csv"].open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["method", "group", *TABLE_METRICS])
        for method, groups in result.summary.items():
            for group, values in groups.items():
                writer.writerow([method, group, *(f"{values.get(m, float('nan')):.4f}" for m in TABLE_METRICS)])
    if getattr(result, "confidence", None):
        files["confidence_png"] = plot_confidence(result.confidence, out_dir / "confidence.png")
    names = {key: str(path) for key, path in files.items()}
    result.files.update(names)
    files["json"].write_text(json.dumps(result.to_dict() | {"files": result.files}, indent=2))
    return names


def example_grid(
    methods: Sequence[Any], samples: Sequence[dict], contrasts: Sequence[str], png_path: Path, device: Any
) -> Path:
    """For each example slice and each contrast as the one missing target (all others given): truth, each
    method's synthesis and CodeBrain's absolute error. One call per method and slice covers the N patterns."""
    import torch

    n = len(contrasts)
    rows: list[tuple[str, list[np.ndarray]]] = []
    titles = ["truth", *[m.name for m in methods], f"|error| {methods[0].name}"]
    leave_one_out = ~torch.eye(n, dtype=torch.bool, device=device).unsqueeze(0)  # [1, P = N, N]: target p missing
    for index, sample in enumerate(samples):
        images = sample["image"].unsqueeze(0).to(device).float()
        mask = sample.get("brain_mask", torch.ones_like(sample["image"][0], dtype=torch.bool))
        mask = mask.unsqueeze(0).to(device).bool()
        outputs = [m.predict(images, leave_one_out, mask)[0].float().cpu() for m in methods]  # [N, N, H, W]
        for target in range(n):
            predictions = [output[target, target] for output in outputs]
            truth = images[0, target].cpu()
            panels = [
                truth.numpy(),
                *[p.numpy() for p in predictions],
                (predictions[0] - truth).abs().numpy(),
            ]
            given = "+".join(c for i, c in enumerate(contrasts) if i != target)
            rows.append((f"#{index} {given} -> {contrasts[target]}", panels))
    figure, axes = plt.subplots(len(rows), len(titles), figsize=(2.2 * len(titles), 2.2 * len(rows)), squeeze=False)
    for r, (label, panels) in enumerate(rows):
        for c, panel in enumerate(panels):
            axis = axes[r, c]
            axis.imshow(
                panel,
                cmap="magma" if c == len(panels) - 1 else "gray",
                vmin=0,
                vmax=1 if c < len(panels) - 1 else 0.25,
            )
            axis.set_xticks([])
            axis.set_yticks([])
            if r == 0:
                axis.set_title(_short(titles[c]), fontsize=8)
            if c == 0:
                axis.set_ylabel(label, fontsize=7)
    figure.tight_layout()
    figure.savefig(png_path, dpi=90)
    plt.close(figure)
    return Path(png_path)


def plot_normalisation(
    cases: Sequence[tuple[str, dict[str, np.ndarray], dict[str, np.ndarray]]], png_path: str | Path, bins: int = 120
) -> Path:
    """Intensity histograms per contrast, one line per case: top row as stored (inside each volume's foreground,
    on a log axis since sites differ by orders of magnitude), bottom row after the per-volume
    normalisation the model sees in training and serving (inside the brain mask, on [0, 1]).

    ``cases`` holds ``(name, raw values by contrast, normalised values by contrast)``, each a 1-D array.
    """
    contrasts = list(dict.fromkeys(c for _, raw, _ in cases for c in raw))
    fig, axes = plt.subplots(2, len(contrasts), figsize=(3.6 * len(contrasts), 6.4), squeeze=False)
    for name, raw, normalised in cases:
        for column, contrast in enumerate(contrasts):
            if contrast in raw:
                values = raw[contrast]
                positive = values[values > 0]
                if positive.size:
                    edges = np.geomspace(max(float(positive.min()), 1e-3), float(positive.max()) * 1.01, bins)
                    density, _ = np.histogram(positive, bins=edges, density=True)
                    axes[0, column].step(edges[:-1], density * edges[:-1], where="post", label=name, lw=1)
            if contrast in normalised:
                density, edges = np.histogram(normalised[contrast], bins=bins, range=(0.0, 1.0), density=True)
                axes[1, column].step(edges[:-1], density, where="post", label=name, lw=1)
    for column, contrast in enumerate(contrasts):
        axes[0, column].set_xscale("log")
        axes[0, column].set_title(f"{contrast}: as stored")
        axes[0, column].set_xlabel("intensity (log)")
        axes[1, column].set_title(f"{contrast}: normalised")
        axes[1, column].set_xlabel("model input")
        for row in (0, 1):
            axes[row, column].set_yticks([])
    axes[0, 0].set_ylabel("density")
    axes[1, 0].set_ylabel("density")
    axes[0, -1].legend(fontsize=7, loc="upper left")
    fig.suptitle("Per-volume normalisation: (x - p0.5) / (p99.5 - p0.5) inside the brain, clipped to [0, 1]")
    fig.tight_layout()
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return png_path
