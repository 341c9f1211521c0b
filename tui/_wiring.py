"""Connecting the dashboard to the outside: where it reads, and the profile store it writes."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, cast

from comptroller.tui._admin import ProfileRef, RollbackDone
from comptroller.tui._model import Operator
from comptroller.tui._source import DuckDBSource, Reader, ReaderFactory

if TYPE_CHECKING:
    from comptroller.config import Settings
    from comptroller.control.profiles import ProfileService, Role


class _HttpSource:
    """One collector client per worker (each worker its own connection)."""

    def __init__(self, url: str, token: str | None) -> None:
        self.url = url
        self.token = token

    def __call__(self) -> Reader:
        from comptroller.analytics._reader import open_reader

        return open_reader(url=self.url, token=self.token)


def open_source(
    *, db: Path | None, url: str | None, token: str | None = None, default_db: Path
) -> ReaderFactory:
    """The reader factory for `--db FILE` (read-only DuckDB) or `--url URL` (a collector).

    Raises:
        comptroller.errors.ConfigError: The file is missing, locked by a writer or too new.
    """
    if url is not None:
        return _HttpSource(url, token)
    return DuckDBSource.open(db or default_db)


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
