"""A restarted node takes back the jobs its killed workers left RUNNING, without waiting out the lease."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from test_jobs import factory, job_and_study, queue_jobs, step  # noqa: F401 (fixture)

from codebrain_node.db import JobStatus, StudyState
from codebrain_node.db.jobs import claim_next_job, local_worker_is_dead, requeue_orphaned_jobs


def _dead_pid() -> int:
    """The pid of a process that has just exited (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_only_a_dead_process_of_this_host_is_dead() -> None:
    host = socket.gethostname()
    assert local_worker_is_dead(f"{host}:{_dead_pid()}:1:thread-0")
    assert not local_worker_is_dead(f"{host}:{os.getpid()}:1")  # alive
    assert not local_worker_is_dead(f"another-host-{host}:{_dead_pid()}:1")  # not ours to judge
    assert not local_worker_is_dead("worker-0")  # no pid: the lease decides
    assert not local_worker_is_dead(None)


def test_jobs_of_dead_local_workers_are_requeued_as_a_failed_attempt(factory) -> None:  # noqa: F811
    orphaned, alive, unknown = queue_jobs(factory, 3, max_attempts=2)
    host = socket.gethostname()
    for worker in (f"{host}:{_dead_pid()}:7", f"{host}:{os.getpid()}:7", "elsewhere:1:1"):
        assert step(factory, claim_next_job, worker) is not None
    assert step(factory, requeue_orphaned_jobs) == [orphaned]
    job, state = job_and_study(factory, orphaned)
    assert (job.status, job.attempts, state) == (JobStatus.QUEUED, 1, StudyState.QUEUED)
    assert "died" in job.error
    for other in (alive, unknown):
        assert job_and_study(factory, other)[0].status == JobStatus.RUNNING
