"""A synthetic series' confidence map as a Parametric Map series: the study page shows the confidence only as the
overlay it always was (no panel of its own), approving sends the map with its series, and the deliveries list it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid
from review_seed import Seeded
from sqlalchemy import select
from test_app import sign_in, state_of

from codebrain_node.config import FolderDestinationSettings
from codebrain_node.contrasts import Contrast
from codebrain_node.db.models import Export, Series, Study, StudyState
from codebrain_node.db.session import transaction
from codebrain_node.engine.worker import _record_confidence_map
from codebrain_node.export.dispatch import run_due_exports
from codebrain_node.review.app import create_app
from codebrain_node.review.render import load_confidence
from codebrain_node.review.worklist import study_detail
from codebrain_node.write.parametric_map import write_confidence_map
from codebrain_node.write.synthetic_series import WrittenInstance, WrittenSeries

PARAMETRIC_MAP_STORAGE = "1.2.840.10008.5.1.4.1.1.30"


def _add_confidence_map(seeded: Seeded) -> int:
    """Write the seeded synthetic T2's confidence as a Parametric Map and record it as the engine does."""
    with seeded.factory() as session:
        synthetic = session.get(Series, seeded.synthetic_series_id)
        instances = sorted(synthetic.instances, key=lambda i: i.instance_number)
        paths = [Path(i.path) for i in instances]
        written = WrittenSeries(
            Contrast.T2,
            synthetic.series_instance_uid,
            int(synthetic.series_number),
            str(synthetic.series_description),
            None,
            [
                WrittenInstance(i.sop_instance_uid, i.sop_class_uid, "", i.instance_number, Path(i.path), 0)
                for i in instances
            ],
        )
    frame_of_reference = generate_uid()
    for path in paths:  # what the node's MR writer always writes and the seeded series lacks
        ds = pydicom.dcmread(path)
        ds.FrameOfReferenceUID = frame_of_reference
        for keyword in ("PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "StudyID", "AccessionNumber"):
            ds.setdefault(keyword, "")
        ds.setdefault("ContributingEquipmentSequence", [])
        ds.save_as(path, enforce_file_format=True)
    confidence = np.asarray(load_confidence(paths[0].parent))
    confidence_map = write_confidence_map(
        written, confidence, paths[0].parent.parent, model_name="m", model_version="1", series_number=5031
    )
    with transaction(seeded.factory) as session:
        study = session.get(Study, seeded.study_id)
        recorded = _record_confidence_map(
            session, study, session.get(Series, seeded.synthetic_series_id), confidence_map
        )
        session.flush()
        return recorded.id


def test_the_map_is_no_panel_and_goes_out_with_its_series(seeded: Seeded, tmp_path: Path) -> None:
    map_id = _add_confidence_map(seeded)
    client = TestClient(create_app(seeded.settings, seeded.factory), follow_redirects=False)
    token = sign_in(client)
    page = client.get(f"/studies/{seeded.study_id}").text
    assert page.count('class="panel synthetic-panel"') == 1 and f'data-series="{map_id}"' not in page
    overlay = client.get(f"/studies/{seeded.study_id}/series/{seeded.synthetic_series_id}/confidence.png?index=0")
    assert overlay.status_code == 200 and overlay.headers["content-type"] == "image/png"  # the overlay, as before

    assert client.post(f"/studies/{seeded.study_id}/approve", data={"csrf_token": token}).status_code == 303
    settings = seeded.settings.model_copy(deep=True)
    settings.export.destinations = [FolderDestinationSettings(name="pacs", path=tmp_path / "pacs")]
    while run_due_exports(seeded.factory, settings):
        pass
    assert state_of(seeded) is StudyState.EXPORTED
    sent = [pydicom.dcmread(p, stop_before_pixels=True) for p in (tmp_path / "pacs").rglob("*.dcm")]
    assert sum(ds.SOPClassUID == PARAMETRIC_MAP_STORAGE for ds in sent) == 1
    with seeded.factory() as session:
        assert sorted(e.series_id for e in session.scalars(select(Export))) == sorted(
            [seeded.synthetic_series_id, map_id]
        )
        detail = study_detail(session, seeded.study_id)
        assert [s.id for s in detail.synthetic] == [seeded.synthetic_series_id]
        assert {e.series_id for e in detail.exports} == {seeded.synthetic_series_id, map_id}
    assert "confidence map" in client.get(f"/studies/{seeded.study_id}").text  # its delivery is listed
