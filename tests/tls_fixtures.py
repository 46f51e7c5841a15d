"""Certificates made at test time (no key is ever committed): a CA, a server and a client it signed, and a client
signed by another CA, with the ``cryptography`` package; PEM files as DCMTK and Python's ssl read them. RSA keys:
DCMTK's BCP 195 profiles offer only RSA-authenticated suites in TLS 1.2."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: DCMTK's +tls and Python's ssl both read unencrypted PEM keys; ``encrypted_key`` gives one with a passphrase.
KEY_PASSPHRASE = "correct horse battery staple"


@dataclass(frozen=True)
class Identity:
    certificate: Path
    private_key: Path


@dataclass(frozen=True)
class PKI:
    """``ca``: the hospital CA's certificate; ``server`` names localhost and 127.0.0.1; ``client`` is signed by
    the CA; ``stranger`` by a CA of its own (``stranger_ca``), which the node does not trust."""

    ca: Path
    server: Identity
    client: Identity
    stranger: Identity
    stranger_ca: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "codebrain tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _write_key(key: rsa.RSAPrivateKey, path: Path, passphrase: str = "") -> Path:
    encryption = (
        serialization.BestAvailableEncryption(passphrase.encode()) if passphrase else serialization.NoEncryption()
    )
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption))
    path.chmod(0o600)
    return path


def _write_cert(cert: x509.Certificate, path: Path) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _ca(folder: Path, common_name: str) -> tuple[x509.Certificate, rsa.RSAPrivateKey, Path]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )  # keyCertSign, cRLSign
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key, _write_cert(cert, folder / f"{common_name.replace(' ', '-')}.pem")


def _leaf(
    folder: Path,
    stem: str,
    ca: tuple[x509.Certificate, rsa.RSAPrivateKey, Path],
    *,
    server: bool,
    passphrase: str = "",
) -> Identity:
    ca_cert, ca_key, _ = ca
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = datetime.datetime.now(datetime.UTC)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(stem))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if server:
        names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return Identity(_write_cert(cert, folder / f"{stem}.crt"), _write_key(key, folder / f"{stem}.key", passphrase))


def make_pki(folder: Path) -> PKI:
    folder.mkdir(parents=True, exist_ok=True)
    ca = _ca(folder, "hospital CA")
    other = _ca(folder, "stranger CA")
    return PKI(
        ca=ca[2],
        server=_leaf(folder, "node", ca, server=True),
        client=_leaf(folder, "scanner", ca, server=False),
        stranger=_leaf(folder, "stranger", other, server=False),
        stranger_ca=other[2],
    )


def encrypted_identity(folder: Path, pki: PKI) -> Identity:
    """The server identity again, its key encrypted with :data:`KEY_PASSPHRASE`."""
    key = serialization.load_pem_private_key(pki.server.private_key.read_bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return Identity(pki.server.certificate, _write_key(key, folder / "node-encrypted.key", KEY_PASSPHRASE))
