"""``codebrain-node export``: deliveries to the configured destinations (the node's exporter sends them)."""

from __future__ import annotations

from typing import Annotated

import typer

from codebrain_node.cli import app
from codebrain_node.cli.state import app_state, sessions

export_app = typer.Typer(help="Delivery of synthetic series to the configured destinations.", no_args_is_help=True)
app.add_typer(export_app, name="export")


@export_app.command("retry")
def export_retry(
    ctx: typer.Context,
    study: Annotated[str | None, typer.Option("--study", help="Only this Study Instance UID.")] = None,
) -> None:
    """Give dead-lettered exports fresh attempts; the running node sends them at its next check."""
    from codebrain_node.export.dispatch import retry_dead_letters

    count = retry_dead_letters(sessions(app_state(ctx).settings), study)
    typer.echo(f"{count} dead-lettered export(s) due again")
