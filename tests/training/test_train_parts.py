"""Pieces of the trainer: availability masks, the PSNR loss, the schedule, augmentations, the config file."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from training.augment import augment_batch
from training.loop import cosine_factor
from training.stage1 import masked_psnr_loss, random_availability
from training.train_config import AugmentConfig, TrainConfig


def test_availability_is_never_empty_or_full_and_covers_every_pattern():
    mask = random_availability(600, 3, torch.Generator().manual_seed(0))
    assert mask.shape == (600, 3) and mask.dtype == torch.bool
    counts = mask.sum(dim=1)
    assert bool((counts >= 1).all()) and bool((counts <= 2).all())
    assert len({tuple(row.tolist()) for row in mask}) == 6


def test_psnr_loss_is_minus_psnr_of_the_selected_contrasts():
    target = torch.zeros(1, 2, 8, 8)
    prediction = target.clone()
    prediction[:, 0] += 0.1  # MSE 0.01 on contrast 0 → 20 dB; contrast 1 perfect
    selected = torch.tensor([[True, False]])
    assert float(masked_psnr_loss(prediction, target, selected)) == pytest.approx(-20.0, abs=1e-4)
    assert float(masked_psnr_loss(prediction, target, ~selected)) < -70  # near-perfect contrast: very negative


def test_cosine_schedule_warms_up_then_decays_to_the_floor():
    factors = [cosine_factor(s, 100, 10, 0.1) for s in range(101)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(factors[10:]))
    assert factors[100] == pytest.approx(0.1)
    assert factors[55] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))


def test_augmentation_moves_every_contrast_and_the_mask_together():
    base = torch.zeros(4, 32, 32)
    base[:, 4:14, 6:20] = 1.0  # an off-centre block, so flips and rotations are visible
    images = base.unsqueeze(1).repeat(1, 3, 1, 1)
    mask = base > 0.5
    cfg = AugmentConfig(flip=True, rot90=True, affine=False)
    out, out_mask = augment_batch(images, mask, cfg, torch.Generator().manual_seed(1))
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 0], out[:, 2])
    assert torch.equal(out_mask, out[:, 0] > 0.5)
    assert not torch.equal(out, images)  # something moved
    affine = AugmentConfig(flip=False, rot90=False, affine=True, affine_probability=1.0)
    warped, warped_mask = augment_batch(images, mask, affine, torch.Generator().manual_seed(2))
    assert torch.allclose(warped[:, 0], warped[:, 2]) and not torch.allclose(warped, images)
    assert warped_mask.shape == mask.shape
    again, _ = augment_batch(images, mask, affine, torch.Generator().manual_seed(2))
    assert torch.equal(again, warped)  # a function of the generator only: what makes --resume exact


def test_train_config_stage_tables_override_and_typos_are_refused(tmp_path):
    path = tmp_path / "t.toml"
    path.write_text("[train]\nsteps = 10\nlr = 0.1\n[stage2]\nsteps = 4\n[augment]\nrot90 = true\n")
    assert TrainConfig.from_toml(path, 1).steps == 10
    stage2 = TrainConfig.from_toml(path, 2)
    assert (stage2.steps, stage2.lr, stage2.augment.rot90) == (4, 0.1, True)
    path.write_text("[train]\nstep = 10\n")
    with pytest.raises(ValueError, match="step"):
        TrainConfig.from_toml(path)


def _shipped_train_configs() -> list[str]:
    from codebrain_node.resources import config_file

    return sorted(path.stem for path in config_file("train", "default.toml").parent.glob("*.toml"))


def test_the_shipped_train_configs_include_the_recipes_of_the_weights() -> None:
    assert {"tiny", "default", "cpu_brats", "cpu_real", "cpu_real_1h", "cpu_real_2h"} <= set(_shipped_train_configs())


@pytest.mark.parametrize("name", _shipped_train_configs())
def test_shipped_train_configs_parse(name):
    from codebrain_node.resources import config_file

    for stage in (1, 2, "direct"):
        cfg = TrainConfig.from_toml(config_file("train", f"{name}.toml"), stage)
        assert cfg.lambda_missing == 20.0 and cfg.lambda_available == 5.0


def test_random_crop_keeps_contrasts_aligned_and_prefers_brain() -> None:
    import torch

    from training.augment import augment_batch
    from training.train_config import AugmentConfig

    cfg = AugmentConfig(flip=False, rot90=False, affine=False, crop=16)
    base = torch.arange(64 * 64, dtype=torch.float32).reshape(1, 1, 64, 64) / 4096
    images = base.repeat(3, 2, 1, 1)  # two identical contrasts per sample
    mask = torch.zeros(3, 64, 64, dtype=torch.bool)
    mask[:, 40:56, 8:24] = True  # the only brain pixels
    out, out_mask = augment_batch(images, mask, cfg, torch.Generator().manual_seed(0))
    assert out.shape == (3, 2, 16, 16) and out_mask.shape == (3, 16, 16)
    assert torch.equal(out[:, 0], out[:, 1])  # cropped alike
    assert bool(out_mask.any(dim=(1, 2)).all()), "every crop should contain brain"
