"""#16 defect 8, on SQLite and PostgreSQL: a cookie copied before sign-out opens nothing after it; sign-in
lock-outs survive a restart of the app; the cookie is Secure whenever the request came over TLS.

Before: the session was only the signed cookie (a copy kept working for ``session_max_age_s``, 8 h), the failure
counts lived in the process (a restart forgave them) and ``Secure`` followed ``review.cookie_secure`` alone."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from codebrain_node.db.models import ReviewSession
from tests.review.review_seed import PASSWORDS
from tests.robustness.review_support import client_of, csrf_of, seeded_on, sign_in, signed_in

COOKIE = "codebrain_review"
THROTTLED = "too many failed sign-ins, try again later"


def test_a_cookie_copied_before_sign_out_is_refused_after_it(
    any_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    seeded = seeded_on(any_factory, tmp_path)
    browser = client_of(seeded)
    assert sign_in(browser) == 200
    copied = browser.cookies[COOKIE]
    thief = client_of(seeded)
    thief.cookies.set(COOKIE, copied)
    assert signed_in(thief)  # the copy works while the session is open

    token = csrf_of(browser.get("/worklist").text)
    assert browser.post("/logout", data={"csrf_token": token}).status_code == 303
    assert not signed_in(browser)
    assert not signed_in(thief), "a cookie copied before sign-out still opens the worklist"
    restarted = client_of(seeded)  # nor after a restart of the app
    restarted.cookies.set(COOKIE, copied)
    assert not signed_in(restarted)
    with any_factory() as session:
        (row,) = session.scalars(select(ReviewSession))
        assert row.user_name == "alice" and row.revoked_at is not None
        assert len(row.id) == 64 and row.id not in copied  # only the token's hash is kept

    assert sign_in(browser) == 200 and signed_in(browser)  # signing in again opens a new session


def attempt(client, name: str, password: str) -> str:  # type: ignore[no-untyped-def]
    token = csrf_of(client.get("/login").text)
    data = {"username": name, "password": password, "csrf_token": token, "next": "/worklist"}
    response = client.post("/login", data=data)
    assert response.status_code == 303
    return client.get(response.headers["location"]).text


def test_a_lock_out_survives_a_restart(any_factory: sessionmaker[Session], tmp_path: Path) -> None:
    seeded = seeded_on(any_factory, tmp_path)
    limit = seeded.settings.review.sign_in_max_failures
    before = client_of(seeded)
    for _ in range(limit):
        attempt(before, "alice", "wrong password")
    assert THROTTLED in attempt(before, "alice", PASSWORDS["alice"])

    after = client_of(seeded)  # a new app on the same database: the node restarted
    assert THROTTLED in attempt(after, "alice", PASSWORDS["alice"]), "the restart forgave the lock-out"
    assert not signed_in(after)
    assert THROTTLED not in attempt(after, "victor", PASSWORDS["victor"]) and signed_in(after)  # others unaffected


def _cookie_header(response) -> str:  # type: ignore[no-untyped-def]
    return "; ".join(v for k, v in response.headers.multi_items() if k.lower() == "set-cookie").lower()


def test_the_cookie_is_secure_over_tls_and_only_then(any_factory: sessionmaker[Session], tmp_path: Path) -> None:
    seeded = seeded_on(any_factory, tmp_path, trusted_proxies=["10.0.0.0/8"])
    assert seeded.settings.review.cookie_secure is False
    over_tls = client_of(seeded, base_url="https://testserver")
    assert "secure" in _cookie_header(over_tls.get("/login"))
    plain = client_of(seeded)
    assert "secure" not in _cookie_header(plain.get("/login"))
    # behind a trusted TLS-terminating proxy; the same header from anyone else proves nothing
    proxied = client_of(seeded, address="10.0.0.5")
    assert "secure" in _cookie_header(proxied.get("/login", headers={"x-forwarded-proto": "https"}))
    assert "secure" not in _cookie_header(proxied.get("/login"))
    assert "secure" not in _cookie_header(plain.get("/login", headers={"x-forwarded-proto": "https"}))
