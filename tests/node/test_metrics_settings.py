"""The metrics endpoint's settings and who shows what (issue #18): off by default, one port per worker process
that ``serve`` starts (kept across restarts), and the review app's /metrics carrying the node's own counters."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import generate_latest

from codebrain_node.config import Settings, load_settings
from codebrain_node.db.session import make_engine, session_factory, upgrade
from codebrain_node.node.serve import worker_environment
from codebrain_node.review.metrics import ReviewMetrics


def test_metrics_are_off_by_default() -> None:
    settings = load_settings(environ={})
    assert settings.metrics.enabled is False
    assert settings.metrics.port == 9110


def test_each_worker_process_gets_its_own_port_and_a_disabled_endpoint_changes_nothing() -> None:
    on = Settings.model_validate({"metrics": {"enabled": True, "port": 9200}})
    assert [worker_environment(on, index, {"A": "1"})["CODEBRAIN_METRICS__PORT"] for index in range(3)] == [
        "9201",
        "9202",
        "9203",
    ]
    assert worker_environment(on, 0, {"A": "1"})["A"] == "1"
    free = Settings.model_validate({"metrics": {"enabled": True, "port": 0}})
    assert worker_environment(free, 2, {})["CODEBRAIN_METRICS__PORT"] == "0"
    assert worker_environment(Settings(), 0, {"A": "1"}) == {"A": "1"}
    # the worker reads it like any other setting
    child = load_settings(environ={"CODEBRAIN_METRICS__ENABLED": "true", "CODEBRAIN_METRICS__PORT": "9201"})
    assert (child.metrics.enabled, child.metrics.port) == (True, 9201)


def test_the_review_apps_registry_includes_the_node_metrics(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'codebrain.db'}")
    upgrade(engine)
    try:
        text = generate_latest(ReviewMetrics(session_factory(engine)).registry).decode()
    finally:
        engine.dispose()
    for name in ("codebrain_ingest_bytes_total", "codebrain_jobs_done_total", 'codebrain_jobs{status="queued"} 0.0'):
        assert name in text
    # once each: the node's counters are included, not registered twice
    assert text.count("# TYPE codebrain_ingest_bytes_total counter") == 1 and text.count("# HELP codebrain_jobs ") == 1
