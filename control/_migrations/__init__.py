"""Alembic migrations of the profile store (run by `migrate()`, never by hand)."""
