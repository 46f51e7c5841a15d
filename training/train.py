"""``train()``: the one entry point behind ``codebrain-node train`` and ``python -m training``.

It resolves the configs, builds the data and the stage's task, and hands them to ``loop.run_training``.
``gpus=K`` (K > 1) re-launches this same command under ``torch.distributed.run`` with K processes; under torchrun
each process calls ``train()`` again and joins the process group from the environment.

Run folder: ``config.json`` (everything this run was started with), ``metrics.jsonl``, ``curves.png``,
``checkpoints/last.pt`` (training state, for ``--resume``) and, once finished, ``model.safetensors`` (weights +
model config only; after Stage II the complete CodeBrain model for ``impute``).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

import torch
from torch.utils.data import Dataset

from codebrain_node.model import CodeBrain, DirectRegression, ModelConfig, load_inference_checkpoint
from codebrain_node.resources import model_config_file, train_config_file
from training.datasets import SubjectSplit, datasets_for_model, read_split_file
from training.loop import (
    CHECKPOINT_NAME,
    INFERENCE_NAME,
    TrainResult,
    cleanup_distributed,
    run_info_of,
    run_training,
    setup_distributed,
)
from training.stage1 import Stage1Task
from training.stage2 import Stage2Task
from training.stage3 import Stage3Task
from training.train_config import TrainConfig

log = logging.getLogger("training.train")

ARCHITECTURES = ("codebrain", "direct")
STAGE_TASKS = {1: Stage1Task, 2: Stage2Task, 3: Stage3Task}


class Splits(Protocol):
    """What ``training.datasets.datasets_for_model`` returns (tests pass a stand-in with the same attributes)."""

    train: Dataset
    val: Dataset


MODEL_HELP = (
    "small | paper | brats | ixi | a model TOML (default small; Stage II: the --from network's, or one that "
    "differs from it only in its prior)"
)


def resolve_model_config(spec: str | Path | ModelConfig) -> ModelConfig:
    """A shipped name (``"small"``, ``"paper"``), a TOML path, or a ready ModelConfig."""
    if isinstance(spec, ModelConfig):
        return spec
    return ModelConfig.from_toml(model_config_file(spec))


def train(
    stage: int,
    config_path: str | Path | None,
    data_dir: str | Path | None,
    out_dir: str | Path,
    from_run: str | Path | None = None,
    resume: bool = False,
    gpus: int | None = None,
    model_config: str | Path | ModelConfig | None = None,
    arch: str = "codebrain",
    *,
    datasets: Splits | None = None,
    stop_after_step: int | None = None,
    device: str | None = None,
) -> TrainResult:
    """Train Stage 1, 2 or 3 of CodeBrain (or the direct baseline, ``arch="direct"``, stage 1 only).

    ``from_run``: the Stage I run folder Stage II starts from (Stage III: the Stage II run or checkpoint).
    ``model_config``: Stage I's network (default ``small``); for Stage II None keeps ``from_run``'s, and a config
    differing from it only in its prior trains a fresh prior of that size on the frozen Stage I. ``resume``:
    continue ``out_dir`` exactly from its last checkpoint, with the settings stored there. ``datasets``: pre-built
    splits (tests); otherwise built from ``data_dir``. ``stop_after_step``: stop (with a checkpoint) as if
    pre-empted. ``device="cpu"`` forces CPU.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"arch must be one of {ARCHITECTURES}, got {arch!r}")
    if stage not in STAGE_TASKS:
        raise ValueError(f"stage must be 1, 2 or 3, got {stage}")
    if arch == "direct" and stage != 1:
        raise ValueError("the direct-regression baseline is trained in one stage: use --stage 1")
    if stage == 2 and from_run is None and not resume:
        raise ValueError("Stage II starts from a Stage I run: pass --from RUN_DIR")
    if stage == 3 and not resume and (from_run is None or model_config is not None):
        raise ValueError("Stage III fits the decoder of a trained CodeBrain model: pass --from RUN_DIR, no --model")
    out_dir = Path(out_dir)
    if gpus is not None and gpus > 1 and "LOCAL_RANK" not in os.environ:
        return _relaunch_with_torchrun(
            gpus,
            stage,
            config_path,
            data_dir,
            out_dir,
            from_run,
            resume,
            model_config,
            arch,
            stop_after_step,
            device,
        )

    stage_key: int | str = "direct" if arch == "direct" else stage
    if resume:
        info = run_info_of(out_dir / "checkpoints" / CHECKPOINT_NAME)
        cfg = TrainConfig.from_dict(info["train_config"])
        model_cfg = ModelConfig.from_dict(info["model_config"])
        data_dir = data_dir or info.get("data_dir")
        from_run = from_run or info.get("from_run")
    else:
        if config_path is None:
            raise ValueError("a training config is needed (--config NAME|FILE), except with --resume")
        cfg = TrainConfig.from_toml(train_config_file(config_path), stage_key)
        model_cfg = None

    dist = setup_distributed(device)
    try:
        torch.manual_seed(cfg.seed)  # same initial weights everywhere (DDP also broadcasts rank 0's)
        model, model_cfg = _build_model(stage, arch, model_cfg, model_config, from_run)
        size = cfg.data.size or model_cfg.image_size
        assignment = read_split_file(cfg.data.split_file) if cfg.data.split_file else None
        split = SubjectSplit(
            size,
            cfg.data.val_fraction,
            cfg.data.test_fraction,
            cfg.data.split_seed,
            assignment,
            cfg.data.brain_extraction,
        )
        if datasets is None:
            if data_dir is None:
                raise ValueError("no data: pass --data DIR")
            datasets = datasets_for_model(Path(data_dir), model_cfg, split, cfg.data.cache_dir)
        task = STAGE_TASKS[stage](model, cfg, dist)
        run_info: dict[str, Any] = {
            "stage": stage,
            "arch": arch,
            "train_config": cfg.to_dict(),
            "model_config": model_cfg.to_dict(),
            "data_dir": None if data_dir is None else str(data_dir),
            "from_run": None if from_run is None else str(from_run),
            "world_size": dist.world_size,
            "image_size": size,
        }
        metadata = {
            "trainer_stage": str(stage),
            "trainer_arch": arch,
            "train_config_name": cfg.name,
            "data_split": split.to_json(),
        }
        return run_training(
            task,
            datasets.train,
            getattr(datasets, "val", None),
            cfg,
            out_dir,
            dist,
            run_info=run_info,
            resume=resume,
            stop_after_step=stop_after_step,
            inference_metadata=metadata,
        )
    finally:
        cleanup_distributed(dist)


def _build_model(
    stage: int,
    arch: str,
    stored: ModelConfig | None,
    spec: str | Path | ModelConfig | None,
    from_run: str | Path | None,
) -> tuple[CodeBrain | DirectRegression, ModelConfig]:
    """Stage II and III: the earlier run's network (its config wins); otherwise a fresh network of the chosen config.

    ``from_run`` is a Stage I run folder or an inference checkpoint itself (for example the shipped weights, whose
    prior Stage II then fine-tunes on new data with their Stage I frozen).
    """
    if stage in (2, 3):
        if stored is not None:  # resuming: the checkpoint restores every weight; only the architecture is needed
            return CodeBrain(stored), stored
        source = Path(from_run)  # type: ignore[arg-type]  # train() refuses Stage II without --from or --resume
        model = load_inference_checkpoint(source if source.is_file() else source / INFERENCE_NAME)
        if not isinstance(model, CodeBrain):
            raise TypeError(f"{from_run} holds a {type(model).__name__}, not a CodeBrain Stage I model")
        return (model, model.cfg) if spec is None else _with_new_prior(model, resolve_model_config(spec), from_run)
    cfg = stored or resolve_model_config(spec or "small")
    return (DirectRegression(cfg) if arch == "direct" else CodeBrain(cfg)), cfg


def _with_new_prior(stage1: CodeBrain, wanted: ModelConfig, source: str | Path | None) -> tuple[CodeBrain, ModelConfig]:
    """Stage I of ``stage1`` with a freshly initialised prior of ``wanted``'s size (a wider prior on the same
    frozen Stage I). ``wanted`` may differ from the Stage I network in its prior and name only."""
    have, want = stage1.cfg.to_dict(), wanted.to_dict()
    differs = sorted(k for k in want if k not in ("prior_width_multiplier", "name") and want[k] != have[k])
    if differs:
        raise ValueError(
            f"Stage II keeps the Stage I network of {source}; --model may change only the prior "
            f"(prior_width_multiplier), but {wanted.name} differs in {differs}"
        )
    if stage1.cfg.prior_dim == wanted.prior_dim:
        return stage1, replace(stage1.cfg, name=wanted.name)
    model = CodeBrain(wanted)  # same Stage I shapes (checked above): its weights load, the prior stays fresh
    model.load_state_dict(
        {k: v for k, v in stage1.state_dict().items() if not k.startswith("prior_encoder.")}, strict=False
    )
    return model, wanted


def build_argv(
    stage: int,
    config_path: str | Path | None,
    data_dir: str | Path | None,
    out_dir: str | Path,
    from_run: str | Path | None = None,
    resume: bool = False,
    model_config: str | Path | ModelConfig | None = None,
    arch: str = "codebrain",
    stop_after_step: int | None = None,
    device: str | None = None,
) -> list[str]:
    """The ``python -m training`` arguments that reproduce a ``train()`` call (used by the torchrun re-launch)."""
    if isinstance(model_config, ModelConfig):
        raise TypeError("a --gpus re-launch needs the model config as a name or file, not an object")
    argv = ["--stage", str(stage), "--out", str(out_dir), "--arch", arch]
    optional = {
        "--model": model_config,
        "--config": config_path,
        "--data": data_dir,
        "--from": from_run,
        "--stop-after-step": stop_after_step,
    }
    optional["--device"] = device
    for flag, value in optional.items():
        if value is not None:
            argv += [flag, str(value)]
    if resume:
        argv.append("--resume")
    return argv


def _relaunch_with_torchrun(
    gpus: int,
    stage: int,
    config_path: str | Path | None,
    data_dir: str | Path | None,
    out_dir: Path,
    from_run: str | Path | None,
    resume: bool,
    model_config: str | Path | ModelConfig | None,
    arch: str,
    stop_after_step: int | None,
    device: str | None,
) -> TrainResult:
    argv = build_argv(
        stage, config_path, data_dir, out_dir, from_run, resume, model_config, arch, stop_after_step, device
    )
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}"]
    command += ["-m", "training", *argv]
    log.info("launching %d processes: %s", gpus, " ".join(command))
    subprocess.run(command, check=True)
    inference = out_dir / INFERENCE_NAME
    return TrainResult(out_dir, _last_step(out_dir), inference if inference.is_file() else None, {}, None)


def _last_step(out_dir: Path) -> int:
    path = out_dir / "checkpoints" / CHECKPOINT_NAME
    return int(torch.load(path, map_location="cpu", weights_only=True)["step"]) if path.is_file() else 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m training`` / ``torchrun --nproc_per_node K -m training``: the same options as the CLI."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m training", description="Train CodeBrain (Stage I/II/III) or the direct baseline."
    )
    parser.add_argument("--stage", type=int, choices=tuple(STAGE_TASKS), required=True)
    parser.add_argument("--config", type=Path, help="training TOML (configs/train/*.toml)")
    parser.add_argument("--data", type=Path, help="dataset folder")
    parser.add_argument("--out", type=Path, required=True, help="run folder")
    parser.add_argument("--from", dest="from_run", type=Path, help="the earlier stage's run folder (Stage II, III)")
    parser.add_argument("--resume", action="store_true", help="continue --out from its last checkpoint")
    parser.add_argument("--gpus", type=int, default=None, help="launch K processes with torchrun")
    parser.add_argument("--model", default=None, help=MODEL_HELP)
    parser.add_argument("--arch", choices=ARCHITECTURES, default="codebrain")
    parser.add_argument("--stop-after-step", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result = train(
        args.stage,
        args.config,
        args.data,
        args.out,
        from_run=args.from_run,
        resume=args.resume,
        gpus=args.gpus,
        model_config=args.model,
        arch=args.arch,
        stop_after_step=args.stop_after_step,
        device=args.device,
    )
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({"run_dir": str(result.run_dir), "step": result.step, **result.last_metrics}, default=str))
    return 0
