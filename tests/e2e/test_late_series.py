"""A study is complete when its sender is done, and PACS never holds a synthetic series that contradicts an
acquired one (issue #15), through a running node with real DICOM peers.

(a) one association that pauses longer than the quiet period between series: one job;
(b) two associations, the second opened after the first was released but within the quiet period: one job;
(c) a FLAIR series arriving after a synthetic FLAIR was sent to a DCMTK storescp: no second synthetic FLAIR, an
    IOCM rejection note (a valid KOS, dciodvfy) withdraws the first, and the new T1Gd replaces the old one.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from e2e_support import (
    DCIODVFY,
    NODE_AE,
    SCANNER_AE,
    SLAB_SLICES,
    StoreSCP,
    node_settings,
    series_files,
    storescu,
    study_state,
    study_story,
    study_uid_of,
    wait_for,
)
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage
from sqlalchemy import select

from codebrain_node.config import DicomDestinationSettings, FolderDestinationSettings
from codebrain_node.db.models import Association, Job, JobStatus, Series, Study
from codebrain_node.node.serve import Node
from codebrain_node.node.status import render
from codebrain_node.write.rejection_note import REJECTED_FOR_QUALITY_REASONS
from tests.dicom_fixtures import dciodvfy_errors, free_port

KOS_STORAGE = "1.2.840.10008.5.1.4.1.1.88.59"
SERIES_PREFIXES = {"T1": "101_", "T2": "201_", "FLAIR": "301_"}


@pytest.fixture
def routing_node(tmp_path: Path, tiny_weights: Path, request: pytest.FixtureRequest) -> Iterator[Node]:
    """A node that receives and routes but runs no engine: its jobs stay queued, to be counted."""
    quiet = request.param
    settings = node_settings(
        tmp_path / "node",
        tiny_weights,
        [FolderDestinationSettings(name="pacs", path=tmp_path / "pacs")],
        routing={"quiet_period_s": quiet, "check_interval_s": 0.2},
    )
    node = Node(settings, engine_mode="none", review=False).start()
    try:
        yield node
    finally:
        node.stop()


def _associate(node: Node):  # type: ignore[no-untyped-def]
    ae = AE(ae_title=SCANNER_AE)
    ae.add_requested_context(MRImageStorage)
    association = ae.associate("127.0.0.1", node.port, ae_title=NODE_AE)
    assert association.is_established
    return association


def _send(association, paths: list[Path]) -> None:  # type: ignore[no-untyped-def]
    for path in paths:
        assert association.send_c_store(pydicom.dcmread(path)).Status == 0x0000


def _jobs(node: Node) -> list[Job]:
    with node.factory() as session:
        return list(session.scalars(select(Job).order_by(Job.id)))


def _one_job_with_every_input(node: Node, study_uid: str, quiet_s: float) -> Job:
    wait_for(lambda: study_state(node.factory, study_uid) == "queued", 120, "the study to be queued")
    time.sleep(3 * quiet_s)  # nothing more happens
    jobs = _jobs(node)
    assert len(jobs) == 1, [(job.inputs, job.targets) for job in jobs]
    assert set(jobs[0].inputs) == {"T1", "T2", "FLAIR"}
    assert sorted(jobs[0].targets) == ["PD", "T1Gd"]
    return jobs[0]


@pytest.mark.parametrize("routing_node", [1.0], indirect=True)
def test_a_sender_pausing_longer_than_the_quiet_period_inside_one_association_gives_one_job(
    routing_node: Node, make_study
) -> None:
    quiet = 1.0
    folder = make_study(41)
    study_uid = study_uid_of(folder)
    association = _associate(routing_node)
    try:
        for contrast in ("T1", "T2", "FLAIR"):
            _send(association, series_files(folder, SERIES_PREFIXES[contrast]))
            time.sleep(3 * quiet)  # the scanner reconstructs the next series; the association stays open
            assert study_state(routing_node.factory, study_uid) == "receiving"
            assert _jobs(routing_node) == []
    finally:
        association.release()
    _one_job_with_every_input(routing_node, study_uid, quiet)


@pytest.mark.parametrize("routing_node", [3.0], indirect=True)
def test_a_second_association_within_the_quiet_period_after_the_first_release_gives_one_job(
    routing_node: Node, make_study
) -> None:
    quiet = 3.0
    folder = make_study(42)
    study_uid = study_uid_of(folder)
    first = _associate(routing_node)
    _send(first, [*series_files(folder, "101_"), *series_files(folder, "201_")])
    time.sleep(1.5 * quiet)  # slow to release: quiet since its last instance, but the sender is not done
    assert study_state(routing_node.factory, study_uid) == "receiving"
    first.release()
    time.sleep(0.15 * quiet)
    second = storescu(routing_node.port, series_files(folder, "301_"))  # DCMTK, a new association
    assert second.returncode == 0, second.stderr
    job = _one_job_with_every_input(routing_node, study_uid, quiet)
    with routing_node.factory() as session:
        rows = session.scalars(select(Association).order_by(Association.id)).all()
    assert [(row.end_reason, row.instances) for row in rows] == [
        ("released", 2 * SLAB_SLICES),
        ("released", SLAB_SLICES),
    ]
    assert job.created_at is not None


@pytest.fixture
def pacs_scp(tmp_path: Path) -> Iterator[StoreSCP]:
    server = StoreSCP(tmp_path / "storescp", free_port(), ae_title="PACS")
    try:
        yield server
    finally:
        server.stop()


def _received(pacs: StoreSCP, study_uid: str) -> list[pydicom.Dataset]:
    """What the PACS holds of ``study_uid`` (a node another test left running may reach a recycled port)."""
    datasets = [pydicom.dcmread(path, stop_before_pixels=True) for path in pacs.files()]
    return [ds for ds in datasets if ds.StudyInstanceUID == study_uid]


def _synthetic_series(datasets: list[pydicom.Dataset]) -> dict[str, list[pydicom.Dataset]]:
    series: dict[str, list[pydicom.Dataset]] = {}
    for ds in datasets:
        if ds.SOPClassUID != KOS_STORAGE and str(ds.get("SyntheticData", "")) == "YES":
            series.setdefault(str(ds.SeriesInstanceUID), []).append(ds)
    return series


def _complete(series: dict[str, list[pydicom.Dataset]], count: int) -> dict[str, list[pydicom.Dataset]] | None:
    """``series`` once it holds ``count`` series of every slice each (storescp files them as they arrive)."""
    if len(series) == count and all(len(instances) == SLAB_SLICES for instances in series.values()):
        return series
    return None


def _notes(pacs: StoreSCP, study_uid: str) -> list[tuple[Path, pydicom.Dataset]]:
    found = []
    for path in pacs.files():
        ds = pydicom.dcmread(path)
        if ds.SOPClassUID == KOS_STORAGE and ds.StudyInstanceUID == study_uid:
            found.append((path, ds))
    return found


def test_a_late_flair_withdraws_the_synthetic_flair_and_replaces_the_t1gd(
    tmp_path: Path, tiny_weights: Path, make_study, pacs_scp: StoreSCP
) -> None:
    destination = DicomDestinationSettings(
        name="pacs", ae_title="PACS", host="127.0.0.1", port=pacs_scp.port, accepts_rejection_notes=True
    )
    settings = node_settings(tmp_path / "node", tiny_weights, [destination])
    node = Node(settings, engine_mode="thread", review=False).start()
    folder = make_study(43)
    study_uid = study_uid_of(folder)
    try:
        sent = storescu(node.port, [*series_files(folder, "101_"), *series_files(folder, "201_")])
        assert sent.returncode == 0, sent.stderr
        first = wait_for(
            lambda: _complete(_synthetic_series(_received(pacs_scp, study_uid)), 3),
            180,
            "T1Gd, PD and FLAIR synthesised from T1 and T2 at the PACS, every instance",
            0.5,
        )
        wait_for(lambda: study_state(node.factory, study_uid) == "exported", 60, "the study exported")
        by_description = {str(i[0].SeriesDescription): i for i in first.values()}
        old_flair = next(i for d, i in by_description.items() if d.startswith("SYNTHETIC FLAIR"))
        old_t1gd = next(i for d, i in by_description.items() if d.startswith("SYNTHETIC T1Gd"))

        late = storescu(node.port, series_files(folder, "301_"))  # the FLAIR the scanner sent late
        assert late.returncode == 0, late.stderr
        story = lambda: study_story(node.factory, study_uid)  # noqa: E731
        notes = wait_for(
            lambda: len(_notes(pacs_scp, study_uid)) == 3 and _notes(pacs_scp, study_uid),
            180,
            "three rejection notes",
            0.5,
            story,
        )
        wait_for(
            lambda: (
                len(_synthetic_series(_received(pacs_scp, study_uid))) == 5
                and study_state(node.factory, study_uid) == "exported"
            ),
            120,
            "the replacements sent and the study exported",
            0.5,
            lambda: f"{len(_synthetic_series(_received(pacs_scp, study_uid)))} synthetic series at the PACS\n{story()}",
        )
        with node.factory() as session:
            status_text = render(session)
            study = session.scalars(select(Study).where(Study.study_instance_uid == study_uid)).one()
            rows = {
                s.series_instance_uid: s for s in session.scalars(select(Series).where(Series.study_id == study.id))
            }
            jobs = session.scalars(select(Job).where(Job.study_id == study.id).order_by(Job.id)).all()
    finally:
        node.stop()

    assert [job.status for job in jobs] == [JobStatus.DONE, JobStatus.DONE]
    assert set(jobs[1].inputs) == {"T1", "T2", "FLAIR"} and sorted(jobs[1].targets) == ["PD", "T1Gd"]

    synthetic = _synthetic_series(_received(pacs_scp, study_uid))
    flair_series = [i for i in synthetic.values() if str(i[0].SeriesDescription).startswith("SYNTHETIC FLAIR")]
    assert len(flair_series) == 1, "a second synthetic FLAIR reached the PACS"

    # the rejection note of the first synthetic FLAIR: the IOCM title, every one of its instances, a valid KOS
    old_flair_uids = {str(ds.SOPInstanceUID) for ds in old_flair}
    flair_note = None
    for path, note in notes:
        title = note.ConceptNameCodeSequence[0]
        assert (title.CodeValue, title.CodingSchemeDesignator, title.CodeMeaning) == REJECTED_FOR_QUALITY_REASONS
        assert note.StudyInstanceUID == study_uid
        referenced = note.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
        listed = {str(item.ReferencedSOPInstanceUID) for item in referenced.ReferencedSOPSequence}
        if referenced.SeriesInstanceUID == old_flair[0].SeriesInstanceUID:
            assert listed == old_flair_uids
            flair_note = path
        if DCIODVFY.exists():
            assert dciodvfy_errors(path) == [], path
    assert flair_note is not None, "no rejection note for the synthetic FLAIR"
    old_flair_row = rows[str(old_flair[0].SeriesInstanceUID)]
    assert old_flair_row.superseded_at is not None
    by_id = {series.id: series for series in rows.values()}
    acquired_flair = by_id[old_flair_row.superseded_by_series_id]
    assert not acquired_flair.is_synthetic and acquired_flair.contrast == "FLAIR"

    # the new T1Gd: a new series number, a description naming the one it replaces; the old one superseded by it
    old_number = int(old_t1gd[0].SeriesNumber)
    (new_t1gd,) = [
        i
        for uid, i in synthetic.items()
        if str(i[0].SeriesDescription).startswith("SYNTHETIC T1Gd") and uid != str(old_t1gd[0].SeriesInstanceUID)
    ]
    assert int(new_t1gd[0].SeriesNumber) != old_number
    assert str(new_t1gd[0].SeriesDescription).endswith(f"- replaces series {old_number}")
    assert len(str(new_t1gd[0].SeriesDescription)) <= 64
    old_t1gd_row = rows[str(old_t1gd[0].SeriesInstanceUID)]
    assert old_t1gd_row.superseded_by_series_id == rows[str(new_t1gd[0].SeriesInstanceUID)].id
    assert f"superseded: T1Gd #{old_number} (replaced by series #{new_t1gd[0].SeriesNumber}" in status_text
    assert "superseded: FLAIR #" in status_text
