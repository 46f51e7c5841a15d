"""The parts of the real-data recipe that follow the authors' code: loss aggregation, masks per batch, the
discriminator's condition and schedule, the augmentations, and the committed subject split."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from standin_data import make_splits, tiny_model_config

from training.augment import augment_batch, intensity_augment, random_displacement
from training.datasets import read_split_file
from training.loop import Distributed
from training.stage1 import Stage1Task, draw_availability, masked_psnr_loss
from training.train_config import AugmentConfig, TrainConfig


def test_psnr_loss_takes_one_log_per_contrast_of_the_batch_pooled_error():
    target = torch.zeros(2, 2, 4, 4)
    prediction = target.clone()
    prediction[0, 0] += 0.1  # sample 0, contrast 0: MSE 0.01; sample 1, contrast 0: perfect
    prediction[:, 1] += 0.2  # contrast 1: MSE 0.04 in both samples
    selected = torch.ones(2, 2, dtype=torch.bool)
    pooled_0 = (0.01 + 0.0) / 2  # contrast 0 pooled over the batch before the log
    expected = 10 * (math.log10(pooled_0 + 1e-8) + math.log10(0.04 + 1e-8)) / 2
    assert float(masked_psnr_loss(prediction, target, selected)) == pytest.approx(expected, abs=1e-4)


def test_one_pattern_per_batch_is_the_same_on_every_rank():
    cfg = TrainConfig(mask_per="batch", seed=3)
    images = torch.zeros(6, 4, 8, 8)
    rank0 = draw_availability(images, cfg, step=11, generator=torch.Generator().manual_seed(0))
    rank1 = draw_availability(images, cfg, step=11, generator=torch.Generator().manual_seed(99))
    assert torch.equal(rank0, rank1) and bool((rank0 == rank0[0]).all())
    assert 1 <= int(rank0[0].sum()) <= 3
    per_sample = draw_availability(images, TrainConfig(mask_per="sample"), 11, torch.Generator().manual_seed(0))
    patterns = {
        tuple(row.tolist())
        for step in range(5)
        for row in draw_availability(
            torch.zeros(64, 4, 8, 8), TrainConfig(mask_per="sample"), step, torch.Generator().manual_seed(step)
        )
    }
    assert per_sample.shape == (6, 4) and len(patterns) == 14
    with pytest.raises(ValueError, match="mask_per"):
        TrainConfig(mask_per="pixel")


def test_the_discriminator_trains_from_the_first_step_on_the_complete_set(tmp_path: Path):
    model_cfg = tiny_model_config()
    cfg = TrainConfig(steps=10, batch_size=2, gan_start_step=5, discriminator_lr=1e-3)
    from codebrain_node.model import CodeBrain

    task = Stage1Task(CodeBrain(model_cfg), cfg, Distributed())
    seen: list[torch.Tensor] = []
    original = task.discriminator.forward

    def spy(images, condition):  # type: ignore[no-untyped-def]
        seen.append(condition.detach().clone())
        return original(images, condition)

    task.discriminator.forward = spy  # type: ignore[method-assign]
    batch = next(iter(torch.utils.data.DataLoader(make_splits(model_cfg.contrasts).train, batch_size=2)))
    before = [p.detach().clone() for p in task.discriminator.parameters()]
    metrics = task.train_step({"image": batch["image"]}, step=0, generator=torch.Generator().manual_seed(0))
    assert "loss_discriminator" in metrics and "loss_gan_generator" not in metrics  # G's term waits
    assert any(not torch.equal(a, b) for a, b in zip(before, task.discriminator.parameters(), strict=True))
    # D's step scores [real; composed], each conditioned on the complete real set
    assert torch.equal(seen[-1], torch.cat([batch["image"], batch["image"]]))
    lr = task.optimizers["discriminator"].param_groups[0]["lr"]
    task.train_step({"image": batch["image"]}, step=1, generator=torch.Generator().manual_seed(1))
    assert task.optimizers["discriminator"].param_groups[0]["lr"] == lr  # constant, as the authors'


def test_elastic_displacement_stays_within_its_bound_and_moves_all_channels_alike():
    cfg = AugmentConfig(flip=False, affine=False, elastic=True, elastic_probability=1.0, elastic_max_px=2.0)
    field = random_displacement(3, (32, 48), cfg, torch.Generator().manual_seed(0))
    assert field.shape == (3, 32, 48, 2)
    assert float(field[..., 0].abs().max()) <= 2.0 * 2 / 48 + 1e-6 and float(field[..., 1].abs().max()) <= 2 * 2 / 32
    assert float(field.abs().max()) > 0
    images = torch.rand(2, 1, 32, 32).repeat(1, 3, 1, 1)
    moved, _ = augment_batch(images, None, cfg, torch.Generator().manual_seed(1))
    assert not torch.allclose(moved, images) and torch.allclose(moved[:, 0], moved[:, 2])


def test_intensity_augmentation_keeps_zero_background_and_is_reproducible():
    cfg = AugmentConfig(intensity=True, intensity_probability=1.0)
    images = torch.rand(4, 3, 16, 16) * 0.8 + 0.1
    images[..., :4] = 0.0
    first = intensity_augment(images, cfg, torch.Generator().manual_seed(5))
    again = intensity_augment(images, cfg, torch.Generator().manual_seed(5))
    assert torch.equal(first, again) and not torch.allclose(first, images)
    assert float(first[..., :4].abs().max()) == 0.0 and float(first.min()) >= 0 and float(first.max()) <= 1
    untouched = intensity_augment(images, AugmentConfig(intensity=True, intensity_probability=0.0), torch.Generator())
    assert torch.equal(untouched, images)


def test_the_committed_split_is_by_source_and_refuses_a_subject_twice(tmp_path: Path):
    split = read_split_file("real22")
    held_out = set(split["test"])
    assert {"BRATS2012-HG0015", "OpenMS-MNI-patient07", "TCGA-FG-6692"} <= held_out
    assert any("_2013_" in s for s in held_out) and any("TCIA" in s for s in held_out)
    assert any("CBICA" in s for s in held_out) and len(held_out) >= 5
    every = split["train"] + split["val"] + split["test"]
    assert len(every) == len(set(every)) == 22 and not any(s.endswith("-native") for s in every)
    bad = tmp_path / "bad.toml"
    bad.write_text('train = ["a", "b"]\ntest = ["b"]\n')
    with pytest.raises(ValueError, match="both train and test"):
        read_split_file(bad)
