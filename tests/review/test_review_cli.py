"""``codebrain-node worklist list|show|approve|reject`` and ``user hash-password``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from argon2 import PasswordHasher
from review_seed import Seeded
from sqlalchemy import select
from typer.testing import CliRunner

from codebrain_node.cli import app
from codebrain_node.config import load_settings
from codebrain_node.db.models import AuditEvent, Export, ExportStatus, Study, StudyState
from codebrain_node.export.dispatch import run_due_exports


def config_for(seeded: Seeded, tmp_path: Path, destinations: str = "") -> Path:
    """A config file pointing at the seeded database and data folder."""
    config = tmp_path / "node.toml"
    data_dir = Path(seeded.settings.paths.data_dir)
    config.write_text(
        f'[paths]\ndata_dir = "{data_dir}"\n[database]\nurl = "sqlite:///{data_dir.parent / "node.db"}"\n'
        f'[export]\npolicy = "review"\n{destinations}'
    )
    return config


def test_list_and_show_keep_patient_details_out_unless_asked(seeded: Seeded, tmp_path: Path) -> None:
    config = str(config_for(seeded, tmp_path))
    runner = CliRunner()
    listed = runner.invoke(app, ["--config", config, "worklist", "list", "--status", "awaiting_review"])
    assert listed.exit_code == 0, listed.output
    assert "awaiting review" in listed.output and "in:T1" in listed.output and "synth:T2" in listed.output
    assert seeded.study_uid in listed.output and "Doe" not in listed.output
    with_patient = runner.invoke(app, ["--config", config, "worklist", "list", "--show-patient"])
    assert "Doe Jane [PID-0042]" in with_patient.output
    assert "no studies" in runner.invoke(app, ["--config", config, "worklist", "list", "--status", "failed"]).output
    shown = runner.invoke(app, ["--config", config, "worklist", "show", seeded.study_uid])
    assert shown.exit_code == 0, shown.output
    assert "model=codebrain-small 0.1.0" in shown.output and "model_s 1.50s" in shown.output
    assert "state:awaiting_review" in shown.output and "Doe" not in shown.output


def test_approve_from_the_cli_hands_the_study_to_the_exporter_then_reject_is_refused(
    seeded: Seeded, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    destinations = f'[[export.destinations]]\nname = "archive"\nkind = "folder"\npath = "{out}"\n'
    config = str(config_for(seeded, tmp_path, destinations))
    runner = CliRunner()
    approved = runner.invoke(
        app, ["--config", config, "worklist", "approve", str(seeded.study_id), "--reason", "ok", "--user", "dr-who"]
    )
    assert approved.exit_code == 0, approved.output
    with seeded.factory() as session:
        assert StudyState(session.get(Study, seeded.study_id).state) is StudyState.APPROVED
        assert session.scalars(select(Export)).all() == []  # the exporter alone schedules exports
    run_due_exports(seeded.factory, load_settings(Path(config)))
    with seeded.factory() as session:
        exports = session.scalars(select(Export)).all()
        assert [(e.series_id, e.destination, e.status) for e in exports] == [
            (seeded.synthetic_series_id, "archive", ExportStatus.SENT)
        ]
        event = session.scalars(select(AuditEvent).where(AuditEvent.action == "state:approved")).one()
        assert event.actor == "user:dr-who" and event.details["reason"] == "ok"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODEBRAIN_")}
    command = ["--config", config, "worklist", "reject", seeded.study_uid]
    refused = subprocess.run(
        [sys.executable, "-c", "from codebrain_node.cli import main; main()", *command],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert refused.returncode == 1
    assert refused.stderr.strip() == f"error: study {seeded.study_id} is approved and sent, not awaiting review"


def test_hash_password_prints_a_config_table_that_loads(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["user", "hash-password", "--name", "carol", "--password-stdin"], input="a long passphrase\n"
    )
    assert result.exit_code == 0, result.output
    assert "a long passphrase" not in result.output
    config = tmp_path / "users.toml"
    config.write_text(result.output)
    settings = load_settings(config, environ={})
    (user,) = settings.review.users
    assert (user.name, user.role) == ("carol", "reviewer")
    assert PasswordHasher().verify(user.password_hash, "a long passphrase")
    short = CliRunner().invoke(app, ["user", "hash-password", "--password-stdin"], input="short\n")
    assert short.exit_code != 0
