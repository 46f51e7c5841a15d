"""Association rows: one per accepted association (calling AE, peer, start, end, instances, bytes), each instance
linked to the association that delivered it, and rows a dead receiver left open closed at restart."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from codebrain_node.db.associations import (
    RECEIVER_DIED,
    close_orphaned_associations,
    holds_of,
    open_association,
    receiver_identity,
)
from codebrain_node.db.models import Association, Instance, Series, utcnow
from codebrain_node.db.session import transaction
from codebrain_node.receive.recorder import recover_spool
from codebrain_node.receive.service import ReceiveService, start_receive_service
from codebrain_node.receive.spool import Spool
from tests.dicom_fixtures import make_mr_instance

CALLER = "STORESCU"


def _associate(service: ReceiveService):  # type: ignore[no-untyped-def]
    ae = AE(ae_title=CALLER)
    ae.add_requested_context(MRImageStorage)
    association = ae.associate("127.0.0.1", service.port, ae_title="CODEBRAIN")
    assert association.is_established
    return association


def _rows(factory: sessionmaker[Session]) -> list[Association]:
    with factory() as session:
        return list(session.scalars(select(Association).order_by(Association.id)))


def _wait_for(predicate, timeout_s: float = 10.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    return predicate()


def test_one_row_per_association_with_its_instances_and_bytes(service: ReceiveService, factory) -> None:
    study_uid, series_uid = generate_uid(), generate_uid()
    association = _associate(service)
    for index in range(3):
        assert association.send_c_store(make_mr_instance(study_uid, series_uid, index, 16, 16)).Status == 0
    assert service.recorder.flush(10)
    (row,) = _rows(factory)
    assert (row.calling_ae_title, row.called_ae_title, row.peer_address) == (CALLER, "CODEBRAIN", "127.0.0.1")
    assert row.peer_port and row.ended_at is None and row.receiver == receiver_identity()
    assert row.instances == 3 and row.bytes > 3 * 16 * 16 * 2
    with factory() as session:
        study_id = session.scalars(select(Series.study_id)).one()
        assert holds_of(session, [study_id])[study_id].open == 1
        assert {i.association_id for i in session.scalars(select(Instance))} == {row.id}

    association.release()
    row = _wait_for(lambda: next((r for r in _rows(factory) if r.ended_at is not None), None))
    assert row is not None and row.end_reason == "released"
    assert row.ended_at >= row.started_at
    with factory() as session:
        hold = holds_of(session, [study_id])[study_id]
        assert hold.open == 0 and hold.last_ended_at is not None


def test_aborted_and_stopped_associations_end_too(tmp_path: Path, factory, make_settings) -> None:
    service = start_receive_service(make_settings(tmp_path / "data"), factory)
    try:
        aborted = _associate(service)
        aborted.send_c_store(make_mr_instance(generate_uid(), generate_uid(), 0, 16, 16))
        aborted.abort()
        assert _wait_for(lambda: all(r.ended_at for r in _rows(factory)) and _rows(factory))
        _associate(service)  # left open: the receiver stops under it
        assert _wait_for(lambda: len(_rows(factory)) == 2 and service.recorder.flush(1))
    finally:
        service.stop()
    rows = _rows(factory)
    assert len(rows) == 2 and all(row.ended_at is not None for row in rows), [(r.end_reason, r.ended_at) for r in rows]
    assert rows[0].instances == 1


def test_restart_closes_rows_a_dead_receiver_on_this_host_left_open(tmp_path: Path, factory) -> None:
    """An association cannot outlive its process: a crashed node's rows would hold their studies forever."""
    host = receiver_identity().split(":")[0]
    with transaction(factory) as session:
        open_association(session, "dead", receiver=f"{host}:999999999", started_at=utcnow() - timedelta(minutes=5))
        open_association(session, "alive", receiver=receiver_identity(), started_at=utcnow())
        open_association(session, "elsewhere", receiver="another-host:1234", started_at=utcnow())
    recover_spool(factory, Spool(tmp_path / "data"))
    ended = {row.key: row.end_reason for row in _rows(factory)}
    assert ended == {"dead": RECEIVER_DIED, "alive": None, "elsewhere": None}
    with transaction(factory) as session:  # a closed row stays closed; the check is idempotent
        assert close_orphaned_associations(session, is_dead=lambda receiver: True) == 2


def test_instances_filed_from_the_spool_have_no_association(tmp_path: Path, factory) -> None:
    """Instances found in the spool after a crash are filed unlinked: nothing holds their study open."""
    spool = Spool(tmp_path / "data")
    study_uid, series_uid = generate_uid(), generate_uid()
    dataset = make_mr_instance(study_uid, series_uid, 0, 16, 16)
    path = spool.path_for(study_uid, series_uid, dataset.SOPInstanceUID)
    path.parent.mkdir(parents=True)
    dataset.save_as(path, enforce_file_format=True)
    assert recover_spool(factory, spool) == 1
    with factory() as session:
        assert session.scalars(select(Instance.association_id)).one() is None
        study_id = session.scalars(select(Series.study_id)).one()
        assert holds_of(session, [study_id]) == {}
