"""``codebrain-node dicomize``: make a DICOM MR study from a folder of NIfTI volumes, as a chosen vendor writes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from codebrain_node.cli import app


@app.command("dicomize")
def dicomize(
    case_dir: Annotated[
        Path, typer.Argument(help="Folder of NIfTI volumes, one per contrast (t1n, t1c, t2w, t2f, pd).")
    ],
    out: Annotated[Path, typer.Option("--out", help="Folder the study is written into (one sub-folder a series).")],
    vendor: Annotated[str, typer.Option(help="Whose header conventions: siemens, ge or philips.")] = "siemens",
    drop: Annotated[
        list[str] | None, typer.Option("--drop", help="Leave this contrast out (repeatable), e.g. --drop T1Gd.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Same seed, same UIDs and fake patient.")] = 0,
    field: Annotated[float, typer.Option("--field", help="MagneticFieldStrength in tesla.")] = 3.0,
) -> None:
    """Write a NIfTI case as a DICOM MR study (one series per contrast, on each volume's own grid)."""
    from codebrain_node.contrasts import Contrast
    from codebrain_node.node.dicomize import dicomize_case

    if not case_dir.is_dir():
        raise typer.BadParameter(f"{case_dir} is not a folder", param_hint="CASE_DIR")
    dropped = [Contrast.parse(name) for name in drop or []]
    result = dicomize_case(case_dir, out, vendor=vendor, drop=dropped, seed=seed, field_strength=field)
    for contrast, folder in result.series.items():
        typer.echo(f"{contrast.value:<6} {folder}")
    for contrast in result.dropped:
        typer.echo(f"{contrast.value:<6} dropped")
    for name, why in result.ignored.items():
        typer.echo(f"ignored {name}: {why}", err=True)
    typer.echo(f"study: {result.study}")
