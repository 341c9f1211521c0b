"""Rows of the profile store read back as values: timestamps, scopes and profile versions."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from comptroller.control._profiles import ProfileSpec, ProfileVersion, Scope


def _aware(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; everything stored is UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


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
