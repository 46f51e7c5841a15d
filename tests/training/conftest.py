"""Fixtures for the trainer tests: a tiny model config, in-memory stand-in splits and a fast training TOML."""

from __future__ import annotations

from pathlib import Path

import pytest
from standin_data import make_splits, tiny_model_config, write_train_toml


@pytest.fixture
def model_cfg():
    return tiny_model_config()


@pytest.fixture
def splits(model_cfg):
    return make_splits(model_cfg.contrasts)


@pytest.fixture
def fast_toml(tmp_path: Path) -> Path:
    return write_train_toml(tmp_path / "fast.toml")
