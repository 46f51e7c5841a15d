"""Fixtures: a node with two users (reviewer alice, viewer victor) and a study awaiting review."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from review_seed import Seeded, make_settings, seed_study
from sqlalchemy.orm import Session, sessionmaker

from codebrain_node.config import Settings
from codebrain_node.db.session import make_engine, session_factory, upgrade


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[Settings, sessionmaker[Session]]]:
    settings = make_settings(tmp_path)
    engine = make_engine(f"sqlite:///{tmp_path / 'node.db'}")
    upgrade(engine)
    yield settings, session_factory(engine)
    engine.dispose()


@pytest.fixture
def seeded(node: tuple[Settings, sessionmaker[Session]]) -> Seeded:
    settings, factory = node
    return seed_study(settings, factory)
