"""Review policy: a superseded synthetic series is shown as such, can never be approved and is never sent."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from review_seed import Seeded, write_series
from sqlalchemy import select
from test_app import sign_in, state_of

from codebrain_node.config import FolderDestinationSettings
from codebrain_node.db.models import Export, Instance, Series, Study, StudyState
from codebrain_node.db.session import transaction
from codebrain_node.db.superseding import supersede
from codebrain_node.export.dispatch import run_due_exports
from codebrain_node.review.app import create_app
from codebrain_node.review.worklist import ReviewError, approve, study_detail


@pytest.fixture
def client(seeded: Seeded) -> TestClient:
    return TestClient(create_app(seeded.settings, seeded.factory), follow_redirects=False)


def replace_synthetic(seeded: Seeded) -> int:
    """A newer synthetic T2 (from changed inputs) replaces the seeded one; returns the replacement's id."""
    series_uid = generate_uid()
    folder = Path(seeded.settings.paths.data_dir) / "synthetic" / seeded.study_uid / series_uid
    paths = write_series(
        folder, seeded.study_uid, series_uid, "SYNTHETIC T2 - replaces series 1031", 12, synthetic=True
    )
    with transaction(seeded.factory) as session:
        study = session.get(Study, seeded.study_id)
        replacement = Series(
            study=study,
            series_instance_uid=series_uid,
            modality="MR",
            series_number=1131,
            series_description="SYNTHETIC T2 - replaces series 1031",
            contrast="T2",
            is_synthetic=True,
        )
        for path in paths:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            replacement.instances.append(
                Instance(
                    sop_instance_uid=ds.SOPInstanceUID,
                    sop_class_uid=ds.SOPClassUID,
                    transfer_syntax_uid=ExplicitVRLittleEndian,
                    instance_number=int(ds.InstanceNumber),
                    path=str(path),
                    size_bytes=path.stat().st_size,
                )
            )
        session.add(replacement)
        session.flush()
        old = session.get(Series, seeded.synthetic_series_id)
        supersede(session, old, by=replacement, reason="replaced by series #1131 (inputs T1, FLAIR)", actor="engine:t")
        return replacement.id


def _sop_uids(seeded: Seeded, series_id: int) -> set[str]:
    with seeded.factory() as session:
        return set(session.scalars(select(Instance.sop_instance_uid).where(Instance.series_id == series_id)))


def test_approving_sends_the_current_series_and_never_the_superseded_one(
    client: TestClient, seeded: Seeded, tmp_path: Path
) -> None:
    replacement = replace_synthetic(seeded)
    token = sign_in(client)
    page = client.get(f"/studies/{seeded.study_id}").text
    assert 'id="superseded"' in page and "replaced by series #1131" in page
    assert page.count('class="panel synthetic-panel"') == 1  # only the current series is offered for review
    assert f'data-series="{replacement}"' in page and 'id="approve"' in page

    assert client.post(f"/studies/{seeded.study_id}/approve", data={"csrf_token": token}).status_code == 303
    assert state_of(seeded) is StudyState.APPROVED
    settings = seeded.settings.model_copy(deep=True)
    settings.export.destinations = [FolderDestinationSettings(name="pacs", path=tmp_path / "pacs")]
    assert run_due_exports(seeded.factory, settings) == 1
    sent = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in (tmp_path / "pacs").rglob("*.dcm")}
    assert sent == _sop_uids(seeded, replacement)
    assert not sent & _sop_uids(seeded, seeded.synthetic_series_id)
    with seeded.factory() as session:
        assert [e.series_id for e in session.scalars(select(Export))] == [replacement]
    assert state_of(seeded) is StudyState.EXPORTED


def test_a_study_whose_synthetic_series_are_all_superseded_cannot_be_approved(
    client: TestClient, seeded: Seeded
) -> None:
    with transaction(seeded.factory) as session:
        old = session.get(Series, seeded.synthetic_series_id)
        supersede(session, old, by=None, reason="T2 acquired: series #4", actor="scheduler")
    token = sign_in(client)
    page = client.get(f"/studies/{seeded.study_id}").text
    assert "T2 acquired: series #4" in page and 'id="approve"' not in page
    with seeded.factory() as session, pytest.raises(ReviewError, match="no current synthetic series"):
        approve(session, seeded.study_id, "user:alice")
    client.post(f"/studies/{seeded.study_id}/approve", data={"csrf_token": token})
    assert "no current synthetic series" in client.get(f"/studies/{seeded.study_id}").text
    assert state_of(seeded) is StudyState.AWAITING_REVIEW
    with seeded.factory() as session:
        detail = study_detail(session, seeded.study_id)
        assert detail.synthetic == [] and [s.id for s in detail.superseded] == [seeded.synthetic_series_id]
        assert session.scalars(select(Export)).all() == []
