"""Inference checkpoints: weights in safetensors (optionally fp16), the ModelConfig as JSON in its metadata.

safetensors cannot run code on load (unlike pickle), and keeping the config beside the weights means a file is
self-describing: the engine rebuilds the exact network without a separate config file. Training checkpoints
(optimiser, RNG, ...) are the trainer's business. Integrity of *shipped* weights (sha256 against the model card)
is checked by the caller; :func:`sha256_of` computes the digest.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from codebrain_node.model.codebrain import CodeBrain, DirectRegression
from codebrain_node.model.config import ModelConfig

CONFIG_KEY = "codebrain_model_config"
ARCHITECTURE_KEY = "codebrain_architecture"
ARCHITECTURES: dict[str, type[nn.Module]] = {"CodeBrain": CodeBrain, "DirectRegression": DirectRegression}


def sha256_of(path: str | Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def save_inference_checkpoint(
    model: CodeBrain | DirectRegression,
    path: str | Path,
    extra_metadata: dict[str, str] | None = None,
    half: bool = False,
) -> Path:
    """Write the weights (fp16 when ``half``) and the config; returns the path written."""
    architecture = type(model).__name__
    if architecture not in ARCHITECTURES:
        raise TypeError(f"cannot save a {architecture}; expected one of {sorted(ARCHITECTURES)}")
    tensors = {}
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().to("cpu")
        if half and tensor.is_floating_point():
            tensor = tensor.half()
        tensors[name] = tensor.contiguous()
    metadata = {str(k): str(v) for k, v in (extra_metadata or {}).items()}
    metadata.update({CONFIG_KEY: model.cfg.to_json(), ARCHITECTURE_KEY: architecture, "format": "pt"})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)
    return path


def read_checkpoint_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of a checkpoint (config JSON, architecture, and whatever the trainer added)."""
    path = _existing(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except (SafetensorError, OSError, ValueError) as error:
        raise ValueError(f"{path} is not a readable safetensors checkpoint ({error})") from error


def load_inference_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> CodeBrain | DirectRegression:
    """Rebuild the network from the stored config, load fp32 weights, return it in eval mode."""
    path = _existing(path)
    metadata = read_checkpoint_metadata(path)
    if CONFIG_KEY not in metadata:
        raise ValueError(
            f"{path} has no CodeBrain model config in its metadata; was it written by save_inference_checkpoint?"
        )
    try:
        cfg = ModelConfig.from_json(metadata[CONFIG_KEY])
    except (ValueError, TypeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} carries an invalid model config: {error}") from error
    architecture = metadata.get(ARCHITECTURE_KEY, "CodeBrain")
    if architecture not in ARCHITECTURES:
        raise ValueError(f"{path} holds an unknown architecture {architecture!r}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            state = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 - not a dict
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise ValueError(f"{path} is corrupt: cannot read its tensors ({error})") from error
    model = ARCHITECTURES[architecture](cfg)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ValueError(f"{path} does not match its own {architecture} config: {error}") from error
    return model.to(map_location).eval()


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model checkpoint not found: {path}")
    return path
