from __future__ import annotations

import torch

from codebrain_node.model import PatchDiscriminator, discriminator_loss, fake_target, generator_adversarial_loss


def test_patch_scores_one_map_per_contrast() -> None:
    disc = PatchDiscriminator(num_contrasts=4, dim=8)
    scores = disc(torch.rand(2, 4, 64, 64), torch.rand(2, 4, 64, 64))
    assert scores.shape == (2, 4, 4, 4)


def test_fake_target_is_the_availability_mask() -> None:
    available = torch.tensor([[True, False, True]])
    target = fake_target(available, torch.zeros(1, 3, 2, 2))
    assert torch.equal(target[0, :, 0, 0], torch.tensor([1.0, 0.0, 1.0]))


def test_lsgan_losses_reach_zero_at_their_targets() -> None:
    available = torch.tensor([[True, False, False, True]])
    real = torch.ones(1, 4, 3, 3)
    fake = fake_target(available, real).clone()
    assert discriminator_loss(real, fake, available) == 0
    assert discriminator_loss(real, torch.ones_like(fake), available) > 0
    assert generator_adversarial_loss(torch.ones_like(fake)) == 0
    assert generator_adversarial_loss(fake) > 0
