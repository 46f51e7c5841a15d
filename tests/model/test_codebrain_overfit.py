"""A tiny CodeBrain must be able to memorise a tiny batch: the cheapest proof that gradients reach every part."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from codebrain_node.model import CodeBrain, DirectRegression, grading_accuracy, grading_loss


def _smooth_batch(n: int, size: int = 32, batch: int = 2) -> torch.Tensor:
    """Blurred random images: structure a small network can fit in a few hundred steps."""
    noise = torch.rand(batch, n, size // 4, size // 4)
    return F.interpolate(noise, size=(size, size), mode="bilinear", align_corners=False)


def test_stage1_loss_falls_by_a_large_factor(tiny_config) -> None:
    torch.manual_seed(0)
    model = CodeBrain(tiny_config(3, naf_dim=8, stage_blocks=(0, 1, 1)))
    images = _smooth_batch(3)
    available = torch.tensor([[True, False, True], [False, True, True]])
    optimiser = torch.optim.AdamW(model.stage1_parameters(), lr=2e-3)
    losses = []
    for _ in range(120):
        recon = model.stage1_forward(images, available)["recon"]
        loss = F.mse_loss(recon, images)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 30, f"stage I loss {losses[0]:.4f} -> {losses[-1]:.4f}"


def test_stage2_prior_learns_the_codes(tiny_config) -> None:
    torch.manual_seed(0)
    model = CodeBrain(tiny_config(3))
    images = _smooth_batch(3)
    available = torch.tensor([[True, False, True], [False, True, True]])
    assert model.code_levels(images).shape == (2, 6, 4, 4)
    # random levels: the prior must memorise every code entry, not just a constant
    targets = torch.stack([torch.randint(0, count, (2, 4, 4)) for count in model.cfg.levels], dim=1)
    optimiser = torch.optim.AdamW(model.prior_parameters(), lr=3e-3)
    first = None
    for _ in range(150):
        loss = grading_loss(model.prior_logits(images, available), targets, model.cfg.levels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        first = first if first is not None else loss.item()
    assert loss.item() < first / 5
    assert grading_accuracy(model.prior_logits(images, available), targets, model.cfg.levels) > 0.9


def test_direct_regression_trains_too(tiny_config) -> None:
    torch.manual_seed(0)
    model = DirectRegression(tiny_config(3))
    images = _smooth_batch(3)
    available = torch.tensor([[True, False, True], [False, True, True]])
    optimiser = torch.optim.AdamW(model.parameters(), lr=2e-3)
    first = None
    for _ in range(100):
        loss = F.mse_loss(model.stage1_forward(images, available)["recon"], images)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        first = first if first is not None else loss.item()
    assert loss.item() < first / 10
