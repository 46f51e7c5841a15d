"""Stage I, Stage II and the direct baseline run through the shared loop and leave a complete run folder;
``--resume`` from step k reproduces step k+1 exactly."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from standin_data import write_train_toml

from codebrain_node.model import CodeBrain, DirectRegression, load_inference_checkpoint
from training.loop import read_training_checkpoint
from training.train import build_argv, train


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_stage1_then_stage2_leave_a_complete_run(tmp_path, fast_toml, model_cfg, splits):
    stage1 = train(1, fast_toml, None, tmp_path / "s1", model_config=model_cfg, datasets=splits)
    assert stage1.step == 3
    for name in ("config.json", "metrics.jsonl", "curves.png", "model.safetensors", "checkpoints/last.pt"):
        assert (tmp_path / "s1" / name).is_file(), name
    records = _records(tmp_path / "s1")
    train_rows = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in train_rows] == [1, 2, 3]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in train_rows)
    assert "loss_discriminator" in train_rows[-1]  # the GAN joined at gan_start_step = 1
    assert any(r["split"] == "val" and "psnr_missing" in r for r in records)
    checkpoint = read_training_checkpoint(tmp_path / "s1" / "checkpoints" / "last.pt")
    assert checkpoint["step"] == 3 and {"model", "discriminator"} <= set(checkpoint["models"])
    assert {"python", "numpy", "torch"} <= set(checkpoint["rng"])

    stage2 = train(2, fast_toml, None, tmp_path / "s2", from_run=tmp_path / "s1", datasets=splits)
    assert stage2.step == 2
    first = load_inference_checkpoint(tmp_path / "s1" / "model.safetensors")
    final = load_inference_checkpoint(tmp_path / "s2" / "model.safetensors")
    assert isinstance(final, CodeBrain)
    before, after = first.state_dict(), final.state_dict()
    for name in before:
        if name.startswith("prior_encoder."):
            continue
        assert torch.equal(before[name], after[name]), f"Stage II changed frozen Stage I weight {name}"
    assert any(not torch.equal(before[n], after[n]) for n in before if n.startswith("prior_encoder."))
    images = torch.stack([splits.test[i]["image"] for i in range(2)])
    available = torch.tensor([[True, False, False], [False, True, True]])
    out = final.impute(images, available)
    assert out.images.shape == images.shape and torch.isfinite(out.images).all()
    stage2_rows = [r for r in _records(tmp_path / "s2") if r["split"] == "train"]
    assert "code_accuracy" in stage2_rows[-1]


def test_stage2_trains_a_wider_prior_on_a_frozen_stage1(tmp_path, fast_toml, model_cfg, splits):
    train(1, fast_toml, None, tmp_path / "s1", model_config=model_cfg, datasets=splits)
    wide = replace(model_cfg, prior_width_multiplier=2 * model_cfg.width_multiplier, name="wide")
    train(2, fast_toml, None, tmp_path / "s2", from_run=tmp_path / "s1", model_config=wide, datasets=splits)
    first = load_inference_checkpoint(tmp_path / "s1" / "model.safetensors")
    final = load_inference_checkpoint(tmp_path / "s2" / "model.safetensors")
    assert final.cfg.prior_dim == 2 * first.cfg.prior_dim
    before, after = first.state_dict(), final.state_dict()
    assert all(torch.equal(before[n], after[n]) for n in before if not n.startswith("prior_encoder."))
    with pytest.raises(ValueError, match="may change only the prior"):
        train(
            2,
            fast_toml,
            None,
            tmp_path / "s3",
            from_run=tmp_path / "s1",
            datasets=splits,
            model_config=replace(model_cfg, naf_depth=model_cfg.naf_depth + 1),
        )


def test_direct_baseline_trains_with_the_same_loop(tmp_path, fast_toml, model_cfg, splits):
    result = train(1, fast_toml, None, tmp_path / "d", model_config=model_cfg, arch="direct", datasets=splits)
    assert isinstance(load_inference_checkpoint(tmp_path / "d" / "model.safetensors"), DirectRegression)
    assert result.step == 3 and "loss_missing" in result.last_metrics
    with pytest.raises(ValueError, match="one stage"):
        train(2, fast_toml, None, tmp_path / "d2", from_run=tmp_path / "d", arch="direct", datasets=splits)


def test_resume_reproduces_the_next_step(tmp_path, model_cfg, splits):
    config = write_train_toml(tmp_path / "resume.toml", steps=3, gan_start=1)
    whole = train(1, config, None, tmp_path / "whole", model_config=model_cfg, datasets=splits)
    cut = train(1, config, None, tmp_path / "cut", model_config=model_cfg, datasets=splits, stop_after_step=2)
    assert cut.step == 2 and cut.inference_checkpoint is None
    state_at_2 = {k: v.clone() for k, v in cut.model.state_dict().items()}
    resumed = train(1, None, None, tmp_path / "cut", resume=True, datasets=splits)
    assert resumed.step == 3

    assert [r["step"] for r in _records(tmp_path / "cut") if r["split"] == "train"] == [1, 2, 3]
    step3_whole = [r for r in _records(tmp_path / "whole") if r["split"] == "train" and r["step"] == 3]
    step3_resumed = [r for r in _records(tmp_path / "cut") if r["split"] == "train" and r["step"] == 3]
    for key in ("loss", "loss_missing", "loss_available", "loss_discriminator"):
        assert step3_resumed[0][key] == step3_whole[0][key], key
    whole_state, resumed_state = whole.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(whole_state[k], resumed_state[k]) for k in whole_state)
    # ... and step 3 actually changed the weights, so the comparison above is not vacuous.
    assert any(not torch.equal(state_at_2[k], whole_state[k]) for k in whole_state)


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path, splits):
    with pytest.raises(FileNotFoundError, match="no training checkpoint"):
        train(1, None, None, tmp_path / "nothing", resume=True, datasets=splits)


def test_stage2_needs_a_stage1_run(tmp_path, fast_toml, splits):
    with pytest.raises(ValueError, match="--from"):
        train(2, fast_toml, None, tmp_path / "s2", datasets=splits)


def test_gpus_relaunch_arguments_round_trip(tmp_path):
    argv = build_argv(2, "configs/train/tiny.toml", "data", tmp_path, from_run="s1", resume=True, model_config="small")
    from training.train import main  # noqa: F401 - the module torchrun runs must import cleanly

    assert argv[:2] == ["--stage", "2"] and "--resume" in argv and argv[argv.index("--from") + 1] == "s1"
