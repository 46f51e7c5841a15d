"""C-STORE over DICOM TLS (PS3.15 Annex B.9, the BCP 195 profile) to DCMTK's storescp in its TLS mode.

Debian's DCMTK 3.6.7 is built with OpenSSL: ``storescp +tls KEY CERT +cf CA`` presents its certificate and, by
default (``--require-peer-cert``), requires a client certificate that chains to CA. The CA and certificates are
made per test (``tests/tls_fixtures.py``); no key is committed. Tests skip when storescp is absent.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from codebrain_node.config import ConfigError, Settings, effective_items, load_settings
from codebrain_node.db.models import Export, ExportStatus, Study, StudyState
from codebrain_node.export.dispatch import build_destinations, run_due_exports
from codebrain_node.node.serve import check_tls_files
from tests.dicom_fixtures import free_port
from tests.e2e.e2e_support import StoreSCP
from tests.export.conftest import ApprovedStudy
from tests.tls_fixtures import PKI, make_pki

PACS_AE = "TLSPACS"


@pytest.fixture
def pki(tmp_path: Path) -> PKI:
    return make_pki(tmp_path / "pki")


def _listening(server: StoreSCP, timeout_s: float = 20.0) -> None:
    """A TCP connect succeeds (no C-ECHO: that would need TLS), or storescp has exited: say why."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"storescp exited: {server.process.stderr.read().decode() if server.process.stderr else ''}"
            )
        try:
            socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("storescp did not listen")


def tls_storescp(folder: Path, pki: PKI, *extra: str) -> StoreSCP:
    """DCMTK storescp listening with TLS only; every received instance in its own file."""
    tls = ["+tls", str(pki.server.private_key), str(pki.server.certificate), "+cf", str(pki.ca), *extra]
    return StoreSCP(folder, free_port(), PACS_AE, options=tls, ready=_listening)


@pytest.fixture
def tls_pacs(tmp_path: Path, pki: PKI) -> Iterator[Callable[..., StoreSCP]]:
    started: list[StoreSCP] = []

    def start(*extra: str) -> StoreSCP:
        server = tls_storescp(tmp_path / f"pacs{len(started)}", pki, *extra)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def tls_destination(port: int, pki: PKI, **changes: object) -> dict[str, object]:
    entry: dict[str, object] = {
        "name": "pacs",
        "kind": "dicom",
        "ae_title": PACS_AE,
        "host": "127.0.0.1",
        "port": port,
        "tls": True,
        "tls_ca_certificates": str(pki.ca),
        "tls_certificate": str(pki.client.certificate),
        "tls_private_key": str(pki.client.private_key),
    }
    entry.update(changes)
    return entry


def _exports(factory: sessionmaker[Session]) -> list[Export]:
    with factory() as session:
        return list(session.scalars(select(Export).order_by(Export.id)))


def test_series_exported_over_tls_to_dcmtk_storescp(  # type: ignore[no-untyped-def]
    factory: sessionmaker[Session], approved_study: ApprovedStudy, make_settings, tls_pacs, pki: PKI
) -> None:
    pacs = tls_pacs()
    settings: Settings = make_settings([tls_destination(pacs.port, pki)])
    assert run_due_exports(factory, settings) == 1
    received = pacs.files()
    assert sorted(dcmread(path).SOPInstanceUID for path in received) == sorted(approved_study.sop_uids)
    assert {e.status for e in _exports(factory)} == {ExportStatus.SENT}
    with factory() as session:
        assert session.scalars(select(Study)).one().state == StudyState.EXPORTED


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        # storescp requires a client certificate (--require-peer-cert, its default): none offered
        ({"tls_certificate": None, "tls_private_key": None}, "handshake"),
        # the peer's certificate is not signed by the CA we trust
        ({"tls_ca_certificates": "STRANGER_CA"}, "handshake"),
        # the certificate names localhost and 127.0.0.1, not this
        ({"tls_server_name": "pacs.elsewhere.example"}, "handshake"),
        # a plain association to a TLS port
        ({"tls": False, "tls_ca_certificates": None, "tls_certificate": None, "tls_private_key": None}, "plain"),
    ],
)
def test_a_peer_that_fails_tls_checks_gets_nothing_and_the_export_is_retried(  # type: ignore[no-untyped-def]
    factory: sessionmaker[Session],
    approved_study: ApprovedStudy,
    make_settings,
    tls_pacs,
    pki: PKI,
    changes: dict[str, object],
    reason: str,
) -> None:
    pacs = tls_pacs()
    changes = {key: str(pki.stranger_ca) if value == "STRANGER_CA" else value for key, value in changes.items()}
    settings: Settings = make_settings([tls_destination(pacs.port, pki, **changes)])
    assert run_due_exports(factory, settings) == 0
    assert pacs.files() == []
    (export,) = _exports(factory)
    assert export.status == ExportStatus.PENDING and export.attempts == 1  # retried with back-off
    if reason == "handshake":
        assert "(TLS): association" in (export.last_error or "")
        assert "a failed TLS handshake or our certificate refused: see the log" in (export.last_error or "")


def test_a_missing_tls_file_fails_that_attempt_not_the_dispatcher(  # type: ignore[no-untyped-def]
    factory: sessionmaker[Session], approved_study: ApprovedStudy, make_settings, pki: PKI, tmp_path: Path
) -> None:
    gone = tmp_path / "gone-ca.pem"
    settings: Settings = make_settings([tls_destination(free_port(), pki, tls_ca_certificates=str(gone))])
    assert run_due_exports(factory, settings) == 0
    (export,) = _exports(factory)
    assert export.status == ExportStatus.PENDING
    assert f"export.destinations[pacs].tls_ca_certificates {gone}: no such file" in (export.last_error or "")


def test_serve_checks_destination_tls_files_at_start(tmp_path: Path, pki: PKI) -> None:
    gone = tmp_path / "gone.key"
    settings = Settings.model_validate(
        {"export": {"destinations": [tls_destination(11112, pki, tls_private_key=str(gone))]}}
    )
    with pytest.raises(ConfigError, match=rf"export\.destinations\[pacs\]\.tls_private_key {gone}: no such file"):
        check_tls_files(settings)
    check_tls_files(Settings.model_validate({"export": {"destinations": [tls_destination(11112, pki)]}}))


def test_destination_tls_settings_are_checked_when_the_config_loads(tmp_path: Path, pki: PKI) -> None:
    config = tmp_path / "node.toml"
    config.write_text(
        '[[export.destinations]]\nname = "pacs"\nkind = "dicom"\nae_title = "PACS"\nhost = "pacs"\nport = 2762\n'
        f'tls_ca_certificates = "{pki.ca}"\n'
    )
    with pytest.raises(ConfigError, match="tls_ca_certificates set but tls is false"):
        load_settings(config, environ={})
    config.write_text(config.read_text() + f'tls = true\ntls_certificate = "{pki.client.certificate}"\n')
    with pytest.raises(ConfigError, match="tls_certificate and tls_private_key go together"):
        load_settings(config, environ={})


def test_config_show_masks_a_destination_key_passphrase(pki: PKI) -> None:
    entry = tls_destination(2762, pki, tls_private_key_password="s3cret-passphrase")
    settings = Settings.model_validate({"export": {"destinations": [entry]}})
    shown = {key: value for key, value, _ in effective_items(settings)}
    assert "s3cret-passphrase" not in shown["export.destinations"]
    assert str(pki.client.private_key) in shown["export.destinations"]  # paths are not secret
    assert build_destinations(settings)["pacs"].tls is not None  # type: ignore[attr-defined]
