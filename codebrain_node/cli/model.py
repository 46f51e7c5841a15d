"""Making and judging models: simulate a ``phantom`` case, ``train`` CodeBrain, ``evaluate`` a checkpoint.

Torch and the training package are imported inside each command, so ``codebrain-node --help`` stays quick.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from codebrain_node.cli import app
from codebrain_node.cli.state import app_state


@app.command("phantom")
def phantom(
    out: Annotated[Path, typer.Option("--out", help="Folder to write the case into.")],
    contrasts: Annotated[str, typer.Option(help="Contrasts to simulate, e.g. T1,T1Gd,T2,PD,FLAIR.")] = "T1,T2,FLAIR",
    fmt: Annotated[str, typer.Option("--format", help="nifti (BraTS layout) or dicom.")] = "nifti",
    seed: Annotated[int, typer.Option(help="Same seed, same voxels.")] = 0,
    anatomy: Annotated[str, typer.Option(help="'mni' (bundled with nilearn) or 'synthseg:N' (shared data).")] = "mni",
    lesion: Annotated[bool, typer.Option("--lesion/--no-lesion", help="Insert a glioma-like lesion.")] = True,
    skull: Annotated[bool, typer.Option("--skull/--no-skull", help="Keep the skull and scalp.")] = True,
    field: Annotated[float, typer.Option("--field", help="Field strength in tesla: 1.5 or 3.")] = 3.0,
    resolution: Annotated[float, typer.Option(help="Output voxel size in mm.")] = 1.0,
    shared_data: Annotated[Path | None, typer.Option(help="Shared data folder (default ../shared/data).")] = None,
) -> None:
    """Simulate a multi-contrast brain MR case with MR physics and write it as NIfTI or as a DICOM study."""
    from codebrain_node.contrasts import parse_contrast_list
    from codebrain_node.phantom import run_phantom

    folder = run_phantom(
        out,
        parse_contrast_list(contrasts),
        fmt,
        seed,
        anatomy,
        shared_data=shared_data,
        lesion=lesion,
        skull=skull,
        field_strength=field,
        resolution_mm=resolution,
    )
    typer.echo(f"phantom written to {folder}")


@app.command("train")
def train(
    stage: Annotated[
        int,
        typer.Option(
            help="1: codes + decoder (posterior/common encoders); 2: prior encoder; "
            "3: common encoder + decoder fitted to the prior's codes."
        ),
    ],
    out: Annotated[Path, typer.Option(help="Run folder (checkpoints, metrics.jsonl, curves.png, model).")],
    config: Annotated[
        str | None,
        typer.Option("--config", help="Training recipe: a shipped name (default, cpu_brats, tiny...) or a TOML file."),
    ] = None,
    data: Annotated[Path | None, typer.Option(help="Dataset folder (BraTS, IXI or mapped layout).")] = None,
    from_run: Annotated[
        Path | None,
        typer.Option("--from", help="The earlier stage's run folder or inference checkpoint (--stage 2, 3)."),
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue --out from its last checkpoint, exactly.")] = False,
    gpus: Annotated[int | None, typer.Option(help="Launch K processes with torchrun (DDP).")] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="small | paper | brats | ixi | a model TOML (default small; --stage 2: the --from network's)."
        ),
    ] = None,
    arch: Annotated[str, typer.Option(help="codebrain, or direct (the regression baseline).")] = "codebrain",
    device: Annotated[str | None, typer.Option(help="cpu or cuda (default: cuda when present).")] = None,
) -> None:
    """Train CodeBrain Stage I, II or III (or the direct baseline); torchrun-ready for several GPUs."""
    from training.train import train as run_train

    if stage not in (1, 2, 3):
        raise typer.BadParameter("--stage must be 1, 2 or 3")
    result = run_train(
        stage,
        config,
        data,
        out,
        from_run=from_run,
        resume=resume,
        gpus=gpus,
        model_config=model,
        arch=arch,
        device=device,
    )
    if result is not None:
        typer.echo(f"run {result.run_dir}: step {result.step}; inference checkpoint {result.inference_checkpoint}")


@app.command("evaluate")
def evaluate(
    ctx: typer.Context,
    data: Annotated[Path, typer.Option(help="Dataset folder to score on.")],
    checkpoint: Annotated[
        Path | None, typer.Option(help="CodeBrain inference checkpoint (default: the shipped weights).")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Where the table (CSV, JSON) and PNG grid go.")] = None,
    direct: Annotated[Path | None, typer.Option(help="Direct-regression checkpoint to score beside it.")] = None,
    split: Annotated[str, typer.Option(help="test (the checkpoint's held-out subjects), val, train, or all.")] = "test",
    split_file: Annotated[
        str | None,
        typer.Option(help="Committed subject split (configs/splits NAME or TOML) for a checkpoint that records none."),
    ] = None,
    max_slices: Annotated[int | None, typer.Option(help="Evenly subsample at most this many slices.")] = None,
    device: Annotated[str | None, typer.Option(help="cpu or cuda.")] = None,
    precision: Annotated[
        str, typer.Option(help="The model rows' weights: auto (bf16 where native, as the node runs), fp32, bf16.")
    ] = "auto",
) -> None:
    """Score every missing-contrast pattern (PSNR, SSIM, MAE; full and brain-masked) against the baselines."""
    from codebrain_node.engine.weights import DEFAULT_WEIGHTS
    from training.evaluate import evaluate as run_evaluate

    run_evaluate(
        checkpoint or app_state(ctx).settings.model.weights or DEFAULT_WEIGHTS,
        data,
        out,
        direct_checkpoint=direct,
        split=split,
        split_file=split_file,
        max_slices=max_slices,
        device=device,
        precision=precision,
    )


@app.command("intensities")
def intensities(
    data: Annotated[Path, typer.Option(help="Dataset folder (BraTS, IXI or mapped layout).")],
    case: Annotated[list[str], typer.Option(help="Subject to draw (repeat); default: the first four.")] = [],  # noqa: B006
    out: Annotated[Path, typer.Option(help="PNG to write.")] = Path("normalisation.png"),
) -> None:
    """Draw intensity histograms of some cases as stored and as the model sees them (the per-volume
    normalisation that makes sites comparable, identical in training and serving)."""
    from codebrain_node.contrasts import Contrast
    from training.datasets import find_cases, intensity_samples
    from training.report import plot_normalisation

    cases = {c.subject: c for c in find_cases(data)}
    chosen = case or sorted(cases)[:4]
    unknown = [name for name in chosen if name not in cases]
    if unknown:
        raise typer.BadParameter(f"not in {data}: {', '.join(unknown)}", param_hint="--case")
    rows = []
    for index, name in enumerate(chosen, 1):
        contrasts = [
            c for c in (Contrast.T1, Contrast.T1GD, Contrast.T2, Contrast.FLAIR, Contrast.PD) if c in cases[name].paths
        ]
        typer.echo(f"[{index}/{len(chosen)}] {name}: {', '.join(str(c) for c in contrasts)}")
        raw, normalised = intensity_samples(cases[name], contrasts)
        rows.append((name, raw, normalised))
    typer.echo(f"figure: {plot_normalisation(rows, out)}")
