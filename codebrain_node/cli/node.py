"""The node itself: ``serve``, ``worker``, offline ``impute``, ``demo`` and ``status``.

Each command is a call into its driver in ``codebrain_node.node``; only the printing of its result lives here.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from codebrain_node.cli import app
from codebrain_node.cli.state import app_state, sessions

if TYPE_CHECKING:
    from codebrain_node.node.demo import DemoResult
    from codebrain_node.node.offline import OfflineResult


@app.command("serve")
def serve(ctx: typer.Context) -> None:
    """Run the node: DICOM receiver, scheduler, engine workers, exporter, review web app (migrations first)."""
    from codebrain_node.node.serve import Node, run_until_signal

    state = app_state(ctx)
    run_until_signal(Node(state.settings, config_file=state.config_file))


@app.command("worker")
def worker(
    ctx: typer.Context,
    parent_pid: Annotated[
        int | None, typer.Option(help="Exit when this process (serve, which passes its own) is no longer the parent.")
    ] = None,
) -> None:
    """Run engine workers only: claim jobs from the shared queue (extra machines on PostgreSQL)."""
    from codebrain_node.node.serve import run_worker

    run_worker(app_state(ctx).settings, parent_pid=parent_pid)


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
    result = impute_folder(app_state(ctx).settings, input_dir, output_dir, synthesize=targets, progress=typer.echo)
    for line in _study_lines(result):
        typer.echo(line)
    for skipped in result.skipped_files:
        typer.echo(f"skipped {skipped}", err=True)
    typer.echo(f"output: {output_dir}")
    if not any(result.written.values()):
        raise typer.Exit(1)


def _study_lines(result: OfflineResult) -> Iterator[str]:
    """One line a study: where it ended and which contrasts were synthesised."""
    for study_uid, state in result.studies.items():
        written = ", ".join(result.written.get(study_uid, [])) or "nothing"
        yield f"study {study_uid}: {state}; synthesised {written}"


@app.command("demo")
def demo(
    ctx: typer.Context,
    out: Annotated[Path | None, typer.Option(help="Demo folder (default: <data_dir>/demo).")] = None,
    resolution: Annotated[float, typer.Option(help="Phantom voxel size in mm (2 or 3 runs faster).")] = 1.0,
) -> None:
    """Send a phantom study (T1, T2, FLAIR) through a real node and show the synthetic T1Gd it sends back."""
    from codebrain_node.node.demo import run_demo

    result = run_demo(app_state(ctx).settings, out, resolution_mm=resolution, progress=typer.echo)
    for line in _demo_lines(result):
        typer.echo(line)
    if result.state != "exported":
        raise typer.Exit(1)


def _demo_lines(result: DemoResult) -> Iterator[str]:
    """How the study ended, and where to look: each synthetic series, the folder PACS, the contact sheet."""
    yield f"study {result.state} in {result.seconds:.0f} s ({result.jobs} job{'s' if result.jobs != 1 else ''})"
    if result.superseded:
        yield f"  {result.superseded} superseded synthetic series left out (never current, withdrawn where sent)"
    for name, path in result.synthetic.items():
        yield f"  {name}: {path}"
    yield f"folder PACS: {result.pacs}"
    yield f"contact sheet: {result.contact_sheet}"


@app.command("status")
def status(
    ctx: typer.Context, limit: Annotated[int, typer.Option(help="How many recent studies to show.")] = 50
) -> None:
    """Show studies, their series and contrasts, jobs, exports and dead letters."""
    from codebrain_node.node.status import render

    with sessions(app_state(ctx).settings)() as session:
        typer.echo(render(session, limit))
