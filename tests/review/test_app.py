"""The web app through HTTP (Starlette's test client): sign-in, refusals, CSRF, pages, slices, reject."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from review_seed import PASSWORDS, SLICES, Seeded, seed_study
from sqlalchemy import select
from starlette.routing import BaseRoute

from codebrain_node.db.models import AuditEvent, Export, Study, StudyState
from codebrain_node.review.app import create_app

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_of(html: str) -> str:
    match = CSRF.search(html)
    assert match, "page has no CSRF token"
    return match.group(1)


def sign_in(client: TestClient, name: str = "alice", password: str | None = None) -> str:
    """Sign in through the form; returns the session's CSRF token."""
    token = csrf_of(client.get("/login").text)
    response = client.post(
        "/login",
        data={"username": name, "password": password or PASSWORDS[name], "csrf_token": token, "next": "/worklist"},
        follow_redirects=False,
    )
    assert response.status_code == 303
    assert response.headers["location"] == "/worklist"
    return csrf_of(client.get("/worklist").text)


@pytest.fixture
def client(seeded: Seeded) -> TestClient:
    return TestClient(create_app(seeded.settings, seeded.factory), follow_redirects=False)


def leaf_routes(routes: list[BaseRoute]) -> Iterator[BaseRoute]:
    """Every route of the app, also those of an included router (newer FastAPI keeps one entry per router)."""
    for route in routes:
        included = getattr(route, "original_router", None)
        yield from leaf_routes(included.routes) if included is not None else [route]


def state_of(seeded: Seeded) -> StudyState:
    with seeded.factory() as session:
        return StudyState(session.get(Study, seeded.study_id).state)


def test_anonymous_gets_nothing_but_healthz(client: TestClient, seeded: Seeded) -> None:
    """Every route of the app, filled with real ids, refuses an anonymous caller (pages redirect to sign in)."""
    assert client.get("/healthz").json()["status"] == "ok"
    ids = {"study_id": seeded.study_id, "series_id": seeded.synthetic_series_id, "path": "study.js"}
    checked = 0
    for route in leaf_routes(client.app.routes):
        path = route.path.replace("{path:path}", "{path}")
        if path in ("/healthz", "/login"):
            continue
        url = path.format(**ids)
        for method in getattr(route, "methods", None) or {"GET"}:
            if method == "HEAD":
                continue
            response = client.request(method, url, headers={"accept": "application/json"})
            assert response.status_code == 401, f"{method} {url} answered {response.status_code} to anonymous"
            assert "Doe" not in response.text
            checked += 1
    assert checked >= 10  # every route but the two open ones, the static files included
    page = client.get("/worklist", headers={"accept": "text/html"})
    assert page.status_code == 303
    assert page.headers["location"].startswith("/login?next=%2Fworklist")


def test_sign_in_refuses_wrong_password_unknown_user_and_missing_csrf(client: TestClient, seeded: Seeded) -> None:
    token = csrf_of(client.get("/login").text)
    for name, password in (("alice", "wrong password!"), ("mallory", PASSWORDS["alice"])):
        response = client.post("/login", data={"username": name, "password": password, "csrf_token": token})
        assert response.status_code == 303
        assert response.headers["location"].startswith("/login")
        assert client.get("/worklist", headers={"accept": "application/json"}).status_code == 401
    forged = client.post("/login", data={"username": "alice", "password": PASSWORDS["alice"], "csrf_token": "x"})
    assert forged.status_code == 403
    assert client.get("/worklist", headers={"accept": "application/json"}).status_code == 401
    with seeded.factory() as session:
        actions = [event.action for event in session.scalars(select(AuditEvent).where(AuditEvent.study_id.is_(None)))]
    assert actions.count("sign_in_failed") == 2


def test_forged_actions_without_or_with_wrong_csrf_are_refused(client: TestClient, seeded: Seeded) -> None:
    token = sign_in(client)
    for data in ({}, {"csrf_token": "forged"}, {"csrf_token": token[:-1] + ("A" if token[-1] != "A" else "B")}):
        for action in ("approve", "reject"):
            response = client.post(f"/studies/{seeded.study_id}/{action}", data={**data, "reason": "forged"})
            assert response.status_code == 403, (action, data)
    assert state_of(seeded) is StudyState.AWAITING_REVIEW
    assert client.post("/logout", data={}).status_code == 403


def test_viewer_may_look_but_not_act(client: TestClient, seeded: Seeded) -> None:
    token = sign_in(client, "victor")
    page = client.get(f"/studies/{seeded.study_id}")
    assert page.status_code == 200
    assert 'id="approve"' not in page.text
    response = client.post(f"/studies/{seeded.study_id}/reject", data={"csrf_token": token})
    assert response.status_code == 403
    assert state_of(seeded) is StudyState.AWAITING_REVIEW


def test_worklist_shows_patient_contrasts_and_filters(client: TestClient, seeded: Seeded) -> None:
    seed_study(seeded.settings, seeded.factory, accession="ACC2", patient_name="Roe^Richard")
    sign_in(client)
    page = client.get("/worklist").text
    assert "Doe Jane" in page and "Roe Richard" in page
    assert "awaiting review" in page
    row = page[page.index("Doe Jane") :]
    row = row[: row.index("</tr>")]
    assert '<span class="contrast">T1</span>' in row
    assert '<span class="contrast synthetic">T2</span>' in row
    only_roe = client.get("/worklist", params={"q": "ACC2"}).text
    assert "Roe Richard" in only_roe and "Doe Jane" not in only_roe
    assert "Doe Jane" not in client.get("/worklist", params={"status": "failed"}).text
    assert "Doe Jane" in client.get("/worklist", params={"status": "awaiting_review", "contrast": "t2w"}).text
    assert "Doe Jane" not in client.get("/worklist", params={"contrast": "FLAIR"}).text
    ordered = client.get("/worklist", params={"sort": "patient", "order": "desc"}).text
    assert ordered.index("Roe Richard") < ordered.index("Doe Jane")
    ordered = client.get("/worklist", params={"sort": "patient", "order": "asc"}).text
    assert ordered.index("Doe Jane") < ordered.index("Roe Richard")
    assert client.get("/worklist", params={"sort": "nonsense"}).status_code == 400


def test_study_page_shows_model_inputs_timings_and_audit(client: TestClient, seeded: Seeded) -> None:
    sign_in(client)
    page = client.get(f"/studies/{seeded.study_id}").text
    assert "codebrain-small 0.1.0" in page
    assert "T1 MPRAGE" in page  # the input named by the job, by its series description
    assert "model_s 1.50 s" in page
    assert "policy:review" in page and "state:awaiting_review" in page
    assert f'data-series="{seeded.synthetic_series_id}"' in page
    assert f'<option value="{seeded.input_series_id}">' in page
    assert "lowest 0.14" in page  # the confidence map's least sure value, 1/7


def test_slices_render_the_right_slice_in_the_asked_window(client: TestClient, seeded: Seeded) -> None:
    sign_in(client)
    base = f"/studies/{seeded.study_id}/series/{seeded.synthetic_series_id}"
    for index in (0, 3):
        response = client.get(f"{base}/slice.png", params={"index": index, "level": 30, "width": 60})
        assert response.headers["content-type"] == "image/png"
        pixels = np.asarray(Image.open(io.BytesIO(response.content)))
        assert pixels.shape == (32, 32)
        # inside value 10 * (index + 1) through window [0, 60] -> 255 * value / 60
        assert pixels[16, 16] == round(255 * 10 * (index + 1) / 60)
        assert pixels[0, 0] == 0
    # the input slice nearest to the synthetic slice 4 (z = 20 mm) is the input's slice 4 (value 500)
    near = client.get(
        f"/studies/{seeded.study_id}/series/{seeded.input_series_id}/slice.png",
        params={"near": "-80,-80,21", "level": 500, "width": 2},
    )
    inside = np.asarray(Image.open(io.BytesIO(near.content)))[16, 16]
    assert inside == 128
    overlay = client.get(f"{base}/confidence.png", params={"index": SLICES - 1, "opacity": 0.5})
    rgba = np.asarray(Image.open(io.BytesIO(overlay.content)))
    assert rgba.shape == (32, 32, 4)
    # confidence 6/7 (sure): green side of the map, alpha 0.5 * (1 - 6/7) * 255
    assert rgba[0, 0, 1] == 255 and rgba[0, 0, 0] < 255 and rgba[0, 0, 3] == round(0.5 * (1 / 7) * 255)
    assert client.get(f"{base}/confidence.png", params={"index": 0}).content != overlay.content
    wrong_study = client.get(f"/studies/{seeded.study_id + 99}/series/{seeded.synthetic_series_id}/slice.png")
    assert wrong_study.status_code == 404
    assert client.get(f"{base}/slice.png", params={"near": "1,2"}).status_code == 400


def test_reject_from_the_web_is_audited_and_schedules_nothing(client: TestClient, seeded: Seeded) -> None:
    token = sign_in(client)
    response = client.post(f"/studies/{seeded.study_id}/reject", data={"csrf_token": token, "reason": "motion"})
    assert response.status_code == 303
    assert state_of(seeded) is StudyState.REJECTED
    with seeded.factory() as session:
        event = session.scalars(select(AuditEvent).where(AuditEvent.action == "state:rejected")).one()
        assert event.actor == "user:alice"
        assert event.details == {"previous": "awaiting_review", "reason": "motion"}
        assert session.scalars(select(Export)).all() == []
    page = client.get(f"/studies/{seeded.study_id}").text
    assert "Study rejected" in page and "user:alice" in page and "motion" in page
    again = client.post(f"/studies/{seeded.study_id}/approve", data={"csrf_token": token})
    assert again.status_code == 303
    assert "not awaiting review" in client.get(f"/studies/{seeded.study_id}").text
    assert state_of(seeded) is StudyState.REJECTED


def test_metrics_count_studies_and_requests(client: TestClient, seeded: Seeded) -> None:
    sign_in(client)
    text = client.get("/metrics").text
    assert 'codebrain_studies{state="awaiting_review"} 1.0' in text
    assert 'codebrain_jobs{status="done"} 1.0' in text
    assert 'codebrain_review_requests_total{code="200",method="GET",route="/worklist"}' in text
    assert 'codebrain_review_actions_total{action="sign_in",outcome="ok"} 1.0' in text


def test_metrics_and_trusted_header_only_from_configured_addresses(seeded: Seeded) -> None:
    settings = seeded.settings
    settings.review = settings.review.model_copy(
        update={
            "trusted_user_header": "X-Forwarded-User",
            "trusted_proxies": ["10.1.2.0/24"],
            "metrics_allowed_hosts": ["192.0.2.7"],
        }
    )
    app = create_app(settings, seeded.factory)
    proxy = TestClient(app, client=("10.1.2.3", 5000), follow_redirects=False)
    page = proxy.get("/worklist", headers={"X-Forwarded-User": "alice"})
    assert page.status_code == 200 and "Doe Jane" in page.text
    assert "alice (reviewer)" in page.text
    newcomer = proxy.get("/worklist", headers={"X-Forwarded-User": "nina"})
    assert "nina (viewer)" in newcomer.text
    elsewhere = TestClient(app, client=("10.9.9.9", 5000), follow_redirects=False)
    assert elsewhere.get("/worklist", headers={"X-Forwarded-User": "alice", "accept": "x/y"}).status_code == 401
    assert elsewhere.get("/metrics").status_code == 401
    scraper = TestClient(app, client=("192.0.2.7", 5000), follow_redirects=False)
    assert "codebrain_studies" in scraper.get("/metrics").text
    assert scraper.get("/worklist").status_code == 401


def test_sign_in_redirects_only_to_local_pages(client: TestClient) -> None:
    token = csrf_of(client.get("/login").text)
    for target in ("https://evil.example/", "//evil.example/x"):
        response = client.post(
            "/login",
            data={"username": "alice", "password": PASSWORDS["alice"], "csrf_token": token, "next": target},
        )
        assert response.headers["location"] == "/worklist"
        token = csrf_of(client.get("/worklist").text)
        client.post("/logout", data={"csrf_token": token})
        token = csrf_of(client.get("/login").text)
