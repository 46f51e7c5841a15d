"""#16, defect 2: no patient data in any log line, tracebacks and exception text included (a SQLAlchemy error
echoes the SQL parameters: patient name, ID, accession number, study date), in text and JSON logs."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, insert
from sqlalchemy.exc import DataError

from codebrain_node.db.models import Study
from codebrain_node.db.session import upgrade
from codebrain_node.logging_setup import configure_logging

PHI = ("DOE^JANE", "DOE", "JANE", "PID-778899", "ACC-4455", "19700101")


@pytest.fixture(autouse=True)
def _restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:], root.level = handlers, level


def _statement_error() -> DataError:
    """What SQLAlchemy raises when PostgreSQL refuses an INSERT, with the parameters it echoes."""
    parameters = {
        "study_instance_uid": "1.2.3.4",
        "patient_name": "DOE^JANE",
        "patient_id": "PID-778899",
        "accession_number": "ACC-4455",
        "study_date": "19700101",
    }
    orig = ValueError("value too long for type character varying(256)")
    return DataError("INSERT INTO studies (study_instance_uid, patient_name, ...) VALUES (...)", parameters, orig)


def _leaks(text: str) -> list[str]:
    return [value for value in PHI if value in text]


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_logged_database_error_shows_no_patient_data(fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", fmt)
    log = logging.getLogger("codebrain_node.test")
    try:
        try:
            raise _statement_error()
        except DataError as error:
            raise RuntimeError("recorder: batch failed") from error
    except RuntimeError:
        log.exception("recorder: could not record a batch of %d", 3)
    err = capsys.readouterr().err
    assert "could not record a batch of 3" in err and "Traceback" in err  # the traceback is kept, masked
    assert "value too long for type character varying(256)" in err  # the database's reason stays readable
    assert _leaks(err) == []


def test_exception_text_and_stack_info_are_masked(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", "text")
    log = logging.getLogger("codebrain_node.test")
    try:
        raise ValueError("cannot file DOE^JANE (PatientID=PID-778899, 'accession_number': 'ACC-4455')")
    except ValueError as error:
        log.warning("job failed: %s", error, exc_info=True, stack_info=True)
    err = capsys.readouterr().err
    assert "job failed" in err and "Stack (most recent call last)" in err
    assert _leaks(err) == []


@pytest.mark.postgres
def test_a_real_postgres_data_error_logged_with_its_traceback_shows_no_patient_data(
    postgres_engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    upgrade(postgres_engine)
    configure_logging("INFO", "text")
    row = {"study_instance_uid": "1.2.3.4", "patient_name": "DOE^JANE" + "X" * 300, "patient_id": "PID-778899"}
    row |= {"accession_number": "ACC-4455", "study_date": "19700101", "state": "receiving"}
    with pytest.raises(DataError), postgres_engine.begin() as connection:
        try:
            connection.execute(insert(Study.__table__), row)
        except DataError:
            logging.getLogger("codebrain_node.test").exception("recorder: could not record a batch of 1")
            raise
    err = capsys.readouterr().err
    assert "StringDataRightTruncation" in err or "value too long" in err
    assert _leaks(err) == []
