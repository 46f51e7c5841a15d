"""``codebrain-node bench``: the numbers the node is judged by, each measured by its stage's bench module.

Model speed is ``training.bench``, DICOM ingest ``receive.bench``, end to end ``node.bench_e2e``.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from codebrain_node.cli import app
from codebrain_node.cli.state import app_state

if TYPE_CHECKING:
    from codebrain_node.model.config import ModelConfig

bench_app = typer.Typer(help="Benchmarks: model speed, DICOM ingest, end to end.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


def _bench_configs(configs: str) -> list[ModelConfig]:
    """``small,paper`` → their model configs (names or TOML paths, as ``train --model`` takes them)."""
    from training.train import resolve_model_config

    return [resolve_model_config(name.strip()) for name in configs.split(",") if name.strip()]


def _bench_devices(device: str) -> list[str]:
    """``all`` → cpu, and cuda when there is one; anything else as given."""
    import torch

    if device == "all":
        return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    return [device]


def _choices(text: str, allowed: tuple[str, ...], option: str) -> list[str]:
    """``fp32,bf16`` → ["fp32", "bf16"], each checked against ``allowed``."""
    values = [value.strip() for value in text.split(",") if value.strip()]
    wrong = [value for value in values if value not in allowed]
    if wrong or not values:
        raise typer.BadParameter(
            f"{', '.join(wrong) or 'nothing'} given; choose from {', '.join(allowed)}", param_hint=option
        )
    return values


@bench_app.command("inference")
def bench_inference_command(
    configs: Annotated[str, typer.Option(help="Model configs, comma-separated.")] = "small,paper",
    device: Annotated[str, typer.Option(help="cpu, cuda, or all (cuda when present).")] = "all",
    batch: Annotated[
        str,
        typer.Option(help="Slices per forward pass, comma-separated; auto: 1 for paper-size models on a CPU, else 8."),
    ] = "auto",
    size: Annotated[int, typer.Option(help="Slice size (pixels).")] = 256,
    steps: Annotated[int, typer.Option(help="Timed batches.")] = 3,
    threads: Annotated[int | None, typer.Option(help="CPU threads (default: torch's).")] = None,
    precision: Annotated[
        str, typer.Option(help="Weights, comma-separated: fp32, bf16, auto (bf16 where native, as the engine).")
    ] = "fp32,bf16",
    compile: Annotated[str, typer.Option(help="torch.compile: off, on, or off,on.")] = "off",
) -> None:
    """Slices/s of imputation as the engine runs it (inference_mode, channels_last), each precision and compile
    setting measured on and off, with parameter counts and CPU time per slice."""
    from training.bench import bench_inference, format_result

    precisions = _choices(precision, ("fp32", "bf16", "auto"), "--precision")
    compiles = [value == "on" for value in _choices(compile, ("off", "on"), "--compile")]
    for cfg in _bench_configs(configs):
        for name in _bench_devices(device):
            wide = cfg.naf_dim > 16 and name == "cpu"  # paper-size maps outgrow the caches: one slice a pass
            batches = [1 if wide else 8] if batch == "auto" else [int(value) for value in batch.split(",")]
            for run_batch, run_precision, run_compile in itertools.product(batches, precisions, compiles):
                result = bench_inference(
                    cfg, name, run_batch, size, steps, precision=run_precision, compile=run_compile, threads=threads
                )
                typer.echo(format_result(result))


@bench_app.command("train")
def bench_train_command(
    configs: Annotated[str, typer.Option(help="Model configs, comma-separated.")] = "small,paper",
    device: Annotated[str, typer.Option(help="cpu, cuda, or all (cuda when present).")] = "all",
    batch: Annotated[int, typer.Option(help="Images per step.")] = 4,
    size: Annotated[int, typer.Option(help="Slice size (pixels).")] = 256,
    steps: Annotated[int, typer.Option(help="Timed steps.")] = 2,
    stage: Annotated[int, typer.Option(help="1 (generator + discriminator) or 2 (prior).")] = 1,
    threads: Annotated[int | None, typer.Option(help="CPU threads (default: torch's).")] = None,
) -> None:
    """Training steps/s and images/s for each config and device."""
    from training.bench import bench_train, format_result

    for cfg in _bench_configs(configs):
        for name in _bench_devices(device):
            run_batch = batch if cfg.naf_dim <= 16 or name == "cuda" else 1
            result = bench_train(cfg, name, run_batch, size, steps, stage=stage, threads=threads)
            typer.echo(format_result(result))


@bench_app.command("ingest")
def bench_ingest_command(
    instances: Annotated[int, typer.Option("--instances", min=1, help="MR instances (256x256 int16) to send.")] = 500,
    associations: Annotated[int, typer.Option("--associations", min=1, help="Parallel storescu associations.")] = 4,
    receiver_processes: Annotated[
        str,
        typer.Option(
            "--receiver-processes",
            help="On the parallel run, ours also with these numbers of receiver processes on one port "
            "(dicom.receiver_processes), comma-separated; empty for none.",
        ),
    ] = "1,2",
) -> None:
    """C-STORE instances/s into our SCP and into DCMTK storescp (same files, same run) and their ratio."""
    import json

    from codebrain_node.receive.bench import bench_ingest

    try:
        counts = [int(value) for value in receiver_processes.split(",") if value.strip()]
    except ValueError:
        raise typer.BadParameter("whole numbers, comma-separated", param_hint="--receiver-processes") from None
    if any(count < 1 for count in counts):
        raise typer.BadParameter("each at least 1", param_hint="--receiver-processes")
    typer.echo(json.dumps(bench_ingest(instances, associations, receiver_processes=counts), indent=2))


@bench_app.command("e2e")
def bench_e2e_command(
    ctx: typer.Context,
    resolution: Annotated[float, typer.Option(help="Phantom voxel size in mm (slices = head height / this).")] = 2.0,
    quiet: Annotated[float, typer.Option(help="routing.quiet_period_s for the run (part of the figure).")] = 2.0,
    repeats: Annotated[int, typer.Option(min=1, help="Studies sent one after the other.")] = 2,
    inputs: Annotated[str, typer.Option(help="Contrasts the scanner sends; the node makes the missing ones.")] = (
        "T1,T2,FLAIR"
    ),
    case: Annotated[
        Path | None, typer.Option(help="Send this BraTS-layout case (NIfTI) instead of a phantom, on its own grid.")
    ] = None,
    random_init: Annotated[
        str | None, typer.Option(help="Time a random-init model of this config (small, paper, a TOML) instead.")
    ] = None,
) -> None:
    """Seconds from the last instance received to the synthetic series acknowledged by the PACS (storescp)."""
    import tempfile

    from codebrain_node.contrasts import parse_contrast_list
    from codebrain_node.node.bench_e2e import bench_e2e, random_init_model, read_case

    settings = app_state(ctx).settings
    acquired = parse_contrast_list(inputs)
    images = read_case(case, acquired) if case is not None else None
    with tempfile.TemporaryDirectory(prefix="codebrain-bench-model-") as folder:
        model = random_init_model(random_init, Path(folder), settings.model.device) if random_init else None
        bench_e2e(
            settings,
            model=model,
            resolution_mm=resolution,
            quiet_period_s=quiet,
            repeats=repeats,
            inputs=acquired,
            images=images,
        )
