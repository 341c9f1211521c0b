"""Connecting the dashboard to the outside: where it reads, and the profile store it writes."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, cast

from comptroller.tui._admin import ProfileRef, RollbackDone
from comptroller.tui._model import Operator
from comptroller.tui._source import DuckDBSource, Reader

if TYPE_CHECKING:
    from comptroller.config import Settings
    from comptroller.control.profiles import ProfileService, Role


def open_source(
    *,
    db: Path | None,
    url: str | None,
    token: str | None = None,
    default_db: Path | None = None,
    settings: Settings | None = None,
) -> DuckDBSource:
    """The dashboard's source: a collector (`url`) or a DuckDB file, read as it is now.

    With `settings`, the reader is the one `comptroller sql` and `budget check` use
    (`reader_from_settings`): `url` > `db` > `analytics.read_url` > the data directory's
    file; a file a collector holds is read through that collector (`collector.host:port`),
    found at each refresh, and a file replaced or rewritten is reopened. Without
    `settings`, `db` (else `default_db`) is read the same way, with no collector to fall
    back to. Nothing is opened before the first refresh.

    Raises:
        comptroller.errors.UsageError: Both `db` and `url`.
        comptroller.errors.ConfigError: The file to read does not exist.
    """
    from comptroller.errors import ConfigError, UsageError

    if db is not None and url is not None:
        raise UsageError("give --db FILE or --url URL, not both")
    if settings is None:
        if url is not None:
            return DuckDBSource(opener=lambda: _collector(url, token))
        if db is None and default_db is None:
            raise UsageError("give db (a DuckDB file), url (a collector) or settings")
        return DuckDBSource.open(db or default_db)  # type: ignore[arg-type]
    target = db
    if target is None and url is None and not settings.analytics.read_url:
        target = settings.db_file
    if target is not None and not target.exists():
        raise ConfigError(
            f"{target}: no such database (run 'uv run comptroller demo' or a collector first)"
        )
    chosen = settings

    def opener() -> Reader:
        # In the first refresh's worker: analytics (DuckDB, Arrow) imports off the UI thread.
        from comptroller.analytics import reader_from_settings

        return reader_from_settings(chosen, db=db, url=url, token=token, follow=True)

    return DuckDBSource(opener=opener)


def _collector(url: str, token: str | None) -> Reader:
    from comptroller.analytics import open_reader

    return open_reader(url=url, token=token)


class ServiceProfileAdmin:
    """A `ProfileAdmin` over the control plane's `ProfileService` (the profile store).

    The service checks the operator's role against the scope and writes the audit entry.
    """

    def __init__(self, service: ProfileService) -> None:
        self.service = service

    def _scope(self, ref: ProfileRef, operator: Operator | None = None) -> object:
        from comptroller.control._profiles import Scope

        if ref.scope_kind == "global" or not ref.scope_id:
            return Scope.global_()
        if ref.scope_kind == "org":
            return Scope.of_org(ref.scope_id)
        with self.service.store.reading() as connection:
            org = self.service.store.recorded_org(connection, ref.scope_id)
        return Scope.of_domain(ref.scope_id, org=org or (operator.org if operator else None))

    def spec_of(self, ref: ProfileRef) -> Mapping[str, object] | None:
        from comptroller.control._profiles import Scope

        scope = self._scope(ref)
        assert isinstance(scope, Scope)
        for version in self.service.history(scope, ref.purpose):
            if version.version == ref.version:
                return version.spec.to_json()
        return None

    def rollback(self, target: ProfileRef, *, operator: Operator, reason: str) -> RollbackDone:
        from comptroller.control._profiles import Scope
        from comptroller.control.profiles import Actor

        scope = self._scope(target, operator)
        assert isinstance(scope, Scope)
        actor = Actor(
            name=operator.name,
            role=cast("Role", operator.role),
            org=operator.org,
            domain=operator.domain,
        )
        version = self.service.rollback(
            scope, target.purpose, to_version=target.version, actor=actor, reason=reason
        )
        return RollbackDone(
            new_version=version.version, audit_id=f"{version.profile_id}@v{version.version}"
        )


def profile_admin(settings: Settings) -> ServiceProfileAdmin:
    """The profile store of `settings`, for rollbacks."""
    from comptroller.control.profiles import ProfileService

    return ServiceProfileAdmin(ProfileService.from_settings(settings))
