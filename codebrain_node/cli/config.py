"""``codebrain-node config``: what the node will run with, and where each value came from."""

from __future__ import annotations

from collections.abc import Iterator

import typer

from codebrain_node.cli import app
from codebrain_node.cli.state import app_state
from codebrain_node.config import effective_items

config_app = typer.Typer(help="Inspect the configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")


@config_app.command("show")
def config_show(ctx: typer.Context) -> None:
    """Print the effective configuration, secrets masked, and where each value came from."""
    for line in _toml_like(effective_items(app_state(ctx).settings)):
        typer.echo(line)


def _toml_like(rows: list[tuple[str, str, str]]) -> Iterator[str]:
    """``[section]`` headers, then ``key  value   # source`` with the keys in one column."""
    width = max(len(key) for key, _, _ in rows)
    section = ""
    for key, value, source in rows:
        head = key.split(".", 1)[0]
        if head != section:
            yield f"[{head}]"
            section = head
        yield f"  {key.ljust(width)}  {value}   # {source}"
