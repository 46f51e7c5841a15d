"""DICOMweb destination (STOW-RS, PS3.18 §10.5): what it sends, how it reads the Store Instances Response, and how
the dispatcher retries, backs off and dead-letters it, against a tiny STOW-RS server on loopback (answers chosen by
each test: stored, some failed, 409, 503, down; plain HTTP or HTTPS with a test CA). Orthanc's DICOMweb plugin,
with HTTP Basic authentication required, is the real server: tests/export/test_dicomweb_orthanc.py."""

from __future__ import annotations

import base64
import json
import re
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import generate_uid
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from codebrain_node.config import ConfigError, Settings, effective_items, load_settings
from codebrain_node.db.models import Export, ExportStatus, Study, StudyState, utcnow
from codebrain_node.export.base import DeliveryError
from codebrain_node.export.dicomweb import DicomWebDestination, failure_reason
from codebrain_node.export.dispatch import build_destinations, retry_dead_letters, run_due_exports
from codebrain_node.tls import TLSFileError
from tests.dicom_fixtures import free_port, make_mr_instance
from tests.export.conftest import ApprovedStudy
from tests.tls_fixtures import PKI, make_pki

#: (HTTP status, Store Instances Response as DICOM JSON or None for no body) for the datasets of one request.
Answer = Callable[[list[Dataset]], tuple[int, dict[str, Any] | None]]


@dataclass
class StowRequest:
    path: str
    headers: dict[str, str]
    sop_uids: list[str]


def _item(dataset: Dataset, failure: int | None = None) -> dict[str, Any]:
    item = {
        "00081150": {"vr": "UI", "Value": [str(dataset.SOPClassUID)]},
        "00081155": {"vr": "UI", "Value": [str(dataset.SOPInstanceUID)]},
    }
    if failure is not None:
        item["00081197"] = {"vr": "US", "Value": [failure]}
    return item


def response_module(stored: list[Dataset], failed: list[tuple[Dataset, int]]) -> dict[str, Any]:
    """The Store Instances Response Module (PS3.18 Table 10.5.3-1) in DICOM JSON: Referenced and Failed SOP Sequence."""
    module: dict[str, Any] = {}
    if stored:
        module["00081199"] = {"vr": "SQ", "Value": [_item(ds) for ds in stored]}
    if failed:
        module["00081198"] = {"vr": "SQ", "Value": [_item(ds, code) for ds, code in failed]}
    return module


def store_all(datasets: list[Dataset]) -> tuple[int, dict[str, Any] | None]:
    return 200, response_module(datasets, [])


def unavailable(datasets: list[Dataset]) -> tuple[int, dict[str, Any] | None]:
    return 503, None


class StowServer:
    """A STOW-RS origin server on 127.0.0.1: records each POST (path, headers, SOP Instance UIDs in its multipart
    body) and answers with ``answer``; over TLS when given a server context."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.requests: list[StowRequest] = []
        self.answer: Answer = store_all
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                datasets = _parts(self.headers["Content-Type"], body)
                server.requests.append(
                    StowRequest(self.path, dict(self.headers), [str(ds.SOPInstanceUID) for ds in datasets])
                )
                status, module = server.answer(datasets)
                payload = json.dumps(module).encode() if module is not None else b""
                self.send_response(status)
                self.send_header("Content-Type", "application/dicom+json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            self.http.socket = tls.wrap_socket(self.http.socket, server_side=True)
        self.scheme = "https" if tls is not None else "http"
        self.thread = threading.Thread(target=self.http.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.http.server_address[1]}/dicom-web"

    def received(self) -> list[str]:
        return [uid for request in self.requests for uid in request.sop_uids]

    def stop(self) -> None:
        self.http.shutdown()
        self.http.server_close()
        self.thread.join(timeout=10)


def _parts(content_type: str, body: bytes) -> list[Dataset]:
    """The Part 10 instances of a ``multipart/related; type="application/dicom"`` body (PS3.18 §8.6.1.2)."""
    assert content_type.startswith("multipart/related") and 'type="application/dicom"' in content_type
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    assert match is not None
    delimiter = b"\r\n--" + match.group(1).encode()
    chunks = body.split(delimiter)
    assert chunks[-1].startswith(b"--")  # the close delimiter
    return [dcmread(BytesIO(chunk.partition(b"\r\n\r\n")[2])) for chunk in chunks[1:-1]]


@pytest.fixture
def stow() -> Iterator[StowServer]:
    server = StowServer()
    yield server
    server.stop()


@pytest.fixture
def pki(tmp_path: Path) -> PKI:
    return make_pki(tmp_path / "pki")


def _entry(url: str, **extra: Any) -> dict[str, Any]:
    return {"name": "web", "kind": "dicomweb", "url": url, **extra}


def _destination(url: str, **extra: Any) -> DicomWebDestination:
    settings = Settings.model_validate({"export": {"destinations": [_entry(url, **extra)]}})
    destination = build_destinations(settings)["web"]
    assert isinstance(destination, DicomWebDestination)
    return destination


def _export(factory: sessionmaker[Session]) -> Export:
    with factory() as session:
        return session.scalars(select(Export)).one()


def _state(factory: sessionmaker[Session], study_uid: str) -> StudyState:
    with factory() as session:
        return StudyState(session.scalars(select(Study).where(Study.study_instance_uid == study_uid)).one().state)


class FakeClock:
    def __init__(self) -> None:
        self.moment = utcnow()

    def __call__(self):  # type: ignore[no-untyped-def]
        return self.moment

    def advance(self, seconds: float) -> None:
        self.moment += timedelta(seconds=seconds)


# --- through the dispatcher ------------------------------------------------------------------------------------


def test_series_posted_in_batches_with_a_bearer_token_then_exported(  # type: ignore[no-untyped-def]
    factory, approved_study: ApprovedStudy, make_settings, stow: StowServer
) -> None:
    settings = make_settings([_entry(stow.url, auth="bearer", token="t0ken", batch_size=2)])
    assert run_due_exports(factory, settings) == 1
    assert [len(request.sop_uids) for request in stow.requests] == [2, 1]
    assert sorted(stow.received()) == sorted(approved_study.sop_uids)
    for request in stow.requests:
        assert request.path == "/dicom-web/studies"
        assert request.headers["Authorization"] == "Bearer t0ken"
        assert request.headers["Accept"] == "application/dicom+json"
    assert _export(factory).status == ExportStatus.SENT
    assert _state(factory, approved_study.study_uid) == StudyState.EXPORTED
    assert run_due_exports(factory, settings) == 0 and len(stow.received()) == 3  # nothing sent twice


def test_a_partly_failed_store_keeps_what_was_stored_and_resends_only_the_rest(  # type: ignore[no-untyped-def]
    factory, approved_study: ApprovedStudy, make_settings, stow: StowServer
) -> None:
    """HTTP 202 with one instance in the Failed SOP Sequence (0xA700): the other two count as delivered, the error
    names the reason, and the next attempt posts the failed one alone."""
    refused = approved_study.sop_uids[1]

    def one_out_of_resources(datasets: list[Dataset]) -> tuple[int, dict[str, Any]]:
        stored = [ds for ds in datasets if ds.SOPInstanceUID != refused]
        failed = [(ds, 0xA700) for ds in datasets if ds.SOPInstanceUID == refused]
        return 202, response_module(stored, failed)

    stow.answer = one_out_of_resources
    clock = FakeClock()
    settings = make_settings([_entry(stow.url)], backoff_initial_s=10, backoff_max_s=10)
    assert run_due_exports(factory, settings, now=clock) == 0
    export = _export(factory)
    assert export.status == ExportStatus.PENDING and export.attempts == 1
    assert "1 of 3 instance(s) not stored: 0xA700 (out of resources)" in (export.last_error or "")

    stow.answer = store_all
    clock.advance(10)
    assert run_due_exports(factory, settings, now=clock) == 1
    assert stow.requests[-1].sop_uids == [refused]
    assert sorted(stow.received()) == sorted([*approved_study.sop_uids, refused])
    assert _state(factory, approved_study.study_uid) == StudyState.EXPORTED


def test_503_backs_off_then_dead_letters_and_a_retry_sends(  # type: ignore[no-untyped-def]
    factory, approved_study: ApprovedStudy, make_settings, stow: StowServer
) -> None:
    stow.answer = unavailable
    clock = FakeClock()
    settings = make_settings([_entry(stow.url)], backoff_initial_s=5, backoff_max_s=60, max_attempts=2)
    assert run_due_exports(factory, settings, now=clock) == 0
    export = _export(factory)
    assert export.status == ExportStatus.PENDING and "HTTP 503 service unavailable" in (export.last_error or "")
    assert export.next_attempt_at is not None
    clock.advance(2)
    assert run_due_exports(factory, settings, now=clock) == 0 and len(stow.requests) == 1  # not due yet
    clock.advance(3)
    run_due_exports(factory, settings, now=clock)
    assert _export(factory).status == ExportStatus.DEAD_LETTER and len(stow.requests) == 2
    assert _state(factory, approved_study.study_uid) == StudyState.DEAD_LETTER
    clock.advance(3600)
    assert run_due_exports(factory, settings, now=clock) == 0 and len(stow.requests) == 2

    stow.answer = store_all
    assert retry_dead_letters(factory, study_uid=approved_study.study_uid, now=clock) == 1
    assert run_due_exports(factory, settings, now=clock) == 1
    assert sorted(stow.requests[-1].sop_uids) == sorted(approved_study.sop_uids)
    assert _state(factory, approved_study.study_uid) == StudyState.EXPORTED


def test_a_server_that_is_down_is_retried_until_it_answers(  # type: ignore[no-untyped-def]
    factory, approved_study: ApprovedStudy, make_settings
) -> None:
    port = free_port()
    clock = FakeClock()
    settings = make_settings([_entry(f"http://127.0.0.1:{port}/dicom-web")], backoff_initial_s=1, backoff_max_s=1)
    assert run_due_exports(factory, settings, now=clock) == 0
    export = _export(factory)
    assert export.status == ExportStatus.PENDING
    assert "unreachable" in (export.last_error or "") and "Connection refused" in (export.last_error or "")


# --- the Store Instances Response, read by send() ---------------------------------------------------------------


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    """Three instances of one series on disk (no database: send() alone is under test)."""
    study_uid, series_uid = generate_uid(), generate_uid()
    paths = []
    for index in range(3):
        dataset = make_mr_instance(study_uid, series_uid, index, rows=8, columns=8)
        path = tmp_path / f"{index}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _uids(paths: list[Path]) -> list[str]:
    return sorted(str(dcmread(path, stop_before_pixels=True).SOPInstanceUID) for path in paths)


def test_409_none_stored_names_each_reason_and_delivers_nothing(files: list[Path], stow: StowServer) -> None:
    stow.answer = lambda datasets: (
        409,
        response_module([], [(datasets[0], 0xC000), *[(ds, 0xA900) for ds in datasets[1:]]]),
    )
    delivered: list[Path] = []
    with pytest.raises(DeliveryError) as raised:
        _destination(stow.url).send(files, delivered.append)
    assert "3 of 3 instance(s) not stored" in str(raised.value)
    assert "0xC000 (cannot understand)" in str(raised.value)
    assert "0xA900 (data set does not match SOP class) x2" in str(raised.value)
    assert delivered == []


def test_only_instances_the_response_references_are_delivered(files: list[Path], stow: StowServer) -> None:
    """A 200 whose Referenced SOP Sequence leaves one out: that one is not taken as stored."""
    stow.answer = lambda datasets: (200, response_module(datasets[:2], []))
    delivered: list[Path] = []
    with pytest.raises(DeliveryError, match=r"1 of 3 instance.s. not stored: not in the server's response"):
        _destination(stow.url).send(files, delivered.append)
    assert _uids(delivered) == sorted(stow.received()[:2])


def test_a_200_without_a_body_means_all_stored(files: list[Path], stow: StowServer) -> None:
    stow.answer = lambda datasets: (200, None)
    delivered: list[Path] = []
    _destination(stow.url).send(files, delivered.append)
    assert delivered == files


def test_basic_auth_header(files: list[Path], stow: StowServer) -> None:
    _destination(stow.url, auth="basic", username="node", password="pa:ss").send(files)
    assert stow.requests[0].headers["Authorization"] == "Basic " + base64.b64encode(b"node:pa:ss").decode()


def test_failure_reason_names_codes_and_their_classes() -> None:
    assert failure_reason(0x0122) == "0x0122 (SOP class not supported)"
    assert failure_reason(0xA7FF) == "0xA7FF (out of resources)"
    assert failure_reason(0xC123) == "0xC123 (cannot understand)"
    assert failure_reason(0x0999) == "0x0999"
    assert failure_reason(None) == "no reason given"


# --- TLS --------------------------------------------------------------------------------------------------------


def _https_server(pki: PKI) -> StowServer:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.server.certificate, pki.server.private_key)
    return StowServer(tls=context)


def test_https_server_trusted_through_the_ca_file(files: list[Path], pki: PKI) -> None:
    server = _https_server(pki)
    try:
        _destination(server.url, tls_ca_certificates=str(pki.ca)).send(files)
        assert sorted(server.received()) == _uids(files)

        stranger = _destination(server.url, tls_ca_certificates=str(pki.stranger_ca))
        with pytest.raises(DeliveryError, match=r"TLS failed .*CERTIFICATE_VERIFY_FAILED"):
            stranger.send(files)
        assert len(server.received()) == 3  # nothing posted to a server we cannot trust
    finally:
        server.stop()


def test_check_refuses_a_ca_file_that_holds_no_certificate(tmp_path: Path) -> None:
    bogus = tmp_path / "ca.pem"
    bogus.write_text("not a certificate\n")
    with pytest.raises(TLSFileError, match=r"export\.destinations\[web\]"):
        _destination("https://pacs.example/dicom-web", tls_ca_certificates=str(bogus)).check()
    _destination("https://pacs.example/dicom-web").check()  # no CA file, no network: nothing to refuse


# --- configuration -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "named"),
    [
        ('url = "ftp://pacs/dicom-web"', r"dicomweb\.url .*not an http:// or https:// URL"),
        ('url = "http://node:secret@pacs/dicom-web"', r"dicomweb .*url: credentials do not go in the URL"),
        ('url = "http://pacs/dicom-web"\nauth = "basic"\nusername = "node"', r"auth = 'basic' needs password"),
        ('url = "http://pacs/dicom-web"\nauth = "bearer"', r"auth = 'bearer' needs token"),
        ('url = "http://pacs/dicom-web"\ntoken = "x"', r"token set but auth is 'none'"),
        ('url = "http://pacs/dicom-web"\ntls_ca_certificates = "/ca.pem"', r"url is not https://"),
        ('url = "http://pacs/dicom-web"\nbatch_size = 0', r"dicomweb\.batch_size"),
    ],
)
def test_a_bad_dicomweb_destination_is_an_error_when_the_config_loads(tmp_path: Path, table: str, named: str) -> None:
    config = tmp_path / "node.toml"
    config.write_text(f'[[export.destinations]]\nname = "web"\nkind = "dicomweb"\n{table}\n')
    with pytest.raises(ConfigError, match=named) as raised:
        load_settings(config, environ={})
    assert "secret" not in str(raised.value).replace("credentials", "")


def test_config_show_masks_password_and_token() -> None:
    settings = Settings.model_validate(
        {
            "export": {
                "destinations": [
                    _entry("https://pacs.example/dicom-web/", auth="basic", username="node", password="pw-123"),
                    {**_entry("https://other.example/dicom-web", auth="bearer", token="tok-456"), "name": "other"},
                ]
            }
        }
    )
    shown = {key: value for key, value, _ in effective_items(settings)}["export.destinations"]
    assert "pw-123" not in shown and "tok-456" not in shown and '"username": "node"' in shown
    assert _destination("https://pacs.example/dicom-web/").url == "https://pacs.example/dicom-web"  # no trailing /
