"""The dashboard's only write: rolling a profile back, behind a small seam.

The dashboard is read-only unless it was started with an operator (`--operator NAME --role
ROLE`). A rollback then asks for confirmation and goes through a `ProfileAdmin`, which
checks the role against the scope, writes the new version and its audit entry.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from comptroller.errors import ComptrollerError
from comptroller.tui._model import Operator


class TuiError(ComptrollerError):
    """Root of the dashboard's errors::

    TuiError
    └── ReadOnly        a write was asked of a dashboard started without an operator
    """


class ReadOnly(TuiError):
    """The dashboard was started without `--operator NAME --role ROLE`."""

    exit_code = 2


@dataclass(frozen=True, kw_only=True, slots=True)
class ProfileRef:
    """One version of the profile of (scope, purpose)."""

    purpose: str
    scope_kind: str
    scope_id: str | None
    version: int

    def describe(self) -> str:
        """`reasoning @ domain:acme-eu v3`."""
        scope = self.scope_kind if not self.scope_id else f"{self.scope_kind}:{self.scope_id}"
        return f"{self.purpose} @ {scope} v{self.version}"


@dataclass(frozen=True, kw_only=True, slots=True)
class RollbackDone:
    """What a rollback produced: the version now active and the audit entry's id."""

    new_version: int
    audit_id: str


class ProfileAdmin(Protocol):
    """Reads profile versions and rolls a profile back for an operator.

    Implementations check the operator's role against the scope and leave an audit entry
    (who, when, from which version to which, why) for every rollback.
    """

    def spec_of(self, ref: ProfileRef) -> Mapping[str, object] | None:
        """The settings of one version, as JSON-like values (None if unknown)."""
        ...

    def rollback(self, target: ProfileRef, *, operator: Operator, reason: str) -> RollbackDone:
        """Make `target`'s settings active again as a new version.

        Raises:
            comptroller.errors.ComptrollerError: The role may not change that scope, or the
                version does not exist; the message says which.
        """
        ...


def require_operator(operator: Operator | None) -> Operator:
    """`operator`, or `ReadOnly` telling how to start the dashboard with write rights."""
    if operator is None:
        raise ReadOnly(
            "read-only dashboard: restart with 'comptroller tui --operator NAME --role ROLE' "
            "to roll profiles back"
        )
    return operator
