"""The Alembic migrations build exactly the schema that openft/tables.py declares, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from openft import tables
from openft import store
from openft.store import migrate


def test_migrations_match_the_table_definitions(database_url):
    migrate(database_url)
    engine = sqlalchemy.create_engine(database_url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), tables.Base.metadata)
    finally:
        engine.dispose()
    assert diff == []


def test_migrating_twice_is_a_no_op(database_url):
    migrate(database_url)
    migrate(database_url)
    engine = sqlalchemy.create_engine(database_url)
    try:
        with engine.connect() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()
    scripts = ScriptDirectory(str(Path(store.__file__).parent / "migrations"))
    assert current == scripts.get_current_head()
