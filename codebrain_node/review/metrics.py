"""Prometheus metrics: study, job and export counts read from the database at scrape time, web requests, and the
node's own counters of this process (ingest, jobs, exports: ``codebrain_node/metrics.py``).

The counts come from a collector that queries on each scrape (so several processes sharing one database agree),
and each app has its own registry for its web metrics (so tests and several apps in one process do not collide).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram
from sqlalchemy.orm import Session, sessionmaker

from codebrain_node.db.metrics import DatabaseCollector
from codebrain_node.metrics import ProcessMetrics


class ReviewMetrics:
    """One registry per app: database counts, this process's node metrics, requests, durations, review actions."""

    def __init__(self, factory: sessionmaker[Session]) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(DatabaseCollector(factory))
        self.registry.register(ProcessMetrics())
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
