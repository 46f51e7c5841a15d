"""Several receiver processes on one port (``dicom.receiver_processes`` = 2, ``receive/processes.py``): a study sent
on several associations at once is recorded once per instance, whichever process took it; a duplicate sent to
another association is a duplicate; the association limits hold node-wide; a Storage Commitment request is
answered from what any process stored; the ingest metrics sum over the processes; a process that dies is started
again; stop (and a parent killed outright) leaves no process. Every wait is bounded; nothing is timed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import MRImageStorage, Verification
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from codebrain_node import metrics
from codebrain_node.db.models import Association, AuditEvent, Instance
from codebrain_node.db.session import make_engine, session_factory, upgrade
from codebrain_node.receive.processes import ReceiverProcesses
from codebrain_node.write.storage_commitment import Reference, read_event_information
from tests.dicom_fixtures import make_mr_instance, write_mr_series
from tests.e2e.e2e_support import STORESCU, dcmtk_env, require, wait_for
from tests.receive.conftest import CALLER, node_settings
from tests.receive.test_commitment_scp import PEER, Reports, _ask, _peer_ae

WAIT_S = 60.0


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # a zombie (exited, not yet reaped by its parent) is gone too
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@pytest.fixture
def factory(request: pytest.FixtureRequest, tmp_path: Path) -> sessionmaker[Session]:
    """SQLite unless a test asks for ``postgresql`` too (``indirect`` parametrisation; skipped without a server)."""
    backend = getattr(request, "param", "sqlite")
    engine = request.getfixturevalue("postgres_engine") if backend == "postgresql" else None
    engine = engine or make_engine(f"sqlite:///{tmp_path / 'node.db'}")
    upgrade(engine)
    return session_factory(engine)


BOTH_DATABASES = pytest.mark.parametrize("factory", ["sqlite", "postgresql"], indirect=True)


@pytest.fixture
def start(tmp_path: Path, factory: sessionmaker[Session]) -> Iterator[Callable[..., ReceiverProcesses]]:
    started: list[ReceiverProcesses] = []

    def make(**dicom: object) -> ReceiverProcesses:
        values: dict[str, object] = {"receiver_processes": 2, "allowed_callers": [CALLER, PEER]}
        values.update(dicom)
        settings = node_settings(tmp_path / "data", **values)
        settings.database.url = SecretStr(factory.kw["bind"].url.render_as_string(hide_password=False))
        receivers = ReceiverProcesses(settings).start(factory)
        started.append(receivers)
        return receivers

    try:
        yield make
    finally:
        for receivers in started:
            receivers.stop()


def _instances(factory: sessionmaker[Session]) -> dict[str, int]:
    with factory() as session:
        rows = session.execute(select(Instance.sop_instance_uid, func.count()).group_by(Instance.sop_instance_uid))
        return {uid: count for uid, count in rows}


def _storescu(port: int, files: list[Path]) -> subprocess.Popen[bytes]:
    command = [str(STORESCU), "-aet", CALLER, "-aec", "CODEBRAIN", "127.0.0.1", str(port), *map(str, files)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=dcmtk_env())


def _send_at_once(port: int, files: list[Path], associations: int) -> None:
    """``files`` split over ``associations`` storescu processes running at the same time."""
    senders = [_storescu(port, files[i::associations]) for i in range(associations)]
    for sender in senders:
        _, error = sender.communicate(timeout=WAIT_S)
        assert sender.returncode == 0, error.decode(errors="replace")[-500:]


def _association(port: int, ae_title: str = CALLER):  # type: ignore[no-untyped-def]
    ae = AE(ae_title=ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(Verification)
    ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
    return ae.associate("127.0.0.1", port, ae_title="CODEBRAIN")


def _store_one_per_association(port: int, count: int) -> list[str]:
    """``count`` instances, each on an association of its own, each answered Success; their SOP Instance UIDs."""
    uids = []
    for index in range(count):
        assoc = _association(port)
        assert assoc.is_established
        try:
            dataset = make_mr_instance(generate_uid(), generate_uid(), index, rows=8, columns=8)
            assert assoc.send_c_store(dataset).Status == 0x0000
            uids.append(str(dataset.SOPInstanceUID))
        finally:
            assoc.release()
    return uids


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


@BOTH_DATABASES
def test_a_study_on_four_associations_at_once_is_recorded_once_per_instance(
    start: Callable[..., ReceiverProcesses], factory: sessionmaker[Session], tmp_path: Path
) -> None:
    require(STORESCU, "DCMTK storescu")
    receivers = start()
    files = write_mr_series(tmp_path / "files", 40, rows=32, columns=32)
    _send_at_once(receivers.port, files, 4)
    wait_for(lambda: len(_instances(factory)) == 40, WAIT_S, "every instance recorded")
    assert set(_instances(factory).values()) == {1}
    assert len(list((tmp_path / "data" / "incoming").rglob("*.dcm"))) == 40

    def closed() -> list[Association] | None:
        with factory() as session:
            rows = list(session.scalars(select(Association)))
        return rows if len(rows) == 4 and all(row.ended_at is not None for row in rows) else None

    rows = wait_for(closed, WAIT_S, "the four associations on record, closed")
    assert sum(row.instances for row in rows) == 40
    pids = {int(row.receiver.rsplit(":", 1)[1]) for row in rows}
    assert pids <= set(receivers.pids)  # which process took which is the kernel's and the deferral's choice
    totals = metrics.ingest_totals(receivers.metrics_dir)
    assert totals["codebrain_ingest_instances_total{outcome=stored}"] == 40
    assert totals["codebrain_ingest_associations_opened_total"] == 4


@BOTH_DATABASES
def test_a_duplicate_on_another_association_is_answered_success_and_recorded_once(
    start: Callable[..., ReceiverProcesses], factory: sessionmaker[Session]
) -> None:
    receivers = start()
    dataset = make_mr_instance(generate_uid(), generate_uid(), 0, rows=8, columns=8)
    for _ in range(4):  # four associations: both processes see it whatever the spread
        assoc = _association(receivers.port)
        assert assoc.is_established
        try:
            assert assoc.send_c_store(dataset).Status == 0x0000
        finally:
            assoc.release()
    wait_for(lambda: _instances(factory), WAIT_S, "the instance recorded")
    assert _instances(factory) == {dataset.SOPInstanceUID: 1}
    duplicates = "codebrain_ingest_instances_total{outcome=duplicate}"
    wait_for(lambda: metrics.ingest_totals(receivers.metrics_dir).get(duplicates) == 3, WAIT_S, "3 duplicates")
    totals = metrics.ingest_totals(receivers.metrics_dir)
    assert totals["codebrain_ingest_instances_total{outcome=stored}"] == 1


@BOTH_DATABASES
def test_a_uid_reused_in_another_series_stays_out_of_the_database_and_is_audited(
    start: Callable[..., ReceiverProcesses], factory: sessionmaker[Session]
) -> None:
    """The process that stored the first copy refuses the second (0xC000), as one process does; another process
    accepts it into the spool, and its recorder keeps it out of the database: one row either way, audited."""
    receivers = start()
    study = generate_uid()
    first = make_mr_instance(study, generate_uid(), 0, rows=8, columns=8)
    elsewhere = make_mr_instance(study, generate_uid(), 0, rows=8, columns=8)
    elsewhere.SOPInstanceUID = elsewhere.file_meta.MediaStorageSOPInstanceUID = first.SOPInstanceUID
    statuses = []
    for dataset in (first, elsewhere, elsewhere, elsewhere):
        assoc = _association(receivers.port)
        assert assoc.is_established
        try:
            statuses.append(int(assoc.send_c_store(dataset).Status))
        finally:
            assoc.release()
    assert statuses[0] == 0x0000 and set(statuses[1:]) <= {0x0000, 0xC000}

    def audited() -> int:
        with factory() as session:
            query = select(func.count()).select_from(AuditEvent).where(AuditEvent.action == "instance:conflict")
            return int(session.scalar(query) or 0)

    wait_for(audited, WAIT_S, "the re-used UID audited")
    with factory() as session:
        rows = list(session.scalars(select(Instance)))
    assert [(row.sop_instance_uid, first.SeriesInstanceUID in row.path) for row in rows] == [
        (first.SOPInstanceUID, True)
    ]


@pytest.mark.parametrize(
    ("limits", "reason"),
    [
        ({"max_associations": 3, "max_associations_per_peer": 10}, "more than dicom.max_associations at once"),
        ({"max_associations": 10, "max_associations_per_peer": 3}, "more than dicom.max_associations_per_peer"),
    ],
)
def test_the_association_limits_hold_across_the_processes(
    start: Callable[..., ReceiverProcesses], limits: dict[str, int], reason: str
) -> None:
    receivers = start(**limits)
    held = [_association(receivers.port) for _ in range(3)]
    try:
        assert all(assoc.is_established for assoc in held)
        for _ in range(3):  # whichever process takes it, the fourth is one too many
            extra = _association(receivers.port)
            assert extra.is_rejected, "a fourth association was accepted"
            assert (extra.acceptor.primitive.result, extra.acceptor.primitive.diagnostic) == (0x02, 0x02)
        held.pop().release()

        def admitted() -> bool:
            again = _association(receivers.port)
            established = bool(again.is_established)
            if established:
                again.release()
            return established

        wait_for(admitted, WAIT_S, "a released association's place freed")
    finally:
        for assoc in held:
            assoc.release()
    totals = metrics.ingest_totals(receivers.metrics_dir)
    assert sum(value for name, value in totals.items() if reason in name and "rejected" in name) == 3


def test_storage_commitment_is_answered_from_what_any_process_stored(
    start: Callable[..., ReceiverProcesses],
) -> None:
    receivers = start(storage_commitment_settle_s=3)  # the unknown instance is looked for that long
    study, series = generate_uid(), generate_uid()
    stored = [make_mr_instance(study, series, i, rows=8, columns=8) for i in range(4)]
    for dataset in stored:  # one association each: spread over both processes
        assoc = _association(receivers.port)
        assert assoc.is_established
        try:
            assert assoc.send_c_store(dataset).Status == 0x0000
        finally:
            assoc.release()
    unknown = Reference(MRImageStorage, generate_uid())
    references = [Reference(MRImageStorage, ds.SOPInstanceUID) for ds in stored] + [unknown]
    reports = Reports()
    assoc = _peer_ae().associate(
        "127.0.0.1", receivers.port, ae_title="CODEBRAIN", evt_handlers=[(evt.EVT_N_EVENT_REPORT, reports.handler)]
    )
    assert assoc.is_established
    try:
        assert _ask(assoc, generate_uid(), references) == 0x0000
        assert reports.arrived.wait(WAIT_S), "no N-EVENT-REPORT"
    finally:
        assoc.release()
    result = read_event_information(reports.received[0][1])
    assert {r.sop_instance_uid for r in result.committed} == {ds.SOPInstanceUID for ds in stored}
    assert [(f.reference.sop_instance_uid, f.reason) for f in result.failed] == [(unknown.sop_instance_uid, 0x0112)]


def test_the_metrics_endpoint_sums_the_processes(start: Callable[..., ReceiverProcesses], tmp_path: Path) -> None:
    receivers = start()
    _store_one_per_association(receivers.port, 4)
    server = metrics.start_metrics_server("127.0.0.1", 0, receiver_metrics=receivers.metrics_dir)
    try:
        text = _scrape(server.port)
    finally:
        server.stop()
    lines = [line for line in text.splitlines() if line.startswith("codebrain_ingest_instances_total")]
    assert lines == ['codebrain_ingest_instances_total{outcome="stored"} 4.0']
    assert text.count("# TYPE codebrain_ingest_instances_total counter") == 1  # this process's own family left out


def test_a_process_that_dies_is_started_again_and_receives(
    start: Callable[..., ReceiverProcesses], factory: sessionmaker[Session]
) -> None:
    receivers = start()
    victim = receivers.pids[0]
    before = metrics.RECEIVER_RESTARTS._value.get()
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: victim not in receivers.pids and len(receivers.pids) == 2, WAIT_S, "a replacement process")
    assert metrics.RECEIVER_RESTARTS._value.get() == before + 1
    uids = _store_one_per_association(receivers.port, 4)
    wait_for(lambda: set(uids) <= set(_instances(factory)), WAIT_S, "the instances recorded")


def test_stop_leaves_no_receiver_process(start: Callable[..., ReceiverProcesses]) -> None:
    receivers = start()
    pids = receivers.pids
    assert len(pids) == 2 and not any(_gone(pid) for pid in pids)
    receivers.stop()
    assert all(_gone(pid) for pid in pids)
    assert receivers.pids == []


PARENT = textwrap.dedent(
    """
    import signal, sys, threading
    from pathlib import Path
    from codebrain_node.config import Settings
    from codebrain_node.receive.processes import ReceiverProcesses
    settings = Settings.model_validate_json(Path(sys.argv[1]).read_text())
    receivers = ReceiverProcesses(settings, record=False).start()
    print(" ".join(map(str, receivers.pids)), flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait(120)
    receivers.stop()
    """
)


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_the_receiver_processes_end_with_their_parent(tmp_path: Path, how: signal.Signals) -> None:
    """SIGTERM: the parent stops them; SIGKILL: they see the parent gone and stop by themselves."""
    settings = node_settings(tmp_path / "data", receiver_processes=2)
    config = tmp_path / "settings.json"
    config.write_text(settings.model_dump_json())
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(config)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        assert parent.stdout is not None
        pids = [int(pid) for pid in parent.stdout.readline().split()]
        assert len(pids) == 2
        assert _association(settings.dicom.port).is_established  # listening, through the inherited socket
        parent.send_signal(how)
        parent.wait(timeout=WAIT_S)
        deadline = time.monotonic() + WAIT_S
        while not all(_gone(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert all(_gone(pid) for pid in pids), "a receiver process outlived its parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(timeout=10)


def test_serve_with_two_receiver_processes_has_one_metrics_endpoint_and_stops_them(tmp_path: Path) -> None:
    """The node as ``serve`` runs it (no engine): its metrics endpoint sums what both processes received, and its
    stop leaves none running."""
    from codebrain_node.node.serve import Node

    settings = node_settings(tmp_path / "data", receiver_processes=2, port=0)
    settings.metrics.enabled, settings.metrics.bind_address, settings.metrics.port = True, "127.0.0.1", 0
    node = Node(settings, engine_mode="none", review=False).start()
    try:
        assert isinstance(node.receive, ReceiverProcesses)
        pids = node.receive.pids
        _store_one_per_association(node.port, 4)
        assert node.metrics is not None
        text = _scrape(node.metrics.port)
        assert 'codebrain_ingest_instances_total{outcome="stored"} 4.0' in text.splitlines()
        assert text.count("# TYPE codebrain_ingest_instances_total counter") == 1
    finally:
        node.stop()
    assert all(_gone(pid) for pid in pids)


def test_two_processes_serve_tls_and_plain_on_the_inherited_sockets(
    start: Callable[..., ReceiverProcesses], factory: sessionmaker[Session], tmp_path: Path
) -> None:
    from tests.receive.test_tls import storescu, with_certificate
    from tests.tls_fixtures import make_pki

    pki = make_pki(tmp_path / "pki")
    receivers = start(
        tls="both",
        tls_port=0,
        tls_certificate=str(pki.server.certificate),
        tls_private_key=str(pki.server.private_key),
    )
    assert receivers.tls_port is not None and receivers.tls_port != receivers.port
    secure = write_mr_series(tmp_path / "tls", 3, rows=16, columns=16)
    plain = write_mr_series(tmp_path / "plain", 2, rows=16, columns=16)
    result = storescu(receivers.tls_port, secure, *with_certificate(pki))
    assert result.returncode == 0, result.stderr
    result = storescu(receivers.port, plain)
    assert result.returncode == 0, result.stderr
    wait_for(lambda: len(_instances(factory)) == 5, WAIT_S, "the five instances recorded")
