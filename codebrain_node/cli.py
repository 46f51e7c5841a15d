"""``codebrain-node``: one thin function a command, each a call into its stage.

Errors reach the user as one line and a non-zero exit; ``--debug`` (or ``CODEBRAIN_DEBUG=1``) shows the traceback.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from typer.exceptions import TyperException

from codebrain_node import __version__
from codebrain_node.config import ConfigError, Settings, effective_items, load_settings
from codebrain_node.logging_setup import configure_logging

app = typer.Typer(
    name="codebrain-node",
    help="Fill in missing brain MRI contrasts with CodeBrain and send them back to PACS as synthetic series.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
config_app = typer.Typer(help="Inspect the configuration.", no_args_is_help=True)
db_app = typer.Typer(help="Database migrations.", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks: model speed, DICOM ingest, end to end.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(db_app, name="db")
app.add_typer(bench_app, name="bench")

log = logging.getLogger("codebrain_node.cli")


@dataclass
class AppState:
    config_file: Path | None
    log_level: str | None
    _settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        """Load once, on first use, so ``--help`` never needs a valid configuration."""
        if self._settings is None:
            self._settings = load_settings(self.config_file)
            level = self.log_level or self._settings.logging.level
            configure_logging(level, self._settings.logging.format)
        return self._settings


def _sessions(settings: Settings):  # type: ignore[no-untyped-def]
    """A session factory on the configured database (one place, so every command opens it alike)."""
    from codebrain_node.db.session import make_engine, session_factory

    return session_factory(make_engine(settings.database_url))


def _state(ctx: typer.Context) -> AppState:
    return ctx.ensure_object(AppState) if ctx.obj is None else ctx.obj


def _version(value: bool) -> None:
    if value:
        typer.echo(f"codebrain-node {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="TOML settings file (default: $CODEBRAIN_CONFIG, else built-in)."),
    ] = None,
    log_level: Annotated[str | None, typer.Option(help="Override logging.level for this run.")] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Global options; every command reads the same settings."""
    if debug:
        os.environ["CODEBRAIN_DEBUG"] = "1"
    ctx.obj = AppState(config_file=config, log_level=log_level.upper() if log_level else None)


# --- config ---------------------------------------------------------------------------------------------------


@config_app.command("show")
def config_show(ctx: typer.Context) -> None:
    """Print the effective configuration, secrets masked, and where each value came from."""
    rows = effective_items(_state(ctx).settings)
    width = max(len(key) for key, _, _ in rows)
    section = ""
    for key, value, source in rows:
        head = key.split(".", 1)[0]
        if head != section:
            typer.echo(f"[{head}]")
            section = head
        typer.echo(f"  {key.ljust(width)}  {value}   # {source}")


# --- db -------------------------------------------------------------------------------------------------------


@db_app.command("upgrade")
def db_upgrade(ctx: typer.Context, revision: Annotated[str, typer.Argument(help="Target revision.")] = "head") -> None:
    """Create or migrate the database schema (run automatically by serve)."""
    from codebrain_node.db.session import current_revision, make_engine, upgrade

    settings = _state(ctx).settings
    engine = make_engine(settings.database_url)
    upgrade(engine, revision)
    typer.echo(f"database at revision {current_revision(engine)}")


@db_app.command("downgrade")
def db_downgrade(ctx: typer.Context, revision: Annotated[str, typer.Argument(help="Target revision.")]) -> None:
    """Step the schema back to REVISION ('base' drops every table)."""
    from codebrain_node.db.session import current_revision, downgrade, make_engine

    engine = make_engine(_state(ctx).settings.database_url)
    downgrade(engine, revision)
    typer.echo(f"database at revision {current_revision(engine) or 'base'}")


@db_app.command("current")
def db_current(ctx: typer.Context) -> None:
    """Show the database's schema revision and whether it is the newest."""
    from codebrain_node.db.session import current_revision, head_revision, make_engine

    engine = make_engine(_state(ctx).settings.database_url)
    current, head = current_revision(engine), head_revision()
    state = "up to date" if current == head else f"behind (head is {head}); run `codebrain-node db upgrade`"
    typer.echo(f"{current or 'empty (no schema)'}: {state}")


# --- status ---------------------------------------------------------------------------------------------------


@app.command("status")
def status(
    ctx: typer.Context, limit: Annotated[int, typer.Option(help="How many recent studies to show.")] = 50
) -> None:
    """Show studies, their series and contrasts, jobs, exports and dead letters."""
    from codebrain_node.node.status import render

    with _sessions(_state(ctx).settings)() as session:
        typer.echo(render(session, limit))


# --- worklist and users (review) -------------------------------------------------------------------------------

worklist_app = typer.Typer(help="The review worklist: list, show, approve, reject.", no_args_is_help=True)
user_app = typer.Typer(help="Review web app users.", no_args_is_help=True)
app.add_typer(worklist_app, name="worklist")
app.add_typer(user_app, name="user")


def _reviewer(name: str | None) -> str:
    import getpass

    return f"user:{name or getpass.getuser()}"


@worklist_app.command("list")
def worklist_list(
    ctx: typer.Context,
    status: Annotated[str | None, typer.Option(help="Only this status (awaiting_review, failed, ...).")] = None,
    contrast: Annotated[str | None, typer.Option(help="Only studies with this contrast (in or synthetic).")] = None,
    sort: Annotated[str, typer.Option(help="age, status, patient or updated.")] = "age",
    limit: Annotated[int, typer.Option(help="At most this many studies.")] = 50,
    show_patient: Annotated[bool, typer.Option("--show-patient", help="Also print patient name and ID.")] = False,
) -> None:
    """Studies with their worklist status, acquired and synthesised contrasts, and age."""
    from codebrain_node.review.worklist import format_age, list_worklist

    with _sessions(_state(ctx).settings)() as session:
        rows = list_worklist(session, status, contrast, sort=sort, limit=limit)
    for row in rows:
        patient = f"  {row.patient_name} [{row.patient_id}]" if show_patient else ""
        acquired = ",".join(row.acquired) or "-"
        synthetic = ",".join(row.synthetic) or "-"
        typer.echo(
            f"{row.id:>6}  {row.status_label:<22} in:{acquired:<20} synth:{synthetic:<14} "
            f"{format_age(row.age_s):>10}  {row.study_instance_uid}{patient}"
        )
    if not rows:
        typer.echo("no studies")


@worklist_app.command("show")
def worklist_show(
    ctx: typer.Context,
    study: Annotated[str, typer.Argument(help="Study id or Study Instance UID.")],
    show_patient: Annotated[bool, typer.Option("--show-patient", help="Also print patient name and ID.")] = False,
) -> None:
    """One study: series, jobs (model, inputs, timings), deliveries and the audit trail."""
    from codebrain_node.review.worklist import study_detail

    with _sessions(_state(ctx).settings)() as session:
        detail = study_detail(session, study)
        s = detail.study
        typer.echo(f"study {s.id}  {s.study_instance_uid}  {detail.status_label}")
        if show_patient:
            typer.echo(f"  patient {s.patient_name or ''} [{s.patient_id or ''}]  accession {s.accession_number or ''}")
        for series in [*detail.acquired, *detail.synthetic]:
            kind = "synthetic" if series.is_synthetic else "acquired "
            typer.echo(
                f"  {kind} {series.contrast or '?':<6} #{series.series_number or '':<5} "
                f"{len(series.instances):>4} instances  {series.series_instance_uid}"
            )
        for job in detail.jobs:
            timings = ", ".join(f"{k} {v:.2f}s" for k, v in (job.timings or {}).items() if isinstance(v, int | float))
            inputs = ", ".join(sorted(job.inputs or {}))
            typer.echo(f"  job #{job.id} {job.status} model={job.model_name or '-'} inputs={inputs} [{timings}]")
        for export in detail.exports:
            where = f"{export.series.contrast} -> {export.destination}"
            typer.echo(f"  export {where}: {export.status} ({export.attempts} attempts)")
        for event in detail.audit:
            details = ", ".join(f"{k}={v}" for k, v in (event.details or {}).items() if v not in (None, ""))
            typer.echo(f"  {event.at:%Y-%m-%d %H:%M:%S}  {event.actor:<20} {event.action:<22} {details}")


@worklist_app.command("approve")
def worklist_approve(
    ctx: typer.Context,
    study: Annotated[str, typer.Argument(help="Study id or Study Instance UID.")],
    reason: Annotated[str, typer.Option(help="Why (kept in the audit trail).")] = "",
    user: Annotated[str | None, typer.Option("--user", help="Reviewer for the audit trail (default: $USER).")] = None,
) -> None:
    """Approve a study awaiting review: its synthetic series are scheduled for export."""
    from codebrain_node.db.session import transaction
    from codebrain_node.review.worklist import approve

    settings = _state(ctx).settings
    with transaction(_sessions(settings)) as session:
        approved = approve(session, study, _reviewer(user), settings, reason)
        typer.echo(f"study {approved.id} approved; exports scheduled")


@worklist_app.command("reject")
def worklist_reject(
    ctx: typer.Context,
    study: Annotated[str, typer.Argument(help="Study id or Study Instance UID.")],
    reason: Annotated[str, typer.Option(help="Why (kept in the audit trail).")] = "",
    user: Annotated[str | None, typer.Option("--user", help="Reviewer for the audit trail (default: $USER).")] = None,
) -> None:
    """Reject a study awaiting review: its synthetic series are never sent."""
    from codebrain_node.db.session import transaction
    from codebrain_node.review.worklist import reject

    settings = _state(ctx).settings
    with transaction(_sessions(settings)) as session:
        rejected = reject(session, study, _reviewer(user), reason)
        typer.echo(f"study {rejected.id} rejected; nothing will be sent")


@user_app.command("hash-password")
def user_hash_password(
    name: Annotated[str, typer.Option(help="User name for the printed \\[\\[review.users]] table.")] = "radiologist",
    role: Annotated[str, typer.Option(help="reviewer or viewer.")] = "reviewer",
    password_stdin: Annotated[bool, typer.Option("--password-stdin", help="Read the password from stdin.")] = False,
) -> None:
    """Hash a password (Argon2id) and print a \\[\\[review.users]] table to paste into the config."""
    from codebrain_node.review.auth import hash_password

    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    typer.echo(f'[[review.users]]\nname = "{name}"\npassword_hash = "{hash_password(password)}"\nrole = "{role}"')


# --- phantom ----------------------------------------------------------------------------------------------------


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


# --- serve, worker, impute -------------------------------------------------------------------------------------


@app.command("serve")
def serve(ctx: typer.Context) -> None:
    """Run the node: DICOM receiver, scheduler, engine workers, exporter, review web app (migrations first)."""
    from codebrain_node.node.serve import Node, run_until_signal

    state = _state(ctx)
    run_until_signal(Node(state.settings, config_file=state.config_file))


@app.command("worker")
def worker(ctx: typer.Context) -> None:
    """Run engine workers only: claim jobs from the shared queue (extra machines on PostgreSQL)."""
    from codebrain_node.node.serve import run_worker

    run_worker(_state(ctx).settings)


@app.command("impute")
def impute(
    ctx: typer.Context,
    input_dir: Annotated[Path, typer.Option("--input", "-i", help="Folder of DICOM files (one or more studies).")],
    output_dir: Annotated[Path, typer.Option("--output", "-o", help="Where the synthetic series are written.")],
    synthesize: Annotated[
        str | None, typer.Option(help="Contrasts to synthesise, e.g. T1Gd,FLAIR (default: every missing one).")
    ] = None,
) -> None:
    """Run the node's pipeline on a folder, offline: classify, impute, write synthetic DICOM series."""
    from codebrain_node.contrasts import parse_contrast_list
    from codebrain_node.node.offline import impute_folder

    targets = parse_contrast_list(synthesize) if synthesize else None
    result = impute_folder(_state(ctx).settings, input_dir, output_dir, synthesize=targets, progress=typer.echo)
    for study_uid, state in result.studies.items():
        written = ", ".join(result.written.get(study_uid, [])) or "nothing"
        typer.echo(f"study {study_uid}: {state}; synthesised {written}")
    for skipped in result.skipped_files:
        typer.echo(f"skipped {skipped}", err=True)
    typer.echo(f"output: {output_dir}")
    if not any(result.written.values()):
        raise typer.Exit(1)


# --- export -----------------------------------------------------------------------------------------------------

export_app = typer.Typer(help="Delivery of synthetic series to the configured destinations.", no_args_is_help=True)
app.add_typer(export_app, name="export")


@export_app.command("retry")
def export_retry(
    ctx: typer.Context,
    study: Annotated[str | None, typer.Option("--study", help="Only this Study Instance UID.")] = None,
) -> None:
    """Give dead-lettered exports fresh attempts; the running node sends them at its next check."""
    from codebrain_node.db.session import make_engine, session_factory
    from codebrain_node.export.dispatch import retry_dead_letters

    engine = make_engine(_state(ctx).settings.database_url)
    count = retry_dead_letters(session_factory(engine), study)
    typer.echo(f"{count} dead-lettered export(s) due again")


# --- bench ingest -----------------------------------------------------------------------------------------------


def _bench_configs(configs: str) -> list:
    from training.train import resolve_model_config

    return [resolve_model_config(name.strip()) for name in configs.split(",") if name.strip()]


def _bench_devices(device: str) -> list[str]:
    import torch

    if device == "all":
        return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    return [device]


@bench_app.command("inference")
def bench_inference_command(
    configs: Annotated[str, typer.Option(help="Model configs, comma-separated.")] = "small,paper",
    device: Annotated[str, typer.Option(help="cpu, cuda, or all (cuda when present).")] = "all",
    batch: Annotated[int, typer.Option(help="Slices per forward pass.")] = 8,
    size: Annotated[int, typer.Option(help="Slice size (pixels).")] = 256,
    steps: Annotated[int, typer.Option(help="Timed batches.")] = 3,
    threads: Annotated[int | None, typer.Option(help="CPU threads (default: torch's).")] = None,
) -> None:
    """Slices/s of imputation (inference_mode, channels_last, bf16 on CUDA) and parameter counts."""
    from codebrain_node.engine.bench import bench_inference, format_result

    for cfg in _bench_configs(configs):
        for name in _bench_devices(device):
            run_batch = batch if cfg.naf_dim <= 16 or name == "cuda" else min(batch, 2)
            typer.echo(format_result(bench_inference(cfg, name, run_batch, size, steps, threads=threads)))


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
    from codebrain_node.engine.bench import bench_train, format_result

    for cfg in _bench_configs(configs):
        for name in _bench_devices(device):
            run_batch = batch if cfg.naf_dim <= 16 or name == "cuda" else 1
            result = bench_train(cfg, name, run_batch, size, steps, stage=stage, threads=threads)
            typer.echo(format_result(result))


@bench_app.command("ingest")
def bench_ingest_command(
    instances: Annotated[int, typer.Option("--instances", min=1, help="MR instances (256x256 int16) to send.")] = 500,
    associations: Annotated[int, typer.Option("--associations", min=1, help="Parallel storescu associations.")] = 4,
) -> None:
    """C-STORE instances/s into our SCP and into DCMTK storescp (same files, same run) and their ratio."""
    import json

    from codebrain_node.receive.bench import bench_ingest

    typer.echo(json.dumps(bench_ingest(instances, associations), indent=2))


# --- classify ---------------------------------------------------------------------------------------------------


@app.command("classify")
def classify_command(
    ctx: typer.Context,
    folder: Annotated[Path, typer.Argument(help="Folder of DICOM files (searched recursively).")],
    rules: Annotated[
        Path | None, typer.Option(help="Rule table (default: routing.classify_rules or configs/classify.toml).")
    ] = None,
) -> None:
    """Show how each series in a folder would be classified (contrast and the rule that decided), headers only."""
    from codebrain_node.route.classify import classify_folder, load_rules

    table = load_rules(rules or _state(ctx).settings.routing.classify_rules)
    found = classify_folder(folder, table)
    for series_uid, result in found:
        headers = result.headers
        typer.echo(
            f"{result.label:<6} #{headers.series_number if headers.series_number is not None else '-':<5} "
            f"{headers.series_description[:40]:<40} {headers.n_slices:>4} slices  {result.reason}  [{series_uid}]"
        )
    if not found:
        typer.echo(f"no DICOM series under {folder}", err=True)
        raise typer.Exit(1)


# --- train, evaluate -------------------------------------------------------------------------------------------


@app.command("train")
def train(
    stage: Annotated[int, typer.Option(help="1: codes + decoder (posterior/common encoders); 2: prior encoder.")],
    out: Annotated[Path, typer.Option(help="Run folder (checkpoints, metrics.jsonl, curves.png, model).")],
    config: Annotated[Path | None, typer.Option("--config", help="Training TOML (configs/train/*.toml).")] = None,
    data: Annotated[Path | None, typer.Option(help="Dataset folder (BraTS, IXI or mapped layout).")] = None,
    from_run: Annotated[Path | None, typer.Option("--from", help="Stage I run folder (for --stage 2).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue --out from its last checkpoint, exactly.")] = False,
    gpus: Annotated[int | None, typer.Option(help="Launch K processes with torchrun (DDP).")] = None,
    model: Annotated[str, typer.Option(help="small | paper | brats | ixi | a model TOML.")] = "small",
    arch: Annotated[str, typer.Option(help="codebrain, or direct (the regression baseline).")] = "codebrain",
    device: Annotated[str | None, typer.Option(help="cpu or cuda (default: cuda when present).")] = None,
) -> None:
    """Train CodeBrain Stage I or II (or the direct baseline); torchrun-ready for several GPUs."""
    from training.train import train as run_train

    if stage not in (1, 2):
        raise typer.BadParameter("--stage must be 1 or 2")
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
    max_slices: Annotated[int | None, typer.Option(help="Evenly subsample at most this many slices.")] = None,
    device: Annotated[str | None, typer.Option(help="cpu or cuda.")] = None,
) -> None:
    """Score every missing-contrast pattern (PSNR, SSIM, MAE; full and brain-masked) against the baselines."""
    from codebrain_node.engine.weights import DEFAULT_WEIGHTS
    from training.evaluate import evaluate as run_evaluate

    run_evaluate(
        checkpoint or _state(ctx).settings.model.weights or DEFAULT_WEIGHTS,
        data,
        out,
        direct_checkpoint=direct,
        split=split,
        max_slices=max_slices,
        device=device,
    )


# --- demo -----------------------------------------------------------------------------------------------------


@app.command("demo")
def demo(
    ctx: typer.Context,
    out: Annotated[Path | None, typer.Option(help="Demo folder (default: <data_dir>/demo).")] = None,
    resolution: Annotated[float, typer.Option(help="Phantom voxel size in mm (2 or 3 runs faster).")] = 1.0,
) -> None:
    """Send a phantom study (T1, T2, FLAIR) through a real node and show the synthetic T1Gd it sends back."""
    from codebrain_node.node.demo import run_demo

    result = run_demo(_state(ctx).settings, out, resolution_mm=resolution, progress=typer.echo)
    typer.echo(f"study {result.state} in {result.seconds:.0f} s")
    for name, path in result.synthetic.items():
        typer.echo(f"  {name}: {path}")
    typer.echo(f"folder PACS: {result.pacs}")
    typer.echo(f"contact sheet: {result.contact_sheet}")
    if result.state != "exported":
        raise typer.Exit(1)


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

    settings = _state(ctx).settings
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


# --- commands added by stages go above this line ---


def main() -> None:
    """Console entry point: one clear line and a non-zero exit instead of a traceback."""
    try:
        app(standalone_mode=False)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # the one place that turns any failure into a clean message
        if os.environ.get("CODEBRAIN_DEBUG"):
            raise
        if isinstance(exc, TyperException) and hasattr(exc, "show"):  # usage errors: typer's own message
            exc.show()
            sys.exit(getattr(exc, "exit_code", 2))
        prefix = "configuration error" if isinstance(exc, ConfigError) else "error"
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        typer.echo(f"{prefix}: {message}", err=True)
        sys.exit(2 if isinstance(exc, ConfigError) else 1)
