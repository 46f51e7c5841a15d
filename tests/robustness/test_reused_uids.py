"""#16, defect 9 (receive): a SOP Instance UID re-used in another series is refused (0xC000), not written to the
spool to be silently left unrecorded beside an empty series row; the same UID again with different content keeps
the first copy (answered success, as any duplicate), and both are logged and audited (``instance:conflict``)."""

from __future__ import annotations

import copy
import logging

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from codebrain_node.db.models import AuditEvent, Instance, Series
from codebrain_node.receive.service import ReceiveService
from tests.dicom_fixtures import make_mr_instance
from tests.robustness.conftest import associate


def test_reused_and_conflicting_uids(
    running_node: ReceiveService, any_factory: sessionmaker[Session], caplog: pytest.LogCaptureFixture
) -> None:
    study, series, other_series = generate_uid(), generate_uid(), generate_uid()
    first = make_mr_instance(study, series, 0, rows=8, columns=8)
    same = copy.deepcopy(first)  # a plain retransmission
    changed = make_mr_instance(study, series, 0, rows=8, columns=8, seed=7)  # other pixels
    changed.SOPInstanceUID = first.SOPInstanceUID
    elsewhere = make_mr_instance(study, other_series, 0, rows=8, columns=8)
    elsewhere.SOPInstanceUID = first.SOPInstanceUID
    caplog.set_level(logging.WARNING)
    assoc = associate(running_node.port)
    try:
        statuses = [assoc.send_c_store(ds).Status for ds in (first, same, changed, elsewhere)]
    finally:
        assoc.release()
    assert statuses == [0x0000, 0x0000, 0x0000, 0xC000]
    assert running_node.recorder.flush(timeout=20)
    files = list(running_node.spool.incoming.rglob("*.dcm"))
    assert len(files) == 1 and files[0].parent.name == series  # the first copy, nothing in the other series
    with any_factory() as session:
        assert [row.series.series_instance_uid for row in session.scalars(select(Instance))] == [series]
        assert [row.series_instance_uid for row in session.scalars(select(Series))] == [series]  # no empty row
        conflicts = session.scalars(select(AuditEvent).where(AuditEvent.action == "instance:conflict")).all()
        reasons = sorted(event.details["reason"] for event in conflicts)
    assert len(reasons) == 2
    assert "another study or series" in reasons[0] and "different content" in reasons[1]
    lines = [r.getMessage() for r in caplog.records if str(first.SOPInstanceUID) in r.getMessage()]
    assert len(lines) == 2, lines
