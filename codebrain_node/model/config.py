"""The one description of a CodeBrain network, shared by the trainer, the engine and the checkpoints.

A :class:`ModelConfig` holds only what fixes the *architecture* (contrasts, FSQ levels, widths, depths and the
optional confidence flag), so an inference checkpoint can rebuild its network from the JSON stored beside the
weights. Training hyper-parameters live with the trainer.

Models are 2-D: the encoders read one axial slice of every contrast. The 2.5-D option (``context_slices``, the
neighbouring slices as extra channels) was removed; configs stored before that (checkpoints carry
``"context_slices": 0``) still load, the key dropped, and one with ``context_slices > 0`` is refused.

Widths follow the authors' code: the posterior encoder runs at ``naf_dim``; the common encoder E_c, the decoder
and the prior encoder at ``naf_dim * width_multiplier`` (3 in the paper). Every encoder has three stride-2 stages
(``stage_blocks`` NAFBlocks at full, 1/2, 1/4 size) and ``naf_depth`` NAFBlocks at the 1/8 bottom; the decoder
mirrors it.
"""

from __future__ import annotations

import json
import math
import tomllib
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from codebrain_node.contrasts import Contrast

GRADING_MODES = ("ordinal", "classification")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of one CodeBrain model (and of its direct-regression baseline)."""

    contrasts: tuple[str, ...] = ("T1", "T1Gd", "T2", "FLAIR")
    levels: tuple[int, ...] = (8, 8, 8, 5, 5, 5)
    naf_dim: int = 32
    width_multiplier: int = 3
    naf_depth: int = 6
    stage_blocks: tuple[int, int, int] = (1, 1, 1)
    fsq_eps: float = 1e-3
    grading: str = "ordinal"
    confidence: bool = False
    image_size: int = 256
    discriminator_dim: int = 64
    name: str = "custom"
    prior_width_multiplier: int | None = None  # the prior encoder's width (× naf_dim); None: width_multiplier

    def __post_init__(self) -> None:
        contrasts = tuple(Contrast.parse(str(c)).value for c in self.contrasts)
        object.__setattr__(self, "contrasts", contrasts)
        object.__setattr__(self, "levels", tuple(int(level) for level in self.levels))
        blocks = self.stage_blocks
        blocks = (int(blocks),) * 3 if isinstance(blocks, int) else tuple(int(b) for b in blocks)
        object.__setattr__(self, "stage_blocks", blocks)
        if len(contrasts) < 2:
            raise ValueError(f"a CodeBrain model needs at least 2 contrasts, got {list(contrasts)}")
        if len(set(contrasts)) != len(contrasts):
            raise ValueError(f"contrast listed twice: {list(contrasts)}")
        if not self.levels or any(level < 2 for level in self.levels):
            raise ValueError(f"every FSQ level must be >= 2, got {list(self.levels)}")
        if self.grading not in GRADING_MODES:
            raise ValueError(f"grading must be one of {GRADING_MODES}, got {self.grading!r}")
        if len(blocks) != 3 or min(blocks) < 0:
            raise ValueError(f"stage_blocks must be 3 counts >= 0 (full, 1/2, 1/4 size), got {self.stage_blocks}")
        for key in ("naf_dim", "width_multiplier", "discriminator_dim"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.prior_width_multiplier is not None and self.prior_width_multiplier < 1:
            raise ValueError(f"prior_width_multiplier must be >= 1 or unset, got {self.prior_width_multiplier}")
        if self.naf_depth < 0:
            raise ValueError(f"naf_depth must be >= 0, got {self.naf_depth}")
        if self.image_size % 8:
            raise ValueError(f"image_size must be a multiple of 8, got {self.image_size}")

    # --- derived sizes -------------------------------------------------------------------------------------
    @property
    def num_contrasts(self) -> int:
        return len(self.contrasts)

    @property
    def code_dim(self) -> int:
        """Channels of the code map: one per FSQ level."""
        return len(self.levels)

    @property
    def codebook_size(self) -> int:
        return math.prod(self.levels)

    @property
    def wide_dim(self) -> int:
        """Base width of E_c, the decoder and the prior encoder."""
        return self.naf_dim * self.width_multiplier

    @property
    def prior_dim(self) -> int:
        """Base width of the prior encoder: the bottleneck of a small model (the posterior-code ceiling is
        3 dB above it), so it may be wider than E_c and the decoder."""
        return self.naf_dim * (self.prior_width_multiplier or self.width_multiplier)

    @property
    def input_channels(self) -> int:
        """Encoder input: every contrast of the slice."""
        return self.num_contrasts

    @property
    def grading_channels(self) -> int:
        """Prior output: Σ(L-1) ordinal logits, or Σ L class logits for the classification ablation."""
        if self.grading == "ordinal":
            return sum(level - 1 for level in self.levels)
        return sum(self.levels)

    # --- (de)serialisation ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["contrasts"] = list(self.contrasts)
        data["levels"] = list(self.levels)
        data["stage_blocks"] = list(self.stage_blocks)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Build from a mapping, refusing unknown keys so a typo never silently falls back to a default.

        ``context_slices`` (the removed 2.5-D option, stored in older checkpoints) is accepted and dropped when 0;
        any other value is refused: the network it describes no longer exists.
        """
        data = dict(data)
        if "context_slices" in data:
            context_slices = data.pop("context_slices")
            if context_slices != 0:
                raise ValueError(
                    f"context_slices = {context_slices!r}: 2.5-D models are no longer supported; "
                    "only 2-D models (context_slices = 0 or absent) load. Retrain the model as 2-D."
                )
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model config keys {unknown}; known: {sorted(known)}")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_toml(cls, path: str | Path) -> ModelConfig:
        """Read a TOML file: its ``[model]`` table if present, else its top-level keys (other tables ignored)."""
        path = Path(path)
        with path.open("rb") as handle:
            data = tomllib.load(handle)
        section = data["model"] if isinstance(data.get("model"), dict) else data
        values = {key: value for key, value in section.items() if not isinstance(value, dict)}
        values.setdefault("name", path.stem)
        return cls.from_dict(values)
