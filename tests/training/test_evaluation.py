"""The evaluation protocol: pattern enumeration, metrics, the scoring harness and the ``evaluate`` command."""

from __future__ import annotations

import csv
import itertools
import json
import math
import re
from dataclasses import dataclass

import pytest
import torch
from standin_data import make_splits, tiny_model_config

from codebrain_node.model import CodeBrain, DirectRegression, save_inference_checkpoint
from training.baselines import NearestContrast
from training.evaluate import (
    CONFIDENCE_MIN_RATIO,
    ConfidenceTally,
    ImputerMethod,
    NearestMethod,
    PosteriorCodeMethod,
    evaluate,
    missing_patterns,
    pattern_pairs,
    score_methods,
)
from training.metrics import mae, psnr, slice_metrics, ssim, ssim_map


@pytest.mark.parametrize("n", [2, 3, 4, 5, 6])
def test_patterns_are_every_nonempty_proper_subset(n):
    patterns = missing_patterns(n)
    assert len(patterns) == 2**n - 2 == len(set(patterns))
    assert all(0 < len(p) < n for p in patterns)
    pairs = pattern_pairs(n)
    assert len(pairs) == n * (2 ** (n - 1) - 1)  # Σ_k C(n,k)(n−k)
    assert all(target not in pattern for pattern, target in pairs)


def test_paper_counts_for_ixi_and_brats():
    assert (len(missing_patterns(3)), len(pattern_pairs(3))) == (6, 9)
    assert sum(len(p) == 1 for p, _ in pattern_pairs(3)) == 6  # six one-input scenarios, three two-input
    assert (len(missing_patterns(4)), len(pattern_pairs(4))) == (14, 28)


def test_metrics_on_known_images():
    target = torch.rand(2, 32, 32)
    perfect = slice_metrics(target, target, torch.ones(2, 32, 32, dtype=torch.bool))
    assert torch.allclose(perfect["mae"], torch.zeros(2)) and torch.allclose(perfect["ssim"], torch.full((2,), 100.0))
    assert torch.allclose(perfect["psnr"], torch.full((2,), 100.0))  # MSE floor: finite for a perfect slice
    shifted = (target + 0.1).clamp(max=2.0)
    assert torch.allclose(psnr(shifted, target), torch.full((2,), 20.0), atol=1e-4)  # MSE 0.01 → 20 dB
    assert torch.allclose(mae(shifted, target), torch.full((2,), 0.1), atol=1e-6)
    noisy = (target + 0.3 * torch.randn_like(target)).clamp(0, 1)
    assert float(ssim(noisy, target).max()) < 0.9
    # masked: an error outside the mask does not count
    mask = torch.zeros(2, 32, 32, dtype=torch.bool)
    mask[:, 8:24, 8:24] = True
    corrupted = torch.where(mask, target, 1 - target)
    assert torch.allclose(mae(corrupted, target, mask), torch.zeros(2))
    assert bool((mae(corrupted, target) > 0).all())


def test_ssim_and_psnr_agree_with_scikit_image():
    """scikit-image (like torchmetrics before 1.4.2) averages only the windows fully inside the image: our map
    cropped by the window radius; the whole map (the paper's torchmetrics figure) is checked in test_metrics_ssim."""
    metrics = pytest.importorskip("skimage.metrics", reason="scikit-image not installed (reference check only)")
    generator = torch.Generator().manual_seed(0)
    a = torch.rand(40, 48, generator=generator, dtype=torch.float64)
    b = (a + 0.1 * torch.randn(40, 48, generator=generator, dtype=torch.float64)).clamp(0, 1)
    reference = metrics.structural_similarity(
        a.numpy(), b.numpy(), gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1
    )
    assert float(ssim_map(a[None], b[None])[0, 5:-5, 5:-5].mean()) == pytest.approx(reference, abs=1e-4)
    assert float(psnr(a[None], b[None])) == pytest.approx(
        metrics.peak_signal_noise_ratio(a.numpy(), b.numpy(), data_range=1), abs=1e-4
    )


@dataclass
class Oracle:
    name: str = "oracle"

    def predict(self, images, available, brain_mask):  # [S, N, H, W], [S, P, N] → [S, P, N, H, W]
        return images.unsqueeze(1).expand(-1, available.shape[1], -1, -1, -1).clone()


@dataclass
class Blank:
    name: str = "blank"

    def predict(self, images, available, brain_mask):
        return torch.where(available[..., None, None], images.unsqueeze(1), torch.zeros(()))


@pytest.mark.parametrize("contrasts", [("T1", "T2", "PD"), ("T1", "T1Gd", "T2", "FLAIR")])
def test_harness_scores_every_pair_and_orders_methods(contrasts):
    splits = make_splits(contrasts)
    result = score_methods([Oracle(), Blank()], splits.test, contrasts, batch_size=3)
    n = len(contrasts)
    for method in ("oracle", "blank"):
        assert sum(r["method"] == method for r in result.rows) == len(pattern_pairs(n))
    oracle = [r for r in result.rows if r["method"] == "oracle"]
    assert all(r["mae"] == 0 and r["mae_brain"] == 0 and r["psnr"] == pytest.approx(100.0) for r in oracle)
    blank = result.summary["blank"]
    assert set(blank) == {"all", "one_input", "multi_input"}
    assert all(math.isfinite(v) for group in blank.values() for v in group.values())
    assert blank["all"]["psnr"] < 30 < result.summary["oracle"]["all"]["psnr"]
    assert blank["all"]["mae"] > 10
    assert result.slices == len(splits.test)


def test_nearest_contrast_is_near_perfect_on_identical_contrasts():
    contrasts = ("T1", "T2", "PD")
    splits = make_splits(contrasts, identical=True)
    baseline = NearestContrast.fit(splits.train, contrasts)
    result = score_methods([NearestMethod(baseline)], splits.test, contrasts, batch_size=4)
    summary = result.summary["nearest contrast"]["all"]
    assert summary["psnr"] > 60 and summary["ssim"] > 99.9 and summary["mae"] < 0.1


def test_nearest_contrast_prefers_the_source_it_can_match():
    contrasts = ("T1", "T2", "PD")  # stand-in: PD is a linear map of T1, T2 an inversion
    baseline = NearestContrast.fit(make_splits(contrasts).train, contrasts)
    assert baseline.source_for(target=2, available=[0, 1]) == 0
    assert baseline.source_for(target=0, available=[1, 2]) == 2


def test_nearest_contrast_predicts_every_row_as_matching_it_alone_would():
    """predict() matches each (source, target) once for all rows that share it: the same images as one row at a
    time, every available contrast copied untouched."""
    contrasts = ("T1", "T2", "PD")
    splits = make_splits(contrasts)
    baseline = NearestContrast.fit(splits.train, contrasts)
    images = torch.stack([splits.test[i]["image"].float() for i in range(3)]).repeat_interleave(2, dim=0)
    mask = images[:, 0] > 0.05
    available = torch.tensor([[1, 0, 0], [0, 1, 1], [1, 1, 0], [0, 0, 1], [1, 0, 1], [0, 1, 0]], dtype=torch.bool)
    together = baseline.predict(images, available, mask)
    for row in range(images.shape[0]):
        alone = baseline.predict(images[row : row + 1], available[row : row + 1], mask[row : row + 1])[0]
        assert torch.equal(together[row], alone)
        present = available[row].nonzero().flatten().tolist()
        for target in range(3):
            if target in present:
                assert torch.equal(together[row, target], images[row, target])
            else:
                source = baseline.source_for(target, present)
                expected = baseline.match(images[row : row + 1, source], source, target, mask[row : row + 1])[0]
                assert torch.equal(together[row, target], expected)


def test_evaluate_writes_table_csv_json_and_grid(tmp_path, capsys):
    contrasts = ("T1", "T2", "FLAIR")
    cfg = tiny_model_config(contrasts)
    torch.manual_seed(0)
    checkpoint = save_inference_checkpoint(CodeBrain(cfg), tmp_path / "codebrain.safetensors")
    direct = save_inference_checkpoint(DirectRegression(cfg), tmp_path / "direct.safetensors")
    result = evaluate(
        checkpoint,
        None,
        tmp_path / "eval",
        direct_checkpoint=direct,
        datasets=make_splits(contrasts),
        device="cpu",
    )
    methods = {"CodeBrain", "CodeBrain posterior code (upper bound)", "direct regression", "nearest contrast"}
    assert set(result.summary) == methods
    assert len(result.rows) == 9 * len(methods)
    assert result.stage1_reconstruction_psnr is not None and math.isfinite(result.stage1_reconstruction_psnr)
    captured = capsys.readouterr()
    printed = captured.out
    assert "nearest contrast" in printed and "T1+T2 -> FLAIR" in printed
    assert "SSIM: torchmetrics" in printed and "reflect padding" in printed  # which SSIM produced the table
    assert "Outputs:" in printed and str(tmp_path / "eval" / "pairs.csv") in printed
    assert re.search(rf"scored \d+/{result.slices} slices, [\d.]+ slices/s, \d+ s left", captured.err)  # progress
    assert re.search(rf"scored {result.slices} slices in [\d.]+ s \([\d.]+ slices/s\)", captured.err)  # the rate
    for name in ("table.txt", "pairs.csv", "summary.csv", "results.json", "examples.png"):
        assert (tmp_path / "eval" / name).stat().st_size > 0, name
    with (tmp_path / "eval" / "pairs.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 9 * len(methods) and {"psnr", "ssim", "mae", "psnr_brain"} <= set(rows[0])
    saved = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert saved["summary"]["CodeBrain"]["all"]["psnr"] == pytest.approx(result.summary["CodeBrain"]["all"]["psnr"])


def _patterns_of(n: int, slices: int) -> torch.Tensor:
    """``[S, P, N]`` availability: every missing pattern for each of ``slices`` slices."""
    available = torch.zeros(len(missing_patterns(n)), n, dtype=torch.bool)
    for index, pattern in enumerate(missing_patterns(n)):
        available[index, list(pattern)] = True
    return available.expand(slices, -1, -1)


def test_batched_methods_give_what_one_pattern_at_a_time_gave():
    """One call for every pattern of several slices == the node's impute / the posterior path, pattern by pattern."""
    contrasts = ("T1", "T2", "FLAIR")
    torch.manual_seed(0)
    model = CodeBrain(tiny_model_config(contrasts)).eval()
    splits = make_splits(contrasts)
    batch = [splits.test[i] for i in range(3)]
    images, mask = torch.stack([b["image"] for b in batch]), torch.stack([b["brain_mask"] for b in batch])
    available = _patterns_of(3, len(batch))
    served = ImputerMethod(model, "CodeBrain").predict(images, available, mask)
    posterior = PosteriorCodeMethod(model)
    ceiling = posterior.predict(images, available, mask)
    assert served.shape == ceiling.shape == (3, 6, 3, 32, 32)
    in_passes_of_4 = ImputerMethod(model, "CodeBrain", batch_size=4), PosteriorCodeMethod(model, batch_size=4)
    for whole, method in zip((served, ceiling), in_passes_of_4, strict=True):
        assert torch.allclose(method.predict(images, available, mask), whole, atol=1e-5)
    with torch.inference_mode():  # Stage I reconstruction PSNR: the posterior path given the complete set
        complete = model.stage1_forward(images, torch.ones(3, 3, dtype=torch.bool))["recon"].float().clamp(0, 1)
    expected_psnr = torch.stack([psnr(complete[:, c], images[:, c]) for c in range(3)], dim=1).mean(dim=1)
    assert torch.allclose(posterior.reconstruction_psnr[0], expected_psnr, atol=1e-4)
    for p in range(available.shape[1]):
        pattern = available[:, p]
        expected = model.impute(images, pattern).images
        with torch.inference_mode():
            recon = model.stage1_forward(images, pattern)["recon"].float().clamp(0, 1)
        assert torch.allclose(served[:, p], expected, atol=1e-5)
        assert torch.allclose(ceiling[:, p], torch.where(pattern[..., None, None], images, recon), atol=1e-5)


def test_posterior_encoder_runs_once_per_slice_and_nearest_needs_no_network():
    contrasts = ("T1", "T2", "FLAIR")
    torch.manual_seed(0)
    model = CodeBrain(tiny_model_config(contrasts)).eval()
    seen: dict[str, list[int]] = {"posterior_encoder": [], "common_encoder": [], "prior_encoder": []}
    for name, calls in seen.items():
        getattr(model, name).register_forward_hook(lambda _m, args, _out, calls=calls: calls.append(args[0].shape[0]))
    splits = make_splits(contrasts)
    result = score_methods([PosteriorCodeMethod(model)], splits.test, contrasts, batch_size=12)  # 2 slices a batch
    slices = len(splits.test)
    assert sum(seen["posterior_encoder"]) == slices  # the code reads the complete set: once per slice
    assert sum(seen["common_encoder"]) == slices * (6 + 1)  # each pattern, and the complete set (Stage I PSNR)
    assert seen["prior_encoder"] == [] and result.slices == slices

    nearest = NearestMethod(NearestContrast.fit(splits.train, contrasts))
    score_methods([nearest], splits.test, contrasts)
    assert sum(seen["posterior_encoder"]) == slices and seen["prior_encoder"] == []


def test_posterior_row_decodes_the_served_rows_features_without_encoding_them_again():
    """Scored after the CodeBrain row on the same batch, the ceiling reuses its F_c: the same images, and the
    common encoder runs once per (slice, pattern) for both rows (plus the complete set for the Stage I PSNR)."""
    contrasts = ("T1", "T2", "FLAIR")
    torch.manual_seed(0)
    model = CodeBrain(tiny_model_config(contrasts)).eval()
    calls: list[int] = []
    model.common_encoder.register_forward_hook(lambda _m, args, _out: calls.append(args[0].shape[0]))
    splits = make_splits(contrasts)
    alone = score_methods([PosteriorCodeMethod(model, batch_size=4)], splits.test, contrasts, batch_size=12)
    calls.clear()
    served = ImputerMethod(model, "CodeBrain", batch_size=4, keep_features=True)
    shared = PosteriorCodeMethod(model, batch_size=4, features_from=served)
    together = score_methods([served, shared], splits.test, contrasts, batch_size=12)
    slices = len(splits.test)
    assert sum(calls) == slices * 6 + slices  # the served row's passes and the complete set, nothing more
    mine = [r for r in together.rows if r["method"] == shared.name]
    assert len(mine) == len(alone.rows) == 9
    for row, reference in zip(mine, alone.rows, strict=True):
        assert row["psnr"] == pytest.approx(reference["psnr"], abs=1e-4)
        assert row["ssim"] == pytest.approx(reference["ssim"], abs=1e-3)
    batch = [splits.test[i] for i in range(2)]
    images, mask = torch.stack([b["image"] for b in batch]), torch.stack([b["brain_mask"] for b in batch])
    served.predict(images, _patterns_of(3, 2), mask)
    stale = PosteriorCodeMethod(model, features_from=served)  # features of another batch are refused
    with pytest.raises(ValueError, match="another batch"):
        stale.predict(images[:1], _patterns_of(3, 1), mask[:1])


def test_split_all_scores_every_subject_even_with_a_committed_split(tmp_path, monkeypatch):
    import training.datasets
    from training.datasets import SubjectSplit
    from training.evaluate import _training_split

    cfg = tiny_model_config(("T1", "T2", "FLAIR"))
    split = SubjectSplit(size=32, assignment={"train": ["a"], "val": ["b"], "test": ["c"]})
    checkpoint = save_inference_checkpoint(CodeBrain(cfg), tmp_path / "cb.safetensors", {"data_split": split.to_json()})
    asked = []
    monkeypatch.setattr(training.datasets, "datasets_for_model", lambda _dir, _cfg, split: asked.append(split))
    _training_split(tmp_path, checkpoint, cfg, "test")
    _training_split(tmp_path, checkpoint, cfg, "all")
    assert asked[0] == split  # test/val: the subjects training held out
    assert asked[1].assignment is None and asked[1].val_fraction == asked[1].test_fraction == 0.0


def test_a_checkpoint_without_a_recorded_split_needs_the_split_file_for_its_test_subjects(tmp_path, monkeypatch):
    import training.datasets
    from training.evaluate import _training_split

    cfg = tiny_model_config(("T1", "T2", "FLAIR"))
    shipped = save_inference_checkpoint(CodeBrain(cfg), tmp_path / "shipped.safetensors", {})  # weights only
    asked = []
    monkeypatch.setattr(training.datasets, "datasets_for_model", lambda _dir, _cfg, split: asked.append(split))
    with pytest.raises(ValueError, match=r"records no subject split.*--split-file"):
        _training_split(tmp_path, shipped, cfg, "test")  # a random tenth of the cases would be scored
    _training_split(tmp_path, shipped, cfg, "test", "real22")
    assert "TCGA-FG-6692" in asked[0].assignment["test"] and "TCGA-FG-6692" not in asked[0].assignment["train"]
    _training_split(tmp_path, shipped, cfg, "all")  # a held-out folder needs no split
    assert asked[1].assignment is None


def _tally_of(confidence: torch.Tensor, error: torch.Tensor) -> dict:
    """One missing contrast (index 1) whose |error| and confidence are given per pixel."""
    truth = torch.zeros(confidence.shape[0], 2, *confidence.shape[-2:])
    prediction = truth.clone()
    prediction[:, 1] = error
    available = torch.tensor([[True, False]]).expand(confidence.shape[0], 2)
    tally = ConfidenceTally()
    tally.add(confidence.unsqueeze(1), prediction, truth, available, torch.ones_like(confidence, dtype=torch.bool))
    return tally.summary()


def test_confidence_tally_ranks_errors_a_useful_map_puts_largest_errors_least_sure():
    generator = torch.Generator().manual_seed(0)
    confidence = torch.rand(6, 16, 16, generator=generator) * torch.linspace(0.2, 1.0, 6).view(6, 1, 1)
    useful = _tally_of(confidence, 1.0 - confidence)  # wrong exactly where unsure
    groups = useful["mae_by_confidence_group"]
    assert all(a > b for a, b in itertools.pairwise(groups)), groups
    assert useful["slice_spearman_confidence_vs_mae"] == pytest.approx(-1.0)
    assert useful["pixel_share_by_group"] == pytest.approx([0.2] * 5, abs=0.02)
    assert useful["slice_pairs"] == 6 and 0 < useful["mean_confidence"] < 1

    useless = _tally_of(confidence, torch.rand(6, 16, 16, generator=generator))  # errors unrelated to confidence
    spread = max(useless["mae_by_confidence_group"]) - min(useless["mae_by_confidence_group"])
    assert spread < 0.2 * (max(groups) - min(groups))


def test_evaluate_reports_confidence_for_a_model_that_has_it(tmp_path, capsys):
    contrasts = ("T1", "T2", "FLAIR")
    torch.manual_seed(0)
    model = CodeBrain(tiny_model_config(contrasts, confidence=True))
    result = evaluate(
        save_inference_checkpoint(model, tmp_path / "cb.safetensors"),
        None,
        tmp_path / "eval",
        datasets=make_splits(contrasts),
        device="cpu",
        examples=1,
    )
    slices_times_targets = result.slices * sum(len(contrasts) - len(p) for p in missing_patterns(3))
    assert result.confidence["slice_pairs"] == slices_times_targets  # counted once, not again for the grid
    assert len(result.confidence["mae_by_confidence_group"]) == 5
    out = capsys.readouterr().out
    assert "rank correlation of a slice's mean confidence" in out
    assert "least / most confident group:" in out and f"{CONFIDENCE_MIN_RATIO}x" in out
    assert (tmp_path / "eval" / "confidence.png").stat().st_size > 0
    assert json.loads((tmp_path / "eval" / "results.json").read_text())["confidence"] == result.confidence


def test_shipped_weights_keep_the_run_s_split_so_split_test_needs_no_split_file(tmp_path):
    import importlib.util
    from pathlib import Path

    from codebrain_node.model.checkpoint import read_checkpoint_metadata
    from training.datasets import SubjectSplit

    script = Path(__file__).resolve().parents[2] / "training" / "recipes" / "ship_weights.py"
    recipe = importlib.util.spec_from_file_location("ship_weights", script)
    ship_weights = importlib.util.module_from_spec(recipe)
    recipe.loader.exec_module(ship_weights)
    cfg = tiny_model_config(("T1", "T2", "FLAIR"))
    split = SubjectSplit(size=32, assignment={"train": ["a"], "val": ["b"], "test": ["c"]})
    (tmp_path / "run").mkdir()
    save_inference_checkpoint(CodeBrain(cfg), tmp_path / "run" / "model.safetensors", {"data_split": split.to_json()})
    (tmp_path / "weights").mkdir()
    shipped = ship_weights.ship(tmp_path / "run", "tiny", "9.9", weights_dir=tmp_path / "weights")
    metadata = read_checkpoint_metadata(shipped)
    assert metadata["model_version"] == "9.9" and SubjectSplit.from_json(metadata["data_split"], 32) == split
    assert shipped.name in (tmp_path / "weights" / "SHA256SUMS").read_text()


def test_confidence_tally_says_whether_the_map_is_worth_showing():
    """The least confident fifth must carry CONFIDENCE_MIN_RATIO times the most confident fifth's error."""
    generator = torch.Generator().manual_seed(0)
    confidence = torch.rand(6, 16, 16, generator=generator)
    steep = _tally_of(confidence, 1.0 - confidence)  # errors 0.9 against 0.1: far above the bar
    assert steep["least_vs_most_confident"] > steep["worth_showing_at"] == CONFIDENCE_MIN_RATIO
    flat = _tally_of(confidence, 0.5 - 0.1 * confidence)  # 0.49 against 0.41: ordered, but only 1.2x
    assert 1.0 < flat["least_vs_most_confident"] < flat["worth_showing_at"] == CONFIDENCE_MIN_RATIO
