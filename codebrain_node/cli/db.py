"""``codebrain-node db``: create, migrate and inspect the schema (Alembic, through ``db.session``)."""

from __future__ import annotations

from typing import Annotated

import typer

from codebrain_node.cli import app
from codebrain_node.cli.state import app_state

db_app = typer.Typer(help="Database migrations.", no_args_is_help=True)
app.add_typer(db_app, name="db")


@db_app.command("upgrade")
def db_upgrade(ctx: typer.Context, revision: Annotated[str, typer.Argument(help="Target revision.")] = "head") -> None:
    """Create or migrate the database schema (run automatically by serve)."""
    from codebrain_node.db.session import current_revision, make_engine, upgrade

    settings = app_state(ctx).settings
    engine = make_engine(settings.database_url)
    upgrade(engine, revision)
    typer.echo(f"database at revision {current_revision(engine)}")


@db_app.command("downgrade")
def db_downgrade(ctx: typer.Context, revision: Annotated[str, typer.Argument(help="Target revision.")]) -> None:
    """Step the schema back to REVISION ('base' drops every table)."""
    from codebrain_node.db.session import current_revision, downgrade, make_engine

    engine = make_engine(app_state(ctx).settings.database_url)
    downgrade(engine, revision)
    typer.echo(f"database at revision {current_revision(engine) or 'base'}")


@db_app.command("current")
def db_current(ctx: typer.Context) -> None:
    """Show the database's schema revision and whether it is the newest."""
    from codebrain_node.db.session import current_revision, head_revision, make_engine

    engine = make_engine(app_state(ctx).settings.database_url)
    current, head = current_revision(engine), head_revision()
    state = "up to date" if current == head else f"behind (head is {head}); run `codebrain-node db upgrade`"
    typer.echo(f"{current or 'empty (no schema)'}: {state}")
