"""Migrations are the only way the schema is made: up, down and up again, on SQLite and PostgreSQL, no drift."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect

from codebrain_node.db.models import Base
from codebrain_node.db.session import current_revision, downgrade, head_revision, upgrade

TABLES = {"studies", "series", "instances", "associations", "jobs", "exports", "audit_events"}


def schema_of(engine: Engine) -> dict:
    """A backend-neutral description of the schema: columns (generic type, nullability), keys and indexes."""
    inspector = inspect(engine)
    described = {}
    for table in sorted(set(inspector.get_table_names()) - {"alembic_version"}):
        columns = {
            column["name"]: (type(column["type"]).__mro__[0].__name__.upper()[:4], column["nullable"])
            for column in inspector.get_columns(table)
        }
        # Type names differ by dialect (VARCHAR/String, DATETIME/TIMESTAMP); keep their families.
        columns = {name: (_family(kind), nullable) for name, (kind, nullable) in columns.items()}
        described[table] = {
            "columns": columns,
            "pk": tuple(inspector.get_pk_constraint(table)["constrained_columns"]),
            "fks": sorted(
                (tuple(fk["constrained_columns"]), fk["referred_table"]) for fk in inspector.get_foreign_keys(table)
            ),
            # PostgreSQL also lists the index behind each unique constraint; that is the constraint, not an index.
            "indexes": sorted(
                (tuple(ix["column_names"]), bool(ix["unique"]))
                for ix in inspector.get_indexes(table)
                if not ix.get("duplicates_constraint")
            ),
            "uniques": sorted(tuple(uq["column_names"]) for uq in inspector.get_unique_constraints(table)),
        }
    return described


def _family(kind: str) -> str:
    return {
        "VARC": "text",
        "TEXT": "text",
        "STRI": "text",
        "INTE": "int",
        "BOOL": "bool",
        "DATE": "time",
        "TIME": "time",
        "JSON": "json",
    }.get(kind, kind)


def drift(engine: Engine) -> list:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return compare_metadata(context, Base.metadata)


def run_migration_cycle(engine: Engine) -> dict:
    upgrade(engine)
    assert current_revision(engine) == head_revision()
    assert set(inspect(engine).get_table_names()) >= TABLES
    assert drift(engine) == [], "models and migrations differ: write a migration"
    schema = schema_of(engine)
    downgrade(engine, "base")
    assert current_revision(engine) is None
    assert set(inspect(engine).get_table_names()) - {"alembic_version"} == set()
    upgrade(engine)
    assert schema_of(engine) == schema
    return schema


def test_sqlite_migrations_up_down_and_no_drift(sqlite_engine: Engine) -> None:
    run_migration_cycle(sqlite_engine)
    with sqlite_engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


@pytest.mark.postgres
def test_postgres_migrations_match_sqlite(postgres_engine: Engine, sqlite_engine: Engine) -> None:
    assert run_migration_cycle(postgres_engine) == run_migration_cycle(sqlite_engine)
