"""Who is asking: password sign-in against users from the config, or a trusted proxy's user header; CSRF tokens.

Passwords are Argon2id hashes (argon2-cffi) made by ``codebrain-node user hash-password``; the config never
holds a password. The session lives in a signed cookie (Starlette's SessionMiddleware, itsdangerous) whose key
comes from ``review.secret_key`` or is generated once and kept beside the data. A user removed from the
config loses access on their next request, because every request looks the user up again.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from codebrain_node.config import ReviewSettings, Settings

log = logging.getLogger(__name__)

SECRET_KEY_FILE = "review-secret.key"
_HASHER = PasswordHasher()
#: Verified against when the user name is unknown, so a wrong name costs as long as a wrong password.
_DUMMY_HASH = _HASHER.hash("not a password anyone has")


@dataclass(frozen=True)
class User:
    name: str
    role: str
    #: "password" or "header": how this request was authenticated.
    via: str

    @property
    def actor(self) -> str:
        """The audit-event actor for this user's actions."""
        return f"user:{self.name}"

    @property
    def may_review(self) -> bool:
        return self.role == "reviewer"


def hash_password(password: str) -> str:
    """An Argon2id hash for ``review.users[].password_hash``."""
    if len(password) < 8:
        raise ValueError("use at least 8 characters")
    return _HASHER.hash(password)


def authenticate(review: ReviewSettings, name: str, password: str) -> User | None:
    """The user if ``name``/``password`` match a configured user with a password hash, else None."""
    configured = next((user for user in review.users if user.name == name), None)
    stored = configured.password_hash if configured and configured.password_hash else _DUMMY_HASH
    try:
        _HASHER.verify(stored, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return None
    if configured is None or not configured.password_hash:
        return None
    return User(configured.name, configured.role, "password")


def user_from_session(review: ReviewSettings, name: str | None) -> User | None:
    """Re-check a session's user against the current config (removed users are signed out)."""
    if not name:
        return None
    configured = next((user for user in review.users if user.name == name), None)
    if configured is None or not configured.password_hash:
        return None
    return User(configured.name, configured.role, "password")


def _in_networks(host: str | None, networks: Sequence[str]) -> bool:
    if not host or not networks:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(network, strict=False) for network in networks)


def user_from_trusted_header(review: ReviewSettings, client_host: str | None, header_value: str | None) -> User | None:
    """The proxy-authenticated user, only when the header is configured and the request comes from a trusted proxy."""
    if not review.trusted_user_header or not header_value:
        return None
    if not _in_networks(client_host, review.trusted_proxies):
        log.warning("ignored %s header from untrusted address %s", review.trusted_user_header, client_host)
        return None
    name = header_value.strip()
    if not name or len(name) > 128:
        return None
    configured = next((user for user in review.users if user.name == name), None)
    role = configured.role if configured else review.trusted_user_role
    return User(name, role, "header")


def may_read_metrics(review: ReviewSettings, client_host: str | None) -> bool:
    return _in_networks(client_host, review.metrics_allowed_hosts)


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)


def csrf_matches(expected: str | None, given: str | None) -> bool:
    """Constant-time comparison; a missing token on either side never matches."""
    if not expected or not given:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())


def session_secret(settings: Settings) -> str:
    """``review.secret_key``, or a random key generated on first use and kept (mode 0600) in the data folder."""
    configured = settings.review.secret_key.get_secret_value()
    if configured:
        return configured
    path = Path(settings.paths.data_dir) / SECRET_KEY_FILE
    if path.exists():
        key = path.read_text().strip()
        if key:
            return key
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(48)
    temporary = path.with_suffix(".tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(key + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    log.info("generated the review session key in %s", path)
    return key
