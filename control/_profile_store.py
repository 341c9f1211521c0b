"""The profile store: SQLAlchemy tables, engine set-up, migrations and serialised writes.

A SQLite file by default, PostgreSQL by URL. Every write runs in one transaction that first
increments the single change-counter row: that serialises writers (a row lock on PostgreSQL,
the write lock on SQLite), so version numbers are computed without races, the audit entry
commits with the change or not at all, and other processes notice the change by polling one
integer.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeAlias, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.pool import StaticPool

from comptroller.control._profile_errors import ProfileConflict
from comptroller.control._profile_types import ScopeKind
from comptroller.control._profiles import (
    AuditAction,
    AuditEntry,
    ProfileSpec,
    ProfileVersion,
    Scope,
    profile_id,
)

_log = logging.getLogger("comptroller.control.profiles")

T = TypeVar("T")
ActiveKey: TypeAlias = tuple[ScopeKind, str]

HEAD_REVISION = "0002"
"""The newest migration; a store at this revision skips Alembic entirely on open."""
VERSION_TABLE = "comptroller_alembic_version"
MIGRATIONS_DIR = Path(__file__).parent / "_migrations"

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


def utcnow() -> datetime:
    """The current time in UTC (the store's clock unless one is injected)."""
    return datetime.now(UTC)


def _aware(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; everything stored is UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _private_sqlite(path: Path) -> None:
    """Profiles, audit and sealed credentials: the file is its owner's alone (0600).

    SQLite takes an empty file for a new database, and creates its `-wal` and `-shm` files
    with the database file's permissions: creating it empty with 0600 covers all three.
    """
    from comptroller._private import FILE_MODE, tighten

    if path.exists():
        tighten(path)
        return
    with contextlib.suppress(FileExistsError):  # another process created it first
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))


def make_engine(url: str) -> Engine:
    """An engine for `url`, set up for concurrent writers (SQLite: WAL, busy timeout)."""
    sa_url = sa.make_url(url)
    if sa_url.get_backend_name() == "sqlite":
        database = sa_url.database
        in_memory = not database or database == ":memory:"
        if database and not in_memory:
            Path(database).parent.mkdir(parents=True, exist_ok=True)
            _private_sqlite(Path(database))
        engine = sa.create_engine(
            sa_url,
            connect_args={"timeout": 30, "check_same_thread": False},
            # An in-memory database lives in one connection: every thread shares it.
            poolclass=StaticPool if in_memory else None,
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA busy_timeout=30000")
            finally:
                cursor.close()

        return engine
    return sa.create_engine(sa_url, pool_pre_ping=True)


def migrate(engine: Engine, *, revision: str = HEAD_REVISION) -> None:
    """Bring the store's schema to `revision` (default: the newest; Alembic scripts in the
    package). Tests pass an older revision to build a store as an earlier release left it."""
    if _current_revision(engine) == revision:
        return
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    for attempt in range(3):
        try:
            with engine.begin() as connection:
                if connection.dialect.name == "postgresql":
                    # Two processes opening a fresh store must not both create the tables.
                    connection.execute(sa.text("SELECT pg_advisory_xact_lock(7401235)"))
                config.attributes["connection"] = connection
                command.upgrade(config, revision)
            return
        except OperationalError:
            if attempt == 2:
                raise
            time.sleep(0.05 * (attempt + 1))  # another process is migrating the same file


def _current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        if not sa.inspect(connection).has_table(VERSION_TABLE):
            return None
        row = connection.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).first()
        return str(row[0]) if row else None


@dataclass(frozen=True, kw_only=True, slots=True)
class AppendResult:
    """A new active version and the one it replaced."""

    version: ProfileVersion
    previous: ProfileVersion | None


class ProfileStore:
    """Tables of profiles, audit and credentials behind one engine.

    Args:
        url: SQLAlchemy URL (`sqlite:///path`, `postgresql+psycopg://…`).
        clock: Source of timestamps (UTC); tests inject a fixed one.
    """

    def __init__(self, url: str, *, clock: Callable[[], datetime] = utcnow) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.clock = clock
        migrate(self.engine)

    def close(self) -> None:
        """Release the engine's connections."""
        self.engine.dispose()

    def __repr__(self) -> str:
        return f"ProfileStore({sa.make_url(self.url).render_as_string(hide_password=True)!r})"

    # --- transactions --------------------------------------------------------------------
    def write(self, work: Callable[[Connection], T], *, attempts: int = 8) -> T:
        """Run `work` in a write transaction that bumps the change counter first.

        Retries when the database reports a conflict (unique violation, deadlock, busy).

        Raises:
            ProfileConflict: Still conflicting after `attempts` tries.
        """
        last: DBAPIError | None = None
        for attempt in range(attempts):
            try:
                with self.engine.begin() as connection:
                    connection.execute(
                        change_counter.update()
                        .where(change_counter.c.id == 1)
                        .values(value=change_counter.c.value + 1)
                    )
                    return work(connection)
            except (IntegrityError, OperationalError) as exc:
                if not _is_conflict(exc):
                    raise
                last = exc
                time.sleep(0.01 * (attempt + 1))
        raise ProfileConflict(
            f"the profile store kept reporting conflicting writes after {attempts} attempts "
            f"({type(last).__name__}); retry the change"
        )

    @contextmanager
    def reading(self) -> Iterator[Connection]:
        """A connection for reads."""
        with self.engine.connect() as connection:
            yield connection

    def change_count(self) -> int:
        """The change counter: increases with every committed write of any process."""
        with self.engine.connect() as connection:
            value = connection.execute(
                sa.select(change_counter.c.value).where(change_counter.c.id == 1)
            ).scalar_one()
        return int(value)

    # --- profiles ------------------------------------------------------------------------
    def active_for(
        self,
        purpose: str,
        *,
        domain: str | None,
        org: str | None,
        connection: Connection | None = None,
    ) -> dict[ActiveKey, ProfileVersion]:
        """The active versions of `purpose` along the chain of (domain, org)."""
        t = profile_versions
        clauses = [t.c.scope_kind == "global"]
        if domain:
            clauses.append(sa.and_(t.c.scope_kind == "domain", t.c.scope_id == domain))
        if org:
            clauses.append(sa.and_(t.c.scope_kind == "org", t.c.scope_id == org))
        query = sa.select(t).where(
            t.c.purpose == purpose, t.c.deactivated_at.is_(None), sa.or_(*clauses)
        )
        if connection is not None:
            rows = connection.execute(query).mappings().all()
        else:
            with self.reading() as reader:
                rows = reader.execute(query).mappings().all()
        out: dict[ActiveKey, ProfileVersion] = {}
        for row in rows:
            version = _version(row)
            out[(version.scope.kind, version.scope.id)] = version
        return out

    def active_at(self, scope: Scope, purpose: str | None = None) -> list[ProfileVersion]:
        """The active versions set at exactly `scope` (one purpose, or all), by purpose."""
        t = profile_versions
        query = sa.select(t).where(
            t.c.scope_kind == scope.kind, t.c.scope_id == scope.id, t.c.deactivated_at.is_(None)
        )
        if purpose is not None:
            query = query.where(t.c.purpose == purpose)
        with self.reading() as connection:
            rows = connection.execute(query.order_by(t.c.purpose)).mappings().all()
        return [_version(row) for row in rows]

    def history(self, scope: Scope, purpose: str) -> list[ProfileVersion]:
        """Every version of (scope, purpose), oldest first."""
        t = profile_versions
        query = (
            sa.select(t)
            .where(t.c.scope_kind == scope.kind, t.c.scope_id == scope.id, t.c.purpose == purpose)
            .order_by(t.c.version)
        )
        with self.reading() as connection:
            rows = connection.execute(query).mappings().all()
        return [_version(row) for row in rows]

    def recorded_org(self, connection: Connection, domain: str) -> str | None:
        """The org the store has recorded for `domain`: None if the domain is unknown, ""
        if it was first written without an org (its first write binds it)."""
        for table in (profile_versions, credentials):
            row = connection.execute(
                sa.select(table.c.scope_org)
                .where(table.c.scope_kind == "domain", table.c.scope_id == domain)
                .order_by(table.c.created_at)
                .limit(1)
            ).first()
            if row is not None:
                return str(row[0] or "")
        return None

    def current(self, connection: Connection, scope: Scope, purpose: str) -> ProfileVersion | None:
        """The active version of (scope, purpose) inside a write transaction."""
        t = profile_versions
        row = (
            connection.execute(
                sa.select(t).where(
                    t.c.scope_kind == scope.kind,
                    t.c.scope_id == scope.id,
                    t.c.purpose == purpose,
                    t.c.deactivated_at.is_(None),
                )
            )
            .mappings()
            .first()
        )
        return _version(row) if row is not None else None

    def version_in(
        self, connection: Connection, scope: Scope, purpose: str, version: int
    ) -> ProfileVersion | None:
        """Version `version` of (scope, purpose), read inside a transaction."""
        t = profile_versions
        row = (
            connection.execute(
                sa.select(t).where(
                    t.c.scope_kind == scope.kind,
                    t.c.scope_id == scope.id,
                    t.c.purpose == purpose,
                    t.c.version == version,
                )
            )
            .mappings()
            .first()
        )
        return _version(row) if row is not None else None

    def append_version(
        self,
        connection: Connection,
        *,
        scope: Scope,
        purpose: str,
        spec: ProfileSpec,
        created_by: str,
        reason: str,
        rollback_of: int | None = None,
    ) -> AppendResult:
        """Deactivate the active version of (scope, purpose) and activate a new one."""
        t = profile_versions
        now = self.clock()
        previous = self.current(connection, scope, purpose)
        last = connection.execute(
            sa.select(sa.func.max(t.c.version)).where(
                t.c.scope_kind == scope.kind, t.c.scope_id == scope.id, t.c.purpose == purpose
            )
        ).scalar()
        number = int(last or 0) + 1
        if previous is not None:
            connection.execute(
                t.update()
                .where(t.c.scope_kind == scope.kind, t.c.scope_id == scope.id)
                .where(t.c.purpose == purpose, t.c.version == previous.version)
                .values(deactivated_at=now)
            )
        connection.execute(
            t.insert().values(
                profile_id=profile_id(scope, purpose),
                scope_kind=scope.kind,
                scope_id=scope.id,
                scope_org=scope.org,
                purpose=purpose,
                version=number,
                spec=spec.dumps(),
                created_by=created_by,
                created_at=now,
                activated_at=now,
                deactivated_at=None,
                reason=reason,
                rollback_of=rollback_of,
            )
        )
        version = ProfileVersion(
            profile_id=profile_id(scope, purpose),
            scope=scope,
            purpose=purpose,
            version=number,
            spec=spec,
            created_by=created_by,
            created_at=now,
            activated_at=now,
            deactivated_at=None,
            reason=reason,
            rollback_of=rollback_of,
        )
        return AppendResult(version=version, previous=previous)

    # --- audit ---------------------------------------------------------------------------
    def add_audit(
        self,
        connection: Connection,
        *,
        actor: str,
        role: str,
        action: AuditAction,
        scope: Scope,
        purpose: str | None,
        version: int | None,
        before: Mapping[str, Any] | None,
        after: Mapping[str, Any] | None,
        reason: str,
    ) -> None:
        """Append one audit entry inside the write transaction of the change it records."""
        connection.execute(
            audit_log.insert().values(
                at=self.clock(),
                actor=actor,
                role=role,
                action=action,
                scope_kind=scope.kind,
                scope_id=scope.id,
                purpose=purpose,
                version=version,
                before=json.dumps(before, sort_keys=True) if before is not None else None,
                after=json.dumps(after, sort_keys=True) if after is not None else None,
                reason=reason,
            )
        )

    def audit(
        self, *, scope: Scope | None = None, purpose: str | None = None, limit: int | None = None
    ) -> list[AuditEntry]:
        """Audit entries, oldest first, optionally for one scope and/or purpose."""
        t = audit_log
        query = sa.select(t).order_by(t.c.id)
        if scope is not None:
            query = query.where(t.c.scope_kind == scope.kind, t.c.scope_id == scope.id)
        if purpose is not None:
            query = query.where(t.c.purpose == purpose)
        if limit is not None:
            query = query.limit(limit)
        with self.reading() as connection:
            rows = connection.execute(query).mappings().all()
        return [
            AuditEntry(
                id=int(row["id"]),
                at=_aware(row["at"]),
                actor=row["actor"],
                role=row["role"],
                action=row["action"],
                scope=_scope(row["scope_kind"], row["scope_id"], None),
                purpose=row["purpose"],
                version=row["version"],
                before=json.loads(row["before"]) if row["before"] is not None else None,
                after=json.loads(row["after"]) if row["after"] is not None else None,
                reason=row["reason"],
            )
            for row in rows
        ]


def _is_conflict(exc: DBAPIError) -> bool:
    if isinstance(exc, IntegrityError):
        return True  # a concurrent writer took the same version number
    code = getattr(exc.orig, "sqlstate", None)
    if code in ("40001", "40P01"):  # PostgreSQL serialization failure, deadlock
        return True
    return "locked" in str(exc.orig).lower() or "busy" in str(exc.orig).lower()


def _scope(kind: str, ident: str, org: str | None) -> Scope:
    if kind == "global":
        return Scope.global_()
    if kind == "org":
        return Scope.of_org(ident)
    return Scope.of_domain(ident, org=org)


def _version(row: Mapping[Any, Any]) -> ProfileVersion:
    return ProfileVersion(
        profile_id=row["profile_id"],
        scope=_scope(row["scope_kind"], row["scope_id"], row["scope_org"]),
        purpose=row["purpose"],
        version=int(row["version"]),
        spec=ProfileSpec.loads(row["spec"]),
        created_by=row["created_by"],
        created_at=_aware(row["created_at"]),
        activated_at=_aware(row["activated_at"]),
        deactivated_at=_aware(row["deactivated_at"]) if row["deactivated_at"] else None,
        reason=row["reason"],
        rollback_of=row["rollback_of"],
    )
