"""Rows by state, read from the database on each Prometheus scrape: studies, the job queue and exports.

Read at scrape time, not counted, so every process that shares the database (several nodes, the review app)
reports the same figures; ``codebrain_jobs{status="queued"}`` is the queue depth. Served by ``serve``'s metrics
endpoint and the review app's ``/metrics``.
"""

from __future__ import annotations

from collections.abc import Iterator

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
