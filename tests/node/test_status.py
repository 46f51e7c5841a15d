"""``codebrain-node status``: nothing yet on an empty database, open associations, superseded series as such,
Storage Commitment transactions."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlalchemy import Engine

from codebrain_node.db.associations import open_association
from codebrain_node.db.models import (
    CommitmentRole,
    CommitmentStatus,
    Export,
    ExportKind,
    ExportStatus,
    Instance,
    Series,
    StorageCommitment,
    Study,
    utcnow,
)
from codebrain_node.db.session import downgrade, session_factory, transaction, upgrade
from codebrain_node.node.status import NOTHING_YET, render
from tests.test_cli import run_cli


def test_status_on_a_new_empty_database_says_there_is_nothing_yet(tmp_path: Path) -> None:
    result = run_cli("status", env={"CODEBRAIN_PATHS__DATA_DIR": str(tmp_path / "data")})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == NOTHING_YET
    assert "no such table" not in result.stdout + result.stderr


def test_status_on_an_older_schema_asks_for_an_upgrade(sqlite_engine: Engine) -> None:
    upgrade(sqlite_engine)
    downgrade(sqlite_engine, "0001")
    with session_factory(sqlite_engine)() as session:
        assert "run `codebrain-node db upgrade`" in render(session)


def test_status_shows_open_associations_what_a_study_waits_for_and_superseded_series(sqlite_engine: Engine) -> None:
    upgrade(sqlite_engine)
    factory = session_factory(sqlite_engine)
    now = utcnow()
    with transaction(factory) as session:
        association = open_association(
            session,
            "k1",
            receiver="scanner-host:42",
            started_at=now - timedelta(minutes=3),
            calling_ae_title="MRI1",
            peer_address="10.0.0.7",
            peer_port=50000,
        )
        receiving = Study(study_instance_uid="1.2.3.1", first_received_at=now, last_received_at=now)
        acquired = Series(study=receiving, series_instance_uid="1.2.3.1.1", contrast="T1", series_number=2)
        acquired.instances.append(
            Instance(
                sop_instance_uid="1.2.3.1.1.1",
                sop_class_uid="1.2.840.10008.5.1.4.1.1.4",
                path="x.dcm",
                size_bytes=10,
                association_id=association.id,
            )
        )
        association.instances, association.bytes = 1, 2_500_000
        done = Study(study_instance_uid="1.2.3.2", state="exported", first_received_at=now, last_received_at=now)
        flair = Series(study=done, series_instance_uid="1.2.3.2.9", contrast="FLAIR", series_number=5)
        old = Series(
            study=done,
            series_instance_uid="1.2.3.2.1",
            contrast="FLAIR",
            series_number=1022,
            is_synthetic=True,
            superseded_at=now,
            superseded_reason="FLAIR acquired: series #5",
        )
        current = Series(
            study=done, series_instance_uid="1.2.3.2.2", contrast="T1Gd", series_number=1121, is_synthetic=True
        )
        session.add_all([receiving, acquired, done, flair, old, current])
        session.flush()
        session.add_all(
            [
                Export(series_id=old.id, destination="pacs", status=ExportStatus.SENT),
                Export(series_id=old.id, destination="pacs", kind=ExportKind.REJECTION_NOTE, status=ExportStatus.SENT),
                Export(series_id=current.id, destination="pacs", status=ExportStatus.SENT),
            ]
        )
    with factory() as session:
        text = render(session)
    assert "associations: 1 open" in text
    assert "MRI1 from 10.0.0.7:50000 open 3 min" in text and "1 instances, 2.5 MB" in text
    assert "held open by 1 association(s)" in text
    assert "synthetic: T1Gd\n" in text  # the superseded FLAIR is not one the study has
    assert "superseded: FLAIR #1022 (FLAIR acquired: series #5)" in text
    assert "exports: 2 sent; rejection notes: 1 sent" in text
    assert "Doe" not in text


def test_status_counts_storage_commitments_by_role_and_lists_those_not_committed(sqlite_engine: Engine) -> None:
    upgrade(sqlite_engine)
    factory = session_factory(sqlite_engine)
    with transaction(factory) as session:
        for uid, role, status, failed, detail in [
            ("2.25.1", CommitmentRole.SCU, CommitmentStatus.COMMITTED, 0, None),
            ("2.25.2", CommitmentRole.SCU, CommitmentStatus.PENDING, 0, None),
            ("2.25.3", CommitmentRole.SCU, CommitmentStatus.TIMED_OUT, 0, "no report within 60 s"),
            ("2.25.4", CommitmentRole.SCP, CommitmentStatus.FAILED, 1, "reported on the same association"),
            ("2.25.5", CommitmentRole.SCP, CommitmentStatus.COMMITTED, 0, "not reported: association to X rejected"),
        ]:
            row = StorageCommitment(transaction_uid=uid, role=role, status=status, peer_ae_title="PACS", detail=detail)
            row.instances, row.failed, row.failures = 3, failed, []
            session.add(row)
    with factory() as session:
        text = render(session)
    counts = "we asked destinations 1 pending, 1 committed, 1 timed out; peers asked us 1 committed, 1 failed"
    assert f"storage commitment: {counts}" in text
    assert "timed_out 2.25.3 asked of PACS: 3 instance(s), 0 failed (no report within 60 s)" in text
    assert "failed 2.25.4 asked by PACS: 3 instance(s), 1 failed (reported on the same association)" in text
    assert "committed 2.25.5 asked by PACS: 3 instance(s), 0 failed (not reported: association to X rejected)" in text
    assert "2.25.1" not in text  # committed ones are counted, not listed
