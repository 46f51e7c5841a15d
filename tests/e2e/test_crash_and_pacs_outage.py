"""Failures the node must survive: SIGKILL mid-study (then restart), and a PACS that is down, then up."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
from e2e_support import (
    TARGETS,
    StoreSCP,
    node_settings,
    series_files,
    storescu,
    study_state,
    study_uid_of,
    wait_for,
    wait_for_dicom_port,
)
from sqlalchemy import select

from codebrain_node.config import DicomDestinationSettings, FolderDestinationSettings
from codebrain_node.db.models import Export, ExportStatus, Instance, Job, JobStatus, Series, Study
from codebrain_node.db.session import make_engine, session_factory
from codebrain_node.node.serve import Node
from tests.dicom_fixtures import free_port

#: Longer than a node restart (Python, torch, migrations) on a loaded 2-core machine, so the study cannot be
#: settled between the kill and the second half of the study.
CRASH_QUIET_PERIOD_S = 10.0


def _toml(values: dict) -> str:
    """Just enough TOML for the node's settings (strings, numbers, booleans, lists, one array of tables)."""

    def scalar(value: object) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int | float):
            return repr(value)
        if isinstance(value, list):
            return "[" + ", ".join(scalar(v) for v in value) + "]"
        return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = []
    for section, table in values.items():
        plain = {k: v for k, v in table.items() if not (isinstance(v, list) and v and isinstance(v[0], dict))}
        lines.append(f"[{section}]")
        lines += [f"{key} = {scalar(value)}" for key, value in plain.items() if value is not None]
        for key, rows in table.items():
            if key in plain:
                continue
            for row in rows:
                lines.append(f"[[{section}.{key}]]")
                lines += [f"{k} = {scalar(v)}" for k, v in row.items() if v is not None]
    return "\n".join(lines) + "\n"


class NodeProcess:
    """``python -m codebrain_node --config cfg.toml serve`` in its own process group (with its worker children)."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config, self.log_path = config, log

    def start(self, port: int) -> NodeProcess:
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "codebrain_node", "--config", str(self.config), "serve"],
            cwd=self.config.parent,  # not the checkout: the node finds its files in the package
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_for_dicom_port(port, timeout_s=90)
        except AssertionError:
            self.kill()
            raise AssertionError(f"node did not start: {self.log_path.read_text()[-3000:]}") from None
        return self

    def kill(self) -> None:
        """SIGKILL the node and every child (engine workers) at once: no clean shutdown of anything."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=20)
        self._log.close()

    def terminate(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()
                return
        self._log.close()


@pytest.fixture
def node_processes() -> Iterator[Callable[[Path, Path, int], NodeProcess]]:
    """Start ``serve`` processes; at teardown, whatever the test did or where it failed, SIGKILL each one's process
    group (``serve`` and the workers it started), so no node outlives its test."""
    started: list[NodeProcess] = []

    def start(config: Path, log: Path, port: int) -> NodeProcess:
        node = NodeProcess(config, log)
        started.append(node)
        return node.start(port)

    yield start
    for node in started:
        process = getattr(node, "process", None)
        if process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=20)
        with contextlib.suppress(AttributeError):
            node._log.close()


def _children(pid: int) -> list[int]:
    """The live (not zombie) processes whose parent is ``pid``, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None and fields[1] != "Z" and int(fields[2]) == pid:
                found.append(int(entry.name))
    return found


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat after the command name: state, ppid, ...; None when the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return ["", *text.rpartition(")")[2].split()]


def _alive(pid: int) -> bool:
    fields = _stat_fields(pid)
    return fields is not None and fields[1] != "Z"


def _sop_uids(paths: list[Path]) -> set[str]:
    return {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths}


@pytest.fixture
def crash_setup(tmp_path: Path, tiny_weights: Path) -> Iterator[tuple[Path, Path, int]]:
    port = free_port()
    pacs = tmp_path / "pacs"
    settings = node_settings(
        tmp_path / "node",
        tiny_weights,
        [FolderDestinationSettings(name="pacs", path=pacs)],
        dicom={"port": port},
        routing={"quiet_period_s": CRASH_QUIET_PERIOD_S, "check_interval_s": 0.5},
        engine={"workers": 1, "poll_interval_s": 0.3, "lease_timeout_s": 600.0},
    )
    config = tmp_path / "node.toml"
    config.write_text(_toml(settings.model_dump(mode="json", exclude={"database": True, "review": {"secret_key"}})))
    yield config, pacs, port


def test_sigkill_mid_study_then_restart_loses_nothing_and_completes_once(
    crash_setup: tuple[Path, Path, int], make_study, tmp_path: Path, node_processes
) -> None:
    """Killed twice: right after half a study was acknowledged, then while the engine imputes it."""
    config, pacs, port = crash_setup
    study = make_study(seed=505, whole_head=True)
    study_uid = study_uid_of(study)
    flair = series_files(study, "301_")
    first_part = series_files(study, "101_") + series_files(study, "201_") + flair[: len(flair) // 2]
    rest = flair[len(flair) // 2 :]
    log = tmp_path / "node.log"
    db = make_engine(f"sqlite:///{tmp_path / 'node' / 'codebrain.db'}")
    factory = session_factory(db)
    node = node_processes(config, log, port)
    try:
        sent = storescu(port, first_part)
        assert sent.returncode == 0, sent.stderr  # every instance of the first part acknowledged
        node.kill()  # at once: the recorder may not have filed them yet; the workers die too
        assert node.process.returncode == -signal.SIGKILL

        node = node_processes(config, log, port)
        acknowledged = _sop_uids(first_part)
        with factory() as session:
            filed = set(session.scalars(select(Instance.sop_instance_uid)))
        assert acknowledged <= filed, f"lost {len(acknowledged - filed)} acknowledged instance(s)"
        assert study_state(factory, study_uid) == "receiving"  # not settled on half a study

        sent = storescu(port, rest)
        assert sent.returncode == 0, sent.stderr
        wait_for(lambda: study_state(factory, study_uid) == "imputing", 60, "the engine to take the job", 0.05)
        node.kill()  # mid-imputation: the job is left RUNNING by a worker that no longer exists
        with factory() as session:
            (job,) = session.scalars(select(Job))
            assert job.status == JobStatus.RUNNING

        # the lease is 10 minutes: only recognising the dead worker at restart brings the job back in time
        node = node_processes(config, log, port)
        wait_for(lambda: study_state(factory, study_uid) == "exported", 120, "the study to be EXPORTED")
        with factory() as session:
            jobs = list(session.scalars(select(Job).join(Study).where(Study.study_instance_uid == study_uid)))
            assert [(j.status, j.attempts) for j in jobs] == [(JobStatus.DONE, 2)]
            assert _sop_uids(first_part + rest) <= set(session.scalars(select(Instance.sop_instance_uid)))
        delivered = [d for d in (pacs / study_uid).iterdir() if d.is_dir()]
        assert len(delivered) == len(TARGETS)  # once: the interrupted attempt sent nothing
        reference = series_files(study, "101_")
        assert all(len(list(d.glob("*.dcm"))) == len(reference) for d in delivered)
        descriptions = sorted(
            pydicom.dcmread(next(d.glob("*.dcm")), stop_before_pixels=True).SeriesDescription.split()[1]
            for d in delivered
        )
        assert descriptions == TARGETS
    finally:
        node.terminate()
        db.dispose()


def test_killing_only_serve_ends_its_engine_workers(
    crash_setup: tuple[Path, Path, int], tmp_path: Path, node_processes
):
    """#16 defect 6: SIGKILL to ``serve`` alone (not its process group) must not leave its workers running."""
    config, _, port = crash_setup
    node = node_processes(config, tmp_path / "node.log", port)
    workers = wait_for(lambda: _children(node.process.pid), 60, "serve to start its engine worker")
    os.kill(node.process.pid, signal.SIGKILL)  # serve only: the workers are not signalled
    node.process.wait(timeout=20)
    wait_for(
        lambda: not any(_alive(pid) for pid in workers),
        60,
        "the orphaned engine workers to exit",
        explain=lambda: f"still running: {[pid for pid in workers if _alive(pid)]}",
    )
    assert "is gone: engine worker" in (tmp_path / "node.log").read_text()


def test_pacs_down_then_up_gets_the_series_exactly_once(tiny_weights: Path, make_study, tmp_path: Path) -> None:
    pacs_port = free_port()  # nothing listens here yet
    destination = DicomDestinationSettings(name="pacs", ae_title="PACS", host="127.0.0.1", port=pacs_port)
    settings = node_settings(
        tmp_path / "node",
        tiny_weights,
        [destination],
        export={"backoff_initial_s": 0.3, "backoff_max_s": 1.0, "max_attempts": 60},
        dicom={"network_timeout_s": 5, "acse_timeout_s": 5},
    )
    study = make_study(seed=606)
    study_uid = study_uid_of(study)
    reference = series_files(study, "101_")
    node = Node(settings, engine_mode="thread").start()
    pacs: StoreSCP | None = None
    try:
        sent = storescu(node.port, sorted(study.rglob("*.dcm")))
        assert sent.returncode == 0, sent.stderr

        def failed_attempts() -> bool:
            with node.factory() as session:
                exports = list(session.scalars(select(Export)))
                return len(exports) == len(TARGETS) and all(
                    e.attempts >= 2 and e.status == ExportStatus.PENDING and e.last_error for e in exports
                )

        wait_for(failed_attempts, 120, "two failed export attempts per series while the PACS is down")
        assert study_state(node.factory, study_uid) == "approved"

        pacs = StoreSCP(tmp_path / "pacs", pacs_port)
        wait_for(lambda: study_state(node.factory, study_uid) == "exported", 60, "the study to be EXPORTED")
        time.sleep(3 * settings.routing.check_interval_s)  # a few more dispatcher runs: nothing may be sent again
        files = pacs.files()
        assert len(files) == len(TARGETS) * len(reference)
        datasets = [pydicom.dcmread(p, stop_before_pixels=True) for p in files]
        assert len({ds.SOPInstanceUID for ds in datasets}) == len(files)  # no instance twice
        assert len({ds.SeriesInstanceUID for ds in datasets}) == len(TARGETS)
        with node.factory() as session:
            exports = list(session.scalars(select(Export).join(Series)))
            assert all(e.status == ExportStatus.SENT and e.attempts >= 3 for e in exports)
    finally:
        node.stop()
        if pacs is not None:
            pacs.stop()
