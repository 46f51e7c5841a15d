"""The receiver's Prometheus counters (issue #18) for what its handlers never see: an association pynetdicom turns
away itself (more than ``dicom.max_associations`` at once) is counted with the policy's rejections."""

from __future__ import annotations

from pathlib import Path

from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage
from sqlalchemy.orm import Session, sessionmaker

from codebrain_node import metrics
from codebrain_node.config import Settings
from codebrain_node.receive.service import start_receive_service
from tests.receive.conftest import CALLER

REJECTED = "codebrain_ingest_associations_rejected_total"
OPENED = "codebrain_ingest_associations_opened_total"


def sample(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def test_an_association_over_the_limit_is_counted_as_rejected(
    tmp_path: Path, factory: sessionmaker[Session], make_settings
) -> None:  # type: ignore[no-untyped-def]
    settings: Settings = make_settings(tmp_path / "data", max_associations=1)
    service = start_receive_service(settings, factory)
    reason = "more than dicom.max_associations at once"
    rejected, opened = sample(REJECTED, reason=reason), sample(OPENED)
    sender = AE(ae_title=CALLER)
    sender.add_requested_context(MRImageStorage)
    try:
        first = sender.associate("127.0.0.1", service.port, ae_title="CODEBRAIN")
        assert first.is_established
        second = sender.associate("127.0.0.1", service.port, ae_title="CODEBRAIN")
        assert second.is_rejected
        first.release()
    finally:
        service.stop()
    assert sample(REJECTED, reason=reason) == rejected + 1
    assert sample(OPENED) == opened + 1
