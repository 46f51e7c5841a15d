"""DICOM TLS: the :class:`ssl.SSLContext` of the receiver (server side) and of a C-STORE destination (client side).

Both follow PS3.15 Annex B.9, the BCP 195 TLS Secure Transport Connection Profile (BCP 195: RFC 7525, now
RFC 9325): TLS 1.2 or later and never below it (RFC 8996 deprecates TLS 1.0 and 1.1, as PS3.15's non-downgrading
and later BCP 195 profiles require), TLS 1.2 cipher suites limited to the ephemeral-key AEAD ones BCP 195
recommends (ECDHE/DHE with AES-GCM or ChaCha20-Poly1305; TLS 1.3's suites are all of that kind), no TLS
compression, no renegotiation, X.509 certificates in PEM. A peer is authenticated by its certificate chain to a
configured CA (the client side also checks the peer's name, RFC 6125); the server side asks for a client
certificate only when given CA certificates to check it against, and then refuses a client without one.

Every file is checked before OpenSSL sees it, so a missing, unreadable or wrong file stops the node at start
with :class:`TLSFileError` naming the setting and the file, never a traceback or an OpenSSL code alone. An
encrypted private key is opened with its configured passphrase only: OpenSSL never prompts on the terminal.
Nothing here knows the settings model: callers pass the setting's name (``where``) for the messages.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path

#: PS3.15 B.9 / BCP 195: TLS 1.2 is the floor.
MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2

#: TLS 1.2 suites (OpenSSL names): forward secrecy and AEAD only, as BCP 195 (RFC 9325 §4.2) recommends.
CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!eNULL:!PSK:!SRP"


class TLSFileError(ValueError):
    """A certificate, private key or CA file cannot be used; the message names the setting and the file."""


def server_context(
    certificate: Path,
    private_key: Path,
    *,
    password: str = "",
    client_ca: Path | None = None,
    where: str = "dicom",
) -> ssl.SSLContext:
    """The receiver's context: presents ``certificate`` (PEM, leaf first, then any intermediates) with
    ``private_key``; with ``client_ca`` (PEM CA certificates) a client must present a certificate that chains
    to one of them (``CERT_REQUIRED``), else the handshake fails and no association is possible."""
    context = _base_context(ssl.PROTOCOL_TLS_SERVER)
    _load_identity(context, certificate, private_key, password, where)
    if client_ca is not None:
        _load_ca(context, client_ca, f"{where}.tls_client_ca")
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(
    *,
    ca_certificates: Path | None = None,
    certificate: Path | None = None,
    private_key: Path | None = None,
    password: str = "",
    where: str = "destination",
) -> ssl.SSLContext:
    """A destination's context: the peer's certificate must chain to ``ca_certificates`` (PEM; ``None``: the
    system's trust store) and name the host we connect to (``check_hostname``); ``certificate`` and
    ``private_key`` are ours, for a peer that asks for a client certificate."""
    context = _base_context(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname by default
    if ca_certificates is not None:
        _load_ca(context, ca_certificates, f"{where}.tls_ca_certificates")
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if certificate is not None and private_key is not None:
        _load_identity(context, certificate, private_key, password, where)
    return context


def _base_context(protocol: ssl._SSLMethod) -> ssl.SSLContext:
    context = ssl.SSLContext(protocol)
    context.minimum_version = MINIMUM_VERSION
    context.set_ciphers(CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    return context


def _read_pem(path: Path, setting: str, marker: str, what: str) -> str:
    """The file's text, or :class:`TLSFileError` saying why it cannot be: absent, unreadable, not PEM."""
    shown = f"{setting} {path}"
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise TLSFileError(f"{shown}: no such file") from None
    except IsADirectoryError:
        raise TLSFileError(f"{shown}: is a directory, not a PEM file") from None
    except PermissionError:
        raise TLSFileError(f"{shown}: not readable by this user (uid {os.getuid()})") from None
    except OSError as exc:
        raise TLSFileError(f"{shown}: cannot be read ({exc.strerror or exc})") from None
    text = data.decode("ascii", errors="replace")
    if marker not in text:
        raise TLSFileError(f"{shown}: no PEM {what} in it (PEM text with '-----BEGIN ...' is expected, not DER)")
    return text


def _load_identity(context: ssl.SSLContext, certificate: Path, private_key: Path, password: str, where: str) -> None:
    cert_setting, key_setting = f"{where}.tls_certificate", f"{where}.tls_private_key"
    _read_pem(certificate, cert_setting, "-----BEGIN CERTIFICATE-----", "certificate")
    key_text = _read_pem(private_key, key_setting, "PRIVATE KEY-----", "private key")
    asked = False

    def passphrase() -> bytes:  # OpenSSL asks only for an encrypted key; never let it prompt on the terminal
        nonlocal asked
        asked = True
        return password.encode()

    try:
        context.load_cert_chain(certificate, private_key, password=passphrase)
    except ssl.SSLError as exc:
        reason = (exc.reason or str(exc)).upper()
        if "KEY_VALUES_MISMATCH" in reason:
            raise TLSFileError(f"{key_setting} {private_key}: is not the key of {cert_setting} {certificate}") from None
        if asked or "ENCRYPTED" in key_text:
            hint = "wrong passphrase" if password else f"encrypted, and {where}.tls_private_key_password is empty"
            raise TLSFileError(f"{key_setting} {private_key}: cannot be decrypted ({hint})") from None
        raise TLSFileError(
            f"{cert_setting} {certificate} / {key_setting} {private_key}: OpenSSL refused them ({exc.reason or exc})"
        ) from None


def _load_ca(context: ssl.SSLContext, path: Path, setting: str) -> None:
    _read_pem(path, setting, "-----BEGIN CERTIFICATE-----", "CA certificate")
    try:
        context.load_verify_locations(cafile=path)
    except ssl.SSLError as exc:
        raise TLSFileError(f"{setting} {path}: OpenSSL refused it ({exc.reason or exc})") from None
