"""The pieces under the pages: worklist statuses and actions, passwords and proxies, slice ordering and colours."""

from __future__ import annotations

import io
import os
import stat
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.uid import generate_uid
from review_seed import PASSWORDS, SLICES, Seeded, make_settings, seed_study, write_series
from sqlalchemy import Engine, select

from codebrain_node.config import ConfigError, FolderDestinationSettings, ReviewSettings, load_settings
from codebrain_node.db.models import AuditEvent, Export, Study, StudyState, utcnow
from codebrain_node.db.session import session_factory, upgrade
from codebrain_node.export.dispatch import run_due_exports
from codebrain_node.review import auth, render
from codebrain_node.review.worklist import ReviewError, approve, list_worklist, reject, status_of, study_detail

# --- worklist --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "quiet_s", "status"),
    [
        (StudyState.RECEIVING, 1, "receiving"),
        (StudyState.RECEIVING, 120, "waiting_stable"),
        (StudyState.STABLE, 120, "waiting_stable"),
        (StudyState.QUEUED, 0, "queued"),
        (StudyState.IMPUTING, 0, "imputing"),
        (StudyState.WRITTEN, 0, "imputing"),
        (StudyState.AWAITING_REVIEW, 0, "awaiting_review"),
        (StudyState.APPROVED, 0, "approved"),
        (StudyState.EXPORTED, 0, "sent"),
        (StudyState.REJECTED, 0, "rejected"),
        (StudyState.FAILED, 0, "failed"),
        (StudyState.DEAD_LETTER, 0, "dead_letter"),
        (StudyState.IGNORED, 0, "ignored"),
    ],
)
def test_every_state_has_a_worklist_status(state: StudyState, quiet_s: float, status: str) -> None:
    now = utcnow()
    study = Study(study_instance_uid="1.2", state=state, last_received_at=now - timedelta(seconds=quiet_s))
    assert status_of(study, now) == status


def test_worklist_filter_by_status_keeps_receiving_and_waiting_apart(seeded: Seeded) -> None:
    with seeded.factory() as session, session.begin():
        for uid, quiet_s in (("1.2.3.1", 1), ("1.2.3.2", 300)):
            session.add(
                Study(
                    study_instance_uid=uid,
                    last_received_at=utcnow() - timedelta(seconds=quiet_s),
                    first_received_at=utcnow() - timedelta(seconds=quiet_s + 5),
                )
            )
    with seeded.factory() as session:
        assert [r.study_instance_uid for r in list_worklist(session, "receiving")] == ["1.2.3.1"]
        assert [r.study_instance_uid for r in list_worklist(session, "waiting_stable")] == ["1.2.3.2"]
        assert [r.id for r in list_worklist(session, "awaiting_review")] == [seeded.study_id]
        by_age = [r.study_instance_uid for r in list_worklist(session, sort="age", descending=True)]
        assert by_age == ["1.2.3.2", "1.2.3.1", seeded.study_uid]  # oldest first when descending by age
        assert [r.study_instance_uid for r in list_worklist(session, sort="age")] == by_age[::-1]
        with pytest.raises(ReviewError, match="unknown status"):
            list_worklist(session, "soon")


def test_reject_needs_a_study_awaiting_review(seeded: Seeded) -> None:
    with seeded.factory() as session, session.begin():
        reject(session, seeded.study_uid, "user:cli", "bad registration")
    with seeded.factory() as session, session.begin(), pytest.raises(ReviewError, match="not awaiting review"):
        reject(session, seeded.study_id, "user:cli")
    with seeded.factory() as session, pytest.raises(ReviewError, match="no study"):
        study_detail(session, "9.9.9")
    with seeded.factory() as session:
        event = session.scalars(select(AuditEvent).where(AuditEvent.action == "state:rejected")).one()
        assert (event.actor, event.details["reason"]) == ("user:cli", "bad registration")


@pytest.mark.postgres
def test_worklist_search_and_actions_on_postgresql(postgres_engine: Engine, tmp_path: Path) -> None:
    """Case-insensitive search, contrast filter, row locks and the actions on the multi-node database."""
    upgrade(postgres_engine)
    factory = session_factory(postgres_engine)
    settings = make_settings(tmp_path)
    settings.export.destinations = [FolderDestinationSettings(name="archive", path=tmp_path / "out")]
    doe = seed_study(settings, factory)
    roe = seed_study(settings, factory, accession="ACC2", patient_name="Roe^Richard")
    with factory() as session:
        assert [row.id for row in list_worklist(session, "awaiting_review", "t2w", "roe")] == [roe.study_id]
    with factory() as session, session.begin():
        approve(session, doe.study_id, "user:alice", "fine")
        reject(session, roe.study_uid, "user:alice", "artefact")
    run_due_exports(factory, settings)  # the exporter sends what was approved, and only that
    with factory() as session:
        exports = session.scalars(select(Export)).all()
        assert [(e.series_id, e.destination) for e in exports] == [(doe.synthetic_series_id, "archive")]
        assert StudyState(session.get(Study, roe.study_id).state) is StudyState.REJECTED


# --- sign-in ---------------------------------------------------------------------------------------------------


def test_passwords_verify_only_with_the_right_user_and_password() -> None:
    hashed = auth.hash_password(PASSWORDS["alice"])
    assert hashed.startswith("$argon2id$") and PASSWORDS["alice"] not in hashed
    review = ReviewSettings(users=[{"name": "alice", "password_hash": hashed}, {"name": "sso-only"}])
    assert auth.authenticate(review, "alice", PASSWORDS["alice"]) == auth.User("alice", "reviewer", "password")
    assert auth.authenticate(review, "alice", "wrong") is None
    assert auth.authenticate(review, "bob", PASSWORDS["alice"]) is None
    assert auth.authenticate(review, "sso-only", "") is None
    assert auth.user_from_session(review, "sso-only") is None
    with pytest.raises(ValueError, match="8 characters"):
        auth.hash_password("short")


def test_trusted_header_believed_only_from_trusted_proxies() -> None:
    review = ReviewSettings(
        trusted_user_header="X-Forwarded-User",
        trusted_proxies=["127.0.0.1", "10.0.0.0/8"],
        users=[{"name": "alice", "role": "reviewer"}],
    )
    assert auth.user_from_trusted_header(review, "10.2.3.4", "alice") == auth.User("alice", "reviewer", "header")
    assert auth.user_from_trusted_header(review, "127.0.0.1", "bob").role == "viewer"
    assert auth.user_from_trusted_header(review, "192.168.1.1", "alice") is None
    assert auth.user_from_trusted_header(review, "testclient", "alice") is None
    assert auth.user_from_trusted_header(ReviewSettings(trusted_proxies=["127.0.0.1"]), "127.0.0.1", "x") is None


def test_review_settings_validate_hashes_networks_and_names() -> None:
    for environ, named in (
        ({"CODEBRAIN_REVIEW__TRUSTED_PROXIES": "10.0.0.0/33"}, "review.trusted_proxies"),
        ({"CODEBRAIN_REVIEW__USERS": '[{"name": "a", "password_hash": "plain"}]'}, "Argon2"),
        ({"CODEBRAIN_REVIEW__USERS": '[{"name": "a"}, {"name": "a"}]'}, "unique"),
    ):
        with pytest.raises(ConfigError, match=named):
            load_settings(environ=environ)


def test_config_show_hides_password_hashes_and_secret() -> None:
    from codebrain_node.config import effective_items

    hashed = auth.hash_password(PASSWORDS["alice"])
    settings = load_settings(
        environ={
            "CODEBRAIN_REVIEW__USERS": f'[{{"name": "alice", "password_hash": "{hashed}"}}]',
            "CODEBRAIN_REVIEW__SECRET_KEY": "very-secret-key",
        }
    )
    shown = {key: value for key, value, _ in effective_items(settings)}
    assert shown["review.users"] == '[{"name": "alice", "role": "reviewer"}]'
    assert shown["review.secret_key"] == "********"


def test_session_key_is_generated_once_and_private(tmp_path: Path) -> None:
    settings = load_settings(environ={})
    settings.paths.data_dir = tmp_path
    first = auth.session_secret(settings)
    assert len(first) >= 48 and auth.session_secret(settings) == first
    mode = stat.S_IMODE(os.stat(tmp_path / auth.SECRET_KEY_FILE).st_mode)
    assert mode == 0o600
    settings.review.secret_key = "from-config"
    assert auth.session_secret(settings) == "from-config"
    assert auth.csrf_matches("abc", "abc") and not auth.csrf_matches("abc", "abd")
    assert not auth.csrf_matches(None, "") and not auth.csrf_matches("", "")


# --- rendering -------------------------------------------------------------------------------------------------


def test_slices_are_ordered_along_the_normal_and_matched_across_series(tmp_path: Path) -> None:
    study = generate_uid()
    shuffled = write_series(tmp_path / "a", study, generate_uid(), "A", scale=1)
    geometry = render.load_geometry(shuffled)
    assert [ref.instance_number for ref in geometry.slices] == list(range(1, SLICES + 1))
    assert [ref.location for ref in geometry.slices] == [5.0 * i for i in range(SLICES)]
    # a thinner series with a different start: slice at 12.5 mm is nearest to the thick series' slice at 10 mm
    thin = render.load_geometry(write_series(tmp_path / "b", study, generate_uid(), "B", 1, 2.5, 2.5, slices=12))
    assert thin.slices[thin.nearest_to((0.0, 0.0, 10.0))].location in (10.0,)
    assert geometry.nearest_to((0.0, 0.0, 12.4)) == 2


def test_window_maps_level_and_width_to_grey() -> None:
    pixels = np.array([[0.0, 50.0, 100.0, 200.0]], dtype=np.float32)
    grey = np.asarray(Image.open(io.BytesIO(render.window_to_png(pixels, level=100, width=100))))
    assert grey.tolist() == [[0, 0, 128, 255]]


def test_confidence_colours_run_from_red_to_green(tmp_path: Path) -> None:
    rgba = np.asarray(Image.open(io.BytesIO(render.confidence_to_png(np.array([[0.0, 0.5, 1.0]]), 1.0))))
    assert rgba[0, 0].tolist() == [255, 0, 0, 255]  # unsure: opaque red
    assert rgba[0, 1].tolist() == [255, 255, 0, 128]
    assert rgba[0, 2].tolist() == [0, 255, 0, 0]  # sure: clear
    volume = np.stack([np.full((4, 4), z / 10, np.float32) for z in range(3)])
    ref = render.SliceRef(tmp_path, instance_number=3, position=None, normal=None, location=0.0)
    plane = render.confidence_slice(volume, ref, index=0, shape=(8, 8))
    assert plane.shape == (8, 8) and np.allclose(plane, 0.2)  # InstanceNumber 3 -> confidence[2]
    np.save(tmp_path / render.CONFIDENCE_FILE, np.zeros((2, 3), np.float32))
    with pytest.raises(render.RenderError, match=r"\[Z, H, W\]"):
        render.load_confidence(tmp_path)
    assert render.load_confidence(tmp_path / "none") is None
