"""Prometheus metrics of ``serve`` and ``worker`` without the review app (issue #18).

A running node with ``metrics.enabled`` (review off, engine on a thread) receives a small study from DCMTK
storescu; a scrape of its endpoint then shows the instances and bytes stored, the association opened and
released, one observation per engine stage, the job and the export outcome, and the queue by status from the
database. A refused instance and a rejected association (unknown calling AE) show by status and by reason.
A standalone ``codebrain-node worker`` exposes its own job metrics on its port.

The counters are per process, so each check compares a scrape after with one before. No timed assertions: the
waits have deadlines only so that a hung node fails instead of hanging the suite.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_support import (
    NODE_AE,
    SCANNER_AE,
    TARGETS,
    node_settings,
    storescu,
    study_state,
    study_story,
    study_uid_of,
    wait_for,
)
from prometheus_client.parser import text_string_to_metric_families
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage
from sqlalchemy import func, select

from codebrain_node.config import FolderDestinationSettings
from codebrain_node.db.models import Export, ExportStatus, Instance, Job, JobStatus, Series
from codebrain_node.node.serve import Node
from tests.dicom_fixtures import free_port, make_mr_instance

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Samples:
    """Every sample of ``http://127.0.0.1:<port>/metrics``, by name and labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def grown(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


@pytest.fixture
def node(tmp_path: Path, tiny_weights: Path) -> Iterator[Node]:
    settings = node_settings(
        tmp_path / "node",
        tiny_weights,
        [FolderDestinationSettings(name="pacs", path=tmp_path / "pacs")],
        metrics={"enabled": True, "bind_address": "127.0.0.1", "port": 0},
    )
    node = Node(settings, engine_mode="thread", review=False).start()
    try:
        yield node
    finally:
        node.stop()


def test_a_node_without_the_review_app_counts_ingest_jobs_and_exports(node: Node, make_study) -> None:  # type: ignore[no-untyped-def]
    assert node.review is None and node.metrics is not None
    port = node.metrics.port
    folder = make_study(71)
    files = sorted(folder.rglob("*.dcm"))
    study_uid = study_uid_of(folder)
    before = scrape(port)

    sent = storescu(node.port, files)
    assert sent.returncode == 0, sent.stderr
    wait_for(
        lambda: study_state(node.factory, study_uid) == "exported",
        240,
        "the study exported",
        explain=lambda: study_story(node.factory, study_uid),
    )
    after = scrape(port)

    with node.factory() as session:
        acquired = select(func.sum(Instance.size_bytes)).join(Series).where(Series.is_synthetic.is_(False))
        stored_bytes = session.scalar(acquired)
        job_count = session.scalar(select(func.count()).select_from(Job))
        sent_exports = session.scalar(select(func.count()).where(Export.status == ExportStatus.SENT))
    assert job_count == 1
    assert sent_exports == len(TARGETS)  # one synthetic series of each missing contrast, to the one destination

    # ingest: every instance of the one association stored, its bytes as spooled, the association released
    assert grown(before, after, "codebrain_ingest_instances_total", outcome="stored") == len(files)
    assert grown(before, after, "codebrain_ingest_instances_total", outcome="duplicate") == 0
    assert grown(before, after, "codebrain_ingest_bytes_total") == stored_bytes
    assert grown(before, after, "codebrain_ingest_associations_opened_total") == 1
    assert grown(before, after, "codebrain_ingest_associations_ended_total", reason="released") == 1
    # jobs: one observation of each engine stage, the total the largest; no failure
    for stage in ("load", "preprocess", "model", "write", "total"):
        assert grown(before, after, "codebrain_job_stage_duration_seconds_count", stage=stage) == 1, stage
    total = grown(before, after, "codebrain_job_stage_duration_seconds_sum", stage="total")
    model = grown(before, after, "codebrain_job_stage_duration_seconds_sum", stage="model")
    assert total >= model > 0
    assert grown(before, after, "codebrain_jobs_done_total") == 1
    assert grown(before, after, "codebrain_job_failures_total", next_status="queued") == 0
    assert grown(before, after, "codebrain_job_failures_total", next_status="failed") == 0
    # exports: each synthetic series sent once, nothing retried
    exports = {"destination": "pacs", "kind": "series"}
    assert grown(before, after, "codebrain_export_attempts_total", **exports, outcome="sent") == sent_exports
    assert grown(before, after, "codebrain_export_attempts_total", **exports, outcome="retry") == 0
    assert grown(before, after, "codebrain_export_attempts_total", **exports, outcome="dead_letter") == 0
    # the database's rows by state (a fresh database: absolute figures): the queue is empty, the job done
    assert value(after, "codebrain_jobs", status=JobStatus.DONE.value) == 1
    assert value(after, "codebrain_jobs", status=JobStatus.QUEUED.value) == 0
    assert value(after, "codebrain_exports", status=ExportStatus.SENT.value) == sent_exports
    assert value(after, "codebrain_studies", state="exported") == 1


def test_refused_instances_and_rejected_associations_are_counted(node: Node) -> None:
    port = node.metrics.port  # type: ignore[union-attr]
    before = scrape(port)

    bad = make_mr_instance("1.2.826.0.1.3680043.8.498.71", "1.2.826.0.1.3680043.8.498.72", 0, rows=8, columns=8)
    del bad.PixelData  # the engine could never use it: refused with 0xA900
    scanner = AE(ae_title=SCANNER_AE)
    scanner.add_requested_context(MRImageStorage)
    association = scanner.associate("127.0.0.1", node.port, ae_title=NODE_AE)
    assert association.is_established
    status = association.send_c_store(bad)
    association.release()
    assert status.Status == 0xA900

    stranger = AE(ae_title="INTRUDER")
    stranger.add_requested_context(MRImageStorage)
    refused = stranger.associate("127.0.0.1", node.port, ae_title=NODE_AE)
    assert refused.is_rejected

    def released_counted() -> Samples | None:  # pynetdicom reports the release on the node's side a moment later
        samples = scrape(port)
        released = grown(before, samples, "codebrain_ingest_associations_ended_total", reason="released")
        return samples if released else None

    after = wait_for(released_counted, 30, "the released association counted")
    assert grown(before, after, "codebrain_ingest_refused_instances_total", status="0xA900") == 1
    assert grown(before, after, "codebrain_ingest_instances_total", outcome="stored") == 0
    assert grown(before, after, "codebrain_ingest_bytes_total") == 0
    assert grown(before, after, "codebrain_ingest_associations_opened_total") == 1  # not the rejected one
    reason = "calling AE title not recognised"
    assert grown(before, after, "codebrain_ingest_associations_rejected_total", reason=reason) == 1
    # no label carries an AE title or a UID: a stranger cannot make new series
    assert not any("INTRUDER" in str(labels) or "1.2.826" in str(labels) for _, labels in after)


def test_a_standalone_worker_exposes_its_job_metrics(tmp_path: Path, tiny_weights: Path) -> None:
    port = free_port()
    config = tmp_path / "worker.toml"
    config.write_text(
        f'[paths]\ndata_dir = "{tmp_path / "node"}"\n'
        f'[model]\nweights = "{tiny_weights}"\ndevice = "cpu"\n'
        f'[metrics]\nenabled = true\nbind_address = "127.0.0.1"\nport = {port}\n'
    )
    worker = subprocess.Popen(
        [sys.executable, "-m", "codebrain_node", "--config", str(config), "worker"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:

        def scraped() -> Samples | None:
            if worker.poll() is not None:
                output = worker.stdout.read().decode() if worker.stdout else ""
                raise AssertionError(f"the worker exited with {worker.returncode}:\n{output}")
            try:
                return scrape(port)
            except (urllib.error.URLError, ConnectionError):
                return None

        samples = wait_for(scraped, 120, f"the worker's metrics on port {port}", interval_s=0.5)
        names = {name for name, _ in samples}
        assert value(samples, "codebrain_jobs_done_total") == 0
        assert "process_cpu_seconds_total" in names
        # the database's rows by state come from serve, not from every worker (no duplicate series)
        assert "codebrain_jobs" not in names
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
