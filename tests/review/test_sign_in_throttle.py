"""Password guessing is throttled: a user name, or a client address, is locked out after repeated failures.

Time is a fake clock handed to the app, so lock-outs end without sleeping.
"""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient
from review_seed import PASSWORDS, Seeded
from sqlalchemy import select

from codebrain_node.config import ConfigError, load_settings
from codebrain_node.db.models import AuditEvent
from codebrain_node.review import auth
from codebrain_node.review.app import create_app

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
WRONG = "Unknown user or wrong password."
THROTTLED = "too many failed sign-ins, try again later"


class FakeClock:
    """Seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make_client(seeded: Seeded, clock: FakeClock, address: str = "192.0.2.10", **review: int) -> TestClient:
    if review:
        seeded.settings.review = seeded.settings.review.model_copy(update=review)
    app = create_app(seeded.settings, seeded.factory, clock=clock)
    return TestClient(app, client=(address, 5000), follow_redirects=False)


def attempt(client: TestClient, name: str, password: str) -> str:
    """One sign-in through the form; returns the page it lands on (the worklist, or the form with its message)."""
    match = CSRF.search(client.get("/login").text)
    assert match
    data = {"username": name, "password": password, "csrf_token": match.group(1), "next": "/worklist"}
    response = client.post("/login", data=data)
    assert response.status_code == 303
    return client.get(response.headers["location"]).text


def signed_in(client: TestClient) -> bool:
    return client.get("/worklist", headers={"accept": "application/json"}).status_code == 200


def audited(seeded: Seeded, action: str) -> list[AuditEvent]:
    with seeded.factory() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.action == action)))


def test_failures_lock_the_name_out_without_checking_the_password_until_the_period_ends(
    seeded: Seeded, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = make_client(seeded, clock)
    for _ in range(5):
        assert WRONG in attempt(client, "alice", "wrong password!")
    checked: list[str] = []
    real = auth.authenticate
    monkeypatch.setattr(
        auth, "authenticate", lambda review, name, password: checked.append(name) or real(review, name, password)
    )
    page = attempt(client, "alice", PASSWORDS["alice"])
    assert THROTTLED in page and WRONG not in page
    assert not signed_in(client) and checked == []
    assert "Doe" not in page
    attempt(client, "victor", PASSWORDS["victor"])  # another name from the same address is not affected
    assert signed_in(client) and checked == ["victor"]
    clock.now += seeded.settings.review.sign_in_lockout_s - 1
    assert THROTTLED in attempt(client, " alice ", PASSWORDS["alice"])
    assert checked == ["victor"]
    clock.now += 1
    assert "Doe Jane" in attempt(client, "alice", PASSWORDS["alice"])
    assert signed_in(client)
    throttled = audited(seeded, "sign_in_throttled")
    assert [(event.actor, event.details["limit"]) for event in throttled] == [("user:alice", "user")] * 2
    assert len(audited(seeded, "sign_in_failed")) == 5
    metrics = client.get("/metrics").text
    assert 'codebrain_review_actions_total{action="sign_in",outcome="throttled"} 2.0' in metrics
    assert PASSWORDS["alice"] not in metrics


def test_a_successful_sign_in_clears_the_count(seeded: Seeded, clock: FakeClock) -> None:
    client = make_client(seeded, clock)
    for _ in range(4):
        attempt(client, "alice", "wrong password!")
    assert "Doe Jane" in attempt(client, "alice", PASSWORDS["alice"])
    for _ in range(4):
        assert WRONG in attempt(client, "alice", "wrong password!")
    assert "Doe Jane" in attempt(client, "alice", PASSWORDS["alice"])


def test_failures_spread_beyond_the_window_do_not_lock(seeded: Seeded, clock: FakeClock) -> None:
    client = make_client(seeded, clock, sign_in_max_failures=2, sign_in_window_s=100)
    attempt(client, "alice", "wrong password!")
    clock.now += 100
    assert WRONG in attempt(client, "alice", "wrong password!")
    assert "Doe Jane" in attempt(client, "alice", PASSWORDS["alice"])


def test_one_address_cannot_try_many_names(seeded: Seeded, clock: FakeClock) -> None:
    sprayer = make_client(seeded, clock, sign_in_max_failures_per_address=4)
    for name in ("alice", "victor", "mallory", "root"):
        assert WRONG in attempt(sprayer, name, "Winter2024!")
    assert THROTTLED in attempt(sprayer, "alice", PASSWORDS["alice"])
    assert not signed_in(sprayer)
    elsewhere = TestClient(sprayer.app, client=("192.0.2.11", 5000), follow_redirects=False)
    assert "Doe Jane" in attempt(elsewhere, "alice", PASSWORDS["alice"])
    assert [event.details["limit"] for event in audited(seeded, "sign_in_throttled")] == ["address"]
    clock.now += seeded.settings.review.sign_in_lockout_s
    assert "Doe Jane" in attempt(sprayer, "alice", PASSWORDS["alice"])


def test_behind_a_trusted_proxy_each_forwarded_client_is_counted_alone(seeded: Seeded, clock: FakeClock) -> None:
    seeded.settings.review = seeded.settings.review.model_copy(update={"trusted_proxies": ["10.0.0.0/8"]})
    proxy = make_client(seeded, clock, address="10.0.0.5", sign_in_max_failures_per_address=3)
    # the left-most entry is written by the client and must not let it dodge the count
    sprayer = {"x-forwarded-for": "1.2.3.4, 203.0.113.7"}
    for index, name in enumerate(("alice", "victor", "mallory")):
        proxy.headers.update({**sprayer, "x-forwarded-for": f"198.51.100.{index}, 203.0.113.7"})
        assert WRONG in attempt(proxy, name, "Winter2024!")
    proxy.headers.update(sprayer)
    assert THROTTLED in attempt(proxy, "alice", PASSWORDS["alice"])
    proxy.headers.update({"x-forwarded-for": "203.0.113.99"})  # another client through the same proxy
    assert "Doe Jane" in attempt(proxy, "alice", PASSWORDS["alice"])
    review = seeded.settings.review
    assert auth.client_address(review, "192.0.2.1", "203.0.113.7") == "192.0.2.1"  # untrusted peer: header ignored
    assert auth.client_address(review, "10.0.0.5", "203.0.113.7, 10.0.0.9") == "203.0.113.7"  # chained proxies


def test_throttle_memory_stays_bounded() -> None:
    clock = FakeClock()
    throttle = auth.SignInThrottle(3, 1000, window_s=60, lockout_s=60, clock=clock, max_entries=10)
    for index in range(50):
        throttle.failed(f"name{index}", f"198.51.100.{index}")
    assert len(throttle) <= 10
    clock.now += 60
    throttle.failed("x" * 10_000, None)
    assert len(throttle) <= 10
    assert throttle.failed("x" * 64, None) == []  # a long guess counts as its first 64 characters
    assert throttle.failed("x" * 70, None) == ["user"]
    assert throttle.locked("x" * 64, "203.0.113.1") == "user"


@pytest.mark.parametrize(
    "key", ["sign_in_max_failures", "sign_in_max_failures_per_address", "sign_in_window_s", "sign_in_lockout_s"]
)
def test_throttle_settings_must_be_positive(key: str) -> None:
    with pytest.raises(ConfigError, match=f"review.{key}"):
        load_settings(environ={f"CODEBRAIN_REVIEW__{key.upper()}": "0"})
    assert getattr(load_settings(environ={f"CODEBRAIN_REVIEW__{key.upper()}": "7"}).review, key) == 7
