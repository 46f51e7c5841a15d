"""A small in-memory stand-in for ``training.datasets`` splits: items shaped like the agreed item dicts.

Each subject is a few smooth random "anatomies" (sums of Gaussian blobs inside a disk-shaped brain); every contrast
is a different monotone or inverted intensity mapping of the same anatomy, so contrasts are related the way MR
contrasts are and a model has something to learn.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

CONTRAST_MAPS = {
    "T1": lambda a: a,
    "T1Gd": lambda a: (a * 1.2).clamp(0, 1),
    "T2": lambda a: 1 - a,
    "PD": lambda a: 0.3 + 0.5 * a,
    "FLAIR": lambda a: (1 - a) ** 2,
}


class StandInSlices(Dataset):
    def __init__(
        self,
        contrasts: tuple[str, ...],
        subjects: int = 2,
        slices_per_subject: int = 4,
        size: int = 32,
        seed: int = 0,
        identical: bool = False,
    ) -> None:
        generator = torch.Generator().manual_seed(seed)
        yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
        self.mask = (xx**2 + yy**2) < 0.8
        self.items = []
        for subject in range(subjects):
            anatomy = torch.zeros(slices_per_subject, size, size)
            for index in range(anatomy.shape[0]):
                for _ in range(4):
                    cx, cy = (torch.rand(2, generator=generator) * 1.2 - 0.6).tolist()
                    width = 0.1 + 0.3 * float(torch.rand(1, generator=generator))
                    anatomy[index] += torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * width**2))
            anatomy = (0.2 + 0.6 * anatomy / anatomy.amax().clamp_min(1e-6)) * self.mask
            volume = torch.stack([(anatomy if identical else CONTRAST_MAPS[c](anatomy)) * self.mask for c in contrasts])
            for index in range(slices_per_subject):
                item = {
                    "image": volume[:, index].float().clone(),
                    "brain_mask": self.mask.clone(),
                    "subject": f"sub-{subject:02d}",
                    "slice_index": index,
                }
                self.items.append(item)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        return self.items[index]


@dataclass
class StandInSplits:
    train: Dataset
    val: Dataset
    test: Dataset


def make_splits(contrasts: tuple[str, ...], size: int = 32, identical: bool = False):
    def part(subjects: int, seed: int) -> StandInSlices:
        return StandInSlices(contrasts, subjects, 4, size, seed, identical)

    return StandInSplits(train=part(2, 1), val=part(1, 2), test=part(1, 3))


def tiny_model_config(contrasts: tuple[str, ...] = ("T1", "T2", "PD"), **changes):
    from codebrain_node.model import ModelConfig

    values = dict(
        contrasts=contrasts,
        levels=(8, 5, 5),
        naf_dim=4,
        width_multiplier=1,
        naf_depth=1,
        stage_blocks=1,
        image_size=32,
        discriminator_dim=4,
        name="tiny",
    )
    values.update(changes)
    return ModelConfig(**values)


FAST_TOML = """
[train]
steps = {steps}
batch_size = 2
lr = 1e-3
warmup_steps = 1
grad_clip = 1.0
gan_weight = 0.1
gan_start_step = {gan_start}
log_interval = 1
val_interval = 100
val_batches = 1
checkpoint_interval = {checkpoint_interval}
seed = 3

[stage2]
steps = 2

[augment]
flip = true
rot90 = true
affine = true
affine_probability = 1.0

[data]
size = 32
num_workers = 0
"""


def write_train_toml(path: Path, steps: int = 3, gan_start: int = 1, checkpoint_interval: int = 100) -> Path:
    path.write_text(FAST_TOML.format(steps=steps, gan_start=gan_start, checkpoint_interval=checkpoint_interval))
    return path
