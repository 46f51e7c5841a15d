"""Who is asking: password sign-in against users from the config, or a trusted proxy's user header; CSRF tokens.

Passwords are Argon2id hashes (argon2-cffi) made by ``codebrain-node user hash-password``; the config never
holds a password. The session lives in a signed cookie (Starlette's SessionMiddleware, itsdangerous) whose key
comes from ``review.secret_key`` or is generated once and kept beside the data. A user removed from the
config loses access on their next request, because every request looks the user up again. Repeated failed
sign-ins lock the user name (and the client address) out for a while (:class:`SignInThrottle`).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from codebrain_node.config import ReviewSettings, Settings
from codebrain_node.durable import write_durably

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


@dataclass
class _Failures:
    count: int
    first_at: float
    locked_until: float | None = None


class SignInThrottle:
    """Failed password sign-ins per user name and per client address, kept in memory (one process serves the app).

    ``max_per_user`` failures for a name, or ``max_per_address`` for an address, within ``window_s`` lock it out
    for ``lockout_s``. A locked-out attempt is refused before the password is looked at: no Argon2 work to spend
    and no answer that tells a right password from a wrong one. A successful sign-in clears its name's count
    (not its address's, or one valid account would let an address go on trying others). At most ``max_entries``
    names and addresses are remembered: expired ones go first, then the least recently failed.
    """

    def __init__(
        self,
        max_per_user: int,
        max_per_address: int,
        window_s: float,
        lockout_s: float,
        clock: Callable[[], float] = time.monotonic,
        max_entries: int = 10_000,
    ) -> None:
        self.max_per_user = max_per_user
        self.max_per_address = max_per_address
        self.window_s = window_s
        self.lockout_s = lockout_s
        self.max_entries = max_entries
        self._clock = clock
        self._failures: dict[tuple[str, str], _Failures] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, review: ReviewSettings, clock: Callable[[], float] = time.monotonic) -> SignInThrottle:
        return cls(
            review.sign_in_max_failures,
            review.sign_in_max_failures_per_address,
            review.sign_in_window_s,
            review.sign_in_lockout_s,
            clock,
        )

    def locked(self, name: str, address: str | None) -> str | None:
        """``"user"`` or ``"address"`` when this attempt must be refused unchecked, else None."""
        now = self._clock()
        with self._lock:
            for kind, key in (("user", _name_key(name)), ("address", address or "")):
                entry = self._failures.get((kind, key))
                if entry is not None and entry.locked_until is not None and now < entry.locked_until:
                    return kind
        return None

    def failed(self, name: str, address: str | None) -> list[str]:
        """Count a failed sign-in; returns what it has just locked out (``"user"``, ``"address"``), for the log."""
        now = self._clock()
        locked = []
        with self._lock:
            for kind, key, limit in (
                ("user", _name_key(name), self.max_per_user),
                ("address", address or "", self.max_per_address),
            ):
                entry = self._failures.pop((kind, key), None)
                if entry is None or self._expired(entry, now):
                    entry = _Failures(0, now)
                entry.count += 1
                if entry.count >= limit and entry.locked_until is None:
                    entry.locked_until = now + self.lockout_s
                    locked.append(kind)
                self._failures[(kind, key)] = entry  # re-inserted last: the dict runs from least to most recent
            if len(self._failures) > self.max_entries:
                self._prune(now)
        return locked

    def succeeded(self, name: str) -> None:
        """The right password: this name starts again from zero."""
        with self._lock:
            self._failures.pop(("user", _name_key(name)), None)

    def __len__(self) -> int:
        return len(self._failures)

    def _expired(self, entry: _Failures, now: float) -> bool:
        if entry.locked_until is not None:
            return now >= entry.locked_until
        return now - entry.first_at >= self.window_s

    def _prune(self, now: float) -> None:
        for key in [key for key, entry in self._failures.items() if self._expired(entry, now)]:
            del self._failures[key]
        while len(self._failures) > self.max_entries:
            del self._failures[next(iter(self._failures))]


def _name_key(name: str) -> str:
    """User names are at most 64 characters; a longer guess must not cost more memory."""
    return name.strip()[:64]


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


def client_address(review: ReviewSettings, client_host: str | None, forwarded_for: str | None) -> str | None:
    """The address sign-in failures are counted against: the peer, or, when the peer is one of
    ``trusted_proxies``, the nearest address in X-Forwarded-For that is not itself a trusted proxy (entries
    further left were written by the client and prove nothing)."""
    if not forwarded_for or not _in_networks(client_host, review.trusted_proxies):
        return client_host
    for hop in reversed([part.strip() for part in forwarded_for.split(",") if part.strip()]):
        if not _in_networks(hop, review.trusted_proxies):
            return hop
    return client_host


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
    key = secrets.token_urlsafe(48)
    write_durably(path, (key + "\n").encode(), mode=0o600)
    log.info("generated the review session key in %s", path)
    return key
