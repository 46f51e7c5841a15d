"""``codebrain-node serve``: the pipeline's stages wired together, started in order and stopped cleanly.

    receive (SCP + spool + recorder) → scheduler (stable studies → jobs; due exports) → engine workers → export
                                                                              └────── review web app

Engine workers run as separate processes (``codebrain-node worker``) so a model run never stalls the receiver;
tests and ``demo`` may run them as threads. Every piece of state is in the database and the spool, so a restart
(even after SIGKILL) resumes every unfinished study, job and export.

With ``dicom.receiver_processes`` above 1 the receive stage runs in that many processes sharing the DICOM port
(``receive/processes.py``), supervised here like the engine workers.

With ``metrics.enabled``, ``serve`` exposes Prometheus metrics on ``metrics.port`` (its receiver, exporter and
thread engines, plus the rows by state read from the database) and each worker process it starts exposes its own
on the next port (``port + 1 + index``, the same index after a restart, so a scrape target keeps its series).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Literal

from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy.orm import Session, sessionmaker

from codebrain_node.config import ConfigError, Settings
from codebrain_node.db import jobs
from codebrain_node.db.metrics import DatabaseCollector
from codebrain_node.db.session import make_engine, session_factory, transaction, upgrade
from codebrain_node.engine.weights import LoadedModel, model_contrasts
from codebrain_node.engine.worker import Engine, worker_name
from codebrain_node.export.dispatch import build_destinations, run_due_exports
from codebrain_node.metrics import MetricsServer, start_metrics_server
from codebrain_node.receive.processes import ReceiverProcesses
from codebrain_node.receive.scp import receiver_tls_context
from codebrain_node.receive.service import ReceiveService, start_receive_service
from codebrain_node.route.stable import make_scheduler
from codebrain_node.tls import TLSFileError

log = logging.getLogger(__name__)

EXPORT_JOB_ID = "export-due"


class Node:
    """The running node. ``start()`` then ``stop()``; ``engine_mode="thread"`` keeps workers in this process."""

    def __init__(
        self,
        settings: Settings,
        *,
        config_file: Path | None = None,
        engine_mode: Literal["process", "thread", "none"] = "process",
        model: LoadedModel | None = None,
        review: bool | None = None,
    ) -> None:
        self.settings = settings
        self.config_file = config_file
        self.engine_mode = engine_mode
        self.model = model
        self.review_enabled = settings.review.enabled if review is None else review
        self.db = make_engine(settings.database_url)
        self.factory: sessionmaker[Session] = session_factory(self.db)
        self.stop_event = threading.Event()
        self.receive: ReceiveService | ReceiverProcesses | None = None
        self.scheduler: BackgroundScheduler | None = None
        self.review = None
        self.metrics: MetricsServer | None = None
        self._threads: list[threading.Thread] = []
        self._workers: list[subprocess.Popen[bytes]] = []
        self._supervisor: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self.receive is None:
            raise RuntimeError("the node is not started")
        return self.receive.port

    def start(self) -> Node:
        """Migrate, then start each stage; the receiver last (it first files what the spool holds unrecorded)."""
        check_tls_files(self.settings)
        upgrade(self.db)
        receivers = ReceiverProcesses(self.settings) if self.settings.dicom.receiver_processes > 1 else None
        if self.settings.metrics.enabled:
            metrics = self.settings.metrics
            self.metrics = start_metrics_server(
                metrics.bind_address,
                metrics.port,
                [DatabaseCollector(self.factory)],
                receiver_metrics=receivers.metrics_dir if receivers is not None else None,
            )
        contrasts = self.model.contrasts if self.model else model_contrasts(self.settings.model.weights)
        self.scheduler = make_scheduler(self.factory, self.settings, list(contrasts))
        self.scheduler.add_job(
            run_due_exports,
            "interval",
            seconds=self.settings.routing.check_interval_s,
            kwargs={"factory": self.factory, "settings": self.settings},
            id=EXPORT_JOB_ID,
            replace_existing=True,
        )
        self.scheduler.start()
        if self.engine_mode != "none":
            with transaction(self.factory) as session:
                jobs.requeue_orphaned_jobs(session)  # this host's workers killed with the last run
        self._start_engines()
        if self.review_enabled:
            from codebrain_node.review.server import ReviewServer

            self.review = ReviewServer(self.settings, self.factory).start()
        if receivers is not None:
            self.receive = receivers
            receivers.start(self.factory)
        else:
            self.receive = start_receive_service(self.settings, self.factory)
        log.info("node %s ready on port %d", self.settings.dicom.ae_title, self.port)
        return self

    def _start_engines(self) -> None:
        count = self.settings.engine.workers
        if self.db.dialect.name == "sqlite" and count > 1:
            log.warning("SQLite holds one engine worker; running 1 of the %d configured", count)
            count = 1
        if self.engine_mode == "thread":
            for index in range(count):
                engine = Engine(self.settings, self.factory, model=self.model, name=f"{worker_name()}:thread-{index}")
                thread = threading.Thread(target=engine.run, args=(self.stop_event,), name=f"engine-{index}")
                thread.start()
                self._threads.append(thread)
        elif self.engine_mode == "process":
            self._workers = [self._spawn_worker(index) for index in range(count)]
            self._supervisor = threading.Thread(target=self._supervise, name="engine-supervisor", daemon=True)
            self._supervisor.start()

    def _spawn_worker(self, index: int) -> subprocess.Popen[bytes]:
        command = [sys.executable, "-m", "codebrain_node"]
        if self.config_file:
            command += ["--config", str(self.config_file)]
        # --parent-pid: the worker watches for this process's death and stops with it (no orphans under PID 1)
        worker = ["worker", "--parent-pid", str(os.getpid())]
        return subprocess.Popen([*command, *worker], env=worker_environment(self.settings, index, os.environ))

    def _supervise(self) -> None:
        """Restart a worker process that died (with a pause, so a crash loop does not spin)."""
        while not self.stop_event.wait(2.0):
            for index, process in enumerate(self._workers):
                if process.poll() is not None and not self.stop_event.is_set():
                    log.warning("engine worker exited with %s; restarting it", process.returncode)
                    time.sleep(2.0)
                    self._workers[index] = self._spawn_worker(index)

    def stop(self) -> None:
        """Stop accepting, let the recorder file what arrived, stop the workers and the scheduler."""
        self.stop_event.set()
        if self.receive is not None:
            self.receive.stop()
        if self.review is not None:
            self.review.stop()
        for process in self._workers:
            process.send_signal(signal.SIGTERM)
        for process in self._workers:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        for thread in self._threads:
            thread.join(timeout=60)
        if self.scheduler is not None and self.scheduler.running:
            self.scheduler.shutdown(wait=True)
        if self.metrics is not None:
            self.metrics.stop()
        self.db.dispose()
        log.info("node stopped")


def worker_environment(settings: Settings, index: int, environ: Mapping[str, str]) -> dict[str, str]:
    """The environment of ``serve``'s worker process ``index``: its own metrics port (``metrics.port + 1 + index``;
    0 stays 0, any free port), given as the setting's variable so the worker reads it like any other setting."""
    env = dict(environ)
    if settings.metrics.enabled:
        port = settings.metrics.port
        env["CODEBRAIN_METRICS__PORT"] = str(port + 1 + index if port else 0)
    return env


def check_tls_files(settings: Settings) -> None:
    """Build every TLS context once (the receiver's, each destination's), so a certificate, key or CA file that is
    missing or unreadable stops the node before anything starts, with one line naming the setting and the file."""
    try:
        receiver_tls_context(settings.dicom)
        for destination in build_destinations(settings).values():
            destination.check()
    except TLSFileError as exc:
        raise ConfigError(str(exc)) from None


def run_until_signal(node: Node) -> None:
    """Block until SIGTERM or SIGINT, then stop the node."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    node.start()
    try:
        while not stop.wait(1.0):
            pass
    finally:
        node.stop()


#: How often a worker started by ``serve`` checks that ``serve`` is still its parent.
PARENT_POLL_S = 1.0


def watch_parent(
    parent_pid: int, on_orphaned: Callable[[], None], interval_s: float = PARENT_POLL_S
) -> threading.Thread:
    """Call ``on_orphaned`` once ``parent_pid`` is no longer this process's parent (it died: the process was
    re-parented to PID 1 or a subreaper), checking every ``interval_s`` on a daemon thread.

    A thread polling :func:`os.getppid` rather than ``prctl(PR_SET_DEATHSIG)``: the death signal fires when the
    *thread* that started the child ends (``serve``'s supervisor thread restarts workers), is Linux only, and is
    lost on an exec of a set-user-ID program; the poll works however the worker was started (exec, fork or a
    ``spawn`` start method) on any POSIX system. A parent that died before the thread started is caught by the
    first check, at once."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(interval_s)
        on_orphaned()

    thread = threading.Thread(target=watch, name="parent-watch", daemon=True)
    thread.start()
    return thread


def _exit_orphaned(parent_pid: int) -> None:
    """``serve`` is gone (killed with SIGKILL, say): end now, mid-job or not. The job stays RUNNING under this
    worker's id; the next ``serve`` on this host finds the process dead and requeues it at once
    (:func:`~codebrain_node.db.jobs.requeue_orphaned_jobs`), and the retry clears what this attempt half-wrote."""
    log.warning("serve (pid %d) is gone: engine worker %d stops with it", parent_pid, os.getpid())
    logging.shutdown()
    os._exit(70)


def run_worker(settings: Settings, parent_pid: int | None = None) -> None:
    """``codebrain-node worker``: engine loops only (for ``serve``'s children and for extra machines).

    ``parent_pid`` (``serve`` passes its own): exit as soon as that process is no longer the parent."""
    if parent_pid is not None:
        watch_parent(parent_pid, lambda: _exit_orphaned(parent_pid))
    db = make_engine(settings.database_url)
    upgrade(db)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    factory = session_factory(db)
    with transaction(factory) as session:  # a predecessor on this host killed mid-job: retry it now, not at lease end
        jobs.requeue_orphaned_jobs(session)
    metrics = settings.metrics
    server = start_metrics_server(metrics.bind_address, metrics.port) if metrics.enabled else None
    try:
        Engine(settings, factory).run(stop)
    finally:
        if server is not None:
            server.stop()
