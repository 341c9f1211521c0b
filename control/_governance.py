"""Who may change what: actors, roles, and the one place where they are checked.

Roles:

- `platform`: every scope, every purpose, any model (still validated).
- `org_admin` of an org: that org's scope and the domains of that org; not `locked`
  purposes; for `operator_allowed` purposes only platform-approved models.
- `domain_admin` of a domain: that domain's scope only, with the same purpose rules.

Nobody but the platform writes the global scope, and nobody writes another org's profiles.

An `Actor` names who acts and in which role; it is a principal, not a claim: every write
first checks that the store grants exactly that name, role and scope (`_principal`), and
the CLI takes the name from the OS user or an admin token, never from an option.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeAlias

from comptroller.control._profile_errors import ModelNotApproved, PermissionDenied
from comptroller.control._profiles import ProfileSpec, Scope
from comptroller.control._purposes import Purpose

Role: TypeAlias = Literal["platform", "org_admin", "domain_admin"]
ROLES: tuple[Role, ...] = ("platform", "org_admin", "domain_admin")


@dataclass(frozen=True, kw_only=True, slots=True)
class Actor:
    """The person or system making a change, with the role it acts in (the principal).

    Writes refuse an actor unless the profile store grants exactly its name, role and
    scope (`comptroller admin grant`, `AdminRegistry.grant`).

    Example:
        >>> Actor(name="alice", role="org_admin", org="acme")
        Actor(name='alice', role='org_admin', org='acme', domain=None)
    """

    name: str
    role: Role
    org: str | None = None
    """The org an `org_admin` administers (and a `domain_admin`'s org, when known)."""
    domain: str | None = None
    """The domain a `domain_admin` administers."""

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("an actor needs a name (it is written to the audit log)")
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, got {self.role!r}")
        if self.role == "org_admin" and not self.org:
            raise ValueError("an org_admin actor needs the org it administers")
        if self.role == "domain_admin" and not self.domain:
            raise ValueError("a domain_admin actor needs the domain it administers")

    @classmethod
    def platform(cls, name: str) -> Actor:
        """An actor with the platform role."""
        return cls(name=name, role="platform")

    def describe(self) -> str:
        """`alice (org_admin of org:acme)`, for messages and the audit log."""
        if self.role == "org_admin":
            return f"{self.name} (org_admin of org:{self.org})"
        if self.role == "domain_admin":
            return f"{self.name} (domain_admin of domain:{self.domain})"
        return f"{self.name} (platform)"


def check_scope(actor: Actor, scope: Scope, *, recorded_org: str | None = None) -> None:
    """Refuse unless `actor` administers `scope`.

    Args:
        actor: Who makes the change.
        scope: Where the change applies.
        recorded_org: For a domain, the org the store already knows it belongs to ("" for
            none, None when the domain is new); a write naming another org is refused, so
            nobody claims another org's domain.

    Raises:
        PermissionDenied: Naming the actor, the scope and the role that would be needed.
    """
    if scope.kind == "domain" and recorded_org is not None and (scope.org or "") != recorded_org:
        owner = f"org:{recorded_org}" if recorded_org else "no org"
        named = f"org:{scope.org}" if scope.org else "no org"
        hint = f"name its org (--org {recorded_org})" if recorded_org else "name no org"
        raise PermissionDenied(f"domain:{scope.id} belongs to {owner}, not {named}; {hint}")
    if actor.role == "platform":
        return
    if scope.kind == "global":
        raise PermissionDenied(
            f"{actor.describe()} may not change the global scope: that needs the platform role"
        )
    if actor.role == "org_admin":
        allowed = (scope.kind == "org" and scope.id == actor.org) or (
            scope.kind == "domain" and scope.org is not None and scope.org == actor.org
        )
    else:
        allowed = scope.kind == "domain" and scope.id == actor.domain
        if allowed and actor.org is not None and scope.org not in (None, actor.org):
            allowed = False
    if not allowed:
        raise PermissionDenied(
            f"{actor.describe()} may not change {scope}"
            + (f" of org:{scope.org}" if scope.kind == "domain" and scope.org else "")
            + ": an admin may change only their own scope (or the platform role)"
        )


def authorize_profile_change(
    actor: Actor,
    scope: Scope,
    purpose: Purpose,
    spec: ProfileSpec,
    *,
    recorded_org: str | None = None,
) -> None:
    """Refuse unless `actor` may make `scope` use `spec` for `purpose`.

    Raises:
        PermissionDenied: Wrong scope, or a `locked` purpose changed below the platform role.
        ModelNotApproved: An `operator_allowed` purpose set to a model the platform has not
            approved for it.
    """
    check_scope(actor, scope, recorded_org=recorded_org)
    if actor.role == "platform" or purpose.override == "open":
        return
    if purpose.override == "locked":
        raise PermissionDenied(
            f"purpose {purpose.key!r} is locked: only the platform role changes its profile "
            f"({actor.describe()} tried at {scope})"
        )
    refused = [ref for ref in spec.models() if ref not in purpose.approved_models]
    if refused:
        approved = ", ".join(sorted(str(ref) for ref in purpose.approved_models)) or "none"
        raise ModelNotApproved(
            f"{', '.join(str(ref) for ref in refused)} is not approved for purpose "
            f"{purpose.key!r} (operator_allowed); approved: {approved}. Ask the platform to "
            f"approve it under [control.purposes.{purpose.key}] approved_models"
        )


def authorize_credential_change(
    actor: Actor, scope: Scope, *, recorded_org: str | None = None
) -> None:
    """Refuse unless `actor` may set or delete credentials of `scope`.

    Raises:
        PermissionDenied: The actor does not administer `scope`.
    """
    check_scope(actor, scope, recorded_org=recorded_org)


def authorize_platform(actor: Actor, action: str) -> None:
    """Refuse unless `actor` has the platform role (e.g. to rotate the master key).

    Raises:
        PermissionDenied: Naming the action and the role needed.
    """
    if actor.role != "platform":
        raise PermissionDenied(f"{actor.describe()} may not {action}: that needs the platform role")
