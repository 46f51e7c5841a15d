"""Which weights the node runs, and proof they are the ones shipped.

The shipped inference checkpoint lives in ``weights/`` beside its model card; ``weights/SHA256SUMS`` holds its
digest and is checked at every load, so a truncated download or a swapped file fails loudly instead of
producing subtly wrong images. A user's own checkpoint (``model.weights``) is loaded as given.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from codebrain_node.contrasts import Contrast
from codebrain_node.model import ModelConfig, load_inference_checkpoint, read_checkpoint_metadata, sha256_of
from codebrain_node.model.checkpoint import CONFIG_KEY
from codebrain_node.resources import weights_dir

log = logging.getLogger(__name__)

WEIGHTS_DIR = weights_dir()
DEFAULT_WEIGHTS = WEIGHTS_DIR / "codebrain-brats-small.safetensors"
CHECKSUMS = WEIGHTS_DIR / "SHA256SUMS"


class WeightsError(RuntimeError):
    """The weights are missing, corrupt, or not a CodeBrain checkpoint."""


@dataclass(frozen=True)
class LoadedModel:
    """A network ready for ``impute`` and what the synthetic series must record about it."""

    network: torch.nn.Module
    name: str
    version: str
    sha256: str
    device: torch.device
    contrasts: tuple[Contrast, ...]  # the network's channel order


def select_device(preference: str) -> torch.device:
    """``auto`` takes CUDA when present; ``cuda`` without a GPU is an error, not a silent CPU fallback."""
    if preference == "cuda" and not torch.cuda.is_available():
        raise WeightsError("model.device is 'cuda' but no CUDA device is available")
    if preference == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


def expected_sha256(path: Path) -> str | None:
    """The digest ``SHA256SUMS`` lists for ``path`` (None for files it does not list)."""
    if not CHECKSUMS.exists():
        return None
    for line in CHECKSUMS.read_text().splitlines():
        digest, _, name = line.strip().partition("  ")
        if name and Path(name).name == path.name:
            return digest
    return None


def load_model(weights: Path | None, device_preference: str = "auto", precision: str = "auto") -> LoadedModel:
    """Load ``weights`` (default: the shipped checkpoint), verify shipped files, move to the chosen device with
    its weights in ``precision`` (``auto``: bf16 where native, see ``CodeBrain.for_inference``)."""
    path = Path(weights) if weights else DEFAULT_WEIGHTS
    if not path.exists():
        hint = " (the shipped weights are missing from weights/; reinstall the package)" if not weights else ""
        raise WeightsError(f"weights file {path} does not exist{hint}")
    digest = sha256_of(path)
    expected = expected_sha256(path) if path.resolve().parent == WEIGHTS_DIR.resolve() else None
    if expected is not None and digest != expected:
        raise WeightsError(
            f"weights file {path} is corrupt: sha256 {digest[:16]}… but SHA256SUMS says {expected[:16]}…"
        )
    try:
        metadata = read_checkpoint_metadata(path)
        device = select_device(device_preference)
        network = load_inference_checkpoint(path, map_location=device).for_inference(device, precision)
    except (ValueError, RuntimeError, OSError) as error:
        raise WeightsError(str(error)) from error
    name = metadata.get("model_name") or path.stem
    version = metadata.get("model_version") or digest[:12]
    dtype = str(next(network.parameters()).dtype).removeprefix("torch.")
    log.info("model %s %s on %s, %s (sha256 %s)", name, version, device, dtype, digest[:12])
    return LoadedModel(
        network=network,
        name=name,
        version=version,
        sha256=digest,
        device=device,
        contrasts=tuple(Contrast(c) for c in network.cfg.contrasts),
    )


def model_contrasts(weights: Path | None) -> tuple[Contrast, ...]:
    """The contrasts a checkpoint reads and writes, from its metadata alone (no weights loaded)."""
    path = Path(weights) if weights else DEFAULT_WEIGHTS
    if not path.exists():
        raise WeightsError(f"weights file {path} does not exist")
    try:
        cfg = ModelConfig.from_json(read_checkpoint_metadata(path)[CONFIG_KEY])
    except (KeyError, ValueError) as error:
        raise WeightsError(f"{path} is not a CodeBrain checkpoint: {error}") from error
    return tuple(Contrast(c) for c in cfg.contrasts)
