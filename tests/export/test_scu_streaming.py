"""The DICOM destination sends each file as written when the peer accepts its transfer syntax (streamed, not
decoded and re-encoded) and converts only a file the peer needs in another syntax."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.filereader import read_dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import MRImageStorage

from codebrain_node.config import Settings
from codebrain_node.export.dispatch import build_destinations
from tests.dicom_fixtures import free_port, make_mr_instance

PACS = "STREAMPACS"


def _written_files(folder: Path, count: int = 3) -> list[Path]:
    study, series = generate_uid(), generate_uid()
    paths = []
    for index in range(count):
        dataset = make_mr_instance(study, series, index, rows=16, columns=16, seed=index)
        path = folder / f"{index}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


@pytest.fixture
def pacs_accepting() -> Iterator[Callable[[str], tuple[int, list[tuple[str, bytes]]]]]:
    """A pynetdicom PACS accepting MR images in one transfer syntax; it keeps (syntax, raw data set bytes)."""
    servers = []

    def start(syntax: str) -> tuple[int, list[tuple[str, bytes]]]:
        received: list[tuple[str, bytes]] = []
        lock = threading.Lock()
        ae = AE(ae_title=PACS)
        ae.add_supported_context(MRImageStorage, [syntax])
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 5

        def on_store(event: evt.Event) -> int:
            with lock:
                received.append((str(event.context.transfer_syntax), event.request.DataSet.getvalue()))
            return 0x0000

        port = free_port()
        servers.append(ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]))
        return port, received

    yield start
    for server in servers:
        server.shutdown()


def _destination(tmp_path: Path, port: int):
    settings = Settings.model_validate(
        {
            "paths": {"data_dir": str(tmp_path / "data")},
            "dicom": {"network_timeout_s": 5},
            "export": {
                "calling_ae_title": "CODEBRAIN",
                "destinations": [
                    {"name": "pacs", "kind": "dicom", "ae_title": PACS, "host": "127.0.0.1", "port": port}
                ],
            },
        }
    )
    return build_destinations(settings)["pacs"]


def test_a_file_in_an_accepted_syntax_arrives_byte_for_byte_as_written(tmp_path, pacs_accepting):
    port, received = pacs_accepting(ExplicitVRLittleEndian)
    files = _written_files(tmp_path)
    delivered: list[Path] = []
    _destination(tmp_path, port).send(files, delivered.append)
    assert delivered == files and len(received) == 3
    for path, (syntax, payload) in zip(files, received, strict=True):
        raw = path.read_bytes()
        assert syntax == ExplicitVRLittleEndian
        assert raw.endswith(payload) and len(raw) - len(payload) < 400  # the file's own bytes after its meta


def test_a_file_the_peer_needs_in_another_syntax_is_converted(tmp_path, pacs_accepting):
    port, received = pacs_accepting(ImplicitVRLittleEndian)
    files = _written_files(tmp_path, count=2)
    _destination(tmp_path, port).send(files)
    assert [syntax for syntax, _ in received] == [ImplicitVRLittleEndian] * 2
    for path, (_, payload) in zip(files, received, strict=True):
        assert not path.read_bytes().endswith(payload)  # re-encoded, not the file's bytes
        arrived = read_dataset(BytesIO(payload), is_implicit_VR=True, is_little_endian=True)
        original = dcmread(path)
        assert arrived.SOPInstanceUID == original.SOPInstanceUID
        assert np.array_equal(np.frombuffer(arrived.PixelData, "<i2"), original.pixel_array.ravel())
