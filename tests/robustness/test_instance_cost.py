"""#16, defect 5: what one instance may cost is bounded. A deflate bomb (Deflated Explicit VR Little Endian, ~400 KB
inflating to 400 MiB) is refused 0xA700 once it inflates past ``dicom.max_inflated_mb``, never held whole; a
3,000-deep nesting of sequences is refused 0xC000 after ``dicom.max_sequence_depth`` levels, before pydicom reads
it; an element longer than ``dicom.max_element_mb`` is refused 0xA700. A normal study on the same association goes
through, and each refusal is one log line."""

from __future__ import annotations

import logging
import struct
import time
import tracemalloc
import zlib
from pathlib import Path

import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config
from pynetdicom.sop_class import MRImageStorage

from codebrain_node.receive.header import InstanceLimits
from codebrain_node.receive.service import ReceiveService
from codebrain_node.receive.spool import Spool, encode_file_header
from tests.dicom_fixtures import make_mr_instance
from tests.robustness.conftest import CALLER, EXPLICIT, wire_bytes

BOMB_BYTES = 400 * 1024 * 1024
DEPTH = 3_000
PIXEL_DATA_OB = b"\xe0\x7f\x10\x00OB\x00\x00"


def _instance(study: str, series: str, index: int) -> tuple[str, bytes]:
    dataset = make_mr_instance(study, series, index, rows=8, columns=8)
    return str(dataset.SOPInstanceUID), wire_bytes(dataset)


def deflate_bomb() -> tuple[str, bytes]:
    """A valid header whose Pixel Data is 400 MiB of zeros, deflated as it streams (never held whole here)."""
    sop, data = _instance(generate_uid(), generate_uid(), 0)
    header = data[: data.index(b"\xe0\x7f\x10\x00")] + PIXEL_DATA_OB + struct.pack("<I", BOMB_BYTES)
    squeezer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [squeezer.compress(header)]
    zeros = bytes(1 << 20)
    parts += [squeezer.compress(zeros) for _ in range(BOMB_BYTES >> 20)]
    parts.append(squeezer.flush())
    return sop, b"".join(parts)


def deep_nesting() -> tuple[str, bytes]:
    """Request Attributes Sequence (0040,0275) nested 3,000 deep (undefined lengths), just ahead of Pixel Data:
    past the attributes the receiver files under, where only the engine's pydicom would have read it."""
    sop, data = _instance(generate_uid(), generate_uid(), 0)
    opening = b"\x40\x00\x75\x02SQ\x00\x00\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
    closing = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00" + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    at = data.index(b"\xe0\x7f\x10\x00")
    return sop, data[:at] + opening * DEPTH + closing * DEPTH + data[at:]


def part10(folder: Path, sop: str, data: bytes, syntax: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{sop}.dcm"
    path.write_bytes(encode_file_header(str(MRImageStorage), sop, syntax, "") + data)
    return path


@pytest.fixture(scope="module")
def bomb() -> tuple[str, bytes]:
    return deflate_bomb()


def test_abusive_instances_are_refused_and_the_study_goes_through(
    running_node: ReceiveService,
    tmp_path: Path,
    bomb: tuple[str, bytes],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)  # each file's bytes as they are, unparsed
    assert len(bomb[1]) < 1_000_000  # the campaign's bomb: 409 KB
    study, series = generate_uid(), generate_uid()
    good = [part10(tmp_path / "good", *_instance(study, series, index), EXPLICIT) for index in range(4)]
    abusive = {
        "deflate bomb": (part10(tmp_path / "bad", *bomb, DeflatedExplicitVRLittleEndian), 0xA700),
        "3,000-deep nesting": (part10(tmp_path / "bad", *deep_nesting(), EXPLICIT), 0xC000),
    }
    ae = AE(ae_title=CALLER)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    ae.add_requested_context(MRImageStorage, [EXPLICIT])
    ae.add_requested_context(MRImageStorage, [DeflatedExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", running_node.port, ae_title="CODEBRAIN")
    assert assoc.is_established
    caplog.set_level(logging.WARNING)
    try:
        statuses = [assoc.send_c_store(path).Status for path in good[:2]]
        answered = {name: assoc.send_c_store(path).Status for name, (path, _) in abusive.items()}
        statuses += [assoc.send_c_store(path).Status for path in good[2:]]
    finally:
        assoc.release()
    assert statuses == [0x0000] * 4
    assert answered == {name: status for name, (_, status) in abusive.items()}
    assert len(list(running_node.spool.incoming.rglob("*.dcm"))) == 4
    refusals = [record for record in caplog.records if "store failed" in record.getMessage()]
    assert len(refusals) == 2 and not any(record.exc_info for record in refusals)
    assert "inflates past" in refusals[0].getMessage() and "nested deeper than 16" in refusals[1].getMessage()


def test_a_bomb_costs_the_bound_not_its_inflated_size(tmp_path: Path, bomb: tuple[str, bytes]) -> None:
    """Memory: what the spool allocates for the bomb stays near ``max_inflated_bytes`` (8 MiB here)."""
    spool = Spool(tmp_path, limits=InstanceLimits(max_inflated_bytes=8 << 20))
    tracemalloc.start()
    try:
        outcome = spool.store(
            bomb[1],
            sop_class_uid=str(MRImageStorage),
            sop_instance_uid=bomb[0],
            transfer_syntax_uid=DeflatedExplicitVRLittleEndian,
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert outcome.status == 0xA700
    assert peak < 32 << 20, f"peak {peak >> 20} MiB"


def test_deep_nesting_is_refused_before_pydicom_reads_it(tmp_path: Path) -> None:
    sop, data = deep_nesting()
    started = time.process_time()
    outcome = Spool(tmp_path).store(
        data, sop_class_uid=str(MRImageStorage), sop_instance_uid=sop, transfer_syntax_uid=EXPLICIT
    )
    assert outcome.status == 0xC000
    assert time.process_time() - started < 2.0  # generous: it was 5 s; the walk stops after 16 levels


def test_an_element_longer_than_allowed_is_refused(tmp_path: Path) -> None:
    sop, data = _instance(generate_uid(), generate_uid(), 0)
    outcome = Spool(tmp_path, limits=InstanceLimits(max_element_bytes=64)).store(
        data, sop_class_uid=str(MRImageStorage), sop_instance_uid=sop, transfer_syntax_uid=EXPLICIT
    )
    assert outcome.status == 0xA700  # its 128-byte Pixel Data
    normal = Spool(tmp_path).store(
        data, sop_class_uid=str(MRImageStorage), sop_instance_uid=sop, transfer_syntax_uid=EXPLICIT
    )
    assert normal.status == 0x0000 and normal.instance is not None
