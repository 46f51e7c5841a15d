"""The CLI as a user meets it: help, version, config show, db upgrade/current, one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import inspect

from codebrain_node import __version__
from codebrain_node.db.session import make_engine


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real console entry point in a child process, with only the environment we give it."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("CODEBRAIN_")}
    return subprocess.run(
        [sys.executable, "-c", "from codebrain_node.cli import main; main()", *args],
        capture_output=True,
        text=True,
        env={**base, **(env or {})},
        timeout=120,
    )


def test_help_lists_commands_and_version() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("config", "db"):
        assert command in result.stdout
    version = run_cli("--version")
    assert version.stdout.strip() == f"codebrain-node {__version__}"


def test_config_show_prints_sources_and_masks(tmp_path: Path) -> None:
    result = run_cli(
        "config",
        "show",
        env={"CODEBRAIN_DICOM__PORT": "4242", "CODEBRAIN_DATABASE__URL": "postgresql://u:pw123@h/db"},
    )
    assert result.returncode == 0, result.stderr
    port_line = next(line for line in result.stdout.splitlines() if "dicom.port" in line)
    assert "4242" in port_line and "env CODEBRAIN_DICOM__PORT" in port_line
    assert "pw123" not in result.stdout


def test_bad_value_is_one_line_naming_the_key() -> None:
    result = run_cli("config", "show", env={"CODEBRAIN_DICOM__PORT": "abc"})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("configuration error: dicom.port")
    assert "Traceback" not in result.stderr


def test_db_upgrade_and_current_on_new_sqlite_file(tmp_path: Path) -> None:
    env = {"CODEBRAIN_PATHS__DATA_DIR": str(tmp_path / "data")}
    before = run_cli("db", "current", env=env)
    assert "empty" in before.stdout
    result = run_cli("db", "upgrade", env=env)
    assert result.returncode == 0, result.stderr
    assert "up to date" in run_cli("db", "current", env=env).stdout
    tables = set(inspect(make_engine(f"sqlite:///{tmp_path / 'data' / 'codebrain.db'}")).get_table_names())
    assert {"studies", "series", "instances", "jobs", "exports", "audit_events"} <= tables


def test_unreachable_database_is_one_line_error(tmp_path: Path) -> None:
    result = run_cli("db", "current", env={"CODEBRAIN_DATABASE__URL": "postgresql+psycopg://nobody@127.0.0.1:1/x"})
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("error:")
