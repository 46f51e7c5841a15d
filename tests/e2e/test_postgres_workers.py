"""Two engine workers on PostgreSQL share one queue (``FOR UPDATE SKIP LOCKED``) and never run one job twice."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import pydicom
from e2e_support import TARGETS, node_settings, study_uid_of, wait_for
from sqlalchemy import Engine, func, select

from codebrain_node.contrasts import Contrast
from codebrain_node.db.models import AuditEvent, Job, JobStatus, Series, Study, StudyState, utcnow
from codebrain_node.db.session import make_engine, session_factory, upgrade
from codebrain_node.engine.weights import load_model
from codebrain_node.engine.worker import Engine as Worker
from codebrain_node.node.offline import _dataset_bytes
from codebrain_node.receive.recorder import record_batch
from codebrain_node.receive.spool import Spool
from codebrain_node.route.stable import check_stable_studies

STUDIES = 4


def _spool_study(spool: Spool, folder: Path) -> list:
    """File a study's instances exactly as the receiver does (durable spool), ready for the recorder."""
    received = []
    for path in sorted(folder.rglob("*.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        outcome = spool.store(
            _dataset_bytes(path.read_bytes()),
            sop_class_uid=str(ds.SOPClassUID),
            sop_instance_uid=str(ds.SOPInstanceUID),
            transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
            calling_ae_title="STORESCU",
        )
        assert outcome.instance is not None
        received.append(outcome.instance)
    return received


def test_two_workers_share_one_postgres_queue_and_run_each_job_once(
    postgres_engine: Engine, tiny_weights: Path, make_study, tmp_path: Path
) -> None:
    url = postgres_engine.url.render_as_string(hide_password=False)
    settings = node_settings(tmp_path / "shared", tiny_weights, [], database={"url": url})
    upgrade(postgres_engine)
    factory = session_factory(postgres_engine)
    spool = Spool(settings.paths.data_dir)
    folders = [make_study(seed=700 + index) for index in range(STUDIES)]
    for folder in folders:
        record_batch(factory, _spool_study(spool, folder))
    model = load_model(settings.model.weights, "cpu")
    contrasts = [Contrast(c) for c in model.contrasts]
    queued = check_stable_studies(factory, settings, contrasts, now=utcnow() + timedelta(days=1))
    assert len(queued) == STUDIES
    with factory() as session:
        assert session.scalar(select(func.count(Job.id)).where(Job.status == JobStatus.QUEUED)) == STUDIES

    # two workers, each with its own connection pool, as two machines would have
    engines = [make_engine(url) for _ in range(2)]
    stop = threading.Event()
    workers = [
        Worker(settings, session_factory(db), model=model, name=f"worker-{index}") for index, db in enumerate(engines)
    ]
    threads = [threading.Thread(target=w.run, args=(stop,), name=w.name) for w in workers]
    for thread in threads:
        thread.start()
    try:

        def all_done() -> bool:
            with factory() as session:
                return session.scalar(select(func.count(Job.id)).where(Job.status == JobStatus.DONE)) == STUDIES

        wait_for(all_done, 180, f"{STUDIES} jobs DONE")
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        for db in engines:
            db.dispose()

    with factory() as session:
        jobs = list(session.scalars(select(Job).order_by(Job.id)))
        assert len(jobs) == STUDIES
        assert all(job.status == JobStatus.DONE and job.attempts == 1 for job in jobs)
        # both took jobs from the one queue (each claims at once; a job lasts far longer than a thread start)
        assert {job.worker for job in jobs} == {"worker-0", "worker-1"}
        for job in jobs:
            claims = list(
                session.scalars(
                    select(AuditEvent).where(AuditEvent.study_id == job.study_id, AuditEvent.action == "state:imputing")
                )
            )
            assert [event.actor for event in claims] == [f"engine:{job.worker}"]  # claimed once, by one worker
        for folder in folders:
            study = session.scalars(select(Study).where(Study.study_instance_uid == study_uid_of(folder))).one()
            assert StudyState(study.state) is StudyState.APPROVED  # no destinations configured: nothing to send
            synthetic = list(session.scalars(select(Series).where(Series.study_id == study.id, Series.is_synthetic)))
            assert sorted(s.contrast for s in synthetic) == TARGETS
            on_disk = [d for d in (settings.paths.data_dir / "synthetic" / study.study_instance_uid).iterdir()]
            assert len(on_disk) == len(TARGETS)
