"""Model benchmarks behind ``codebrain-node bench inference|train``: throughput of the real network on random
tensors, beside its parameter count. They live with the trainer, which owns the training step they time.

Inference is what the engine runs: ``model.impute`` (prior encoder + E_c + decoder, no posterior encoder) on a
batch of slices with one contrast missing, under inference_mode, channels_last, the weights cast to bf16 where
bf16 is native (CUDA; CPUs with AVX-512 BF16 or AMX) unless fp32 is asked for; optionally ``torch.compile``d. Training
is the trainer's own ``train_step`` (``training/stage1.py``, ``training/stage2.py``) with the shipped default
recipe (``configs/train/default.toml``: optimisers, betas, loss weights, GAN weight, discriminator): Stage I at a
step where the GAN term is on (generator + discriminator updates), Stage II the grading loss on the prior.
Augmentation and data loading are not timed. Weights are random: throughput does not depend on their values.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from codebrain_node.model import CodeBrain, DirectRegression, ModelConfig
from codebrain_node.resources import config_file
from training.loop import Distributed
from training.stage1 import Stage1Task
from training.stage2 import Stage2Task
from training.train_config import TrainConfig


@contextmanager
def _threads(count: int | None) -> Iterator[None]:
    """Run with ``count`` intra-op CPU threads (None: leave torch's setting), restoring it afterwards."""
    previous = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(step: Callable[[], None], device: torch.device, steps: int, warmup: int) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) per call, after ``warmup`` untimed calls (allocator, cuDNN autotune,
    oneDNN primitive caches). CPU time is the figure to trust on a shared machine: other processes stretch the
    wall clock but not the work this process does (with one thread; more threads add spin-waiting to it)."""
    for _ in range(warmup):
        step()
    _synchronise(device)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    _synchronise(device)
    count = max(steps, 1)
    return (time.perf_counter() - wall) / count, (time.process_time() - cpu) / count


def _random_batch(cfg: ModelConfig, batch: int, size: int, device: torch.device) -> dict[str, torch.Tensor]:
    n = cfg.num_contrasts
    available = torch.ones(batch, n, dtype=torch.bool, device=device)
    available[torch.arange(batch), torch.arange(batch) % n] = False  # one missing contrast, cycling
    return {"images": torch.rand(batch, n, size, size, device=device), "available": available}


def inference_gflops_per_slice(model: torch.nn.Module, cfg: ModelConfig, size: int) -> float:
    """Forward FLOPs of one ``impute`` at ``size``² (convolutions and matmuls), a machine-independent cost."""
    data = _random_batch(cfg, 1, size, next(model.parameters()).device)
    with FlopCounterMode(display=False) as counter:
        model.impute(**data, precision="fp32")
    return counter.get_total_flops() / 1e9


def _describe(cfg: ModelConfig, model: torch.nn.Module, device: torch.device, batch: int, size: int) -> dict[str, Any]:
    counts = model.parameter_counts()
    return {
        "config": cfg.name,
        "model": type(model).__name__,
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads(),
        "batch": batch,
        "size": size,
        "params_total": counts["total"],
        "params_inference": counts["inference"],
    }


def bench_inference(
    cfg: ModelConfig,
    device: str | torch.device = "cpu",
    batch: int = 8,
    size: int = 256,
    steps: int = 5,
    *,
    warmup: int = 1,
    precision: str = "auto",
    compile: bool = False,
    baseline: bool = False,
    threads: int | None = None,
) -> dict[str, Any]:
    """Slices per second of ``impute`` (CodeBrain, or the direct-regression baseline when ``baseline``), the
    network prepared as the engine prepares it (``for_inference``: channels_last, bf16 weights where
    ``precision`` says so); ``compile`` wraps its synthesis in ``torch.compile`` (the compilation, timed apart as
    ``compile_s``, is the first call)."""
    device = torch.device(device)
    network = (DirectRegression(cfg) if baseline else CodeBrain(cfg)).for_inference(device, precision)
    dtype = next(network.parameters()).dtype
    data = _random_batch(cfg, batch, size, device)
    compile_s = 0.0
    with _threads(threads):
        if compile:
            network._synthesise = torch.compile(network._synthesise)  # type: ignore[method-assign]
            started = time.perf_counter()
            network.impute(**data, precision=precision)
            compile_s = time.perf_counter() - started
        seconds, cpu_seconds = _timed(lambda: network.impute(**data, precision=precision), device, steps, warmup)
        result = _describe(cfg, network, device, batch, size)
    result.update(
        precision="bf16" if dtype == torch.bfloat16 else "fp32",
        channels_last=True,
        compiled=compile,
        compile_s=compile_s,
        seconds_per_batch=seconds,
        slices_per_s=batch / seconds,
        cpu_seconds_per_batch=cpu_seconds,
        gflops_per_slice=inference_gflops_per_slice(network, cfg, size),
    )
    return result


def bench_train(
    cfg: ModelConfig,
    device: str | torch.device = "cpu",
    batch: int = 4,
    size: int = 256,
    steps: int = 3,
    *,
    stage: int = 1,
    warmup: int = 1,
    threads: int | None = None,
) -> dict[str, Any]:
    """Optimiser steps per second of the trainer's Stage I (reconstruction + GAN) or Stage II (grading) step."""
    if stage not in (1, 2):
        raise ValueError(f"stage must be 1 or 2, got {stage}")
    device = torch.device(device)
    recipe = replace(TrainConfig.from_toml(config_file("train", "default.toml"), stage), batch_size=batch)
    dist = Distributed(device=device)
    model = CodeBrain(cfg)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    task = Stage1Task(model, recipe, dist) if stage == 1 else Stage2Task(model, recipe, dist)
    images = _random_batch(cfg, batch, size, device)
    train_batch = {"image": images["images"]}
    generator = torch.Generator().manual_seed(0)
    step_index = recipe.gan_start_step if stage == 1 else 0  # Stage I with its GAN term on, as most steps are

    def step() -> None:
        task.train_step(train_batch, step_index, generator)

    trained = sum(p.numel() for module in task.modules.values() for p in module.parameters() if p.requires_grad)
    with _threads(threads):
        seconds, cpu_seconds = _timed(step, device, steps, warmup)
        result = _describe(cfg, model, device, batch, size)
    result.update(
        stage=stage,
        precision="bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32",
        params_trained=trained,
        seconds_per_step=seconds,
        cpu_seconds_per_step=cpu_seconds,
        steps_per_s=1.0 / seconds,
        images_per_s=batch / seconds,
    )
    return result


def format_result(result: dict[str, Any]) -> str:
    """One human line per benchmark, for the CLI."""
    head = f"{result['config']:>8} {result['model']:<16} {result['device']} ×{result['threads']} threads, "
    head += f"batch {result['batch']} @ {result['size']}², {result['precision']}"
    head += ", compiled, " if result.get("compiled") else ", "
    head += f"{result['params_inference'] / 1e6:.2f} M inference / {result['params_total'] / 1e6:.2f} M total params: "
    if "slices_per_s" in result:
        return head + (
            f"{result['slices_per_s']:.2f} slices/s ({result['gflops_per_slice']:.1f} GFLOP/slice, "
            f"{result['cpu_seconds_per_batch'] / result['batch'] * 1e3:.0f} CPU-ms/slice"
            + (f", compiled in {result['compile_s']:.0f} s)" if result.get("compiled") else ")")
        )
    return (
        head + f"stage {result['stage']}: {result['steps_per_s']:.2f} steps/s ({result['images_per_s']:.2f} images/s)"
    )
