"""The training loop shared by Stage I, Stage II and the direct-regression baseline, read top to bottom:

1. distributed setup (torchrun env → DDP process group; gloo on CPU, nccl on CUDA; one process otherwise),
2. data: a DistributedSampler that can resume mid-epoch, augmentation on the device,
3. the loop: the stage's ``train_step``, logging (tqdm, metrics.jsonl), validation, checkpoints,
4. checkpoints: everything a bit-exact ``--resume`` needs (models, optimisers, schedulers, step, RNG states,
   full configs); a weights-only inference checkpoint (safetensors) at the end.

A stage is a small object (see ``stage1.py`` / ``stage2.py``) with ``modules``, ``optimizers``, ``schedulers``,
``train_step(batch, step, generator)``, ``validate(batch, generator)`` and ``inference_model()``. All randomness
of a step (augmentation, availability masks) comes from a generator seeded by (seed, rank, step), so a resumed run
draws exactly what the uninterrupted one would have drawn, whatever happened before.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as torch_dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from codebrain_node.durable import durable_file
from training.augment import augment_batch, intensity_augment
from training.train_config import TrainConfig

log = logging.getLogger("training.loop")

CHECKPOINT_NAME = "last.pt"
INFERENCE_NAME = "model.safetensors"
METRICS_NAME = "metrics.jsonl"
CURVES_NAME = "curves.png"


# --- 1. distributed setup -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Distributed:
    """Where this process sits: rank 0 of 1 when not launched by torchrun."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False  # False when the caller had already joined a process group (it tears it down)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup_distributed(device: str | None = None) -> Distributed:
    """Read torchrun's environment (RANK, LOCAL_RANK, WORLD_SIZE) and join the process group when it says > 1."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device != "cpu"
    if use_cuda:
        torch.cuda.set_device(local_rank)
        chosen = torch.device("cuda", local_rank)
    else:
        chosen = torch.device("cpu")
    owns_group = False
    if world_size > 1 and not torch_dist.is_initialized():
        torch_dist.init_process_group(backend="nccl" if use_cuda else "gloo", rank=rank, world_size=world_size)
        owns_group = True
    return Distributed(rank, local_rank, world_size, chosen, owns_group)


def cleanup_distributed(dist: Distributed) -> None:
    if dist.owns_group and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def wrap_ddp(module: nn.Module, dist: Distributed) -> nn.Module:
    """DDP when distributed (it broadcasts rank 0's weights, so every rank starts identical); else the module."""
    if not dist.enabled:
        return module
    device_ids = [dist.local_rank] if dist.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids)


def autocast(dist: Distributed) -> torch.autocast:
    """bf16 mixed precision on CUDA only; on CPU autocast is disabled (fp32 is faster and exact there)."""
    enabled = dist.device.type == "cuda" and torch.cuda.is_bf16_supported()
    return torch.autocast(device_type=dist.device.type, dtype=torch.bfloat16, enabled=enabled)


def mean_over_ranks(values: Mapping[str, float], dist: Distributed) -> dict[str, float]:
    """Average logged scalars over ranks so the log describes the global batch."""
    if not dist.enabled or not values:
        return dict(values)
    keys = sorted(values)
    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=dist.device)
    torch_dist.all_reduce(tensor)
    return {k: float(v) / dist.world_size for k, v in zip(keys, tensor.tolist(), strict=True)}


# --- optimiser and schedule -----------------------------------------------------------------------------------
def make_adamw(
    parameters: list[nn.Parameter], cfg: TrainConfig, lr: float, betas: tuple[float, float] | None = None
) -> torch.optim.AdamW:
    """AdamW; no weight decay on biases and norm scales (1-D tensors), as is usual for conv nets."""
    trainable = [p for p in parameters if p.requires_grad]
    groups = [
        {"params": [p for p in trainable if p.ndim >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=betas or cfg.betas)


def cosine_factor(step: int, total_steps: int, warmup_steps: int, min_ratio: float) -> float:
    """Linear warm-up to 1, then cosine decay to ``min_ratio`` at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_constant_schedule(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    """The learning rate as configured, every step (the authors' discriminator); a scheduler all the same, so
    checkpoints and ``clip_and_step`` treat every optimiser alike."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _step: 1.0)


def make_cosine_schedule(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = min(cfg.warmup_steps, max(0, total_steps - 1))
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: cosine_factor(step, total_steps, warmup, cfg.min_lr_ratio)
    )


def clip_and_step(
    optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler, grad_clip: float
) -> float:
    """Clip (if configured), step the optimiser and its schedule; returns the gradient norm before clipping."""
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    norm = float("nan")
    if grad_clip > 0 and params:
        norm = float(torch.nn.utils.clip_grad_norm_(params, grad_clip))
    optimizer.step()
    scheduler.step()
    return norm


# --- the stage interface --------------------------------------------------------------------------------------
class StageTask(Protocol):
    name: str
    images_key: str

    @property
    def modules(self) -> dict[str, nn.Module]: ...  # raw (un-wrapped) modules saved in checkpoints

    optimizers: dict[str, torch.optim.Optimizer]
    schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler]

    def train_step(self, batch: dict[str, Tensor], step: int, generator: torch.Generator) -> dict[str, float]: ...

    def validate(self, batch: dict[str, Tensor], generator: torch.Generator) -> dict[str, float]: ...

    def inference_model(self) -> nn.Module: ...


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    inference_checkpoint: Path | None
    last_metrics: dict[str, float]
    model: nn.Module | None = None  # the trained (raw) network in this process; None after a --gpus re-launch


# --- 2. data --------------------------------------------------------------------------------------------------
class ResumableSampler(DistributedSampler):
    """DistributedSampler whose epoch can start ``skip_batches`` in, so a resumed run sees the same batches."""

    def __init__(self, dataset: Dataset, dist: Distributed, seed: int, batch_size: int) -> None:
        super().__init__(dataset, num_replicas=dist.world_size, rank=dist.rank, shuffle=True, seed=seed, drop_last=True)
        self.batch_size = batch_size
        self.skip = 0

    @property
    def batches_per_epoch(self) -> int:
        return self.num_samples // self.batch_size

    def set_position(self, epoch: int, skip_batches: int) -> None:
        self.set_epoch(epoch)
        self.skip = skip_batches * self.batch_size

    def __iter__(self) -> Iterator[int]:
        return iter(list(super().__iter__())[self.skip :])

    def __len__(self) -> int:
        return self.num_samples - self.skip


def to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in batch.items()}


def step_generator(seed: int, rank: int, step: int) -> torch.Generator:
    """The one source of randomness of a training step: a function of (seed, rank, step) only."""
    return torch.Generator().manual_seed((seed * 1_000_003 + rank) * 1_000_003 + step)


def prepare_batch(batch: Mapping[str, Any], cfg: TrainConfig, dist: Distributed, generator: torch.Generator | None):
    """Move to the device and augment (training only) every contrast and the mask of a sample alike."""
    batch = to_device(batch, dist.device)
    if generator is not None:
        images, mask = augment_batch(batch["image"], batch.get("brain_mask"), cfg.augment, generator)
        batch["image"] = images
        if mask is not None:
            batch["brain_mask"] = mask
        if cfg.augment.intensity:  # what the network reads; the losses keep comparing with batch["image"]
            batch["input"] = intensity_augment(images, cfg.augment, generator)
    return batch


# --- 3. the loop ----------------------------------------------------------------------------------------------
def run_training(
    task: StageTask,
    train_set: Dataset,
    val_set: Dataset | None,
    cfg: TrainConfig,
    run_dir: Path,
    dist: Distributed,
    *,
    run_info: dict[str, Any],
    resume: bool = False,
    stop_after_step: int | None = None,
    inference_metadata: dict[str, str] | None = None,
) -> TrainResult:
    """Train ``task`` to ``cfg.steps`` (or ``stop_after_step``, which simulates a pre-empted job)."""
    run_dir = Path(run_dir)
    checkpoint_path = run_dir / "checkpoints" / CHECKPOINT_NAME
    metrics_path = run_dir / METRICS_NAME
    if dist.is_main:
        checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(run_info, indent=2, default=str))

    step = 0
    if resume:
        step = load_training_checkpoint(checkpoint_path, task)
        log.info("resumed from %s at step %d", checkpoint_path, step)
        if dist.is_main:
            forget_metrics_after(metrics_path, step)
    elif dist.is_main and metrics_path.exists():
        metrics_path.unlink()  # a fresh run must not inherit another run's curves

    sampler = ResumableSampler(train_set, dist, seed=cfg.seed, batch_size=cfg.batch_size)
    if sampler.batches_per_epoch < 1:
        raise ValueError(
            f"the training set has {len(train_set)} slices: too few for batch_size {cfg.batch_size} "
            f"on {dist.world_size} process(es)"
        )
    loader = DataLoader(
        train_set,
        batch_size=cfg.batch_size,
        sampler=sampler,
        num_workers=cfg.data.num_workers,
        pin_memory=dist.device.type == "cuda",
        drop_last=True,
        generator=torch.Generator().manual_seed(cfg.seed),  # keeps the global RNG untouched by the loader
        persistent_workers=False,
    )
    val_loader = None
    if val_set is not None and len(val_set) > 0:
        val_loader = DataLoader(val_set, batch_size=cfg.batch_size, shuffle=False, num_workers=0)

    final_step = cfg.steps if stop_after_step is None else min(cfg.steps, stop_after_step)
    progress = tqdm(total=cfg.steps, initial=step, disable=not dist.is_main, desc=task.name, dynamic_ncols=True)
    last_metrics: dict[str, float] = {}
    tick, images_seen = time.perf_counter(), 0
    while step < final_step:
        epoch, skip = divmod(step, sampler.batches_per_epoch)
        sampler.set_position(epoch, skip)
        for raw_batch in loader:
            generator = step_generator(cfg.seed, dist.rank, step)
            batch = prepare_batch(raw_batch, cfg, dist, generator)
            metrics = task.train_step(batch, step, generator)
            step += 1
            images_seen += batch["image"].shape[0] * dist.world_size
            progress.update(1)

            if step % cfg.log_interval == 0 or step == final_step:
                metrics = mean_over_ranks(metrics, dist)
                elapsed = max(time.perf_counter() - tick, 1e-9)
                metrics["images_per_s"] = images_seen / elapsed
                metrics["lr"] = task.optimizers[next(iter(task.optimizers))].param_groups[0]["lr"]
                tick, images_seen = time.perf_counter(), 0
                last_metrics = metrics
                progress.set_postfix(loss=f"{metrics['loss']:.4f}", img_s=f"{metrics['images_per_s']:.1f}")
                if dist.is_main:
                    append_metrics(metrics_path, {"step": step, "split": "train", **metrics})
            if val_loader is not None and (step % cfg.val_interval == 0 or step == cfg.steps) and dist.is_main:
                val = validate(task, val_loader, cfg, dist)
                append_metrics(metrics_path, {"step": step, "split": "val", **val})
                last_metrics.update({f"val_{k}": v for k, v in val.items()})
            if step % cfg.checkpoint_interval == 0 or step == final_step:
                save_training_checkpoint(checkpoint_path, task, step, run_info, dist)
                if dist.is_main:
                    plot_curves_quietly(metrics_path, run_dir / CURVES_NAME)
            if step >= final_step:
                break
    progress.close()

    inference_path = None
    if step >= cfg.steps and dist.is_main:
        inference_path = run_dir / INFERENCE_NAME
        save_inference(task.inference_model(), inference_path, inference_metadata or {}, step)
    if dist.enabled:
        torch_dist.barrier()
    return TrainResult(run_dir, step, inference_path, last_metrics, task.inference_model())


def validate(task: StageTask, loader: DataLoader, cfg: TrainConfig, dist: Distributed) -> dict[str, float]:
    """Mean of the stage's validation figures over the first ``val_batches`` batches, fixed masks."""
    totals: dict[str, float] = {}
    count = 0
    for index, raw_batch in enumerate(loader):
        if index >= cfg.val_batches:
            break
        batch = prepare_batch(raw_batch, cfg, dist, generator=None)
        generator = torch.Generator().manual_seed(cfg.seed + index)
        with torch.no_grad():
            values = task.validate(batch, generator)
        for key, value in values.items():
            totals[key] = totals.get(key, 0.0) + value
        count += 1
    return {key: value / max(count, 1) for key, value in totals.items()}


def forget_metrics_after(path: Path, step: int) -> None:
    """A run killed after its last checkpoint logged steps that the resumed run will log again: drop them."""
    if path.exists():
        kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
        path.write_text("".join(line + "\n" for line in kept))


def append_metrics(path: Path, record: dict[str, Any]) -> None:
    with path.open("a") as handle:
        handle.write(json.dumps(record) + "\n")


def plot_curves_quietly(metrics_path: Path, png_path: Path) -> None:
    """Redraw the curves PNG; a plotting failure must never stop a training run."""
    from training.report import plot_loss_curves

    try:
        plot_loss_curves(metrics_path, png_path)
    except Exception as error:
        log.warning("could not draw %s: %s", png_path, error)


# --- 4. checkpoints -------------------------------------------------------------------------------------------
def capture_rng_state() -> dict[str, Any]:
    """Python, numpy and torch RNG states in tensors/ints only, so ``torch.load(weights_only=True)`` reads them."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "python": [version, torch.tensor(internal, dtype=torch.int64), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(int(v) for v in internal.tolist()), gauss))
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training_checkpoint(
    path: Path, task: StageTask, step: int, run_info: dict[str, Any], dist: Distributed
) -> None:
    """Rank 0 writes atomically (temp file + rename) so a crash mid-write never leaves a broken ``last.pt``."""
    if dist.is_main:
        payload = {
            "step": step,
            "stage": task.name,
            "models": {name: module.state_dict() for name, module in task.modules.items()},
            "optimizers": {name: opt.state_dict() for name, opt in task.optimizers.items()},
            "schedulers": {name: sched.state_dict() for name, sched in task.schedulers.items()},
            "rng": capture_rng_state(),
            "run_info": json.dumps(run_info, default=str),
        }
        with durable_file(path) as handle:
            torch.save(payload, handle)
    if dist.enabled:
        torch_dist.barrier()


def read_training_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"no training checkpoint to resume from: {path}")
    return torch.load(path, map_location=map_location, weights_only=True)


def run_info_of(path: Path) -> dict[str, Any]:
    """The configs a checkpoint was trained with (used by ``--resume`` to continue with the same settings)."""
    return json.loads(read_training_checkpoint(path)["run_info"])


def load_training_checkpoint(path: Path, task: StageTask) -> int:
    """Restore models, optimisers, schedulers and RNG states into ``task``; returns the step to continue from."""
    payload = read_training_checkpoint(path)  # on CPU; load_state_dict copies onto each parameter's device
    if payload["stage"] != task.name:
        raise ValueError(f"{path} is a {payload['stage']} checkpoint; cannot resume {task.name} from it")
    for name, module in task.modules.items():
        module.load_state_dict(payload["models"][name])
    for name, optimizer in task.optimizers.items():
        optimizer.load_state_dict(payload["optimizers"][name])
    for name, scheduler in task.schedulers.items():
        scheduler.load_state_dict(payload["schedulers"][name])
    restore_rng_state(payload["rng"])
    return int(payload["step"])


def save_inference(model: nn.Module, path: Path, metadata: dict[str, str], step: int) -> None:
    from codebrain_node.model import save_inference_checkpoint

    save_inference_checkpoint(model, path, extra_metadata={**metadata, "train_step": str(step)})
