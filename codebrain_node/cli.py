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
    from codebrain_node.db.session import make_engine, session_factory
    from codebrain_node.status import render

    engine = make_engine(_state(ctx).settings.database_url)
    with session_factory(engine)() as session:
        typer.echo(render(session, limit))


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
