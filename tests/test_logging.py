"""Logs never carry patient names, IDs or birth dates; JSON format is one object a line."""

from __future__ import annotations

import json
import logging

import pytest

from codebrain_node.logging_setup import configure_logging


@pytest.fixture(autouse=True)
def _restore_root_logger():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:], root.level = handlers, level


def test_person_names_and_patient_fields_are_masked(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", "text")
    logging.getLogger("codebrain_node.test").info(
        "stored %s for PatientID=12345 born PatientBirthDate: 19700101", "DOE^JANE"
    )
    err = capsys.readouterr().err
    assert "DOE" not in err and "JANE" not in err
    assert "12345" not in err and "19700101" not in err
    assert "stored" in err


def test_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("DEBUG", "json")
    logging.getLogger("codebrain_node.test").debug("study %s stable", "1.2.3")
    line = capsys.readouterr().err.strip().splitlines()[-1]
    entry = json.loads(line)
    assert entry["message"] == "study 1.2.3 stable"
    assert entry["level"] == "DEBUG"
