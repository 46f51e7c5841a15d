"""The radiologist's path in headless Chromium: sign in, worklist, study, slider, approve → the test PACS gets it.

A second study is rejected in the browser and never reaches the PACS. The app runs in a real uvicorn server on a
free loopback port; the PACS is DCMTK's storescp. Set ``CODEBRAIN_REVIEW_SCREENSHOT=<file.png>`` to save the
study view (``tests/review/make_screenshot.py`` does this for docs/img/review_study.png).
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from review_seed import PASSWORDS, SLICES, Seeded, seed_study
from sqlalchemy import select

from codebrain_node.config import DicomDestinationSettings
from codebrain_node.db.models import AuditEvent, Export, ExportStatus, Series, Study, StudyState
from codebrain_node.review.server import ReviewServer

CHROMIUM = Path("/usr/bin/chromium")
STORESCP = Path("/usr/bin/storescp")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """DCMTK storescp on a free loopback port, storing what it receives under one folder."""
    if not STORESCP.exists():
        pytest.skip("DCMTK storescp (/usr/bin/storescp) is not installed")
    received = tmp_path / "pacs"
    received.mkdir()
    port = free_port()
    process = subprocess.Popen(
        [str(STORESCP), "-aet", "TESTPACS", "-od", str(received), "+xa", str(port)],
        env={**os.environ, "TCP_NODELAY": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    else:
        process.kill()
        pytest.fail("storescp did not start listening")
    try:
        yield port, received
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def browser() -> Iterator[object]:
    playwright_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    if not CHROMIUM.exists():
        pytest.skip("Debian chromium (/usr/bin/chromium) is not installed: apt-get install -y chromium")
    with playwright_api.sync_playwright() as driver:
        chromium = driver.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def received_series(folder: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for path in folder.iterdir():
        uid = str(pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID)
        counts[uid] = counts.get(uid, 0) + 1
    return counts


def test_sign_in_review_approve_sends_to_pacs_and_reject_sends_nothing(
    seeded: Seeded, pacs: tuple[int, Path], browser: object
) -> None:
    from codebrain_node.export.dispatch import run_due_exports

    port, received = pacs
    settings, factory = seeded.settings, seeded.factory
    settings.export.destinations = [
        DicomDestinationSettings(name="pacs", ae_title="TESTPACS", host="127.0.0.1", port=port)
    ]
    rejected = seed_study(settings, factory, accession="ACC2", patient_name="Roe^Richard")

    with ReviewServer(settings, factory) as server:
        with urllib.request.urlopen(server.url + "/healthz", timeout=5) as response:
            assert response.status == 200
        context = browser.new_context(viewport={"width": 1400, "height": 1000})  # type: ignore[attr-defined]
        page = context.new_page()
        page.set_default_timeout(10_000)

        page.goto(server.url + "/worklist")
        assert page.url.startswith(server.url + "/login")
        page.fill("#username", "alice")
        page.fill("#password", PASSWORDS["alice"])
        page.click("button[type=submit]")
        page.wait_for_url("**/worklist")
        rows = page.locator("#worklist tbody tr")
        assert rows.count() == 2
        assert "awaiting review" in rows.first.inner_text()

        page.click("text=Doe Jane")
        page.wait_for_url(f"**/studies/{seeded.study_id}")
        synthetic = page.locator(".synthetic-image")
        page.wait_for_function("img => img.complete && img.naturalWidth === 32", arg=synthetic.element_handle())
        assert f"index={SLICES // 2}" in synthetic.get_attribute("src")

        page.locator("input.slice").fill(str(SLICES - 1))
        page.wait_for_function(
            f"img => img.src.includes('index={SLICES - 1}') && img.complete && img.naturalWidth === 32",
            arg=synthetic.element_handle(),
        )
        input_image = page.locator(".input-image")
        page.wait_for_function(
            "img => img.src.includes('near=-80%2C-80%2C25') && img.complete && img.naturalWidth === 32",
            arg=input_image.element_handle(),
        )
        assert page.locator(".slice-number").inner_text() == f"{SLICES} / {SLICES}"
        assert "codebrain-small 0.1.0" in page.locator("#jobs").inner_text()
        if os.environ.get("CODEBRAIN_REVIEW_SCREENSHOT"):
            page.locator("input.slice").fill(str(SLICES // 2))
            page.wait_for_timeout(400)
            page.screenshot(path=os.environ["CODEBRAIN_REVIEW_SCREENSHOT"], full_page=True)

        page.fill("#approve-reason", "looks right")
        page.click("#approve")
        page.wait_for_selector("text=Study approved")
        assert "approved" in page.locator("#study-status").inner_text()
        assert "user:alice" in page.locator("#audit").inner_text()

        page.goto(f"{server.url}/studies/{rejected.study_id}")
        page.fill("#reject-reason", "motion artefact")
        page.click("#reject")
        page.wait_for_selector("text=Study rejected")
        context.close()

    assert run_due_exports(factory, settings) == 1
    counts = received_series(received)
    with factory() as session:
        approved_series = session.get(Series, seeded.synthetic_series_id).series_instance_uid
        rejected_series = session.get(Series, rejected.synthetic_series_id).series_instance_uid
        assert counts == {approved_series: SLICES}
        assert rejected_series not in counts
        assert StudyState(session.get(Study, seeded.study_id).state) is StudyState.EXPORTED
        assert StudyState(session.get(Study, rejected.study_id).state) is StudyState.REJECTED
        exports = session.scalars(select(Export)).all()
        assert [(e.series_id, e.status) for e in exports] == [(seeded.synthetic_series_id, ExportStatus.SENT)]
        approval = session.scalars(
            select(AuditEvent).where(AuditEvent.study_id == seeded.study_id, AuditEvent.action == "state:approved")
        ).one()
        assert approval.actor == "user:alice" and approval.details["reason"] == "looks right"
        rejection = session.scalars(
            select(AuditEvent).where(AuditEvent.study_id == rejected.study_id, AuditEvent.action == "state:rejected")
        ).one()
        assert rejection.actor == "user:alice" and rejection.details["reason"] == "motion artefact"


def test_server_starts_on_a_free_port_and_stops(seeded: Seeded) -> None:
    """Without a browser: the threaded server answers /healthz, refuses the worklist, and stops cleanly."""
    server = ReviewServer(seeded.settings, seeded.factory).start()
    try:
        with urllib.request.urlopen(server.url + "/healthz", timeout=5) as response:
            assert response.status == 200
        request = urllib.request.Request(server.url + "/worklist", headers={"accept": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=5)
        assert refused.value.code == 401
    finally:
        server.stop()
    assert not server._thread.is_alive()  # type: ignore[union-attr]
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=0.5).close()


def test_run_review_server_returns_when_stop_is_set(seeded: Seeded) -> None:
    import threading

    from codebrain_node.review.server import run_review_server

    seeded.settings.review.port = free_port()
    stop = threading.Event()
    runner = threading.Thread(target=run_review_server, args=(seeded.settings, seeded.factory, stop))
    runner.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{seeded.settings.review.port}/healthz", timeout=1) as ok:
                assert ok.status == 200
            break
        except OSError:
            time.sleep(0.05)
    else:
        pytest.fail("run_review_server did not serve /healthz")
    stop.set()
    runner.join(timeout=15)
    assert not runner.is_alive()
