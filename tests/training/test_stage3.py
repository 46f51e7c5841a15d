"""Stage III fits the common encoder and decoder to the frozen prior's codes: a step changes only those two, the
codes it decodes are the served codes, and a run from a Stage II model leaves a complete, servable CodeBrain."""

from __future__ import annotations

import pytest
import torch

from codebrain_node.model import CodeBrain, load_inference_checkpoint
from training.loop import setup_distributed
from training.stage3 import Stage3Task
from training.train import train
from training.train_config import TrainConfig


def _task(model_cfg) -> Stage3Task:
    torch.manual_seed(0)
    return Stage3Task(CodeBrain(model_cfg), TrainConfig(steps=4, batch_size=2), setup_distributed("cpu"))


def test_a_step_changes_only_the_common_encoder_and_the_decoder(model_cfg):
    task = _task(model_cfg)
    before = {k: v.clone() for k, v in task.model.state_dict().items()}
    images = torch.rand(2, model_cfg.num_contrasts, 32, 32)
    figures = task.train_step({"image": images}, 0, torch.Generator().manual_seed(0))
    assert figures["loss"] == pytest.approx(20 * figures["loss_missing"] + 5 * figures["loss_available"], rel=1e-4)
    after = task.model.state_dict()
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"common_encoder", "decoder"}


def test_the_codes_it_decodes_are_the_ones_inference_decodes(model_cfg):
    task = _task(model_cfg)
    x_in = torch.rand(2, model_cfg.num_contrasts, 32, 32)
    served, _ = task.model.decode_prior(task.model.prior_encoder(x_in))
    assert torch.equal(task._prior_codes(x_in), served)


def test_stage3_from_a_stage2_run_keeps_the_prior_and_the_posterior(tmp_path, fast_toml, model_cfg, splits):
    train(1, fast_toml, None, tmp_path / "s1", model_config=model_cfg, datasets=splits)
    train(2, fast_toml, None, tmp_path / "s2", from_run=tmp_path / "s1", datasets=splits)
    result = train(3, fast_toml, None, tmp_path / "s3", from_run=tmp_path / "s2", datasets=splits)
    before = load_inference_checkpoint(tmp_path / "s2" / "model.safetensors").state_dict()
    final = load_inference_checkpoint(result.inference_checkpoint)
    after = final.state_dict()
    frozen = [k for k in before if k.startswith(("prior_encoder.", "posterior_encoder."))]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("decoder."))
    images = torch.stack([splits.test[i]["image"] for i in range(2)])
    out = final.impute(images, torch.tensor([[True, False, False], [False, True, True]]))
    assert torch.isfinite(out.images).all()


def test_stage3_needs_a_trained_model_and_no_other_architecture(tmp_path, fast_toml, model_cfg, splits):
    with pytest.raises(ValueError, match="--from"):
        train(3, fast_toml, None, tmp_path / "s3", datasets=splits)
    with pytest.raises(ValueError, match="no --model"):
        train(3, fast_toml, None, tmp_path / "s3", from_run=tmp_path, model_config=model_cfg, datasets=splits)
