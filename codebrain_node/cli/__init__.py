"""``codebrain-node``: one thin function a command, each a call into its stage.

The root app, its global options and the entry point live here; each command group is a module beside this one
that registers its commands on ``app`` when imported (see ``_GROUPS`` at the bottom).

Errors reach the user as one line and a non-zero exit; ``--debug`` (or ``CODEBRAIN_DEBUG=1``) shows the traceback.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from typer.exceptions import TyperException

from codebrain_node import __version__
from codebrain_node.cli.state import AppState
from codebrain_node.config import ConfigError

app = typer.Typer(
    name="codebrain-node",
    help="Fill in missing brain MRI contrasts with CodeBrain and send them back to PACS as synthetic series.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


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


def main() -> None:
    """Console entry point: one clear line and a non-zero exit instead of a traceback."""
    try:
        code = app(standalone_mode=False)  # without standalone mode click returns typer.Exit's code
        if isinstance(code, int) and code:
            sys.exit(code)
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


# Each group registers its commands on ``app`` when imported (after ``app`` exists, hence here at the bottom); this
# order is the order ``--help`` lists them in. A new command group is a new module in this folder, named here.
_GROUPS = ("node", "classify", "model", "dicomize", "config", "db", "bench", "worklist", "export")
for _group in _GROUPS:
    importlib.import_module(f"{__name__}.{_group}")
