"""Alembic environment: runs on the connection `migrate()` hands over, never from a URL."""

from __future__ import annotations

from alembic import context

from comptroller.control._store_schema import VERSION_TABLE, metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table=VERSION_TABLE,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
