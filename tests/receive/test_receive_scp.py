"""The SCP end to end on loopback: association policy, statuses, durability, idempotence, recording."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    EnhancedMRImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
    generate_uid,
)
from pynetdicom import AE, _config
from pynetdicom.sop_class import CTImageStorage, MRImageStorage, Verification
from sqlalchemy import func, select

from codebrain_node.db.models import Instance, Series, Study
from codebrain_node.receive.service import ReceiveService, start_receive_service
from tests.dicom_fixtures import STORESCU, make_mr_instance, write_mr_series
from tests.imaging.enhanced_mr import to_enhanced_mr

CALLER = "STORESCU"


def _associate(port: int, calling: str = CALLER, contexts=None):  # type: ignore[no-untyped-def]
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    for abstract, syntaxes in contexts or [(MRImageStorage, [ExplicitVRLittleEndian]), (Verification, None)]:
        if syntaxes:
            ae.add_requested_context(abstract, syntaxes)
        else:
            ae.add_requested_context(abstract)
    return ae.associate("127.0.0.1", port, ae_title="CODEBRAIN")


def _instance(index: int = 0, study: str | None = None, series: str | None = None) -> Dataset:
    return make_mr_instance(study or generate_uid(), series or generate_uid(), index, rows=16, columns=16)


def _spooled(service: ReceiveService) -> list[Path]:
    return sorted(service.spool.incoming.glob("*/*/*.dcm"))


def test_echo(service: ReceiveService) -> None:
    assoc = _associate(service.port)
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()


def test_unknown_caller_rejected_at_association(service: ReceiveService) -> None:
    assoc = _associate(service.port, calling="INTRUDER")
    assert assoc.is_rejected
    reply = assoc.acceptor.primitive
    assert (reply.result, reply.result_source, reply.diagnostic) == (0x01, 0x01, 0x03)
    # the node keeps serving
    again = _associate(service.port)
    assert again.is_established
    again.release()


def test_host_not_allowed_rejected(tmp_path, factory, make_settings) -> None:  # type: ignore[no-untyped-def]
    running = start_receive_service(make_settings(tmp_path / "d", allowed_hosts=["10.9.9.9"]), factory)
    try:
        assert _associate(running.port).is_rejected
    finally:
        running.stop()


def test_non_mr_sop_class_refused(service: ReceiveService) -> None:
    assoc = _associate(
        service.port, contexts=[(CTImageStorage, [ExplicitVRLittleEndian]), (MRImageStorage, [ExplicitVRLittleEndian])]
    )
    assert assoc.is_established
    refused = {str(cx.abstract_syntax): cx.result for cx in assoc.rejected_contexts}
    assert refused == {CTImageStorage: 0x03}  # abstract syntax not supported
    assert [str(cx.abstract_syntax) for cx in assoc.accepted_contexts] == [MRImageStorage]
    assoc.release()


def test_bad_instances_fail_while_the_rest_of_the_association_is_stored(service: ReceiveService, tmp_path) -> None:  # type: ignore[no-untyped-def]
    study, series = generate_uid(), generate_uid()
    good_first, good_last = _instance(0, study, series), _instance(3, study, series)
    missing_uid = _instance(1, study, series)
    del missing_uid.StudyInstanceUID
    corrupt_path = tmp_path / "corrupt.dcm"
    corrupt = _instance(2, study, series)
    corrupt.save_as(corrupt_path, enforce_file_format=True)
    raw = bytearray(corrupt_path.read_bytes())
    header_end = raw.find(b"\x08\x00\x16\x00")  # (0008,0016) SOP Class UID: first dataset element
    raw[header_end + 6 : header_end + 8] = b"\xff\xff"  # its length now runs far past the end of the file
    corrupt_path.write_bytes(bytes(raw))

    assoc = _associate(service.port)
    statuses = [assoc.send_c_store(good_first).Status, assoc.send_c_store(missing_uid).Status]
    _config.STORE_SEND_CHUNKED_DATASET = True  # send the file's bytes as they are, unparsed
    try:
        statuses.append(assoc.send_c_store(corrupt_path).Status)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False
    statuses.append(assoc.send_c_store(good_last).Status)
    assoc.release()

    assert statuses[0] == 0x0000 and statuses[3] == 0x0000
    assert statuses[1] == 0xA900
    assert 0xC000 <= statuses[2] <= 0xCFFF
    assert {p.stem for p in _spooled(service)} == {good_first.SOPInstanceUID, good_last.SOPInstanceUID}
    assert service.recorder.flush(10)
    with service.recorder.factory() as session:
        assert session.scalar(select(func.count(Instance.id))) == 2
    assert not list(service.spool.tmp.iterdir())


def test_duplicate_sop_instance_is_idempotent(service: ReceiveService) -> None:
    dataset = _instance()
    assoc = _associate(service.port)
    assert assoc.send_c_store(dataset).Status == 0x0000
    assert assoc.send_c_store(dataset).Status == 0x0000
    assoc.release()
    assert len(_spooled(service)) == 1
    assert service.recorder.flush(10)
    with service.recorder.factory() as session:
        assert session.scalar(select(func.count(Instance.id))) == 1


@pytest.mark.parametrize(
    "syntax", [ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, RLELossless]
)
def test_transfer_syntaxes_stored_as_sent(service: ReceiveService, syntax: str) -> None:
    dataset = _instance()
    if syntax == RLELossless:
        dataset.compress(RLELossless)
    else:
        dataset.file_meta.TransferSyntaxUID = syntax  # pynetdicom encodes the dataset in this syntax
    assoc = _associate(service.port, contexts=[(MRImageStorage, [syntax])])
    assert assoc.is_established
    assert assoc.send_c_store(dataset).Status == 0x0000
    assoc.release()
    (stored,) = _spooled(service)
    assert dcmread(stored).file_meta.TransferSyntaxUID == syntax


@pytest.mark.skipif(not STORESCU.exists(), reason="DCMTK /usr/bin/storescu not installed")
def test_storescu_files_complete_on_disk_and_recorded(service: ReceiveService, tmp_path: Path) -> None:
    files = write_mr_series(tmp_path / "send", 12, rows=32, columns=32)
    command = [str(STORESCU), "-aet", CALLER, "-aec", "CODEBRAIN", "127.0.0.1", str(service.port), *map(str, files)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, env={"TCP_NODELAY": "1"})
    assert done.returncode == 0, done.stderr
    # storescu returned, so every success came back: every file must be in place and whole already
    spooled = _spooled(service)
    assert len(spooled) == 12
    for path in spooled:
        dataset = dcmread(path)
        assert dataset.pixel_array.shape == (32, 32)
        assert path.parent.parent.name == dataset.StudyInstanceUID
        assert path.parent.name == dataset.SeriesInstanceUID
    assert service.recorder.flush(10)
    with service.recorder.factory() as session:
        study = session.scalars(select(Study)).one()
        assert study.calling_ae_title == CALLER
        assert session.scalar(select(func.count(Series.id))) == 1
        assert session.scalar(select(func.count(Instance.id))) == 12


def test_low_disk_watermark_refuses_associations(tmp_path, factory, make_settings) -> None:  # type: ignore[no-untyped-def]
    free_mb = shutil.disk_usage(tmp_path).free // (1024 * 1024)
    running = start_receive_service(make_settings(tmp_path / "d", min_free_disk_mb=free_mb * 4 + 1), factory)
    try:
        assoc = _associate(running.port)
        assert assoc.is_rejected
        reply = assoc.acceptor.primitive
        assert (reply.result, reply.result_source, reply.diagnostic) == (0x02, 0x03, 0x02)
    finally:
        running.stop()


def test_aborted_association_keeps_whole_instances_only_and_node_goes_on(service: ReceiveService) -> None:
    first, second = _instance(0), _instance(1)
    assoc = _associate(service.port)
    assert assoc.send_c_store(first).Status == 0x0000
    assoc.abort()
    assert [p.stem for p in _spooled(service)] == [first.SOPInstanceUID]
    assert not list(service.spool.tmp.iterdir())
    again = _associate(service.port)
    assert again.send_c_store(second).Status == 0x0000
    again.release()
    assert len(_spooled(service)) == 2


@pytest.mark.skipif(not STORESCU.exists(), reason="DCMTK /usr/bin/storescu not installed")
def test_storescu_enhanced_mr_stored_and_recorded(service: ReceiveService, tmp_path: Path) -> None:
    """A multi-frame Enhanced MR instance, as newer scanners send a whole series, arrives whole and is recorded."""
    slices = [make_mr_instance(generate_uid(), generate_uid(), index, rows=16, columns=16) for index in range(5)]
    for dataset in slices:  # one series of one study
        dataset.StudyInstanceUID, dataset.SeriesInstanceUID = slices[0].StudyInstanceUID, slices[0].SeriesInstanceUID
        dataset.FrameOfReferenceUID = slices[0].FrameOfReferenceUID
        dataset.EchoTime, dataset.RepetitionTime, dataset.ScanningSequence = 10.0, 500.0, "SE"
    enhanced = to_enhanced_mr(slices)
    path = tmp_path / "enhanced.dcm"
    enhanced.save_as(path, enforce_file_format=True)
    command = [str(STORESCU), "-aet", CALLER, "-aec", "CODEBRAIN", "127.0.0.1", str(service.port), str(path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, env={"TCP_NODELAY": "1"})
    assert done.returncode == 0, done.stderr
    (stored,) = _spooled(service)
    received = dcmread(stored)
    assert received.SOPClassUID == EnhancedMRImageStorage and int(received.NumberOfFrames) == 5
    assert received.pixel_array.shape == (5, 16, 16)
    assert service.recorder.flush(10)
    with service.recorder.factory() as session:
        instance = session.scalars(select(Instance)).one()
        assert instance.sop_class_uid == EnhancedMRImageStorage
        assert instance.sop_instance_uid == enhanced.SOPInstanceUID
