"""#16, the campaign: every malformed instance of :mod:`tests.robustness.malformed` (the defect list, then seeded
truncations and byte flips) is sent to a running node (receiver, router, engine, exporter), each on its own
association, on SQLite and on PostgreSQL. Each answer is either a failure status (PS3.4 B.2.3: 0xA7xx out of
resources, 0xA9xx data set does not match SOP class, 0xCxxx cannot understand) with nothing kept, or Success with the
instance then recorded or quarantined with its reason; after each one the node still answers a C-ECHO, and after them
all it takes a good study and completes it with one synthetic series per missing contrast."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian
from pynetdicom import AE, _config
from pynetdicom.sop_class import MRImageStorage, Verification
from sqlalchemy import Engine, select

from codebrain_node.config import FolderDestinationSettings
from codebrain_node.db.models import Instance
from codebrain_node.node.serve import Node
from tests.e2e.e2e_support import (
    TARGETS,
    make_study,
    node_settings,
    phantom_images,
    phantom_volumes,
    series_files,
    storescu,
    study_state,
    study_story,
    study_uid_of,
    tiny_weights,
    wait_for,
)
from tests.robustness import campaign_report
from tests.robustness.conftest import CALLER, EXPLICIT
from tests.robustness.malformed import Malformed, generate, part10

__all__ = ["make_study", "phantom_images", "phantom_volumes", "tiny_weights"]  # fixtures, from e2e_support

SEED = int(os.environ.get("CODEBRAIN_CAMPAIGN_SEED", "16"))
#: Random cases of each kind (truncation, byte flips); more with the environment variable.
RANDOM_CASES = int(os.environ.get("CODEBRAIN_CAMPAIGN_RANDOM_CASES", "8"))


def _is_failure(status: int) -> bool:
    return 0xA700 <= status <= 0xA7FF or 0xA900 <= status <= 0xA9FF or 0xC000 <= status <= 0xCFFF


def _send(port: int, path: Path) -> int | None:
    """One C-STORE of the file's bytes as they are, on its own association; None when no status came back."""
    ae = AE(ae_title=CALLER)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(MRImageStorage, [EXPLICIT])
    ae.add_requested_context(MRImageStorage, [DeflatedExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", port, ae_title="CODEBRAIN")
    assert assoc.is_established
    try:
        answer = assoc.send_c_store(path)
    finally:
        if assoc.is_established:
            assoc.release()
    return int(answer.Status) if "Status" in answer else None


def _echo(port: int) -> bool:
    ae = AE(ae_title=CALLER)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="CODEBRAIN")
    if not assoc.is_established:
        return False
    try:
        return int(assoc.send_c_echo().Status) == 0x0000
    finally:
        assoc.release()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str:
    """Empty for the node's own SQLite file; PostgreSQL a new schema (skipped with the reason when unreachable)."""
    if request.param == "sqlite":
        return ""
    engine: Engine = request.getfixturevalue("postgres_engine")
    return engine.url.render_as_string(hide_password=False)


def test_malformed_instances_are_answered_properly_and_the_node_stays_healthy(
    database_url: str,
    tiny_weights: Path,
    make_study,  # type: ignore[no-untyped-def]
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    cases = generate(SEED, truncations=RANDOM_CASES, flips=RANDOM_CASES)
    pacs = tmp_path / "pacs"
    settings = node_settings(
        tmp_path / "node",
        tiny_weights,
        [FolderDestinationSettings(name="pacs", path=pacs)],
        **({"database": {"url": database_url}} if database_url else {}),
    )
    node = Node(settings, engine_mode="thread").start()
    answers: list[tuple[Malformed, int | None, bool]] = []
    try:
        monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)  # the bytes as generated, unparsed
        for case in cases:
            status = _send(node.port, part10(case, tmp_path / "sent"))
            answers.append((case, status, _echo(node.port)))
        monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", False)
        assert node.receive is not None and node.receive.recorder.flush(30)

        data_dir = settings.paths.data_dir
        with node.factory() as session:
            recorded = set(session.scalars(select(Instance.sop_instance_uid)))
        quarantined = {p.stem for p in (data_dir / "quarantine").glob("*.dcm")}
        reasons = {p.name.removesuffix(".dcm.reason.txt") for p in (data_dir / "quarantine").glob("*.reason.txt")}
        spooled = {p.stem for p in data_dir.joinpath("incoming").rglob("*.dcm")}
        rows: list[dict[str, Any]] = []
        problems = []
        for case, status, healthy in answers:
            uid = case.sop_instance_uid
            if status == 0x0000:
                outcome = "recorded" if uid in recorded else "quarantined" if uid in quarantined else "LOST"
                if outcome == "quarantined" and uid not in reasons:
                    outcome = "quarantined without a reason"
            elif status is not None and _is_failure(status):
                kept = uid in recorded and not case.duplicate_of_earlier
                outcome = "refused, yet recorded" if kept else "refused"
            else:
                outcome = "no proper status"
            rows.append({"case": case.name, "status": "none" if status is None else f"0x{status:04X}"})
            rows[-1] |= {"outcome": outcome, "healthy": healthy}
            wrong_status = case.expected is not None and status != case.expected
            if outcome not in ("recorded", "quarantined", "refused") or not healthy or wrong_status:
                problems.append(rows[-1] | {"expected": case.expected})
        # nothing refused lies in the spool; the one copy of a re-used UID is the first
        assert not {c.sop_instance_uid for c, s, _ in answers if s and not c.duplicate_of_earlier} & spooled

        good = make_study(seed=1616)
        study_uid = study_uid_of(good)
        sent = storescu(node.port, sorted(good.rglob("*.dcm")))
        assert sent.returncode == 0, sent.stderr
        wait_for(
            lambda: study_state(node.factory, study_uid) == "exported",
            120,
            "the good study to be EXPORTED after the malformed ones",
            explain=lambda: study_story(node.factory, study_uid),
        )
        delivered = [d for d in (pacs / study_uid).iterdir() if d.is_dir()]
        contrasts = sorted(
            pydicom.dcmread(next(d.glob("*.dcm")), stop_before_pixels=True).SeriesDescription.split()[1]
            for d in delivered
        )
        reference = len(series_files(good, "101_"))
        complete = contrasts == TARGETS and all(len(list(d.glob("*.dcm"))) == reference for d in delivered)
    finally:
        node.stop()
    backend = request.node.callspec.params["database_url"]
    campaign_report.record(
        f"malformed inputs ({backend}, seed {SEED})",
        {
            "tried": len(rows),
            "answered": dict(Counter(row["status"] for row in rows)),
            "outcomes": dict(Counter(row["outcome"] for row in rows)),
            "healthy after each": sum(row["healthy"] for row in rows),
            "good study afterwards": f"exported, synthetic {contrasts}" if complete else "INCOMPLETE",
            "cases": {row["case"]: f"{row['status']} {row['outcome']}" for row in rows},
        },
    )
    assert problems == []
    assert complete, contrasts
