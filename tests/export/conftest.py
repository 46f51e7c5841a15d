"""An approved study with one written synthetic series, a settings factory, and a tiny pynetdicom PACS."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import MRImageStorage
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from codebrain_node.config import Settings
from codebrain_node.db.lifecycle import transition
from codebrain_node.db.models import Instance, Series, Study, StudyState
from codebrain_node.db.session import session_factory, transaction, upgrade
from tests.dicom_fixtures import free_port, make_mr_instance

PACS_AE = "TESTPACS"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def factory(request: pytest.FixtureRequest) -> sessionmaker[Session]:
    """Every export test runs on SQLite and on PostgreSQL (FOR UPDATE SKIP LOCKED claims)."""
    engine: Engine = request.getfixturevalue(f"{request.param}_engine")
    upgrade(engine)
    return session_factory(engine)


@dataclass
class ApprovedStudy:
    study_uid: str
    series_uid: str
    sop_uids: list[str]


@pytest.fixture
def approved_study(tmp_path: Path, factory: sessionmaker[Session]) -> ApprovedStudy:
    """A study walked through the state machine to APPROVED, with 3 synthetic instances on disk."""
    study_uid, series_uid = generate_uid(), generate_uid()
    folder = tmp_path / "synthetic" / study_uid / series_uid
    folder.mkdir(parents=True)
    sops = []
    with transaction(factory) as session:
        study = Study(study_instance_uid=study_uid)
        session.add(study)
        session.flush()
        series = Series(study=study, series_instance_uid=series_uid, modality="MR", is_synthetic=True)
        for index in range(3):
            dataset = make_mr_instance(study_uid, series_uid, index, rows=8, columns=8)
            dataset.SyntheticData = "YES"
            path = folder / f"{dataset.SOPInstanceUID}.dcm"
            dataset.save_as(path, enforce_file_format=True)
            sops.append(dataset.SOPInstanceUID)
            session.add(
                Instance(
                    series=series,
                    sop_instance_uid=dataset.SOPInstanceUID,
                    sop_class_uid=MRImageStorage,
                    instance_number=index + 1,
                    path=str(path),
                    size_bytes=path.stat().st_size,
                )
            )
        session.add(series)
        for state in ("stable", "queued", "imputing", "written", "approved"):
            transition(session, study, StudyState(state), "test")
    return ApprovedStudy(study_uid, series_uid, sops)


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    def build(destinations: list[dict], **export: object) -> Settings:
        values = {"calling_ae_title": "CODEBRAIN", "destinations": destinations, **export}
        return Settings.model_validate(
            {"paths": {"data_dir": str(tmp_path / "data")}, "export": values, "dicom": {"network_timeout_s": 5}}
        )

    return build


@dataclass
class LoopbackPacs:
    """A minimal Storage SCP that remembers every SOP Instance UID it was sent (duplicates included)."""

    port: int
    ae_title: str = PACS_AE
    received: list[str] = field(default_factory=list)
    callers: list[str] = field(default_factory=list)
    _server: object | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        ae = AE(ae_title=PACS_AE)
        ae.add_supported_context(MRImageStorage)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 5

        def on_store(event: evt.Event) -> int:
            with self._lock:
                self.received.append(str(event.request.AffectedSOPInstanceUID))
                self.callers.append(event.assoc.requestor.ae_title.strip())
            return 0x0000

        self._server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
        )

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()  # type: ignore[attr-defined]
            self._server = None


@pytest.fixture
def pacs() -> Iterator[LoopbackPacs]:
    server = LoopbackPacs(port=free_port())
    yield server
    server.stop()
