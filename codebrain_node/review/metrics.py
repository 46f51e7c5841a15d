"""Prometheus metrics: study, job and export counts read from the database at scrape time, plus web requests.

The counts come from a collector that queries on each scrape (so several processes sharing one database agree),
and each app has its own registry (so tests and several apps in one process do not collide).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from codebrain_node.db.models import Export, ExportStatus, Job, JobStatus, Study, StudyState


class DatabaseCollector(Collector):
    """``codebrain_studies{state}``, ``codebrain_jobs{status}``, ``codebrain_exports{status}``: rows by state now."""

    def __init__(self, factory: sessionmaker[Session]) -> None:
        self._factory = factory

    def collect(self) -> Iterator[GaugeMetricFamily]:
        tables = (
            ("codebrain_studies", "Studies by lifecycle state.", Study.state, StudyState, "state"),
            ("codebrain_jobs", "Imputation jobs by status.", Job.status, JobStatus, "status"),
            ("codebrain_exports", "Series deliveries by status.", Export.status, ExportStatus, "status"),
        )
        with self._factory() as session:
            for name, documentation, column, enum, label in tables:
                rows = session.execute(select(column, func.count()).group_by(column))
                counts = {str(value): count for value, count in rows}
                family = GaugeMetricFamily(name, documentation, labels=[label])
                for member in enum:
                    family.add_metric([member.value], counts.get(member.value, 0))
                yield family


class ReviewMetrics:
    """One registry per app: database counts, requests, request durations and review actions."""

    def __init__(self, factory: sessionmaker[Session]) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(DatabaseCollector(factory))
        self.requests = Counter(
            "codebrain_review_requests",
            "Review web requests by method, route and status code.",
            ["method", "route", "code"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "codebrain_review_request_duration_seconds",
            "Review web request durations.",
            ["route"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
        )
        self.actions = Counter(
            "codebrain_review_actions",
            "Reviewer actions (approve, reject, sign-in) by outcome.",
            ["action", "outcome"],
            registry=self.registry,
        )
