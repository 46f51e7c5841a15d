from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from codebrain_node.model import (
    CodeBrain,
    DirectRegression,
    load_inference_checkpoint,
    read_checkpoint_metadata,
    save_inference_checkpoint,
    sha256_of,
)


def _perturbed(model: torch.nn.Module) -> torch.nn.Module:
    """β/γ start at 0; give every weight a random value so the round trip is tested on non-trivial weights."""
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    return model


def _inputs(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    available = torch.ones(2, n, dtype=torch.bool)
    available[0, 1] = False
    available[1, 0] = False
    return torch.rand(2, n, 16, 16), available


def test_round_trip_gives_identical_outputs(tiny_config, tmp_path: Path) -> None:
    model = _perturbed(CodeBrain(tiny_config(4, confidence=True)))
    images, available = _inputs(4)
    path = save_inference_checkpoint(model, tmp_path / "model.safetensors", {"run": "test-run"})
    loaded = load_inference_checkpoint(path)
    assert isinstance(loaded, CodeBrain) and not loaded.training
    assert loaded.cfg == model.cfg
    expected, got = model.impute(images, available), loaded.impute(images, available)
    assert torch.equal(expected.images, got.images)
    assert torch.equal(expected.confidence, got.confidence)
    metadata = read_checkpoint_metadata(path)
    assert metadata["run"] == "test-run"
    assert len(sha256_of(path)) == 64


def test_half_precision_checkpoint_is_smaller_and_close(tiny_config, tmp_path: Path) -> None:
    model = _perturbed(CodeBrain(tiny_config(3)))
    full = save_inference_checkpoint(model, tmp_path / "full.safetensors")
    half = save_inference_checkpoint(model, tmp_path / "half.safetensors", half=True)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    loaded = load_inference_checkpoint(half)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    images, available = _inputs(3)
    recon = model.stage1_forward(images, available)["recon"]
    assert (loaded.stage1_forward(images, available)["recon"] - recon).abs().max() < 0.05


def test_direct_regression_round_trip(tiny_config, tmp_path: Path) -> None:
    model = _perturbed(DirectRegression(tiny_config(3)))
    loaded = load_inference_checkpoint(save_inference_checkpoint(model, tmp_path / "direct.safetensors"))
    assert isinstance(loaded, DirectRegression)
    images, available = _inputs(3)
    assert torch.equal(model.impute(images, available).images, loaded.impute(images, available).images)


def test_missing_checkpoint_says_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.safetensors"):
        load_inference_checkpoint(tmp_path / "nope.safetensors")


@pytest.mark.parametrize("damage", ["garbage", "truncate"])
def test_corrupt_checkpoint_gives_a_clear_error(tiny_config, tmp_path: Path, damage: str) -> None:
    path = save_inference_checkpoint(CodeBrain(tiny_config(3)), tmp_path / "model.safetensors")
    data = path.read_bytes()
    path.write_bytes(b"not a checkpoint at all" if damage == "garbage" else data[: len(data) // 2])
    with pytest.raises(ValueError, match=re.escape(path.name)):
        load_inference_checkpoint(path)


def test_checkpoint_without_config_is_refused(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.zeros(2)}, str(path))
    with pytest.raises(ValueError, match="no CodeBrain model config"):
        load_inference_checkpoint(path)


def _with_stored_config(path: Path, out: Path, **changes: object) -> Path:
    """A copy of checkpoint ``path`` whose stored config JSON has ``changes`` applied (as older trainers wrote)."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata())
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 - not a dict
    metadata["codebrain_model_config"] = json.dumps(json.loads(metadata["codebrain_model_config"]) | changes)
    save_file(tensors, str(out), metadata=metadata)
    return out


def test_checkpoints_stored_before_2_5d_was_removed_load_and_give_the_same_outputs(tiny_config, tmp_path) -> None:
    """v0.1.0 and every run trained before the removal store ``"context_slices": 0``: same network, same output."""
    model = _perturbed(CodeBrain(tiny_config(4, confidence=True)))
    current = save_inference_checkpoint(model, tmp_path / "model.safetensors")
    old = _with_stored_config(current, tmp_path / "old.safetensors", context_slices=0)
    assert '"context_slices": 0' in read_checkpoint_metadata(old)["codebrain_model_config"]
    loaded = load_inference_checkpoint(old)
    assert loaded.cfg == model.cfg
    images, available = _inputs(4)
    expected, got = model.impute(images, available), loaded.impute(images, available)
    assert torch.equal(expected.images, got.images) and torch.equal(expected.confidence, got.confidence)


def test_a_2_5d_checkpoint_is_refused_with_a_clear_error(tiny_config, tmp_path: Path) -> None:
    current = save_inference_checkpoint(CodeBrain(tiny_config(3)), tmp_path / "model.safetensors")
    old = _with_stored_config(current, tmp_path / "ctx.safetensors", context_slices=1)
    with pytest.raises(ValueError, match=r"ctx\.safetensors .*2\.5-D models are no longer supported"):
        load_inference_checkpoint(old)
