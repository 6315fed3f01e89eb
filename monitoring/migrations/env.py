"""Alembic environment: runs on the connection the store hands over (no alembic.ini).

The store opens the transaction and takes its migration lock before calling Alembic, so two
processes opening a fresh store at once migrate it once.
"""

from __future__ import annotations

from alembic import context

from monitoring.schema import metadata

VERSION_TABLE = "monitoring_alembic_version"

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata,
                  version_table=VERSION_TABLE, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
