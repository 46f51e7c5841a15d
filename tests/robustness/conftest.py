"""Robustness fixtures: a database on SQLite and on PostgreSQL (skipped when the server is absent), a running
receive service on it, and hostile-but-parseable MR instances built from the shared fixture instance."""

from __future__ import annotations

import io
import struct
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom import config as pydicom_config
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage, Verification
from sqlalchemy.orm import Session, sessionmaker

from codebrain_node.config import Settings
from codebrain_node.db.session import session_factory, upgrade
from codebrain_node.receive.service import ReceiveService, start_receive_service
from codebrain_node.receive.spool import encode_file_header
from tests.dicom_fixtures import free_port, make_mr_instance

CALLER = "STORESCU"
EXPLICIT = "1.2.840.10008.1.2.1"
HUGE = "99999999999999999999"  # 20 digits: past int64, let alone a 32-bit INTEGER column
LONG_TEXT = "A" * 10_000


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def any_factory(request: pytest.FixtureRequest) -> sessionmaker[Session]:
    """A migrated database on each backend (the PostgreSQL one skips with the reason when the server is absent)."""
    engine = request.getfixturevalue(f"{request.param}_engine")
    upgrade(engine)
    return session_factory(engine)


def robust_settings(data_dir: Path) -> Settings:
    return Settings.model_validate(
        {
            "paths": {"data_dir": str(data_dir)},
            "dicom": {
                "ae_title": "CODEBRAIN",
                "bind_address": "127.0.0.1",
                "port": free_port(),
                "allowed_callers": [CALLER],
                "min_free_disk_mb": 0,
                "acse_timeout_s": 5,
                "dimse_timeout_s": 20,
                "network_timeout_s": 20,
            },
        }
    )


@pytest.fixture
def running_node(tmp_path: Path, any_factory: sessionmaker[Session]) -> Iterator[ReceiveService]:
    """The receive stage (recovery, recorder, SCP) on ``any_factory``, as ``serve`` starts it."""
    service = start_receive_service(robust_settings(tmp_path / "data"), any_factory)
    try:
        yield service
    finally:
        service.stop()


def associate(port: int, calling: str = CALLER):  # type: ignore[no-untyped-def]
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    ae.add_requested_context(MRImageStorage, [EXPLICIT])
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="CODEBRAIN")
    assert assoc.is_established
    return assoc


#: Integer String elements pydicom will not hold out-of-range values in: written as LO, relabelled IS on the wire.
_RELABELLED_IS = {keyword: tag_for_keyword(keyword) for keyword in ("SeriesNumber", "InstanceNumber")}


def raw(dataset: Dataset, keyword: str, vr: str, value: str) -> None:
    """Set an element as it would arrive from a careless sender, bypassing pydicom's value checks."""
    tag = tag_for_keyword(keyword)
    assert tag is not None
    dataset.add(DataElement(tag, "LO" if keyword in _RELABELLED_IS and vr == "IS" else vr, value))


#: Header values that break a column: name → how to spoil one instance.
HOSTILE_HEADERS: dict[str, Callable[[Dataset], None]] = {
    "series number past int64": lambda ds: raw(ds, "SeriesNumber", "IS", HUGE),
    "series number past int32": lambda ds: raw(ds, "SeriesNumber", "IS", "99999999999"),
    "instance number past int32": lambda ds: raw(ds, "InstanceNumber", "IS", "99999999999"),
    "instance number 1e400": lambda ds: raw(ds, "InstanceNumber", "IS", "1e400"),
    "10,000-character patient name": lambda ds: raw(ds, "PatientName", "PN", "DOE^" + LONG_TEXT),
    "10,000-character patient ID": lambda ds: raw(ds, "PatientID", "LO", LONG_TEXT),
    "10,000-character accession number": lambda ds: raw(ds, "AccessionNumber", "SH", LONG_TEXT),
    "10,000-character study description": lambda ds: raw(ds, "StudyDescription", "LO", LONG_TEXT),
    "10,000-character series description": lambda ds: raw(ds, "SeriesDescription", "LO", LONG_TEXT),
    "10,000-character modality": lambda ds: raw(ds, "Modality", "CS", LONG_TEXT),
    "study date of 10,000 characters": lambda ds: raw(ds, "StudyDate", "DA", LONG_TEXT),
    "frame of reference UID of 200 characters": lambda ds: raw(ds, "FrameOfReferenceUID", "UI", "1." * 100),
    "NUL inside the description": lambda ds: raw(ds, "SeriesDescription", "LO", "T1\x00post"),
}


def hostile_instance(spoil: Callable[[Dataset], None], study: str | None = None) -> Dataset:
    """A valid MR instance of a new study and series with one header value spoilt by ``spoil``."""
    dataset = make_mr_instance(study or generate_uid(), generate_uid(), 0, rows=8, columns=8)
    spoil(dataset)
    return dataset


def wire_bytes(dataset: Dataset) -> bytes:
    """The dataset as a peer sends it (explicit VR little endian, no File Meta), pydicom's value checks off."""
    copy = Dataset(dataset)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        previous = pydicom_config.settings.writing_validation_mode
        pydicom_config.settings.writing_validation_mode = pydicom_config.IGNORE
        try:
            copy.save_as(buffer, enforce_file_format=False, implicit_vr=False, little_endian=True)
        finally:
            pydicom_config.settings.writing_validation_mode = previous
    encoded = buffer.getvalue()
    for tag in _RELABELLED_IS.values():
        label = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
        encoded = encoded.replace(label + b"LO", label + b"IS", 1)
    return encoded


def part10_file(dataset: Dataset, folder: Path) -> Path:
    """``dataset`` as a Part 10 file of its wire bytes, for a sender that sends a file's bytes unparsed."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{dataset.SOPInstanceUID}.dcm"
    header = encode_file_header(str(dataset.SOPClassUID), str(dataset.SOPInstanceUID), EXPLICIT, "")
    path.write_bytes(header + wire_bytes(dataset))
    return path


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # type: ignore[no-untyped-def]
    """The campaign's figures (tests/robustness/campaign_report.py), printed and written beside the session's
    temporary folders, whenever a campaign test ran."""
    from tests.robustness import campaign_report

    if not campaign_report.FIGURES:
        return
    terminalreporter.write_sep("=", "robustness campaign (#16)")
    for line in campaign_report.lines():
        terminalreporter.write_line(line)
    factory = getattr(config, "_tmp_path_factory", None)
    if factory is not None:
        terminalreporter.write_line(f"written to {campaign_report.write(factory.getbasetemp())}")
