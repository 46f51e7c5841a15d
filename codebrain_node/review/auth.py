"""Who is asking: password sign-in against users from the config, or a trusted proxy's user header; CSRF tokens.

Passwords are Argon2id hashes (argon2-cffi) made by ``codebrain-node user hash-password``; the config never
holds a password. The browser holds a signed cookie (Starlette's SessionMiddleware, itsdangerous) whose key
comes from ``review.secret_key`` or is generated once and kept beside the data; a signed-in session is also a
``review_sessions`` row (:func:`open_session`), found by the SHA-256 of a random token in the cookie, and sign-out
revokes it (:func:`revoke_session`), so a copy of the cookie taken before sign-out opens nothing afterwards. A user
removed from the config loses access on their next request, because every request looks the user up again.
Repeated failed sign-ins lock the user name (and the client address) out for a while (:class:`SignInThrottle`),
counted in the database (``sign_in_failures``), so a restart forgives nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from codebrain_node.config import ReviewSettings, Settings
from codebrain_node.db.models import ReviewSession, SignInFailures, as_utc, utcnow
from codebrain_node.db.session import transaction
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


class FailureStore(Protocol):
    """Where :class:`SignInThrottle` keeps its counts, by (kind, key); times are the throttle's clock seconds."""

    def get(self, kind: str, key: str) -> _Failures | None: ...

    def put(self, kind: str, key: str, entry: _Failures, now: float) -> None: ...

    def delete(self, kind: str, key: str) -> None: ...

    def prune(self, now: float, expired_before: float, window_start: float, max_entries: int) -> None: ...

    def __len__(self) -> int: ...


class MemoryFailureStore:
    """Counts in this process only (forgotten at restart): for a throttle without a database."""

    def __init__(self) -> None:
        self._failures: dict[tuple[str, str], _Failures] = {}

    def get(self, kind: str, key: str) -> _Failures | None:
        return self._failures.get((kind, key))

    def put(self, kind: str, key: str, entry: _Failures, now: float) -> None:
        self._failures.pop((kind, key), None)
        self._failures[(kind, key)] = entry  # re-inserted last: the dict runs from least to most recent

    def delete(self, kind: str, key: str) -> None:
        self._failures.pop((kind, key), None)

    def prune(self, now: float, expired_before: float, window_start: float, max_entries: int) -> None:
        for key in [key for key, entry in self._failures.items() if _expired(entry, now, window_start)]:
            del self._failures[key]
        while len(self._failures) > max_entries:
            del self._failures[next(iter(self._failures))]

    def __len__(self) -> int:
        return len(self._failures)


def _moment(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _seconds(moment: datetime | None) -> float | None:
    return None if moment is None else as_utc(moment).timestamp()


class DatabaseFailureStore:
    """Counts in the ``sign_in_failures`` table: they outlive a restart and are shared by every node on the
    database. The throttle's clock must then be wall-clock seconds (``time.time``)."""

    def __init__(self, factory: sessionmaker[Session]) -> None:
        self.factory = factory

    def get(self, kind: str, key: str) -> _Failures | None:
        with self.factory() as session:
            row = session.scalars(
                select(SignInFailures).where(SignInFailures.kind == kind, SignInFailures.key == key)
            ).first()
            if row is None:
                return None
            return _Failures(row.count, _seconds(row.first_at) or 0.0, _seconds(row.locked_until))

    def put(self, kind: str, key: str, entry: _Failures, now: float) -> None:
        values = {
            "count": entry.count,
            "first_at": _moment(entry.first_at),
            "last_at": _moment(now),
            "locked_until": None if entry.locked_until is None else _moment(entry.locked_until),
        }
        try:
            with transaction(self.factory) as session:
                changed = session.execute(
                    update(SignInFailures)
                    .where(SignInFailures.kind == kind, SignInFailures.key == key)
                    .values(**values)
                    .execution_options(synchronize_session=False)
                ).rowcount
                if not changed:
                    session.add(SignInFailures(kind=kind, key=key, **values))
        except IntegrityError:  # another request of the same name inserted it first: one failure not counted
            log.info("sign-in failure count for a %s raced another request; kept theirs", kind)

    def delete(self, kind: str, key: str) -> None:
        with transaction(self.factory) as session:
            session.execute(delete(SignInFailures).where(SignInFailures.kind == kind, SignInFailures.key == key))

    def prune(self, now: float, expired_before: float, window_start: float, max_entries: int) -> None:
        with transaction(self.factory) as session:
            if (session.scalar(select(func.count()).select_from(SignInFailures)) or 0) <= max_entries:
                return
            session.execute(
                delete(SignInFailures).where(
                    ((SignInFailures.locked_until.is_not(None)) & (SignInFailures.locked_until <= _moment(now)))
                    | ((SignInFailures.locked_until.is_(None)) & (SignInFailures.first_at <= _moment(window_start)))
                )
            )
            excess = (session.scalar(select(func.count()).select_from(SignInFailures)) or 0) - max_entries
            if excess > 0:
                oldest = select(SignInFailures.id).order_by(SignInFailures.last_at, SignInFailures.id).limit(excess)
                session.execute(delete(SignInFailures).where(SignInFailures.id.in_(list(session.scalars(oldest)))))

    def __len__(self) -> int:
        with self.factory() as session:
            return session.scalar(select(func.count()).select_from(SignInFailures)) or 0


def _expired(entry: _Failures, now: float, window_start: float) -> bool:
    if entry.locked_until is not None:
        return now >= entry.locked_until
    return entry.first_at <= window_start


class SignInThrottle:
    """Failed password sign-ins per user name and per client address, kept in a :class:`FailureStore` (the
    database for the app: :class:`DatabaseFailureStore`).

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
        store: FailureStore | None = None,
    ) -> None:
        self.max_per_user = max_per_user
        self.max_per_address = max_per_address
        self.window_s = window_s
        self.lockout_s = lockout_s
        self.max_entries = max_entries
        self._clock = clock
        self._store: FailureStore = store if store is not None else MemoryFailureStore()
        self._lock = threading.Lock()

    @classmethod
    def from_settings(
        cls,
        review: ReviewSettings,
        clock: Callable[[], float] = time.time,
        factory: sessionmaker[Session] | None = None,
    ) -> SignInThrottle:
        """With ``factory``, the counts live in its database (``clock`` must then be wall-clock seconds)."""
        return cls(
            review.sign_in_max_failures,
            review.sign_in_max_failures_per_address,
            review.sign_in_window_s,
            review.sign_in_lockout_s,
            clock,
            store=DatabaseFailureStore(factory) if factory is not None else None,
        )

    def locked(self, name: str, address: str | None) -> str | None:
        """``"user"`` or ``"address"`` when this attempt must be refused unchecked, else None."""
        now = self._clock()
        with self._lock:
            for kind, key in (("user", _name_key(name)), ("address", _address_key(address))):
                entry = self._store.get(kind, key)
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
                ("address", _address_key(address), self.max_per_address),
            ):
                entry = self._store.get(kind, key)
                if entry is None or _expired(entry, now, now - self.window_s):
                    entry = _Failures(0, now)
                entry.count += 1
                if entry.count >= limit and entry.locked_until is None:
                    entry.locked_until = now + self.lockout_s
                    locked.append(kind)
                self._store.put(kind, key, entry, now)
            self._store.prune(now, now, now - self.window_s, self.max_entries)
        return locked

    def succeeded(self, name: str) -> None:
        """The right password: this name starts again from zero."""
        with self._lock:
            self._store.delete("user", _name_key(name))

    def __len__(self) -> int:
        return len(self._store)


def _address_key(address: str | None) -> str:
    return (address or "")[:64]


def _name_key(name: str) -> str:
    """User names are at most 64 characters; a longer guess must not cost more memory."""
    return name.strip()[:64]


def _token_id(token: str) -> str:
    """What the database keeps of a session token: its SHA-256 (a stolen table opens no session)."""
    return hashlib.sha256(token.encode()).hexdigest()


def open_session(factory: sessionmaker[Session], user: User, max_age_s: float) -> str:
    """Record a new signed-in session for ``user``; returns the token the cookie carries."""
    token = secrets.token_urlsafe(32)
    now = utcnow()
    with transaction(factory) as session:
        expired = ReviewSession.expires_at <= now - timedelta(days=1)  # tidy as we go: old rows serve no one
        session.execute(delete(ReviewSession).where(expired))
        session.add(
            ReviewSession(
                id=_token_id(token), user_name=user.name, created_at=now, expires_at=now + timedelta(seconds=max_age_s)
            )
        )
    return token


def session_user_name(factory: sessionmaker[Session], token: str | None) -> str | None:
    """The user of a session token that is on record, not revoked and not expired; else None."""
    if not token or not isinstance(token, str) or len(token) > 128:
        return None
    with factory() as session:
        row = session.get(ReviewSession, _token_id(token))
        if row is None or row.revoked_at is not None or as_utc(row.expires_at) <= utcnow():
            return None
        return row.user_name


def revoke_session(factory: sessionmaker[Session], token: str | None) -> None:
    """Sign-out: the session's row is revoked, so the cookie (and every copy of it) opens nothing any more."""
    if not token or not isinstance(token, str):
        return
    with transaction(factory) as session:
        session.execute(
            update(ReviewSession)
            .where(ReviewSession.id == _token_id(token), ReviewSession.revoked_at.is_(None))
            .values(revoked_at=utcnow())
            .execution_options(synchronize_session=False)
        )


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


def is_trusted_proxy(host: str | None, networks: Sequence[str]) -> bool:
    """Is ``host`` within one of ``networks`` (``review.trusted_proxies``)?"""
    return _in_networks(host, networks)


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
