"""DICOM TLS on the receiver (PS3.15 Annex B.9, the BCP 195 profile), against DCMTK's storescu in its TLS modes.

Debian's DCMTK 3.6.7 is built with OpenSSL: ``+tls KEY CERT`` (authenticated), ``+tla`` (anonymous: no client
certificate), ``+cf CA`` (trust our server certificate), Non-downgrading BCP 195 profile by default. The CA and
every certificate are made per test in ``tmp_path`` (``tests/tls_fixtures.py``); no key is committed. A test that
needs storescu skips when it is absent.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from codebrain_node.config import ConfigError, Settings, effective_items, load_settings
from codebrain_node.receive.service import ReceiveService, start_receive_service
from codebrain_node.tls import TLSFileError
from tests.dicom_fixtures import STORESCU, free_port, write_mr_series
from tests.receive.conftest import CALLER
from tests.tls_fixtures import KEY_PASSPHRASE, PKI, encrypted_identity, make_pki

SLICES = 3


@pytest.fixture
def pki(tmp_path: Path) -> PKI:
    return make_pki(tmp_path / "pki")


@pytest.fixture
def series(tmp_path: Path) -> list[Path]:
    return write_mr_series(tmp_path / "series", SLICES, rows=32, columns=32)


@pytest.fixture
def start_tls(
    tmp_path: Path, pki: PKI, factory: sessionmaker[Session], make_settings: Callable[..., Settings]
) -> Iterator[Callable[..., ReceiveService]]:
    """Start a receive service with TLS settings on top of the receive tests' defaults; stopped afterwards."""
    running: list[ReceiveService] = []

    def start(**dicom: object) -> ReceiveService:
        values: dict[str, object] = {
            "tls": "both",
            "tls_port": free_port(),
            "tls_certificate": str(pki.server.certificate),
            "tls_private_key": str(pki.server.private_key),
        }
        values.update(dicom)
        service = start_receive_service(make_settings(tmp_path / f"data{len(running)}", **values), factory)
        running.append(service)
        return service

    yield start
    for service in running:
        service.stop()


def storescu(port: int, files: list[Path], *tls: str | Path) -> subprocess.CompletedProcess[str]:
    """DCMTK storescu to the node on loopback, with ``tls`` options (none: plain TCP)."""
    if not STORESCU.exists():
        pytest.skip(f"DCMTK storescu ({STORESCU}) is not installed")
    command = [str(STORESCU), "-aet", CALLER, "-aec", "CODEBRAIN", *map(str, tls), "127.0.0.1", str(port)]
    return subprocess.run(
        [*command, *map(str, files)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TCP_NODELAY": "1"},
        check=False,
    )


def with_certificate(pki: PKI, who: str = "client") -> list[str | Path]:
    identity = getattr(pki, who)
    return ["+tls", identity.private_key, identity.certificate, "+cf", pki.ca]


def test_storescu_over_tls_is_stored(start_tls: Callable[..., ReceiveService], pki: PKI, series: list[Path]) -> None:
    service = start_tls()
    assert service.tls_port is not None and service.tls_port != service.port
    result = storescu(service.tls_port, series, *with_certificate(pki))
    assert result.returncode == 0, result.stderr
    assert service.receiver.stats.stored == SLICES
    # "both": the plain port still serves plain senders
    plain = storescu(service.port, write_mr_series(series[0].parent.parent / "plain", 2, rows=32, columns=32))
    assert plain.returncode == 0, plain.stderr
    assert service.receiver.stats.stored == SLICES + 2


def test_plain_connection_to_the_tls_port_fails(
    start_tls: Callable[..., ReceiveService], series: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    service = start_tls()
    assert service.tls_port is not None
    result = storescu(service.tls_port, series)
    assert result.returncode != 0
    assert "Association Request Failed" in result.stderr
    assert service.receiver.stats.stored == 0
    wait_until(lambda: "not TLS (a plain DICOM client on the TLS port?)" in caplog.text)


def test_tls_only_opens_no_plain_port(start_tls: Callable[..., ReceiveService], pki: PKI, series: list[Path]) -> None:
    plain_port = free_port()
    service = start_tls(tls="only", port=plain_port)
    assert service.port == service.tls_port != plain_port
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", plain_port), timeout=5).close()
    assert storescu(service.port, series, *with_certificate(pki)).returncode == 0
    assert service.receiver.stats.stored == SLICES


def test_without_a_client_ca_an_anonymous_tls_client_is_accepted(
    start_tls: Callable[..., ReceiveService], pki: PKI, series: list[Path]
) -> None:
    """Client verification is optional: off unless ``dicom.tls_client_ca`` is set."""
    service = start_tls()
    assert service.tls_port is not None
    result = storescu(service.tls_port, series, "+tla", "+cf", pki.ca)
    assert result.returncode == 0, result.stderr
    assert service.receiver.stats.stored == SLICES


def test_with_a_client_ca_only_clients_it_signed_are_accepted(
    start_tls: Callable[..., ReceiveService], pki: PKI, series: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    service = start_tls(tls_client_ca=str(pki.ca))
    assert service.tls_port is not None
    anonymous = storescu(service.tls_port, series, "+tla", "+cf", pki.ca)
    assert anonymous.returncode != 0
    wait_until(lambda: "no client certificate (dicom.tls_client_ca requires one)" in caplog.text)
    stranger = storescu(service.tls_port, series, *with_certificate(pki, "stranger"))
    assert stranger.returncode != 0
    wait_until(lambda: "client certificate not signed by a CA of dicom.tls_client_ca" in caplog.text)
    assert service.receiver.stats.stored == 0
    signed = storescu(service.tls_port, series, *with_certificate(pki))
    assert signed.returncode == 0, signed.stderr
    assert service.receiver.stats.stored == SLICES


def test_a_silent_client_does_not_hold_up_the_others(
    start_tls: Callable[..., ReceiveService], pki: PKI, series: list[Path]
) -> None:
    """The handshake runs in the connection's thread: one that connects and says nothing blocks only itself
    (pynetdicom would shake hands in the accepting thread, and storescu would wait for the silent one's timeout)."""
    service = start_tls(acse_timeout_s=4)
    assert service.tls_port is not None
    silent = socket.create_connection(("127.0.0.1", service.tls_port), timeout=10)
    try:
        result = storescu(service.tls_port, series, *with_certificate(pki))
        assert result.returncode == 0, result.stderr
        silent.setblocking(False)
        with pytest.raises(BlockingIOError):  # still open, still waiting for its handshake: storescu went first
            silent.recv(1)
        silent.setblocking(True)
        silent.settimeout(20)
        assert silent.recv(1) == b""  # then closed by the node once dicom.acse_timeout_s passed
    finally:
        silent.close()


def test_tls_1_2_is_the_floor(
    start_tls: Callable[..., ReceiveService], pki: PKI, caplog: pytest.LogCaptureFixture
) -> None:
    """PS3.15 B.9 / BCP 195: TLS 1.2 or later; a client that offers only TLS 1.1 gets no connection."""
    service = start_tls()
    assert service.tls_port is not None
    good = ssl.create_default_context(cafile=str(pki.ca))
    with (
        socket.create_connection(("127.0.0.1", service.tls_port), timeout=10) as raw,
        good.wrap_socket(raw, server_hostname="localhost") as connection,
    ):
        assert connection.version() in ("TLSv1.2", "TLSv1.3")
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.load_verify_locations(cafile=str(pki.ca))
    old.set_ciphers("DEFAULT:@SECLEVEL=0")  # OpenSSL 3 would not even offer TLS 1.1 otherwise
    with warnings.catch_warnings():  # the point is an outdated client
        warnings.simplefilter("ignore", DeprecationWarning)
        old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
    with socket.create_connection(("127.0.0.1", service.tls_port), timeout=10) as raw, pytest.raises(ssl.SSLError):
        old.wrap_socket(raw, server_hostname="localhost").close()
    wait_until(lambda: "the client offers only TLS below 1.2" in caplog.text)


def wait_until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """The node logs from the connection's thread: give it a moment."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


# --- settings and start-up errors -----------------------------------------------------------------------------


def test_an_encrypted_key_needs_its_passphrase(
    tmp_path: Path, start_tls: Callable[..., ReceiveService], pki: PKI, series: list[Path]
) -> None:
    identity = encrypted_identity(tmp_path, pki)
    with pytest.raises(TLSFileError, match=r"dicom\.tls_private_key .*node-encrypted\.key: cannot be decrypted"):
        start_tls(tls_private_key=str(identity.private_key))
    with pytest.raises(TLSFileError, match="wrong passphrase"):
        start_tls(tls_private_key=str(identity.private_key), tls_private_key_password="not it")
    service = start_tls(tls_private_key=str(identity.private_key), tls_private_key_password=KEY_PASSPHRASE)
    assert service.tls_port is not None
    assert storescu(service.tls_port, series, *with_certificate(pki)).returncode == 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"tls_certificate": "missing.crt"}, r"dicom\.tls_certificate .*missing\.crt: no such file"),
        ({"tls_private_key": "missing.key"}, r"dicom\.tls_private_key .*missing\.key: no such file"),
        ({"tls_client_ca": "missing-ca.pem"}, r"dicom\.tls_client_ca .*missing-ca\.pem: no such file"),
        ({"tls_certificate": "KEY"}, r"dicom\.tls_certificate .*node\.key: no PEM certificate in it"),
        ({"tls_private_key": "OTHER_KEY"}, r"dicom\.tls_private_key .*scanner\.key: is not the key of"),
        ({"tls_certificate": "."}, r"dicom\.tls_certificate .*: is a directory"),
    ],
)
def test_a_file_that_cannot_be_used_stops_the_receiver_naming_it(
    tmp_path: Path, pki: PKI, start_tls: Callable[..., ReceiveService], change: dict[str, str], message: str
) -> None:
    stand_ins = {"KEY": pki.server.private_key, "OTHER_KEY": pki.client.private_key, ".": tmp_path}
    values = {key: str(stand_ins.get(value, tmp_path / value)) for key, value in change.items()}
    with pytest.raises(TLSFileError, match=message):
        start_tls(**values)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_an_unreadable_key_is_named(tmp_path: Path, pki: PKI, start_tls: Callable[..., ReceiveService]) -> None:
    pki.server.private_key.chmod(0)
    with pytest.raises(TLSFileError, match=r"dicom\.tls_private_key .*node\.key: not readable by this user"):
        start_tls()


def test_serve_refuses_to_start_with_one_line_naming_the_file(tmp_path: Path, pki: PKI) -> None:
    config = tmp_path / "node.toml"
    config.write_text(
        f'[paths]\ndata_dir = "{tmp_path / "data"}"\n'
        f'[dicom]\ntls = "only"\ntls_certificate = "{tmp_path / "gone.crt"}"\n'
        f'tls_private_key = "{pki.server.private_key}"\n'
        "[review]\nenabled = false\n"
    )
    environ = {key: value for key, value in os.environ.items() if not key.startswith("CODEBRAIN_")}
    result = subprocess.run(
        [sys.executable, "-c", "from codebrain_node.cli import main; main()", "--config", str(config), "serve"],
        capture_output=True,
        text=True,
        env=environ,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"configuration error: dicom.tls_certificate {tmp_path / 'gone.crt'}: no such file"
    assert not list((tmp_path / "data").iterdir())  # stopped before the database or the spool was touched


def test_tls_settings_are_checked_when_the_config_loads(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="tls = 'only' needs tls_certificate and tls_private_key"):
        load_settings(environ={"CODEBRAIN_DICOM__TLS": "only"})
    with pytest.raises(ConfigError, match=r"dicom\.tls"):
        load_settings(environ={"CODEBRAIN_DICOM__TLS": "yes"})
    crt, key = tmp_path / "a.crt", tmp_path / "a.key"
    both = {"CODEBRAIN_DICOM__TLS": "both", "CODEBRAIN_DICOM__TLS_CERTIFICATE": str(crt)}
    both |= {"CODEBRAIN_DICOM__TLS_PRIVATE_KEY": str(key), "CODEBRAIN_DICOM__TLS_PORT": "11112"}
    with pytest.raises(ConfigError, match=r"needs tls_port other than port \(11112\)"):
        load_settings(environ=both)
    settings = load_settings(environ=both | {"CODEBRAIN_DICOM__TLS_PORT": "2762"})
    assert (settings.dicom.tls, settings.dicom.tls_certificate) == ("both", crt)


def test_config_show_masks_the_key_passphrase_and_shows_the_paths(tmp_path: Path) -> None:
    settings = load_settings(
        environ={
            "CODEBRAIN_DICOM__TLS": "only",
            "CODEBRAIN_DICOM__TLS_CERTIFICATE": "/etc/codebrain/node.crt",
            "CODEBRAIN_DICOM__TLS_PRIVATE_KEY": "/etc/codebrain/node.key",
            "CODEBRAIN_DICOM__TLS_PRIVATE_KEY_PASSWORD": "s3cret-passphrase",
        }
    )
    shown = {key: value for key, value, _ in effective_items(settings)}
    assert shown["dicom.tls_private_key_password"] == "********"
    assert shown["dicom.tls_private_key"] == "/etc/codebrain/node.key"
    assert "s3cret-passphrase" not in repr(effective_items(settings))
