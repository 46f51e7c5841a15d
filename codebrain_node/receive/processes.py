"""Several receiver processes on one port (``dicom.receiver_processes`` > 1): associations on several interpreters.

One Python process runs every association's thread under one GIL, so parallel senders share one core. Here the
parent (``serve``) makes the listening sockets (plain and/or TLS) itself, before any receiver runs, and starts N
processes (``python -m codebrain_node.receive.processes``) that inherit them and all accept on them: one socket,
one accept queue, so a port of 0 resolves once, a connection waits in the queue while a process restarts, and
nothing is lost with a process that dies. Each accepted connection goes to whichever process takes it first; one
with associations open defers a moment (``receive/scp.py``), so they spread. Each process is a whole receive
service (SCP, spool, recorder), as with one:

- the spool is one folder; a process writes its partial files in ``tmp/receiver-<n>/``. Success follows the
  fsync, in whichever process. A SOP Instance UID sent again is found on disk by any process (a duplicate, as
  with one); the database row is made once whoever files it (the recorder retries a lost insert race and then
  sees the row);
- ``dicom.max_associations`` and ``dicom.max_associations_per_peer`` are node-wide: counted in one table under a
  file lock (``receive/limits.py``), not per process;
- a Storage Commitment request is answered by the process that got it; instances another process acknowledged
  but has not filed yet are looked for again until ``dicom.storage_commitment_settle_s``;
- metrics: each process counts in prometheus_client's multiprocess files (``PROMETHEUS_MULTIPROC_DIR``, a
  folder of this run), which ``serve``'s one endpoint sums (``metrics.py``);
- the parent recovers the spool before starting them; a process that dies is logged, counted
  (``codebrain_receiver_process_restarts_total``) and started again in its slot (with a growing pause if it
  keeps dying), and that replacement recovers what the dead one left. SIGTERM to ``serve`` stops them all (each
  stops listening, aborts what is open, lets its recorder file what is queued); one that does not end within
  :data:`STOP_TIMEOUT_S` is killed. Each also exits by itself once ``serve`` is no longer its parent.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from codebrain_node import metrics
from codebrain_node.config import Settings
from codebrain_node.receive.recorder import recover_spool
from codebrain_node.receive.spool import Spool, instance_limits

#: By its name, not ``__name__``: the receiver processes run this module as ``__main__``.
log = logging.getLogger("codebrain_node.receive.processes")

#: How long the parent waits for a receiver process to say it is listening.
START_TIMEOUT_S = 60.0
#: How long a receiver process has to stop after SIGTERM before it is killed.
STOP_TIMEOUT_S = 30.0
#: How often the parent looks for a receiver process that died, and the first and longest pause before a restart.
SUPERVISE_S = 1.0
RESTART_PAUSE_S = (1.0, 30.0)
#: Connections waiting in the listening sockets' queue (the kernel caps it at net.core.somaxconn).
BACKLOG = 128
#: How often a receiver process checks that ``serve`` is still its parent.
PARENT_POLL_S = 1.0


def _listening_socket(address: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    # socket.create_server sets SO_REUSEADDR, as pynetdicom does for its own socket
    return socket.create_server((address, port), family=family, backlog=BACKLOG)


@dataclass
class _Child:
    index: int
    process: subprocess.Popen[bytes]
    restarts: int = 0


class ReceiverProcesses:
    """The parent's side: sockets, processes, their supervision. ``start(factory)`` then ``stop()``; ``record=False``
    (``bench ingest`` only) runs the SCP and spool without a database, counting in the metrics alone."""

    def __init__(self, settings: Settings, count: int | None = None, *, record: bool = True) -> None:
        self.settings = settings
        self.count = count or settings.dicom.receiver_processes
        self.record = record
        #: This run's folder: the association table and the processes' metrics files.
        self.run_dir = Path(tempfile.mkdtemp(prefix="codebrain-receivers-"))
        self.metrics_dir = self.run_dir / "metrics"
        self.metrics_dir.mkdir()
        self.count_path = self.run_dir / "associations.json"
        self._sockets: dict[str, socket.socket] = {}
        self._children: list[_Child] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None

    # --- what serve asks -----------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The plain port; with ``dicom.tls = "only"`` the TLS port, the one there is."""
        kind = "plain" if "plain" in self._sockets else "tls"
        return int(self._sockets[kind].getsockname()[1])

    @property
    def tls_port(self) -> int | None:
        sock = self._sockets.get("tls")
        return int(sock.getsockname()[1]) if sock is not None else None

    @property
    def pids(self) -> list[int]:
        with self._lock:
            return [child.process.pid for child in self._children]

    def start(self, factory: sessionmaker[Session] | None = None) -> ReceiverProcesses:
        """Recover the spool (with ``factory``), listen, start the processes and wait until each is ready."""
        dicom = self.settings.dicom
        if factory is not None:
            spool = Spool(self.settings.paths.data_dir, dicom.min_free_disk_mb, instance_limits(dicom))
            recover_spool(factory, spool)  # every process's tmp/ folder too: none runs yet
        try:
            if dicom.tls != "only":
                self._sockets["plain"] = _listening_socket(dicom.bind_address, dicom.port)
            if dicom.tls != "off":
                self._sockets["tls"] = _listening_socket(dicom.bind_address, dicom.tls_port)
            for index in range(self.count):
                self._children.append(_Child(index, self._spawn(index, restarted=False)))
        except BaseException:
            self.stop()
            raise
        self._supervisor = threading.Thread(target=self._supervise, name="receiver-supervisor", daemon=True)
        self._supervisor.start()
        log.info(
            "%d receiver processes on port %d%s (pids %s)",
            self.count,
            self.port,
            f" and TLS port {self.tls_port}" if "plain" in self._sockets and self.tls_port else "",
            ", ".join(map(str, self.pids)),
        )
        return self

    def stop(self) -> None:
        """SIGTERM to every receiver process, wait for each (killing one that takes too long), close the sockets."""
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.join(timeout=SUPERVISE_S + START_TIMEOUT_S + 10)
        with self._lock:
            children, self._children = list(self._children), []
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for child in children:
            try:
                child.process.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                log.warning("receiver process %d (pid %d) did not stop; killed", child.index, child.process.pid)
                child.process.kill()
                child.process.wait(timeout=10)
        for sock in self._sockets.values():
            sock.close()
        self._sockets = {}
        shutil.rmtree(self.run_dir, ignore_errors=True)

    # --- processes -----------------------------------------------------------------------------------------

    def _spawn(self, index: int, restarted: bool) -> subprocess.Popen[bytes]:
        ready_read, ready_write = os.pipe()
        fds = {kind: sock.fileno() for kind, sock in self._sockets.items()}
        plan = {
            "settings": self.settings,
            "index": index,
            "parent_pid": os.getpid(),
            "count_path": str(self.count_path),
            "fds": fds,
            "ready_fd": ready_write,
            "restarted": restarted,
            "record": self.record,
        }
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(self.metrics_dir)}
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "codebrain_node.receive.processes"],
                stdin=subprocess.PIPE,
                pass_fds=(*fds.values(), ready_write),
                env=env,
            )
        finally:
            os.close(ready_write)
        try:
            assert process.stdin is not None
            process.stdin.write(pickle.dumps(plan))
            process.stdin.close()
            self._await_ready(ready_read, process, index)
        except BaseException:
            process.kill()
            process.wait(timeout=10)
            raise
        finally:
            os.close(ready_read)
        return process

    @staticmethod
    def _await_ready(ready_read: int, process: subprocess.Popen[bytes], index: int) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while (left := deadline - time.monotonic()) > 0:
            if select.select([ready_read], [], [], min(left, 1.0))[0]:
                if os.read(ready_read, 64).startswith(b"ready"):
                    return
                break  # the write end closed: it exited before it was ready
        code = process.poll()
        why = f"exited with {code}" if code is not None else f"not ready within {START_TIMEOUT_S:.0f} s"
        raise RuntimeError(f"receiver process {index} did not start: {why} (its log lines say why)")

    def _supervise(self) -> None:
        """Start again a receiver process that died, in its slot, after a pause that doubles while it keeps dying."""
        while not self._stopping.wait(SUPERVISE_S):
            with self._lock:
                dead = [child for child in self._children if child.process.poll() is not None]
            for child in dead:
                pause = min(RESTART_PAUSE_S[0] * 2**child.restarts, RESTART_PAUSE_S[1])
                log.warning(
                    "receiver process %d (pid %d) exited with %s; starting it again in %.0f s",
                    child.index,
                    child.process.pid,
                    child.process.returncode,
                    pause,
                )
                metrics.RECEIVER_RESTARTS.inc()
                if self._stopping.wait(pause):
                    return
                try:
                    replacement = self._spawn(child.index, restarted=True)
                except Exception as exc:  # tried again on the next round, with a longer pause
                    log.error("receiver process %d could not be started again: %s", child.index, exc)
                    child.restarts += 1
                    continue
                with self._lock:
                    child.process, child.restarts = replacement, child.restarts + 1
                log.info("receiver process %d started again (pid %d)", child.index, replacement.pid)


# --- the receiver process ----------------------------------------------------------------------------------


def _watch_parent(parent_pid: int) -> None:
    """End at once when ``serve`` is gone (killed with SIGKILL, say): what is acknowledged is on disk, and the
    next ``serve`` files what the recorder had not."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_POLL_S)
        log.warning("serve (pid %d) is gone: receiver process %d stops with it", parent_pid, os.getpid())
        logging.shutdown()
        os._exit(70)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _bare_service(settings: Settings, index: int, sockets: dict[str, socket.socket], count_path: Path) -> Any:
    """SCP and spool without a database (``bench ingest``): what is stored is counted in the metrics only."""
    from codebrain_node.receive.limits import SharedAssociationCount
    from codebrain_node.receive.scp import Receiver

    dicom = settings.dicom
    spool = Spool(settings.paths.data_dir, dicom.min_free_disk_mb, instance_limits(dicom), tmp_name=f"receiver-{index}")
    shared = SharedAssociationCount(count_path, index)
    shared.reset()
    return Receiver(dicom, spool, lambda _instance: None, shared_count=shared, listening_sockets=sockets).start()


def run_receiver_process(plan: dict[str, Any]) -> None:
    """One receiver process: a whole receive service on the inherited sockets, until SIGTERM."""
    from codebrain_node.logging_setup import configure_logging

    settings: Settings = plan["settings"]
    configure_logging(settings.logging.level, settings.logging.format)
    _watch_parent(plan["parent_pid"])
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    # Ctrl-C in a terminal reaches the whole process group: serve stops us (SIGTERM) once it has stopped listening
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    index = int(plan["index"])
    sockets = {kind: socket.socket(fileno=fd) for kind, fd in plan["fds"].items()}
    count_path = Path(plan["count_path"])
    db = None
    if plan["record"]:
        from codebrain_node.db.session import make_engine, session_factory
        from codebrain_node.receive.service import ReceiverSlot, start_receive_service

        db = make_engine(settings.database_url)
        slot = ReceiverSlot(index, sockets, count_path, restarted=bool(plan["restarted"]))
        service = start_receive_service(settings, session_factory(db), slot)
    else:
        service = _bare_service(settings, index, sockets, count_path)
    os.write(plan["ready_fd"], b"ready\n")
    os.close(plan["ready_fd"])
    log.info("receiver process %d (pid %d) accepting", index, os.getpid())
    while not stop.wait(1.0):
        pass
    service.stop()
    if db is not None:
        db.dispose()
    log.info("receiver process %d (pid %d) stopped", index, os.getpid())


if __name__ == "__main__":
    run_receiver_process(pickle.load(sys.stdin.buffer))
