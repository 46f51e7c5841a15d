"""Tiny configurations so the whole model test folder runs in seconds on two CPU cores."""

from __future__ import annotations

import pytest
import torch

from codebrain_node.model import ModelConfig

CONTRAST_SETS = {
    3: ("T1", "T2", "PD"),
    4: ("T1", "T1Gd", "T2", "FLAIR"),
    5: ("T1", "T1Gd", "T2", "PD", "FLAIR"),
}


def make_tiny_config(num_contrasts: int = 4, **overrides) -> ModelConfig:
    values = {
        "contrasts": CONTRAST_SETS[num_contrasts],
        "naf_dim": 4,
        "width_multiplier": 2,
        "naf_depth": 1,
        "discriminator_dim": 8,
        "image_size": 32,
        "name": "tiny",
    }
    values.update(overrides)
    return ModelConfig(**values)


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)


@pytest.fixture
def tiny_config():
    """Factory: ``tiny_config(num_contrasts=4, **overrides) -> ModelConfig``."""
    return make_tiny_config
