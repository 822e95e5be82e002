"""Alembic environment: runs the migrations in versions/ against the URL that openft.store.migrate passes."""

from alembic import context
from sqlalchemy import create_engine

from openft.tables import Base

url = context.config.get_main_option("sqlalchemy.url")
engine = create_engine(url)
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=url.startswith("sqlite"))
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":  # replicas starting together migrate one after the other
            connection.exec_driver_sql("SELECT pg_advisory_xact_lock(7271001)")
        context.run_migrations()
engine.dispose()
