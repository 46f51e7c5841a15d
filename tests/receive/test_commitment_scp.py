"""Storage Commitment SCP (PS3.4 Annex J) against a pynetdicom peer: what is committed and why the rest is not,
the report on the same association or on a new one, and refused requests; then against Orthanc as requester."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import EnhancedMRImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import MRImageStorage, StorageCommitmentPushModel
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from codebrain_node.db.models import StorageCommitment
from codebrain_node.receive.service import ReceiveService, start_receive_service
from codebrain_node.write.storage_commitment import (
    PUSH_MODEL_INSTANCE_UID,
    CommitmentRequest,
    Reference,
    action_information,
    read_event_information,
)
from tests.dicom_fixtures import free_port, make_mr_instance
from tests.e2e.e2e_support import PACS_AE as ORTHANC_AE
from tests.e2e.e2e_support import Orthanc, module_orthanc, wait_for
from tests.receive.conftest import CALLER, node_settings

PEER = "PEERSCU"
__all__ = ["module_orthanc"]  # the fixture, from e2e_support
REPORT_WAIT_S = 30.0


class Reports:
    """N-EVENT-REPORTs a peer received: (Event Type ID, Event Information, the AE title at the other end)."""

    def __init__(self) -> None:
        self.received: list[tuple[int, Dataset, str]] = []
        self.arrived = threading.Event()

    def handler(self, event: evt.Event) -> tuple[int, None]:
        reporter = str(event.assoc.remote["ae_title"]).strip()
        self.received.append((event.event_type, event.event_information, reporter))
        self.arrived.set()
        return 0x0000, None


def _start(
    tmp_path: Path, factory: sessionmaker[Session], peers: list[dict] | None = None, callers: list[str] = ()
) -> ReceiveService:
    settings = node_settings(
        tmp_path / "data",
        allowed_callers=[CALLER, PEER, *callers],
        storage_commitment_peers=peers or [],
        storage_commitment_settle_s=10,
    )
    return start_receive_service(settings, factory)


def _store(port: int, count: int) -> list[Dataset]:
    """``count`` MR instances sent by C-STORE on an association of their own (released before anything asks)."""
    study_uid, series_uid = generate_uid(), generate_uid()
    datasets = [make_mr_instance(study_uid, series_uid, i, rows=8, columns=8) for i in range(count)]
    ae = AE(ae_title=CALLER)
    ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="CODEBRAIN")
    assert assoc.is_established
    try:
        for dataset in datasets:
            assert assoc.send_c_store(dataset).Status == 0x0000
    finally:
        assoc.release()
    return datasets


def _peer_ae(reports: Reports | None = None) -> AE:
    ae = AE(ae_title=PEER)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(StorageCommitmentPushModel)
    return ae


def _ask(assoc, transaction_uid: str, references: list[Reference]) -> int:  # type: ignore[no-untyped-def]
    request = action_information(CommitmentRequest(transaction_uid, tuple(references)))
    status, _ = assoc.send_n_action(request, 1, StorageCommitmentPushModel, PUSH_MODEL_INSTANCE_UID)
    return int(status.Status)


def _row(factory: sessionmaker[Session], transaction_uid: str) -> StorageCommitment:
    with factory() as session:
        row = session.scalars(
            select(StorageCommitment).where(StorageCommitment.transaction_uid == transaction_uid)
        ).first()
        assert row is not None
        return row


@pytest.fixture
def receiver(tmp_path: Path, factory: sessionmaker[Session]) -> Iterator[ReceiveService]:
    running = _start(tmp_path, factory)
    try:
        yield running
    finally:
        running.stop()


def test_report_on_the_same_association_commits_only_what_is_stored_with_reasons_for_the_rest(
    receiver: ReceiveService, factory: sessionmaker[Session]
) -> None:
    stored = _store(receiver.port, 3)
    unknown = Reference(MRImageStorage, generate_uid())
    wrong_class = Reference(EnhancedMRImageStorage, stored[2].SOPInstanceUID)  # held, but as MR Image Storage
    references = [Reference(MRImageStorage, ds.SOPInstanceUID) for ds in stored[:2]] + [unknown, wrong_class]
    reports = Reports()
    transaction_uid = generate_uid()
    ae = _peer_ae()
    # a requester not in dicom.storage_commitment_peers: it holds the association open for the report
    assoc = ae.associate(
        "127.0.0.1", receiver.port, ae_title="CODEBRAIN", evt_handlers=[(evt.EVT_N_EVENT_REPORT, reports.handler)]
    )
    assert assoc.is_established
    try:
        assert _ask(assoc, transaction_uid, references) == 0x0000
        assert reports.arrived.wait(REPORT_WAIT_S), "no N-EVENT-REPORT on the same association"
    finally:
        assoc.release()
    event_type, information, reporter = reports.received[0]
    assert event_type == 2 and reporter == "CODEBRAIN"
    result = read_event_information(information)
    assert result.transaction_uid == transaction_uid
    assert {r.sop_instance_uid for r in result.committed} == {ds.SOPInstanceUID for ds in stored[:2]}
    reasons = {f.reference.sop_instance_uid: (f.reference.sop_class_uid, f.reason) for f in result.failed}
    assert reasons == {
        unknown.sop_instance_uid: (MRImageStorage, 0x0112),  # no such object instance
        wrong_class.sop_instance_uid: (EnhancedMRImageStorage, 0x0119),  # class-instance conflict
    }
    receiver.receiver.commitments.join()  # type: ignore[union-attr]
    receiver.recorder.flush(10)
    row = _row(factory, transaction_uid)
    assert (row.role, row.status, row.instances, row.failed) == ("scp", "failed", 4, 2)
    assert "same association" in (row.detail or "")


def test_known_peer_gets_its_report_on_a_new_association_to_its_own_scp(
    tmp_path: Path, factory: sessionmaker[Session]
) -> None:
    reports = Reports()
    peer_port = free_port()
    peer_scp = AE(ae_title=PEER)
    peer_scp.add_supported_context(StorageCommitmentPushModel, scu_role=True, scp_role=True)
    server = peer_scp.start_server(
        ("127.0.0.1", peer_port), block=False, evt_handlers=[(evt.EVT_N_EVENT_REPORT, reports.handler)]
    )
    service = _start(tmp_path, factory, peers=[{"ae_title": PEER, "host": "127.0.0.1", "port": peer_port}])
    try:
        stored = _store(service.port, 2)
        transaction_uid = generate_uid()
        assoc = _peer_ae().associate("127.0.0.1", service.port, ae_title="CODEBRAIN")
        assert assoc.is_established
        try:
            assert _ask(assoc, transaction_uid, [Reference(MRImageStorage, ds.SOPInstanceUID) for ds in stored]) == 0
        finally:
            assoc.release()  # at once, as Orthanc and most requesters do: the report comes on a new association
        assert reports.arrived.wait(REPORT_WAIT_S), "no N-EVENT-REPORT on a new association"
        service.receiver.commitments.join()  # type: ignore[union-attr]
        service.recorder.flush(10)
    finally:
        service.stop()
        server.shutdown()
    event_type, information, reporter = reports.received[0]
    assert (event_type, reporter) == (1, "CODEBRAIN")
    result = read_event_information(information)
    assert result.transaction_uid == transaction_uid and not result.failed
    assert sorted(r.sop_instance_uid for r in result.committed) == sorted(ds.SOPInstanceUID for ds in stored)
    row = _row(factory, transaction_uid)
    assert (row.role, row.status, row.failed) == ("scp", "committed", 0)
    assert f"new association to {PEER}@127.0.0.1:{peer_port}" in (row.detail or "")


def test_requests_without_a_transaction_uid_or_for_another_action_are_refused(receiver: ReceiveService) -> None:
    assoc = _peer_ae().associate("127.0.0.1", receiver.port, ae_title="CODEBRAIN")
    assert assoc.is_established
    try:
        no_uid = action_information(CommitmentRequest("", (Reference(MRImageStorage, generate_uid()),)))
        del no_uid.TransactionUID
        status, _ = assoc.send_n_action(no_uid, 1, StorageCommitmentPushModel, PUSH_MODEL_INSTANCE_UID)
        assert status.Status == 0x0120  # missing attribute
        request = action_information(CommitmentRequest(generate_uid(), (Reference(MRImageStorage, generate_uid()),)))
        status, _ = assoc.send_n_action(request, 2, StorageCommitmentPushModel, PUSH_MODEL_INSTANCE_UID)
        assert status.Status == 0x0123  # no such action
        status, _ = assoc.send_n_action(request, 1, StorageCommitmentPushModel, generate_uid())
        assert status.Status == 0x0117  # invalid object instance
    finally:
        assoc.release()


# --- against Orthanc (Debian's 1.10), the requester ------------------------------------------------------------


def _orthanc_result(pacs: Orthanc, transaction_uid: str) -> dict:
    def answered() -> dict | None:
        result = pacs.get(f"/storage-commitment/{transaction_uid}")
        return result if result.get("Status") != "Pending" else None

    return wait_for(answered, REPORT_WAIT_S, f"Orthanc's storage commitment {transaction_uid} to be answered", 0.2)


def test_orthanc_asks_and_gets_committed_and_failed_instances_on_a_new_association(
    tmp_path: Path, factory: sessionmaker[Session], module_orthanc: Orthanc
) -> None:
    """Orthanc as Storage Commitment SCU (POST /modalities/{id}/storage-commitment): it releases the N-ACTION's
    association at once and takes the report on a new one to its own DICOM port, as the known peer ORTHANC."""
    peers = [{"ae_title": ORTHANC_AE, "host": "127.0.0.1", "port": module_orthanc.dicom_port}]
    service = _start(tmp_path, factory, peers=peers, callers=[ORTHANC_AE])
    try:
        module_orthanc.declare_modality("node", "CODEBRAIN", service.port)
        stored = _store(service.port, 2)
        unknown = generate_uid()
        instances = [{"SOPClassUID": MRImageStorage, "SOPInstanceUID": ds.SOPInstanceUID} for ds in stored]
        asked = module_orthanc.send(
            "POST",
            "/modalities/node/storage-commitment",
            {"DicomInstances": [*instances, {"SOPClassUID": MRImageStorage, "SOPInstanceUID": unknown}]},
        )
        answer = _orthanc_result(module_orthanc, asked["ID"])
        assert answer["Status"] == "Failure"
        assert sorted(item["SOPInstanceUID"] for item in answer["Success"]) == sorted(
            ds.SOPInstanceUID for ds in stored
        )
        assert [(f["SOPInstanceUID"], f["FailureReason"]) for f in answer["Failures"]] == [(unknown, 0x0112)]
        all_held = module_orthanc.send("POST", "/modalities/node/storage-commitment", {"DicomInstances": instances})
        assert _orthanc_result(module_orthanc, all_held["ID"])["Status"] == "Success"
        service.receiver.commitments.join()  # type: ignore[union-attr]
        service.recorder.flush(10)
    finally:
        service.stop()
    assert _row(factory, asked["ID"]).status == "failed"
    assert _row(factory, all_held["ID"]).status == "committed"


def test_a_requester_listed_twice_among_the_known_peers_is_a_configuration_error(tmp_path: Path) -> None:
    twice = [
        {"ae_title": PEER, "host": "127.0.0.1", "port": 104},
        {"ae_title": PEER, "host": "127.0.0.2", "port": 11112},
    ]
    with pytest.raises(ValueError, match="'PEERSCU' listed more than once"):
        node_settings(tmp_path, storage_commitment_peers=twice)
