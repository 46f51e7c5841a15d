"""The review app on each backend (``any_factory``), with the seeded study and users of ``tests/review``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from codebrain_node.review.app import create_app
from tests.review.review_seed import PASSWORDS, Seeded, make_settings, seed_study

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def seeded_on(factory: sessionmaker[Session], tmp_path: Path, **review: object) -> Seeded:
    return seed_study(make_settings(tmp_path, **review), factory)


def client_of(
    seeded: Seeded, base_url: str = "http://testserver", address: str = "192.0.2.10", **app: Any
) -> TestClient:
    """A client (at ``address``) of a new app on the seeded node (a server error answers 500, as it would, rather
    than raising)."""
    application = create_app(seeded.settings, seeded.factory, **app)
    return TestClient(
        application, base_url=base_url, client=(address, 5000), follow_redirects=False, raise_server_exceptions=False
    )


def csrf_of(html: str) -> str:
    match = CSRF.search(html)
    assert match, "page has no CSRF token"
    return match.group(1)


def sign_in(client: TestClient, name: str = "alice", password: str | None = None) -> int:
    """Sign in through the form; returns the status of the page it lands on."""
    token = csrf_of(client.get("/login").text)
    data = {"username": name, "password": password or PASSWORDS[name], "csrf_token": token, "next": "/worklist"}
    response = client.post("/login", data=data)
    assert response.status_code == 303
    return client.get(response.headers["location"]).status_code


def signed_in(client: TestClient) -> bool:
    return client.get("/worklist", headers={"accept": "application/json"}).status_code == 200
