"""#16 defect 7: a send interrupted mid-series (the node killed, or the peer failing) resumes per instance.

Before: the resend waited for a lease of ``max(backoff_max_s, 60)`` (15 min by default) and then sent the whole
series again (duplicate C-STOREs of every instance already acknowledged). Now each acknowledged instance is
recorded as it is acknowledged, the lease is sized to the work left (the association's timeouts plus a few
seconds per instance) and the next attempt sends only what was not acknowledged. Real C-STOREs to the loopback
PACS, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from codebrain_node.db.models import ExportDelivery, ExportStatus, StudyState, as_utc
from codebrain_node.export.base import Delivered, DeliveryError, Destination
from codebrain_node.export.dispatch import build_destinations, lease_s, run_due_exports
from tests.export.test_export_dispatch import FakeClock, _dicom, _exports, _study

DEFAULT_LEASE_S = 900.0  # what the lease was: max(backoff_max_s, 60) with the default back-off cap


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it in the dispatcher runs (no settle, no clean-up)."""


class StopsAfter:
    """The real C-STORE destination, interrupted right after its ``after``-th acknowledged instance."""

    def __init__(self, destination: Destination, after: int, error: type[BaseException]) -> None:
        self.destination, self.after, self.error = destination, after, error

    def send(self, files: Sequence[Path], delivered: Delivered) -> None:
        count = 0

        def acknowledged(path: Path) -> None:
            nonlocal count
            delivered(path)
            count += 1
            if count == self.after:
                raise self.error("interrupted")

        self.destination.send(files, acknowledged)


def _deliveries(factory) -> int:  # type: ignore[no-untyped-def]
    with factory() as session:
        return session.scalar(select(func.count()).select_from(ExportDelivery))


@pytest.mark.parametrize("after", [1, 2, 3])
def test_killed_mid_series_resumes_soon_with_the_instances_not_yet_acknowledged(  # type: ignore[no-untyped-def]
    factory, approved_study, make_settings, pacs, after: int
) -> None:
    pacs.start()
    clock = FakeClock()
    settings = make_settings([_dicom(pacs.port)])
    assert settings.export.backoff_max_s == DEFAULT_LEASE_S
    real = build_destinations(settings)["pacs"]
    with pytest.raises(Killed):
        run_due_exports(factory, settings, now=clock, destinations={"pacs": StopsAfter(real, after, Killed)})
    total = len(approved_study.sop_uids)
    assert pacs.received == approved_study.sop_uids[:after]
    assert _deliveries(factory) == after
    (export,) = _exports(factory)
    assert export.status == ExportStatus.PENDING and export.attempts == 1
    lease = as_utc(export.next_attempt_at) - clock()
    assert lease == timedelta(seconds=lease_s(settings, total - after))  # 2 × 5 s timeouts + 2 s per instance left
    assert lease <= timedelta(seconds=2 * 5 + 2 * total) < timedelta(seconds=DEFAULT_LEASE_S)

    clock.advance(1)
    assert run_due_exports(factory, settings, now=clock) == 0  # still leased: nobody sends it twice at once
    assert len(pacs.received) == after

    clock.moment = as_utc(export.next_attempt_at)
    assert run_due_exports(factory, settings, now=clock) == 1
    counts = Counter(pacs.received)
    assert sorted(counts) == sorted(approved_study.sop_uids)
    assert max(counts.values()) == 1, f"duplicate C-STOREs: {counts}"
    (export,) = _exports(factory)
    assert export.status == ExportStatus.SENT and export.attempts == 2
    assert _study(factory, approved_study.study_uid).state == StudyState.EXPORTED


def test_a_failure_mid_series_retries_only_the_rest(  # type: ignore[no-untyped-def]
    factory, approved_study, make_settings, pacs
) -> None:
    pacs.start()
    clock = FakeClock()
    settings = make_settings([_dicom(pacs.port)], backoff_initial_s=10)
    real = build_destinations(settings)["pacs"]
    flaky = StopsAfter(real, 2, DeliveryError)
    assert run_due_exports(factory, settings, now=clock, destinations={"pacs": flaky}) == 0
    (export,) = _exports(factory)
    assert export.status == ExportStatus.PENDING and as_utc(export.next_attempt_at) == clock() + timedelta(seconds=10)
    clock.advance(10)
    assert run_due_exports(factory, settings, now=clock) == 1
    assert sorted(pacs.received) == sorted(approved_study.sop_uids)  # each once
    assert _exports(factory)[0].status == ExportStatus.SENT
