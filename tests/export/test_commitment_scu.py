"""Storage Commitment as SCU (PS3.4 Annex J): a series counts as delivered only once its destination commits it.

The destination is a pynetdicom PACS that stores, accepts the N-ACTION and reports on a new association to our
receiver (as Orthanc does), which files the report in the database where the exporter waits for it; then Orthanc
itself.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import MRImageStorage, StorageCommitmentPushModel
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from codebrain_node.config import Settings
from codebrain_node.db.commitments import open_request, record_report
from codebrain_node.db.models import Export, ExportDelivery, StorageCommitment, Study, utcnow
from codebrain_node.db.session import transaction
from codebrain_node.export.dispatch import build_destinations, run_due_exports, schedule_exports
from codebrain_node.receive.service import ReceiveService, start_receive_service
from codebrain_node.write.storage_commitment import (
    NO_SUCH_OBJECT_INSTANCE,
    PUSH_MODEL_INSTANCE_UID,
    CommitmentRequest,
    CommitmentResult,
    Failure,
    Reference,
    event_information,
    read_action_information,
)
from tests.dicom_fixtures import free_port
from tests.e2e.e2e_support import PACS_AE as ORTHANC_AE
from tests.e2e.e2e_support import Orthanc, module_orthanc, wait_for
from tests.export.conftest import PACS_AE, ApprovedStudy

NODE_AE = "CODEBRAIN"
__all__ = ["module_orthanc"]  # the fixture, from e2e_support


@dataclass
class CommittingPacs:
    """Stores what it is sent; answers each N-ACTION with the next of ``plans`` ("commit", "fail-first": the first
    instance 0x0112, "silent": no report), reporting on a new association to the node's receiver."""

    port: int
    node_port: int
    plans: list[str] = field(default_factory=list)
    received: list[str] = field(default_factory=list)
    reported: list[str] = field(default_factory=list)
    _server: object | None = None

    def start(self) -> None:
        ae = AE(ae_title=PACS_AE)
        ae.add_supported_context(MRImageStorage)
        ae.add_supported_context(StorageCommitmentPushModel)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 5
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_N_ACTION, self._on_action)]
        self._server = ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=handlers)

    def _on_store(self, event: evt.Event) -> int:
        self.received.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    def _on_action(self, event: evt.Event) -> tuple[int, None]:
        request = read_action_information(event.action_information)
        plan = self.plans.pop(0) if self.plans else "commit"
        if plan != "silent":
            failed = (Failure(request.references[0], NO_SUCH_OBJECT_INSTANCE),) if plan == "fail-first" else ()
            committed = request.references[1:] if failed else request.references
            result = CommitmentResult(request.transaction_uid, tuple(committed), failed)
            threading.Thread(target=self._report, args=(result,), daemon=True).start()
        return 0x0000, None

    def _report(self, result: CommitmentResult) -> None:
        ae = AE(ae_title=PACS_AE)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 5
        ae.add_requested_context(StorageCommitmentPushModel)
        role = build_role(StorageCommitmentPushModel, scp_role=True)
        assoc = ae.associate("127.0.0.1", self.node_port, ae_title=NODE_AE, ext_neg=[role])
        assert assoc.is_established
        try:
            info: Dataset = event_information(result)
            status, _ = assoc.send_n_event_report(
                info, result.event_type_id, StorageCommitmentPushModel, PUSH_MODEL_INSTANCE_UID
            )
            self.reported.append(f"{result.transaction_uid} 0x{status.Status:04X}")
        finally:
            assoc.release()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()  # type: ignore[attr-defined]


def _settings(tmp_path: Path, pacs_port: int, node_port: int, timeout_s: float, pacs_ae: str = PACS_AE) -> Settings:
    destination = {
        "name": "pacs",
        "kind": "dicom",
        "ae_title": pacs_ae,
        "host": "127.0.0.1",
        "port": pacs_port,
        "storage_commitment": True,
        "storage_commitment_timeout_s": timeout_s,
    }
    return Settings.model_validate(
        {
            "paths": {"data_dir": str(tmp_path / "data")},
            "dicom": {
                "ae_title": NODE_AE,
                "bind_address": "127.0.0.1",
                "port": node_port,
                "allowed_callers": [pacs_ae],
                "min_free_disk_mb": 0,
                "network_timeout_s": 5,
            },
            "export": {"calling_ae_title": NODE_AE, "destinations": [destination], "backoff_initial_s": 1},
        }
    )


@pytest.fixture
def node_port() -> int:
    return free_port()


@pytest.fixture
def committing_pacs(node_port: int) -> Iterator[CommittingPacs]:
    pacs = CommittingPacs(port=free_port(), node_port=node_port)
    pacs.start()
    yield pacs
    pacs.stop()


def _receiver(settings: Settings, factory: sessionmaker[Session]) -> ReceiveService:
    return start_receive_service(settings, factory)


def _export(factory: sessionmaker[Session]) -> Export:
    with factory() as session:
        export = session.scalars(select(Export)).one()
        session.expunge(export)
        return export


def _commitments(factory: sessionmaker[Session]) -> list[tuple[str, str, int]]:
    with factory() as session:
        rows = session.scalars(select(StorageCommitment).order_by(StorageCommitment.id))
        return [(str(r.role), str(r.status), r.failed) for r in rows]


def test_series_is_sent_only_once_the_destination_commits_it(
    tmp_path: Path,
    factory: sessionmaker[Session],
    approved_study: ApprovedStudy,
    committing_pacs: CommittingPacs,
    node_port: int,
) -> None:
    settings = _settings(tmp_path, committing_pacs.port, node_port, timeout_s=20)
    receiver = _receiver(settings, factory)
    try:
        assert run_due_exports(factory, settings) == 1
    finally:
        receiver.stop()
    assert sorted(committing_pacs.received) == sorted(approved_study.sop_uids)
    assert _export(factory).status == "sent"
    assert _commitments(factory) == [("scu", "committed", 0)]


def test_a_failed_commitment_resends_the_failed_instance_and_asks_again(
    tmp_path: Path,
    factory: sessionmaker[Session],
    approved_study: ApprovedStudy,
    committing_pacs: CommittingPacs,
    node_port: int,
) -> None:
    committing_pacs.plans = ["fail-first", "commit"]
    settings = _settings(tmp_path, committing_pacs.port, node_port, timeout_s=20)
    receiver = _receiver(settings, factory)
    clock = [utcnow()]
    try:
        assert run_due_exports(factory, settings, now=lambda: clock[0]) == 0
        export = _export(factory)
        assert export.status == "pending" and "0x0112 no such object instance" in (export.last_error or "")
        with factory() as session:  # the failed instance is no longer counted as delivered
            assert session.scalar(select(func.count()).select_from(ExportDelivery)) == 2
        clock[0] += timedelta(hours=1)
        assert run_due_exports(factory, settings, now=lambda: clock[0]) == 1
    finally:
        receiver.stop()
    first = approved_study.sop_uids[0]  # the instance the PACS failed: sent twice, the others once
    assert sorted(committing_pacs.received) == sorted([*approved_study.sop_uids, first])
    assert _export(factory).status == "sent"
    assert _commitments(factory) == [("scu", "failed", 1), ("scu", "committed", 0)]


def test_no_report_in_time_fails_the_attempt_and_a_late_report_is_taken_next_time(
    tmp_path: Path,
    factory: sessionmaker[Session],
    approved_study: ApprovedStudy,
    committing_pacs: CommittingPacs,
    node_port: int,
) -> None:
    committing_pacs.plans = ["silent"]
    settings = _settings(tmp_path, committing_pacs.port, node_port, timeout_s=0.5)
    clock = [utcnow()]
    assert run_due_exports(factory, settings, now=lambda: clock[0]) == 0  # no receiver: nothing can report
    export = _export(factory)
    assert export.status == "pending" and "no storage commitment report within 0.5 s" in (export.last_error or "")
    assert _commitments(factory) == [("scu", "timed_out", 0)]
    # the report comes after all (here: filed as the receiver would file it), and the next attempt takes it
    with factory() as session:
        uid = session.scalars(select(StorageCommitment.transaction_uid)).one()
    with transaction(factory) as session:
        assert record_report(session, uid, committed=3, failures=[], peer_ae_title=PACS_AE)
    clock[0] += timedelta(hours=1)
    assert run_due_exports(factory, settings, now=lambda: clock[0]) == 1
    assert _export(factory).status == "sent"
    assert sorted(committing_pacs.received) == sorted(approved_study.sop_uids)  # nothing sent twice
    assert _commitments(factory) == [("scu", "committed", 0)]  # and nothing asked twice


# --- against Orthanc (Debian's 1.10), the Storage Commitment SCP ---------------------------------------------------


def test_orthanc_commits_the_series_on_a_new_association_to_our_receiver(
    tmp_path: Path,
    factory: sessionmaker[Session],
    approved_study: ApprovedStudy,
    module_orthanc: Orthanc,
    node_port: int,
) -> None:
    settings = _settings(tmp_path, module_orthanc.dicom_port, node_port, timeout_s=30, pacs_ae=ORTHANC_AE)
    receiver = _receiver(settings, factory)
    try:
        module_orthanc.declare_modality("node", NODE_AE, receiver.port)  # where Orthanc sends its N-EVENT-REPORT
        assert run_due_exports(factory, settings) == 1
    finally:
        receiver.stop()
    assert _export(factory).status == "sent"
    assert _commitments(factory) == [("scu", "committed", 0)]
    held = {
        module_orthanc.get(f"/instances/{i}/simplified-tags")["SOPInstanceUID"]
        for i in module_orthanc.get("/instances")
    }
    assert set(approved_study.sop_uids) <= held  # (it holds other tests' series too)


def test_orthanc_fails_an_instance_it_does_not_hold_with_its_reason(
    tmp_path: Path,
    factory: sessionmaker[Session],
    approved_study: ApprovedStudy,
    module_orthanc: Orthanc,
    node_port: int,
) -> None:
    """Asked for an instance never sent to it, Orthanc reports 0x0112; our receiver files that on the request."""
    settings = _settings(tmp_path, module_orthanc.dicom_port, node_port, timeout_s=30, pacs_ae=ORTHANC_AE)
    receiver = _receiver(settings, factory)
    with transaction(factory) as session:  # the study's export row, as the dispatcher makes it
        schedule_exports(session, session.scalars(select(Study)).one(), settings)
    with factory() as session:
        export_id = session.scalars(select(Export.id)).one()
    uid = generate_uid()
    try:
        module_orthanc.declare_modality("node", NODE_AE, receiver.port)
        with transaction(factory) as session:
            open_request(session, uid, export_id=export_id, peer_ae_title=ORTHANC_AE, instances=1)
        destination = build_destinations(settings)["pacs"]
        request = CommitmentRequest(uid, (Reference(MRImageStorage, approved_study.sop_uids[0]),))
        destination.request_commitment(request, on_report=lambda result, peer: None)  # type: ignore[attr-defined]
        wait_for(lambda: _commitments(factory)[0][1] != "pending", 30, "Orthanc's report to be filed", 0.2)
    finally:
        receiver.stop()
    with factory() as session:
        row = session.scalars(select(StorageCommitment)).one()
        assert (row.status, row.failed) == ("failed", 1)
        assert row.failures == [
            {"sop_class_uid": MRImageStorage, "sop_instance_uid": approved_study.sop_uids[0], "reason": 0x0112}
        ]
