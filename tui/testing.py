"""Doubles for testing code around the dashboard without a profile store."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from comptroller.errors import ComptrollerError
from comptroller.tui._admin import ProfileRef, RollbackDone
from comptroller.tui._model import Operator


class RoleRefused(ComptrollerError):
    """Raised by `RecordingProfileAdmin` for an operator whose role it does not allow."""


@dataclass(frozen=True, kw_only=True, slots=True)
class RecordedRollback:
    """One rollback the double was asked for: the audit entry it stands for."""

    target: ProfileRef
    operator: Operator
    reason: str
    new_version: int


@dataclass(kw_only=True)
class RecordingProfileAdmin:
    """A `ProfileAdmin` that records rollbacks instead of writing a profile store.

    Args:
        specs: The settings of each known version.
        allowed_roles: Roles allowed to roll back; others get `RoleRefused`.
    """

    specs: dict[ProfileRef, Mapping[str, object]] = field(default_factory=dict)
    allowed_roles: frozenset[str] = frozenset({"platform"})
    rollbacks: list[RecordedRollback] = field(default_factory=list)
    """The audit log: one entry per rollback done."""
    refused: list[tuple[ProfileRef, Operator]] = field(default_factory=list)

    def spec_of(self, ref: ProfileRef) -> Mapping[str, object] | None:
        """The settings recorded for `ref` in `specs`."""
        return self.specs.get(ref)

    def rollback(self, target: ProfileRef, *, operator: Operator, reason: str) -> RollbackDone:
        """Record the rollback (or refuse a role not in `allowed_roles`)."""
        if operator.role not in self.allowed_roles:
            self.refused.append((target, operator))
            raise RoleRefused(
                f"{operator.name} ({operator.role}) may not roll back {target.describe()}: "
                f"needs one of {', '.join(sorted(self.allowed_roles))}"
            )
        key = (target.purpose, target.scope_kind, target.scope_id)
        known = [r.version for r in self.specs if (r.purpose, r.scope_kind, r.scope_id) == key]
        known += [
            r.new_version
            for r in self.rollbacks
            if (r.target.purpose, r.target.scope_kind, r.target.scope_id) == key
        ]
        new_version = max([target.version, *known]) + 1
        self.rollbacks.append(
            RecordedRollback(
                target=target, operator=operator, reason=reason, new_version=new_version
            )
        )
        return RollbackDone(new_version=new_version, audit_id=f"audit-{len(self.rollbacks)}")
