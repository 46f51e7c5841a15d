"""Training settings: everything the trainer needs that is *not* the architecture (that is ``ModelConfig``).

A TOML file has a ``[train]`` table (shared by every stage), optional ``[stage1]`` / ``[stage2]`` / ``[stage3]`` /
``[direct]`` tables whose keys override ``[train]`` for that stage (Stage II usually wants its own steps and
learning rate), an ``[augment]`` table and a ``[data]`` table. Unknown keys are refused so a typo never trains with
a default.
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from codebrain_node.imaging.brain_extraction import BRAIN_EXTRACTION_METHODS

STAGE_TABLES = {1: "stage1", 2: "stage2", 3: "stage3"}


@dataclass(frozen=True)
class AugmentConfig:
    """Tensor augmentations applied identically to every contrast of a sample (see ``training/augment.py``)."""

    flip: bool = True
    rot90: bool = False
    rot90_probability: float = 0.75  # of a k·90° turn (k in 1..3): 0.75 makes k uniform in 0..3; the authors: 0.5
    affine: bool = True
    affine_probability: float = 0.5
    max_rotation_degrees: float = 10.0
    max_scale: float = 0.1
    max_translation: float = 0.05
    elastic: bool = False
    elastic_probability: float = 0.5
    elastic_max_px: float = 2.0  # largest displacement of the smooth random field, in pixels
    # Intensity (network input only; the loss compares with the un-augmented contrasts): per contrast, a gamma
    # exp(±gamma_log_range), a smooth multiplicative bias field exp(±bias_field), a contrast scale 1±contrast_jitter.
    intensity: bool = False
    intensity_probability: float = 0.5
    gamma_log_range: float = 0.3
    bias_field: float = 0.3
    contrast_jitter: float = 0.1
    crop: int = 0  # 0: whole slices; else random crop×crop windows (multiple of 8)


@dataclass(frozen=True)
class DataConfig:
    """How slices are built and split; stored in checkpoints so evaluation reuses the training split."""

    size: int | None = None  # None: the model config's image_size
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    split_seed: int = 0
    #: A committed subject split (``configs/splits/NAME.toml`` or a path): overrides the fractions and seed.
    split_file: str | None = None
    cache_dir: str | None = None
    num_workers: int = 2
    #: "deepbet" prepares skull-on training cases as the node serves them (engine.brain_extraction); skull-stripped
    #: cases are their own brain either way.
    brain_extraction: str = "off"

    def __post_init__(self) -> None:
        if self.brain_extraction not in BRAIN_EXTRACTION_METHODS:
            allowed = BRAIN_EXTRACTION_METHODS
            raise ValueError(f"data.brain_extraction must be one of {allowed}, not {self.brain_extraction!r}")


@dataclass(frozen=True)
class TrainConfig:
    name: str = "custom"
    steps: int = 100_000
    batch_size: int = 8  # per process
    lr: float = 2e-4
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.99)
    warmup_steps: int = 1000
    min_lr_ratio: float = 0.01
    grad_clip: float = 1.0
    lambda_missing: float = 20.0
    lambda_available: float = 5.0
    gan_weight: float = 0.1
    gan_start_step: int = 20_000  # the generator's adversarial term joins here; D trains from step 0
    discriminator_lr: float = 2e-4
    discriminator_betas: tuple[float, float] = (0.5, 0.9)
    discriminator_schedule: str = "constant"  # or "cosine" (the generator's schedule shape)
    #: One missing-contrast pattern per batch (as the authors: every sample, and every rank, the same) or one per
    #: sample.
    mask_per: str = "batch"
    #: Stage II only: weight of a PSNR loss (λ_missing-weighted, missing contrasts) on the frozen decoder's output
    #: from the prior's codes (straight-through: rounded forward, expected level backward), beside the grading
    #: loss. 0: the paper's grading loss alone.
    image_loss_weight: float = 0.0
    log_interval: int = 50
    val_interval: int = 2000
    val_batches: int = 8
    checkpoint_interval: int = 5000
    seed: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        object.__setattr__(self, "discriminator_betas", tuple(float(b) for b in self.discriminator_betas))
        if self.mask_per not in ("batch", "sample"):
            raise ValueError(f"mask_per must be 'batch' or 'sample', got {self.mask_per!r}")
        if self.discriminator_schedule not in ("constant", "cosine"):
            raise ValueError(
                f"discriminator_schedule must be 'constant' or 'cosine', got {self.discriminator_schedule!r}"
            )
        if self.image_loss_weight < 0:
            raise ValueError(f"image_loss_weight must be >= 0, got {self.image_loss_weight}")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be >= 1")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError("min_lr_ratio must be in [0, 1]")
        if self.augment.crop < 0 or self.augment.crop % 8:
            raise ValueError("augment.crop must be 0 or a positive multiple of 8 (the model downsamples x8)")
        for key in ("log_interval", "val_interval", "checkpoint_interval"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["betas"] = list(self.betas)
        data["discriminator_betas"] = list(self.discriminator_betas)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        data = dict(data)
        augment = _build(AugmentConfig, data.pop("augment", {}), "augment")
        data_cfg = _build(DataConfig, data.pop("data", {}), "data")
        return _build(cls, {**data, "augment": augment, "data": data_cfg}, "train")

    @classmethod
    def from_toml(cls, path: str | Path, stage: int | str = 1) -> TrainConfig:
        """Read ``[train]`` merged with the stage's own table (``stage1``, ``stage2``, ``stage3`` or ``direct``)."""
        path = Path(path)
        with path.open("rb") as handle:
            raw = tomllib.load(handle)
        stage_table = STAGE_TABLES.get(stage, str(stage)) if isinstance(stage, int) else str(stage)
        unknown = sorted(set(raw) - {"train", "augment", "data", *STAGE_TABLES.values(), "direct"})
        if unknown:
            raise ValueError(f"{path}: unknown tables {unknown}")
        values = {"name": path.stem, **raw.get("train", {}), **raw.get(stage_table, {})}
        values["augment"] = raw.get("augment", {})
        values["data"] = raw.get("data", {})
        return cls.from_dict(values)

    def with_overrides(self, **changes: Any) -> TrainConfig:
        return replace(self, **changes)


def _build(kind: type, values: dict[str, Any], table: str) -> Any:
    known = {f.name for f in fields(kind)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown keys in [{table}]: {unknown}; known: {sorted(known)}")
    return kind(**values)
