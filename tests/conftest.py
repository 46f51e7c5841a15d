"""Shared fixtures: a throw-away SQLite file and a throw-away PostgreSQL schema per test run."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from codebrain_node.db.session import make_engine

REPO_ROOT = Path(__file__).resolve().parents[1]
POSTGRES_URL = os.environ.get("CODEBRAIN_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def shared_data_dir() -> Path:
    """``../shared/data`` beside the checkout (or $CODEBRAIN_SHARED_DATA)."""
    return Path(os.environ.get("CODEBRAIN_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Engine:
    return make_engine(f"sqlite:///{tmp_path / 'node.db'}")


@pytest.fixture
def postgres_engine() -> Iterator[Engine]:
    """An engine whose search_path is a new, empty schema, dropped afterwards."""
    admin = make_engine(POSTGRES_URL)
    schema = f"cb_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.begin() as connection:
            connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:
        admin.dispose()
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_URL}: {type(exc).__name__}")
    engine = make_engine(POSTGRES_URL + f"?options=-csearch_path%3D{schema}")
    try:
        yield engine
    finally:
        engine.dispose()
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
