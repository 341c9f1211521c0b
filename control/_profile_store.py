"""The profile store: serialised writes, and the queries over profiles and the audit log.

A SQLite file by default, PostgreSQL by URL (engine set-up and migrations: `_store_engine`;
the tables: `_store_schema`). Every write runs in one transaction that first increments the
single change-counter row: that serialises writers (a row lock on PostgreSQL, the write lock
on SQLite), so version numbers are computed without races, the audit entry commits with the
change or not at all, and other processes notice the change by polling one integer.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeAlias, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

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
from comptroller.control._store_engine import _is_conflict, make_engine, migrate
from comptroller.control._store_rows import _aware, _scope, _version
from comptroller.control._store_schema import (
    audit_log,
    change_counter,
    credentials,
    profile_versions,
)

T = TypeVar("T")
ActiveKey: TypeAlias = tuple[ScopeKind, str]


def utcnow() -> datetime:
    """The current time in UTC (the store's clock unless one is injected)."""
    return datetime.now(UTC)


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
