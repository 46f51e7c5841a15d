"""A running receive service (SCP + spool + recorder) on a free loopback port, with a migrated SQLite database."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from codebrain_node.config import Settings
from codebrain_node.db.session import session_factory, upgrade
from codebrain_node.receive.service import ReceiveService, start_receive_service
from tests.dicom_fixtures import free_port

CALLER = "STORESCU"


def node_settings(data_dir: Path, **dicom: object) -> Settings:
    values = {
        "ae_title": "CODEBRAIN",
        "bind_address": "127.0.0.1",
        "port": free_port(),
        "allowed_callers": [CALLER],
        "min_free_disk_mb": 0,
        "acse_timeout_s": 5,
        "dimse_timeout_s": 10,
        "network_timeout_s": 10,
    }
    values.update(dicom)
    return Settings.model_validate({"paths": {"data_dir": str(data_dir)}, "dicom": values})


@pytest.fixture
def make_settings() -> Callable[..., Settings]:
    return node_settings


@pytest.fixture
def factory(sqlite_engine: Engine) -> sessionmaker[Session]:
    upgrade(sqlite_engine)
    return session_factory(sqlite_engine)


@pytest.fixture
def service(tmp_path: Path, factory: sessionmaker[Session]) -> Iterator[ReceiveService]:
    running = start_receive_service(node_settings(tmp_path / "data"), factory)
    try:
        yield running
    finally:
        running.stop()
