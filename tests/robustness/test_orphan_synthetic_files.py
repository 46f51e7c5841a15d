"""#16 defect 9: a worker killed while it wrote a synthetic series (files on disk, nothing recorded) left them
there for good. The retried attempt now removes every unrecorded series folder of the study before it writes,
and keeps the recorded ones (current or superseded)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy.orm import Session, sessionmaker

from codebrain_node.config import Settings
from codebrain_node.contrasts import Contrast
from codebrain_node.db import jobs
from codebrain_node.db.lifecycle import transition
from codebrain_node.db.models import Instance, Job, Series, Study, StudyState, utcnow
from codebrain_node.db.session import transaction
from codebrain_node.engine import worker as engine_worker
from codebrain_node.engine.worker import JobResult

STUDY = "1.2.826.0.1.3680043.10.16.9"
RECORDED = f"{STUDY}.1021"  # a synthetic series an earlier job recorded
ORPHAN = f"{STUDY}.1121"  # written by an attempt killed before it recorded anything


def _claimed_retry(factory: sessionmaker[Session]) -> int:
    with transaction(factory) as session:
        study = Study(study_instance_uid=STUDY, state=StudyState.RECEIVING)
        session.add(study)
        for uid, number, contrast, synthetic in ((f"{STUDY}.2", 2, "T1", False), (RECORDED, 1021, "T1Gd", True)):
            series = Series(study=study, series_instance_uid=uid, series_number=number, contrast=contrast)
            series.is_synthetic = synthetic
            series.instances.append(
                Instance(
                    sop_instance_uid=f"{uid}.1",
                    sop_class_uid="1.2.840.10008.5.1.4.1.1.4",
                    path=f"{uid}.dcm",
                    size_bytes=1,
                    received_at=utcnow(),
                )
            )
            session.add(series)
        job = Job(study=study, inputs={"T1": f"{STUDY}.2"}, targets=["T1Gd"], attempts=1)
        session.add(job)
        session.flush()
        transition(session, study, StudyState.STABLE, "test")
        transition(session, study, StudyState.QUEUED, "test")
        claimed = jobs.claim_next_job(session, "host:1:thread-0")
        assert claimed is not None
        return claimed.id


def test_a_retried_job_removes_what_the_killed_attempt_wrote(
    any_factory: sessionmaker[Session], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = _claimed_retry(any_factory)
    out_dir = tmp_path / "data" / "synthetic" / STUDY
    for uid in (RECORDED, ORPHAN):
        (out_dir / uid).mkdir(parents=True)
        (out_dir / uid / f"{uid}.1.dcm").write_bytes(b"DICM")
    (out_dir / ORPHAN / ".tmp-half-written").write_bytes(b"\0" * 100)
    seen: list[set[str]] = []

    def fake_impute(inputs, targets, model, out_dir: Path, **_: object) -> JobResult:  # type: ignore[no-untyped-def]
        seen.append({folder.name for folder in out_dir.iterdir()})
        return JobResult()

    monkeypatch.setattr(engine_worker, "load_inputs", lambda session, job, data_dir: ({Contrast.T1: None}, []))
    monkeypatch.setattr(engine_worker, "impute_study", fake_impute)
    settings = Settings.model_validate({"paths": {"data_dir": str(tmp_path / "data")}})
    model = SimpleNamespace(name="m", version="1", network=SimpleNamespace(cfg=SimpleNamespace(image_size=32)))
    engine = engine_worker.Engine(settings, any_factory, model=model, name="host:1:thread-0")  # type: ignore[arg-type]
    engine._run(job_id)
    assert seen == [{RECORDED}]  # the orphan was gone before the attempt wrote anything
    assert (out_dir / RECORDED / f"{RECORDED}.1.dcm").exists()
    assert not (out_dir / ORPHAN).exists()
