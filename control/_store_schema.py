"""The profile store's schema: the SQLAlchemy tables of profiles, audit, credentials and admins.

The Alembic scripts in `_migrations` create these tables; `_migrations/env.py` compares them
with this metadata. Bump `HEAD_REVISION` with every new migration.
"""

from __future__ import annotations

import sqlalchemy as sa

HEAD_REVISION = "0002"
"""The newest migration; a store at this revision skips Alembic entirely on open."""
VERSION_TABLE = "comptroller_alembic_version"

metadata = sa.MetaData()

profile_versions = sa.Table(
    "comptroller_profile_versions",
    metadata,
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
    sa.UniqueConstraint("scope_kind", "scope_id", "purpose", "version", name="uq_profile_version"),
)
# At most one active version per (scope, purpose), whatever the writers do.
sa.Index(
    "uq_profile_active",
    profile_versions.c.scope_kind,
    profile_versions.c.scope_id,
    profile_versions.c.purpose,
    unique=True,
    sqlite_where=profile_versions.c.deactivated_at.is_(None),
    postgresql_where=profile_versions.c.deactivated_at.is_(None),
)
# Resolution reads the active versions of one purpose along a chain of scopes.
sa.Index(
    "ix_profile_versions_purpose",
    profile_versions.c.purpose,
    profile_versions.c.scope_kind,
    profile_versions.c.scope_id,
)

audit_log = sa.Table(
    "comptroller_audit_log",
    metadata,
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

credentials = sa.Table(
    "comptroller_credentials",
    metadata,
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

# Who holds which role, proven by the OS user name or an admin token (see `_principal`).
# org and domain are "" rather than NULL so that the unique constraint holds on both engines.
admins = sa.Table(
    "comptroller_admins",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("identity", sa.String(200), nullable=False),
    sa.Column("role", sa.String(32), nullable=False),
    sa.Column("org", sa.String(200), nullable=False),
    sa.Column("domain", sa.String(200), nullable=False),
    sa.Column("granted_by", sa.String(200), nullable=False),
    sa.Column("granted_at", sa.DateTime(timezone=True), nullable=False),
    sa.UniqueConstraint("identity", "role", "org", "domain", name="uq_admin_binding"),
)

# Admin tokens: only a hash of each token's secret is stored, so reading the table mints none.
admin_tokens = sa.Table(
    "comptroller_admin_tokens",
    metadata,
    sa.Column("token_id", sa.String(32), primary_key=True),
    sa.Column("secret_hash", sa.String(64), nullable=False),
    sa.Column("identity", sa.String(200), nullable=False),
    sa.Column("role", sa.String(32), nullable=False),
    sa.Column("org", sa.String(200), nullable=False),
    sa.Column("domain", sa.String(200), nullable=False),
    sa.Column("minted_by", sa.String(200), nullable=False),
    sa.Column("minted_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
)

change_counter = sa.Table(
    "comptroller_change_counter",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("value", sa.BigInteger, nullable=False),
)
