"""Prometheus metrics of this process's own work: what it received, imputed and exported.

One set per process, incremented where the work happens (``receive/scp.py``, ``engine/worker.py``,
``export/dispatch.py``); nothing here knows of a stage, so every stage may import it. Counts of rows by state
(studies, the job queue, exports) are not kept here: they are read from the database on each scrape
(``db/metrics.py``), so processes sharing one database report them alike.

Exposed on ``/metrics`` of the review app (its registry includes :data:`REGISTRY`) and, with ``metrics.enabled``,
by :func:`start_metrics_server` on ``metrics.bind_address:metrics.port`` (``serve`` and ``worker``; see the
README for what each process shows). With several receiver processes (``dicom.receiver_processes`` > 1), each
runs with ``PROMETHEUS_MULTIPROC_DIR`` set (prometheus_client's multiprocess mode: its counters live in files of
that folder) and ``serve`` shows the ``codebrain_ingest_*`` families summed over those files
(:class:`ReceiverProcessMetrics`) in place of its own, which count nothing then. Labels are few and fixed (no AE
titles, UIDs or patient data), so a stranger calling the receiver cannot make new series.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

#: This process's metrics (and its CPU, memory and open files, where the platform tells).
REGISTRY = CollectorRegistry()

# --- ingest (receive/scp.py) ---------------------------------------------------------------------------------

INGEST_INSTANCES = Counter(
    "codebrain_ingest_instances",
    "C-STORE requests answered with success: stored (new, fsynced to the spool) or duplicate (already held).",
    ["outcome"],
    registry=REGISTRY,
)
INGEST_BYTES = Counter(
    "codebrain_ingest_bytes", "Bytes of newly stored instances, as written to the spool.", registry=REGISTRY
)
INGEST_REFUSED = Counter(
    "codebrain_ingest_refused_instances",
    "C-STORE requests refused, by the DIMSE status answered (0xA700 out of resources, 0xA900 dataset does not "
    "match SOP class, 0xC000 cannot understand, ...).",
    ["status"],
    registry=REGISTRY,
)
ASSOCIATIONS_OPENED = Counter(
    "codebrain_ingest_associations_opened", "Associations accepted by the Storage SCP.", registry=REGISTRY
)
ASSOCIATIONS_ENDED = Counter(
    "codebrain_ingest_associations_ended",
    "Accepted associations that ended, by how: released, aborted, connection closed, receiver stopped.",
    ["reason"],
    registry=REGISTRY,
)
ASSOCIATIONS_REJECTED = Counter(
    "codebrain_ingest_associations_rejected",
    "Association requests rejected by the node's policy (A-ASSOCIATE-RJ), by reason.",
    ["reason"],
    registry=REGISTRY,
)

#: The families the receiver counts (``receive/scp.py``): summed over the receiver processes when there are several.
INGEST_PREFIX = "codebrain_ingest_"

RECEIVER_RESTARTS = Counter(
    "codebrain_receiver_process_restarts",
    "Receiver processes (dicom.receiver_processes > 1) that died and were started again.",
    registry=REGISTRY,
)

# --- jobs (engine/worker.py) -------------------------------------------------------------------------------

#: The engine's stages as its job timings name them (``load_s``, ..., ``total_s``).
JOB_STAGES = ("load", "preprocess", "model", "write", "total")
JOB_STAGE_SECONDS = Histogram(
    "codebrain_job_stage_duration_seconds",
    "Seconds each stage of a finished imputation job took (total: claim to result recorded).",
    ["stage"],
    registry=REGISTRY,
    buckets=(0.5, 1, 2.5, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600, 1200),
)
JOBS_DONE = Counter("codebrain_jobs_done", "Imputation jobs this process finished and recorded.", registry=REGISTRY)
JOB_FAILURES = Counter(
    "codebrain_job_failures",
    "Failed job attempts, by what the job became: queued (to be retried) or failed (for good).",
    ["next_status"],
    registry=REGISTRY,
)

# --- exports (export/dispatch.py) ----------------------------------------------------------------------------

EXPORT_ATTEMPTS = Counter(
    "codebrain_export_attempts",
    "Deliveries tried, by destination (its configured name), kind (series, rejection_note) and outcome: sent, "
    "retry (failed, tried again after the back-off) or dead_letter (failed for good).",
    ["destination", "kind", "outcome"],
    registry=REGISTRY,
)


def count_store(status: int, stored_bytes: int | None = None, duplicate: bool = False) -> None:
    """One C-STORE answered: newly stored (``stored_bytes`` of it), a duplicate, or refused with ``status``."""
    if stored_bytes is not None:
        INGEST_INSTANCES.labels("stored").inc()
        INGEST_BYTES.inc(stored_bytes)
    elif duplicate:
        INGEST_INSTANCES.labels("duplicate").inc()
    elif status != 0:
        INGEST_REFUSED.labels(f"0x{status:04X}").inc()


def observe_job_timings(timings: Mapping[str, float]) -> None:
    """One finished job: each stage's seconds from the engine's timings (``model_s`` → stage ``model``)."""
    JOBS_DONE.inc()
    for stage in JOB_STAGES:
        seconds = timings.get(f"{stage}_s")
        if seconds is not None:
            JOB_STAGE_SECONDS.labels(stage).observe(seconds)


def _add_process_collectors() -> None:
    from prometheus_client import GCCollector, PlatformCollector, ProcessCollector

    ProcessCollector(registry=REGISTRY)
    PlatformCollector(registry=REGISTRY)
    GCCollector(registry=REGISTRY)


_add_process_collectors()


class ProcessMetrics(Collector):
    """:data:`REGISTRY` as one collector, for another registry (the review app's) to include; ``without_ingest``
    leaves out the ``codebrain_ingest_*`` families (other processes receive: :class:`ReceiverProcessMetrics`)."""

    def __init__(self, without_ingest: bool = False) -> None:
        self.without_ingest = without_ingest

    def collect(self) -> Iterator[Metric]:
        for metric in REGISTRY.collect():
            if not (self.without_ingest and metric.name.startswith(INGEST_PREFIX)):
                yield metric


class ReceiverProcessMetrics(Collector):
    """The ``codebrain_ingest_*`` families summed over the receiver processes' files in ``folder`` (their
    ``PROMETHEUS_MULTIPROC_DIR``); a process that died keeps its counts, so the sums never go back."""

    def __init__(self, folder: Path) -> None:
        from prometheus_client.multiprocess import MultiProcessCollector

        self._files = MultiProcessCollector(None, path=str(folder))

    def collect(self) -> Iterator[Metric]:
        for metric in self._files.collect():
            if metric.name.startswith(INGEST_PREFIX):
                yield metric


def ingest_totals(folder: Path) -> dict[str, float]:
    """Each ingest sample summed over the receiver processes' files, by name and labels (tests, ``bench``):
    ``{"codebrain_ingest_instances_total{outcome=stored}": 500.0, ...}``."""
    totals: dict[str, float] = {}
    for metric in ReceiverProcessMetrics(folder).collect():
        for sample in metric.samples:
            labels = ",".join(f"{key}={value}" for key, value in sorted(sample.labels.items()))
            name = f"{sample.name}{{{labels}}}" if labels else sample.name
            totals[name] = totals.get(name, 0.0) + sample.value
    return totals


class MetricsServer:
    """The metrics endpoint: ``GET /metrics`` (any path, as prometheus_client serves) on its own thread."""

    def __init__(self, server: WSGIServer) -> None:
        self._server = server

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def start_metrics_server(
    bind_address: str, port: int, extra: Iterable[Collector] = (), receiver_metrics: Path | None = None
) -> MetricsServer:
    """Serve :data:`REGISTRY` and ``extra`` (say the database counts) on ``bind_address:port`` (0: a free port);
    with ``receiver_metrics`` (the receiver processes' folder), the ingest families are theirs, summed."""
    registry = CollectorRegistry()
    registry.register(ProcessMetrics(without_ingest=receiver_metrics is not None))
    if receiver_metrics is not None:
        registry.register(ReceiverProcessMetrics(receiver_metrics))
    for collector in extra:
        registry.register(collector)
    server, _thread = start_http_server(port, addr=bind_address, registry=registry)
    metrics = MetricsServer(server)
    log.info("Prometheus metrics on http://%s:%d/metrics", bind_address, metrics.port)
    return metrics
