from __future__ import annotations

import json
from pathlib import Path

import pytest

from codebrain_node.model import CodeBrain, ModelConfig

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "model"


@pytest.mark.parametrize("name", ["paper", "small", "brats", "ixi", "small_wide_prior"])
def test_shipped_configs_load(name: str) -> None:
    cfg = ModelConfig.from_toml(CONFIG_DIR / f"{name}.toml")
    assert cfg.name == name.replace("_", "-")
    assert cfg.codebook_size == 64_000
    assert cfg.grading_channels == 33
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert ModelConfig.from_json(cfg.to_json()) == cfg


def test_ixi_and_brats_contrasts() -> None:
    assert ModelConfig.from_toml(CONFIG_DIR / "ixi.toml").contrasts == ("T1", "T2", "PD")
    assert ModelConfig.from_toml(CONFIG_DIR / "brats.toml").contrasts == ("T1", "T1Gd", "T2", "FLAIR")


def test_paper_config_has_the_authors_size() -> None:
    counts = CodeBrain(ModelConfig.from_toml(CONFIG_DIR / "paper.toml")).parameter_counts()
    assert 130e6 < counts["stage1"] < 142e6
    assert 25e6 < counts["prior"] < 31e6


def test_a_wider_prior_changes_only_the_prior() -> None:
    small = ModelConfig.from_toml(CONFIG_DIR / "small.toml")
    wide = ModelConfig.from_toml(CONFIG_DIR / "small_wide_prior.toml")
    assert (small.prior_dim, wide.prior_dim) == (small.wide_dim, 2 * small.wide_dim)
    narrow, wider = CodeBrain(small).parameter_counts(), CodeBrain(wide).parameter_counts()
    assert narrow["stage1"] == wider["stage1"] and wider["prior"] > 3 * narrow["prior"]


def test_aliases_and_top_level_toml(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text('contrasts = ["t1n", "t2f"]\nnaf_dim = 4\n[train]\nlr = 1e-3\n')
    cfg = ModelConfig.from_toml(path)
    assert cfg.contrasts == ("T1", "FLAIR") and cfg.name == "mine" and cfg.naf_dim == 4


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"contrasts": ["T1"]}, "at least 2"),
        ({"contrasts": ["T1", "t1n"]}, "twice"),
        ({"levels": [8, 1]}, ">= 2"),
        ({"grading": "softmax"}, "grading"),
        ({"naf_dimm": 3}, "unknown model config"),
        ({"prior_width_multiplier": 0}, "prior_width_multiplier"),
        ({"contrasts": ["T1", "DWI"]}, "unknown contrast"),
    ],
)
def test_bad_configs_are_refused(values: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ModelConfig.from_dict(values)


def test_stored_2d_configs_with_context_slices_zero_still_load(tmp_path: Path) -> None:
    """Configs written before the 2.5-D option was removed (every checkpoint up to v0.1.0) carry
    ``"context_slices": 0``: it is accepted and dropped, and the config is the same 2-D model."""
    cfg = ModelConfig.from_toml(CONFIG_DIR / "brats.toml")
    stored = cfg.to_dict() | {"context_slices": 0}
    assert ModelConfig.from_dict(stored) == cfg
    assert ModelConfig.from_json(json.dumps(stored)) == cfg
    assert "context_slices" not in cfg.to_dict()
    path = tmp_path / "old.toml"
    path.write_text('[model]\ncontrasts = ["T1", "T2"]\nnaf_dim = 4\ncontext_slices = 0\n')
    assert ModelConfig.from_toml(path) == ModelConfig(contrasts=("T1", "T2"), naf_dim=4, name="old")


@pytest.mark.parametrize("context_slices", [1, 2])
def test_2_5d_configs_are_refused_with_a_clear_error(tmp_path: Path, context_slices: int) -> None:
    stored = ModelConfig.from_toml(CONFIG_DIR / "brats.toml").to_dict() | {"context_slices": context_slices}
    with pytest.raises(ValueError, match=r"2\.5-D models are no longer supported"):
        ModelConfig.from_dict(stored)
    path = tmp_path / "brats25d.toml"
    path.write_text(f'[model]\ncontrasts = ["T1", "T2"]\ncontext_slices = {context_slices}\n')
    with pytest.raises(ValueError, match=r"context_slices = \d: 2\.5-D models are no longer supported"):
        ModelConfig.from_toml(path)
