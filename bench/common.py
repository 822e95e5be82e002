"""What the service benchmarks share: a scratch PostgreSQL database."""

from __future__ import annotations

import contextlib
import uuid

import sqlalchemy


@contextlib.contextmanager
def postgres_database(server_url: str):
    """A fresh database on the server at ``server_url`` (its user may create databases), dropped afterwards."""
    name = f"openft_bench_{uuid.uuid4().hex[:8]}"
    admin = sqlalchemy.create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield server_url.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()
