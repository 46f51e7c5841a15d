"""What every command shares: the global options of the run, the settings they name, and its database.

Kept apart from the root app so that the group modules can import it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from codebrain_node.config import Settings, load_settings
from codebrain_node.logging_setup import configure_logging

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker


@dataclass
class AppState:
    """The global options, set by the root callback; the settings themselves are read only when a command asks."""

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


def app_state(ctx: typer.Context) -> AppState:
    """The run's AppState, as the root callback left it on the context."""
    return ctx.ensure_object(AppState) if ctx.obj is None else ctx.obj


def sessions(settings: Settings) -> sessionmaker[Session]:
    """A session factory on the configured database (one place, so every command opens it alike)."""
    from codebrain_node.db.session import make_engine, session_factory

    return session_factory(make_engine(settings.database_url))
