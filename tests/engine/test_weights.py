"""Shipped weights are verified at load; missing or corrupt files give one clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from codebrain_node.engine import weights
from codebrain_node.model import CodeBrain, ModelConfig, save_inference_checkpoint, sha256_of

TINY = {
    "contrasts": ["T1", "T1Gd", "T2", "FLAIR"],
    "naf_dim": 4,
    "width_multiplier": 1,
    "naf_depth": 1,
    "stage_blocks": [0, 0, 1],
    "image_size": 32,
}


@pytest.fixture
def shipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A weights/ folder with one checkpoint and its SHA256SUMS, standing in for the shipped one."""
    folder = tmp_path / "weights"
    path = save_inference_checkpoint(
        CodeBrain(ModelConfig.from_dict(TINY)),
        folder / "shipped.safetensors",
        {"model_name": "tiny", "model_version": "1"},
    )
    (folder / "SHA256SUMS").write_text(f"{sha256_of(path)}  shipped.safetensors\n")
    monkeypatch.setattr(weights, "WEIGHTS_DIR", folder)
    monkeypatch.setattr(weights, "CHECKSUMS", folder / "SHA256SUMS")
    monkeypatch.setattr(weights, "DEFAULT_WEIGHTS", path)
    return path


def test_shipped_weights_load_with_their_name_and_contrasts(shipped: Path) -> None:
    loaded = weights.load_model(None, "cpu")
    assert (loaded.name, loaded.version) == ("tiny", "1")
    assert loaded.contrasts == ("T1", "T1Gd", "T2", "FLAIR")
    assert weights.model_contrasts(None) == loaded.contrasts


def test_corrupt_shipped_weights_are_refused(shipped: Path) -> None:
    data = bytearray(shipped.read_bytes())
    data[-100] ^= 0xFF
    shipped.write_bytes(bytes(data))
    with pytest.raises(weights.WeightsError, match="corrupt: sha256"):
        weights.load_model(None, "cpu")


def test_missing_weights_say_so(tmp_path: Path) -> None:
    with pytest.raises(weights.WeightsError, match="does not exist"):
        weights.load_model(tmp_path / "nope.safetensors", "cpu")


def test_cuda_requested_without_gpu_is_an_error(shipped: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(weights.torch.cuda, "is_available", lambda: False)
    with pytest.raises(weights.WeightsError, match="no CUDA device"):
        weights.load_model(None, "cuda")


def test_the_shipped_checkpoint_matches_its_checksum_and_runs() -> None:
    """The committed weights load, verify against SHA256SUMS, and impute a slice with every flag of the card."""
    import torch

    if not weights.DEFAULT_WEIGHTS.exists():
        pytest.skip("no shipped weights in weights/")
    assert weights.expected_sha256(weights.DEFAULT_WEIGHTS) == sha256_of(weights.DEFAULT_WEIGHTS)
    loaded = weights.load_model(None, "cpu")
    assert loaded.contrasts == ("T1", "T1Gd", "T2", "FLAIR")
    images = torch.rand(1, 4, 64, 64)
    available = torch.tensor([[True, False, True, True]])
    out = loaded.network.impute(images, available)
    assert out.images.shape == (1, 4, 64, 64)
    # shipped without the confidence output: on held-out real cases it did not rank the errors (model card)
    assert not loaded.network.cfg.confidence and out.confidence is None
    assert torch.equal(out.images[:, [0, 2, 3]], images[:, [0, 2, 3]])
