"""Stage II's optional decoded-image term: its codes are the served codes forward and carry the expected level's
gradient backward; with it on, a step still changes only the prior and reports both losses."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from codebrain_node.model import CodeBrain
from codebrain_node.model.grading import decode_grades
from training.loop import setup_distributed
from training.stage2 import Stage2Task
from training.train_config import TrainConfig


def _task(model_cfg, weight: float) -> Stage2Task:
    torch.manual_seed(0)
    return Stage2Task(
        CodeBrain(model_cfg), TrainConfig(steps=4, batch_size=2, image_loss_weight=weight), setup_distributed("cpu")
    )


def test_straight_through_codes_are_the_served_codes_with_a_gradient(model_cfg):
    task = _task(model_cfg, 1e-3)
    logits = torch.randn(2, model_cfg.grading_channels, 3, 3, requires_grad=True)
    codes = task.straight_through_codes(logits)
    levels, _ = decode_grades(logits.detach(), model_cfg.levels)
    assert torch.allclose(codes.detach(), task.model.quantizer.levels_to_codes(levels))
    codes.sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_a_step_with_the_image_term_trains_only_the_prior(model_cfg):
    task = _task(model_cfg, 1e-3)
    before = {k: v.clone() for k, v in task.model.state_dict().items()}
    images = torch.rand(2, model_cfg.num_contrasts, 32, 32)
    figures = task.train_step({"image": images}, 0, torch.Generator().manual_seed(0))
    assert figures["loss_image"] < 0 < figures["loss_grading"]  # −PSNR (×λ_missing) and a BCE
    assert figures["loss"] == pytest.approx(figures["loss_grading"] + 1e-3 * figures["loss_image"], rel=1e-4)
    after = task.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("prior_encoder.") for k in changed)


def test_the_image_weight_cannot_be_negative():
    with pytest.raises(ValueError, match="image_loss_weight"):
        TrainConfig(image_loss_weight=-1.0)


def test_the_image_term_needs_ordinal_grading(model_cfg):
    classification = replace(model_cfg, grading="classification")
    with pytest.raises(ValueError, match="ordinal"):
        Stage2Task(CodeBrain(classification), TrainConfig(image_loss_weight=1e-3), setup_distributed("cpu"))
