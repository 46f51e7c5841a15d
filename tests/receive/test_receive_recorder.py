"""The recorder files spooled instances in the database; recover_spool files what a crash left unrecorded."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian as EXPLICIT
from pydicom.uid import MRImageStorage, generate_uid
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from codebrain_node.db.lifecycle import transition
from codebrain_node.db.models import AuditEvent, Instance, Study, StudyState
from codebrain_node.db.session import session_factory, upgrade
from codebrain_node.receive.recorder import Recorder, record_batch, recover_spool
from codebrain_node.receive.spool import ReceivedInstance, Spool
from tests.dicom_fixtures import make_mr_instance


def _dataset_bytes(study: str, series: str, index: int, synthetic: bool = False) -> tuple[bytes, str]:
    """A dataset encoded as a peer sends it over the wire (explicit VR little endian, no File Meta)."""
    dataset = make_mr_instance(study, series, index, rows=8, columns=8)
    if synthetic:
        dataset.SyntheticData = "YES"
    del dataset.file_meta
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=False, implicit_vr=False, little_endian=True)
    return buffer.getvalue(), dataset.SOPInstanceUID


def _spool_one(
    spool: Spool, study: str, series: str, index: int, synthetic: bool = False, caller: str | None = None
) -> ReceivedInstance:
    data, sop = _dataset_bytes(study, series, index, synthetic)
    outcome = spool.store(
        data, sop_class_uid=MRImageStorage, sop_instance_uid=sop, transfer_syntax_uid=EXPLICIT, calling_ae_title=caller
    )
    assert outcome.status == 0 and outcome.instance is not None
    return outcome.instance


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def any_factory(request: pytest.FixtureRequest) -> sessionmaker[Session]:
    engine = request.getfixturevalue(f"{request.param}_engine")
    upgrade(engine)
    return session_factory(engine)


def test_recorder_thread_batches_and_upserts(tmp_path: Path, any_factory: sessionmaker[Session]) -> None:
    factory = any_factory
    spool = Spool(tmp_path)
    study, series = generate_uid(), generate_uid()
    items = [_spool_one(spool, study, series, i) for i in range(5)]
    recorder = Recorder(factory).start()
    for item in [*items, items[0]]:  # one UID handed over twice
        recorder.submit(item)
    assert recorder.flush(10)
    recorder.stop()
    with factory() as session:
        row = session.scalars(select(Study)).one()
        assert row.study_instance_uid == study and row.state == StudyState.RECEIVING
        assert row.patient_id == "TEST-PATIENT"
        assert session.scalar(select(func.count(Instance.id))) == 5
        paths = set(session.scalars(select(Instance.path)))
    assert paths == {str(item.path) for item in items}


def test_new_acquired_instance_reopens_a_settled_study_but_synthetic_does_not(
    tmp_path: Path, factory: sessionmaker[Session]
) -> None:
    spool = Spool(tmp_path)
    study, series = generate_uid(), generate_uid()
    record_batch(factory, [_spool_one(spool, study, series, 0)])
    with factory() as session, session.begin():
        row = session.scalars(select(Study)).one()
        transition(session, row, StudyState.STABLE, "scheduler")
        transition(session, row, StudyState.IGNORED, "scheduler", reason="test")

    record_batch(factory, [_spool_one(spool, study, generate_uid(), 0, synthetic=True)])
    with factory() as session:
        assert session.scalars(select(Study)).one().state == StudyState.IGNORED

    record_batch(factory, [_spool_one(spool, study, series, 1)])
    with factory() as session:
        assert session.scalars(select(Study)).one().state == StudyState.RECEIVING
        actions = list(session.scalars(select(AuditEvent.action).order_by(AuditEvent.id)))
    assert actions[-1] == "state:receiving"


def test_recover_spool_files_what_the_database_lacks(tmp_path: Path, factory: sessionmaker[Session]) -> None:
    spool = Spool(tmp_path)
    study, series = generate_uid(), generate_uid()
    recorded = _spool_one(spool, study, series, 0)
    record_batch(factory, [recorded])
    lost = [_spool_one(spool, study, series, i) for i in (1, 2)]  # acknowledged, then a crash before the DB row
    (spool.tmp / "dead.part").write_bytes(b"half a file")
    broken = spool.incoming / study / series / "1.2.3.dcm"
    broken.write_bytes(b"not dicom")

    assert recover_spool(factory, spool) == 2
    assert not list(spool.tmp.iterdir())
    assert not broken.exists() and (tmp_path / "quarantine" / "1.2.3.dcm").exists()
    with factory() as session:
        uids = set(session.scalars(select(Instance.sop_instance_uid)))
    assert uids == {recorded.sop_instance_uid, *(item.sop_instance_uid for item in lost)}
    assert recover_spool(factory, spool) == 0  # idempotent


def test_spooled_file_is_a_valid_part10_file_with_our_file_meta(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    study, series = generate_uid(), generate_uid()
    item = _spool_one(spool, study, series, 0, caller="MRI1")
    assert item.path == tmp_path / "incoming" / study / series / f"{item.sop_instance_uid}.dcm"
    written = dcmread(item.path)
    assert written.file_meta.MediaStorageSOPInstanceUID == item.sop_instance_uid
    assert written.file_meta.MediaStorageSOPClassUID == MRImageStorage
    assert written.file_meta.TransferSyntaxUID == EXPLICIT
    assert written.file_meta.SourceApplicationEntityTitle == "MRI1"
    assert written.StudyInstanceUID == study
    assert written.pixel_array.shape == (8, 8)
    assert item.size_bytes == item.path.stat().st_size


def test_write_error_answers_out_of_resources_and_leaves_nothing(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import errno

    import codebrain_node.durable as durable_module

    def disk_full(_descriptor: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    spool = Spool(tmp_path)
    data, sop = _dataset_bytes(generate_uid(), generate_uid(), 0)
    monkeypatch.setattr(durable_module.os, "fdatasync", disk_full)
    outcome = spool.store(data, sop_class_uid=MRImageStorage, sop_instance_uid=sop, transfer_syntax_uid=EXPLICIT)
    assert outcome.status == 0xA700 and outcome.instance is None
    assert not list(spool.tmp.iterdir()) and not list(spool.incoming.rglob("*.dcm"))


def test_below_watermark_store_answers_out_of_resources(tmp_path: Path) -> None:
    import shutil

    free_mb = shutil.disk_usage(tmp_path).free // (1024 * 1024)
    spool = Spool(tmp_path, min_free_disk_mb=free_mb * 4 + 1)
    data, sop = _dataset_bytes(generate_uid(), generate_uid(), 0)
    outcome = spool.store(data, sop_class_uid=MRImageStorage, sop_instance_uid=sop, transfer_syntax_uid=EXPLICIT)
    assert outcome.status == 0xA700
    assert not list(spool.incoming.rglob("*.dcm"))
