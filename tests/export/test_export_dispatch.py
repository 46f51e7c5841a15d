"""Export: delivered once per destination, backed off while the PACS is down, dead-lettered, retried."""

from __future__ import annotations

import shutil
import subprocess
import time
from datetime import timedelta
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from codebrain_node.db.models import Export, ExportStatus, Study, StudyState, as_utc, utcnow
from codebrain_node.export.dispatch import backoff_s, retry_dead_letters, run_due_exports, schedule_exports
from tests.dicom_fixtures import STORESCP, free_port

PACS_AE = "TESTPACS"  # the loopback PACS fixture's AE title


class FakeClock:
    def __init__(self) -> None:
        self.moment = utcnow()

    def __call__(self):  # type: ignore[no-untyped-def]
        return self.moment

    def advance(self, seconds: float) -> None:
        self.moment += timedelta(seconds=seconds)


def _dicom(port: int) -> dict:
    return {"name": "pacs", "kind": "dicom", "ae_title": PACS_AE, "host": "127.0.0.1", "port": port}


def _study(factory: sessionmaker[Session], uid: str) -> Study:
    with factory() as session:
        return session.scalars(select(Study).where(Study.study_instance_uid == uid)).one()


def _exports(factory: sessionmaker[Session]) -> list[Export]:
    with factory() as session:
        return list(session.scalars(select(Export).order_by(Export.id)))


def test_backoff_doubles_up_to_the_cap() -> None:
    assert [backoff_s(n, 5, 30) for n in range(1, 6)] == [5, 10, 20, 30, 30]


def test_schedule_is_idempotent(factory, approved_study, make_settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings([_dicom(1), {"name": "archive", "kind": "folder", "path": str(tmp_path / "out")}])
    with factory() as session, session.begin():
        study = session.scalars(select(Study)).one()
        assert schedule_exports(session, study, settings) == 2
        assert schedule_exports(session, study, settings) == 0


def test_sent_once_to_pacs_and_folder_then_exported(  # type: ignore[no-untyped-def]
    factory, approved_study, make_settings, pacs, tmp_path: Path
) -> None:
    pacs.start()
    out = tmp_path / "out"
    settings = make_settings([_dicom(pacs.port), {"name": "archive", "kind": "folder", "path": str(out)}])
    assert run_due_exports(factory, settings) == 2
    assert sorted(pacs.received) == sorted(approved_study.sop_uids)
    assert set(pacs.callers) == {"CODEBRAIN"}
    copied = sorted((out / approved_study.study_uid / approved_study.series_uid).glob("*.dcm"))
    assert sorted(dcmread(p).SOPInstanceUID for p in copied) == sorted(approved_study.sop_uids)
    assert _study(factory, approved_study.study_uid).state == StudyState.EXPORTED
    # nothing is sent twice, however often the dispatcher runs
    assert run_due_exports(factory, settings) == 0
    assert len(pacs.received) == 3
    assert {e.status for e in _exports(factory)} == {ExportStatus.SENT}


def test_pacs_down_backs_off_then_arrives_once(  # type: ignore[no-untyped-def]
    factory, approved_study, make_settings, pacs
) -> None:
    clock = FakeClock()
    settings = make_settings([_dicom(pacs.port)], backoff_initial_s=10, backoff_max_s=40, max_attempts=5)
    assert run_due_exports(factory, settings, now=clock) == 0  # down: first failure
    (export,) = _exports(factory)
    assert export.attempts == 1 and export.status == ExportStatus.PENDING and export.last_error
    assert as_utc(export.next_attempt_at) == clock() + timedelta(seconds=10)
    clock.advance(5)
    assert run_due_exports(factory, settings, now=clock) == 0  # not due yet: no attempt
    assert _exports(factory)[0].attempts == 1
    clock.advance(5)
    assert run_due_exports(factory, settings, now=clock) == 0  # due, still down: 2nd failure, 20 s
    assert as_utc(_exports(factory)[0].next_attempt_at) == clock() + timedelta(seconds=20)
    pacs.start()
    clock.advance(20)
    assert run_due_exports(factory, settings, now=clock) == 1
    clock.advance(100)
    assert run_due_exports(factory, settings, now=clock) == 0
    assert sorted(pacs.received) == sorted(approved_study.sop_uids)
    assert _study(factory, approved_study.study_uid).state == StudyState.EXPORTED


def test_dead_letter_after_max_attempts_then_retry_sends(  # type: ignore[no-untyped-def]
    factory, approved_study, make_settings, pacs
) -> None:
    clock = FakeClock()
    settings = make_settings([_dicom(pacs.port)], backoff_initial_s=1, backoff_max_s=1, max_attempts=2)
    run_due_exports(factory, settings, now=clock)
    clock.advance(1)
    run_due_exports(factory, settings, now=clock)
    (export,) = _exports(factory)
    assert export.status == ExportStatus.DEAD_LETTER and export.attempts == 2
    assert _study(factory, approved_study.study_uid).state == StudyState.DEAD_LETTER
    clock.advance(3600)
    assert run_due_exports(factory, settings, now=clock) == 0  # dead letters are not retried by themselves

    pacs.start()
    assert retry_dead_letters(factory, study_uid="1.2.3.4") == 0  # another study: untouched
    assert retry_dead_letters(factory, study_uid=approved_study.study_uid, now=clock) == 1
    assert _study(factory, approved_study.study_uid).state == StudyState.APPROVED
    assert run_due_exports(factory, settings, now=clock) == 1
    assert sorted(pacs.received) == sorted(approved_study.sop_uids)
    assert _study(factory, approved_study.study_uid).state == StudyState.EXPORTED


@pytest.mark.skipif(not STORESCP.exists(), reason="DCMTK /usr/bin/storescp not installed")
def test_dcmtk_storescp_receives_the_series(  # type: ignore[no-untyped-def]
    factory, approved_study, make_settings, tmp_path: Path
) -> None:
    port, out = free_port(), tmp_path / "storescp"
    out.mkdir()
    process = subprocess.Popen(
        [str(STORESCP), "-aet", PACS_AE, "-od", str(out), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={"TCP_NODELAY": "1"},
    )
    try:
        settings = make_settings([_dicom(port)])
        deadline = time.monotonic() + 10
        while run_due_exports(factory, settings) == 0 and time.monotonic() < deadline:
            retry_dead_letters(factory)  # storescp may still be starting: try again at once
            with factory() as session, session.begin():
                for export in session.scalars(select(Export)):
                    export.next_attempt_at = utcnow()
            time.sleep(0.1)
    finally:
        process.terminate()
        process.wait(10)
    stored = sorted(dcmread(p).SOPInstanceUID for p in out.iterdir())
    assert stored == sorted(approved_study.sop_uids)
    shutil.rmtree(out)


def test_cli_export_retry(factory, approved_study, make_settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """``codebrain-node export retry --study UID`` puts the study's dead letters back in line."""
    import os
    import sys

    clock = FakeClock()
    settings = make_settings([_dicom(free_port())], max_attempts=1)
    run_due_exports(factory, settings, now=clock)
    assert _exports(factory)[0].status == ExportStatus.DEAD_LETTER
    url = str(factory.kw["bind"].url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODEBRAIN_")}
    command = ["export", "retry", "--study", approved_study.study_uid]
    done = subprocess.run(
        [sys.executable, "-c", "from codebrain_node.cli import main; main()", *command],
        capture_output=True,
        text=True,
        env={**env, "CODEBRAIN_DATABASE__URL": url, "CODEBRAIN_PATHS__DATA_DIR": str(tmp_path / "d")},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("1 dead-lettered export(s)")
    assert _exports(factory)[0].status == ExportStatus.PENDING
    assert _study(factory, approved_study.study_uid).state == StudyState.APPROVED


def test_reapproved_study_with_everything_sent_settles_without_resending(  # type: ignore[no-untyped-def]
    factory, approved_study, make_settings, pacs
) -> None:
    from codebrain_node.db.lifecycle import transition

    pacs.start()
    settings = make_settings([_dicom(pacs.port)])
    assert run_due_exports(factory, settings) == 1
    with factory() as session, session.begin():
        study = session.scalars(select(Study)).one()
        transition(session, study, StudyState.APPROVED, "user:test")
    assert run_due_exports(factory, settings) == 0
    assert len(pacs.received) == 3
    assert _study(factory, approved_study.study_uid).state == StudyState.EXPORTED
