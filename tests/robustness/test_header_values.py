"""#16, defect 1: every header value fits its column or is kept safely; one bad instance never fails the
recorder's batch (so a study sent beside it loses nothing acknowledged); recovery at start files what it can,
quarantines what it cannot, with the reason, and the node starts anyway. On SQLite and on PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import config as pydicom_config
from pydicom.uid import MRImageStorage, generate_uid
from pynetdicom import _config
from sqlalchemy import event, func, select
from sqlalchemy.orm import Session, sessionmaker

from codebrain_node.db.models import AuditEvent, Instance, Series, Study
from codebrain_node.receive.recorder import Recorder, record_batch, recover_spool
from codebrain_node.receive.service import ReceiveService, start_receive_service
from codebrain_node.receive.spool import ReceivedInstance, Spool
from tests.dicom_fixtures import make_mr_instance
from tests.robustness.conftest import (
    EXPLICIT,
    HOSTILE_HEADERS,
    associate,
    hostile_instance,
    part10_file,
    robust_settings,
    wire_bytes,
)


@pytest.fixture(autouse=True)
def _lenient_pydicom_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test sender writes what a careless scanner would (pydicom would refuse some of it by default)."""
    monkeypatch.setattr(pydicom_config.settings, "writing_validation_mode", pydicom_config.IGNORE)


def _spool(spool: Spool, dataset) -> ReceivedInstance:  # type: ignore[no-untyped-def]
    outcome = spool.store(
        wire_bytes(dataset),
        sop_class_uid=MRImageStorage,
        sop_instance_uid=str(dataset.SOPInstanceUID),
        transfer_syntax_uid=EXPLICIT,
    )
    assert outcome.status == 0 and outcome.instance is not None
    return outcome.instance


def _good_study(spool: Spool, count: int) -> list[ReceivedInstance]:
    study, series = generate_uid(), generate_uid()
    return [_spool(spool, make_mr_instance(study, series, index, rows=8, columns=8)) for index in range(count)]


def _recorded_uids(factory: sessionmaker[Session]) -> set[str]:
    with factory() as session:
        return set(session.scalars(select(Instance.sop_instance_uid)))


@pytest.fixture
def poison(any_factory: sessionmaker[Session]) -> Iterator[set[str]]:
    """SOP Instance UIDs whose Instance rows the database refuses (as it would a value no clipping foresaw): an
    INSERT carrying one fails with a ValueError. Add UIDs to the yielded set."""
    poisoned: set[str] = set()
    engine = any_factory.kw["bind"]

    def refuse(_conn, _cursor, statement, parameters, _context, _executemany) -> None:  # type: ignore[no-untyped-def]
        inserts_instances = statement.lstrip().upper().startswith("INSERT INTO INSTANCES")
        if inserts_instances and any(uid in str(parameters) for uid in poisoned):
            raise ValueError("database refused the row (test poison)")

    event.listen(engine, "before_cursor_execute", refuse)
    yield poisoned
    event.remove(engine, "before_cursor_execute", refuse)


def test_hostile_header_values_fit_their_columns_in_a_batch_with_a_good_study(
    tmp_path: Path, any_factory: sessionmaker[Session]
) -> None:
    spool = Spool(tmp_path)
    good = _good_study(spool, 20)
    hostile = {name: _spool(spool, hostile_instance(spoil)) for name, spoil in HOSTILE_HEADERS.items()}
    batch = [*good[:10], *hostile.values(), *good[10:]]  # one batch, the bad ones in the middle

    assert record_batch(any_factory, batch) == len(batch)

    assert _recorded_uids(any_factory) == {item.sop_instance_uid for item in batch}
    with any_factory() as session:

        def study_of(name: str) -> Study:
            return session.scalars(select(Study).where(Study.study_instance_uid == hostile[name].study_uid)).one()

        def series_of(name: str) -> Series:
            uid = hostile[name].series_uid
            return session.scalars(select(Series).where(Series.series_instance_uid == uid)).one()

        def instance_of(name: str) -> Instance:
            uid = hostile[name].sop_instance_uid
            return session.scalars(select(Instance).where(Instance.sop_instance_uid == uid)).one()

        assert series_of("series number past int64").series_number is None  # not a number any column can hold
        assert series_of("series number past int32").series_number is None
        assert instance_of("instance number past int32").instance_number is None
        assert instance_of("instance number 1e400").instance_number is None
        assert study_of("10,000-character patient name").patient_name == ("DOE^" + "A" * 10_000)[:256]
        assert len(study_of("10,000-character patient ID").patient_id) == 64
        assert len(study_of("10,000-character accession number").accession_number) == 16
        assert len(study_of("10,000-character study description").study_description) == 256
        assert len(study_of("study date of 10,000 characters").study_date) == 8
        assert len(series_of("10,000-character series description").series_description) == 256
        assert len(series_of("10,000-character modality").modality) == 16
        # a UID cut short would name something else: dropped, not clipped
        assert series_of("frame of reference UID of 200 characters").frame_of_reference_uid is None
        assert series_of("NUL inside the description").series_description == "T1post"
        good_series = session.scalars(select(Series).where(Series.series_instance_uid == good[0].series_uid)).one()
        assert good_series.series_number == 1 and len(good_series.instances) == 20


def test_one_unrecordable_instance_never_fails_the_recorder_batch(
    tmp_path: Path, any_factory: sessionmaker[Session], poison: set[str]
) -> None:
    spool = Spool(tmp_path)
    good = _good_study(spool, 30)
    bad = _spool(spool, hostile_instance(HOSTILE_HEADERS["10,000-character patient name"]))
    poison.add(bad.sop_instance_uid)
    recorder = Recorder(any_factory, batch_size=200, linger_s=0.2, spool=spool).start()
    try:
        for item in [*good[:15], bad, *good[15:]]:
            recorder.submit(item)
        assert recorder.flush(60)
        assert _recorded_uids(any_factory) == {item.sop_instance_uid for item in good}
        assert not bad.path.exists()  # kept, out of the way, with the reason
        assert (tmp_path / "quarantine" / bad.path.name).exists()
        reason = (tmp_path / "quarantine" / f"{bad.path.name}.reason.txt").read_text()
        assert "not recordable: ValueError" in reason and "DOE" not in reason
        later = _good_study(spool, 1)[0]
        recorder.submit(later)  # the recorder goes on
        assert recorder.flush(30)
    finally:
        recorder.stop()
    assert later.sop_instance_uid in _recorded_uids(any_factory)


def test_recovery_files_hostile_instances_and_quarantines_the_unrecordable_with_the_reason(
    tmp_path: Path, any_factory: sessionmaker[Session], poison: set[str]
) -> None:
    """A crash before the rows were written: at start every spooled instance is filed, hostile values and all; the
    one the database refuses is moved to quarantine/ with its reason, audited, and the node starts anyway."""
    data_dir = tmp_path / "data"
    spool = Spool(data_dir)
    good = _good_study(spool, 12)
    hostile = [_spool(spool, hostile_instance(spoil)) for spoil in HOSTILE_HEADERS.values()]
    refused = _spool(spool, make_mr_instance(good[0].study_uid, good[0].series_uid, 12, rows=8, columns=8))
    poison.add(refused.sop_instance_uid)

    service = start_receive_service(robust_settings(data_dir), any_factory)  # recovery runs first; must not raise
    service.stop()

    assert _recorded_uids(any_factory) == {item.sop_instance_uid for item in [*good, *hostile]}
    quarantined = data_dir / "quarantine" / refused.path.name
    assert quarantined.exists() and not refused.path.exists()
    reason = (data_dir / "quarantine" / f"{refused.path.name}.reason.txt").read_text()
    assert "ValueError" in reason and "TEST-PATIENT" not in reason
    with any_factory() as session:
        events = session.scalars(select(AuditEvent).where(AuditEvent.action == "instance:quarantined")).all()
    assert [event.details["sop_instance_uid"] for event in events] == [refused.sop_instance_uid]
    assert recover_spool(any_factory, Spool(data_dir)) == 0  # idempotent: nothing left to file


def test_a_study_sent_beside_hostile_instances_loses_no_acknowledged_instance(
    running_node: ReceiveService, any_factory: sessionmaker[Session], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two senders at the same moment: one a 60-slice study, the other every hostile header. Every instance
    answered Success is recorded (the hostile ones too, clipped), and a restart files nothing late and fails on
    nothing."""
    study, series = generate_uid(), generate_uid()
    good = [make_mr_instance(study, series, index, rows=8, columns=8) for index in range(60)]
    hostile = [part10_file(hostile_instance(spoil), tmp_path / "hostile") for spoil in HOSTILE_HEADERS.values()]
    acknowledged: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(2)

    def send(datasets) -> None:  # type: ignore[no-untyped-def]
        assoc = associate(running_node.port)
        start.wait(10)
        try:
            for dataset in datasets:  # a Dataset, or a file sent as its bytes (the hostile ones)
                if assoc.send_c_store(dataset).Status == 0x0000:
                    uid = dataset.stem if isinstance(dataset, Path) else str(dataset.SOPInstanceUID)
                    with lock:
                        acknowledged.append(uid)
        finally:
            assoc.release()

    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)  # files go as their bytes, unparsed
    senders = [threading.Thread(target=send, args=(datasets,)) for datasets in (good, hostile)]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join(120)
    assert len(acknowledged) == len(good) + len(hostile)
    assert running_node.recorder.flush(60)

    assert _recorded_uids(any_factory) == set(acknowledged)
    with any_factory() as session:
        assert (
            session.scalar(select(func.count(Instance.id)).join(Series).where(Series.series_instance_uid == series))
            == 60
        )
    assert recover_spool(any_factory, running_node.spool) == 0
