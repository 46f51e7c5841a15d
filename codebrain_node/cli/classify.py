"""``codebrain-node classify``: check the routing rule table against a folder, headers only."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from codebrain_node.cli import app
from codebrain_node.cli.state import app_state

if TYPE_CHECKING:
    from codebrain_node.route.classify import Classification


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

    table = load_rules(rules or app_state(ctx).settings.routing.classify_rules)
    found = classify_folder(folder, table)
    for series_uid, result in found:
        typer.echo(_series_line(series_uid, result))
    if not found:
        typer.echo(f"no DICOM series under {folder}", err=True)
        raise typer.Exit(1)


def _series_line(series_uid: str, result: Classification) -> str:
    """Contrast, series number and description, slices, the deciding rule, UID: one aligned line a series."""
    headers = result.headers
    return (
        f"{result.label:<6} #{headers.series_number if headers.series_number is not None else '-':<5} "
        f"{headers.series_description[:40]:<40} {headers.n_slices:>4} slices  {result.reason}  [{series_uid}]"
    )
