"""Profile store: versions, audit log, credentials and the change counter.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "comptroller_profile_versions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("profile_id", sa.String(300), nullable=False),
        sa.Column("scope_kind", sa.String(16), nullable=False),
        sa.Column("scope_id", sa.String(200), nullable=False),
        sa.Column("scope_org", sa.String(200), nullable=True),
        sa.Column("purpose", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("spec", sa.Text, nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("activated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deactivated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("rollback_of", sa.Integer, nullable=True),
        sa.UniqueConstraint(
            "scope_kind", "scope_id", "purpose", "version", name="uq_profile_version"
        ),
    )
    op.create_index(
        "uq_profile_active",
        "comptroller_profile_versions",
        ["scope_kind", "scope_id", "purpose"],
        unique=True,
        sqlite_where=sa.text("deactivated_at IS NULL"),
        postgresql_where=sa.text("deactivated_at IS NULL"),
    )
    op.create_index(
        "ix_profile_versions_purpose",
        "comptroller_profile_versions",
        ["purpose", "scope_kind", "scope_id"],
    )
    op.create_table(
        "comptroller_audit_log",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("scope_kind", sa.String(16), nullable=False),
        sa.Column("scope_id", sa.String(200), nullable=False),
        sa.Column("purpose", sa.String(64), nullable=True),
        sa.Column("version", sa.Integer, nullable=True),
        sa.Column("before", sa.Text, nullable=True),
        sa.Column("after", sa.Text, nullable=True),
        sa.Column("reason", sa.Text, nullable=False),
    )
    op.create_table(
        "comptroller_credentials",
        sa.Column("ref", sa.String(64), primary_key=True),
        sa.Column("scope_kind", sa.String(16), nullable=False),
        sa.Column("scope_id", sa.String(200), nullable=False),
        sa.Column("scope_org", sa.String(200), nullable=True),
        sa.Column("provider", sa.String(100), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.Column("nonce", sa.LargeBinary, nullable=False),
        sa.Column("ciphertext", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(200), nullable=False),
        sa.UniqueConstraint("scope_kind", "scope_id", "provider", "name", name="uq_credential"),
    )
    counter = op.create_table(
        "comptroller_change_counter",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("value", sa.BigInteger, nullable=False),
    )
    op.bulk_insert(counter, [{"id": 1, "value": 0}])


def downgrade() -> None:
    op.drop_table("comptroller_change_counter")
    op.drop_table("comptroller_credentials")
    op.drop_table("comptroller_audit_log")
    op.drop_index("ix_profile_versions_purpose", "comptroller_profile_versions")
    op.drop_index("uq_profile_active", "comptroller_profile_versions")
    op.drop_table("comptroller_profile_versions")
