"""A superseded series is never sent; one already sent is withdrawn by an IHE IOCM rejection note, once, to each
destination that accepts notes; a study reopened by a late series holds its series exports."""

from __future__ import annotations

from pathlib import Path

from pydicom import dcmread
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from codebrain_node.db.lifecycle import transition
from codebrain_node.db.models import AuditEvent, Export, Series, Study, StudyState
from codebrain_node.db.session import transaction
from codebrain_node.db.superseding import supersede
from codebrain_node.export.dispatch import retry_dead_letters, run_due_exports, schedule_exports
from codebrain_node.write.rejection_note import REJECTED_FOR_QUALITY_REASONS

KOS_STORAGE = "1.2.840.10008.5.1.4.1.1.88.59"


def _folders(tmp_path: Path, *, pacs_accepts: bool = True) -> list[dict]:
    return [
        {"name": "pacs", "kind": "folder", "path": str(tmp_path / "pacs"), "accepts_rejection_notes": pacs_accepts},
        {"name": "archive", "kind": "folder", "path": str(tmp_path / "archive")},
    ]


def _supersede(factory: sessionmaker[Session], reason: str = "FLAIR acquired: series #5") -> None:
    with transaction(factory) as session:
        series = session.scalars(select(Series).where(Series.is_synthetic)).one()
        supersede(session, series, by=None, reason=reason, actor="scheduler")


def _exports(factory: sessionmaker[Session]) -> list[tuple[str, str, str]]:
    with factory() as session:
        rows = session.scalars(select(Export).order_by(Export.id))
        return [(str(e.kind), e.destination, str(e.status)) for e in rows]


def _files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.dcm")) if folder.exists() else []


def test_superseded_before_it_was_sent_it_never_is(factory, approved_study, make_settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(_folders(tmp_path))
    with transaction(factory) as session:
        schedule_exports(session, session.scalars(select(Study)).one(), settings)
    _supersede(factory)
    assert run_due_exports(factory, settings) == 0
    assert _files(tmp_path / "pacs") == [] and _files(tmp_path / "archive") == []
    assert _exports(factory) == [("series", "pacs", "cancelled"), ("series", "archive", "cancelled")]
    with factory() as session:
        actions = list(session.scalars(select(AuditEvent.action)))
    assert actions.count("export:cancelled") == 2
    assert retry_dead_letters(factory) == 0  # nothing of it is ever retried either


def test_never_scheduled_once_superseded(factory, approved_study, make_settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _supersede(factory)
    assert run_due_exports(factory, make_settings(_folders(tmp_path))) == 0
    assert _exports(factory) == []


def test_sent_then_superseded_gets_one_rejection_note_where_accepted(  # type: ignore[no-untyped-def]
    factory, approved_study, make_settings, tmp_path: Path
) -> None:
    settings = make_settings(_folders(tmp_path))
    assert run_due_exports(factory, settings) == 2
    assert len(_files(tmp_path / "pacs")) == 3
    _supersede(factory)
    assert run_due_exports(factory, settings) == 1
    assert run_due_exports(factory, settings) == 0  # once: not again every round
    assert _exports(factory) == [
        ("series", "pacs", "sent"),
        ("series", "archive", "sent"),
        ("rejection_note", "pacs", "sent"),
    ]
    (note,) = [p for p in _files(tmp_path / "pacs") if dcmread(p, stop_before_pixels=True).SOPClassUID == KOS_STORAGE]
    ds = dcmread(note)
    title = ds.ConceptNameCodeSequence[0]
    assert (title.CodeValue, title.CodingSchemeDesignator, title.CodeMeaning) == REJECTED_FOR_QUALITY_REASONS
    assert ds.StudyInstanceUID == approved_study.study_uid
    listed = {
        item.ReferencedSOPInstanceUID
        for item in ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence
    }
    assert listed == set(approved_study.sop_uids)
    assert "FLAIR acquired" in next(i.TextValue for i in ds.ContentSequence if i.ValueType == "TEXT")
    assert len(_files(tmp_path / "archive")) == 3  # no note where notes are not accepted
    with factory() as session:
        assert session.scalars(select(AuditEvent).where(AuditEvent.action == "export:rejection_note_sent")).one()
        assert StudyState(session.scalars(select(Study)).one().state) is StudyState.EXPORTED


def test_no_note_without_a_destination_that_accepts_one(  # type: ignore[no-untyped-def]
    factory, approved_study, make_settings, tmp_path: Path
) -> None:
    settings = make_settings(_folders(tmp_path, pacs_accepts=False))
    run_due_exports(factory, settings)
    _supersede(factory)
    assert run_due_exports(factory, settings) == 0
    assert [kind for kind, _, _ in _exports(factory)] == ["series", "series"]


def test_a_reopened_study_holds_its_series_exports(factory, approved_study, make_settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A late series reopened the study: nothing goes out before the scheduler has decided what still stands."""
    settings = make_settings(_folders(tmp_path))
    with transaction(factory) as session:
        study = session.scalars(select(Study)).one()
        schedule_exports(session, study, settings)
        transition(session, study, StudyState.RECEIVING, "receiver", reason="new instance")
    assert run_due_exports(factory, settings) == 0
    assert {status for _, _, status in _exports(factory)} == {"pending"}
    with transaction(factory) as session:
        study = session.scalars(select(Study)).one()
        for state in (StudyState.STABLE, StudyState.WRITTEN, StudyState.APPROVED):
            transition(session, study, state, "scheduler")
    assert run_due_exports(factory, settings) == 2
