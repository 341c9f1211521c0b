"""Admin grants: who is bound to which role and scope, the check every write makes, and the
audit of refused changes. Tokens that prove a bound identity are in `_principal`."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar, cast

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from comptroller.control._governance import ROLES, Actor, Role
from comptroller.control._os_identity import os_identity
from comptroller.control._profile_errors import PermissionDenied
from comptroller.control._profile_store import ProfileStore
from comptroller.control._profiles import AuditAction, Scope
from comptroller.control._store_rows import _aware
from comptroller.control._store_schema import admins

_log = logging.getLogger("comptroller.control.profiles")
T = TypeVar("T")


@dataclass(frozen=True, kw_only=True, slots=True)
class Binding:
    """One grant: `identity` holds `role` (of `org` / `domain`)."""

    identity: str
    role: Role
    org: str | None
    domain: str | None
    granted_by: str
    granted_at: datetime

    def actor(self) -> Actor:
        """The actor this binding lets its identity act as."""
        return Actor(name=self.identity, role=self.role, org=self.org, domain=self.domain)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (for `admin list --json`)."""
        return {
            "identity": self.identity,
            "role": self.role,
            "org": self.org,
            "domain": self.domain,
            "granted_by": self.granted_by,
            "granted_at": self.granted_at.isoformat(),
        }


def _binding_scope(role: str, org: str | None, domain: str | None) -> Scope:
    if role == "domain_admin" and domain:
        return Scope.of_domain(domain, org=org)
    if role == "org_admin" and org:
        return Scope.of_org(org)
    return Scope.global_()


def _binding(row: Mapping[Any, Any]) -> Binding:
    return Binding(
        identity=row["identity"],
        role=cast(Role, row["role"]),
        org=row["org"] or None,
        domain=row["domain"] or None,
        granted_by=row["granted_by"],
        granted_at=_aware(row["granted_at"]),
    )


def _key(actor: Actor) -> tuple[str, str, str, str]:
    # The platform role has no scope: whatever org/domain an actor object carries is ignored.
    if actor.role == "platform":
        return actor.name, "platform", "", ""
    if actor.role == "org_admin":
        return actor.name, actor.role, actor.org or "", ""
    return actor.name, actor.role, actor.org or "", actor.domain or ""


def _grant_hint(actor: Actor) -> str:
    where = ""
    if actor.role == "org_admin":
        where = f" --org {actor.org}"
    elif actor.role == "domain_admin":
        where = f" --domain {actor.domain}" + (f" --org {actor.org}" if actor.org else "")
    return f"`comptroller admin grant {actor.name} --role {actor.role}{where}`"


class _AdminGrants:
    """Admin bindings in the profile store, the check of every write, and refusal audit.

    Args:
        store: The profile store (same database, transactions and audit log).
        clock: UTC wall clock for grants (default: the store's).
    """

    def __init__(self, store: ProfileStore, *, clock: Callable[[], datetime] | None) -> None:
        self._store = store
        self._clock = clock or store.clock

    # --- checks used by every write -------------------------------------------------------
    def require_bound(self, connection: Connection, actor: Actor) -> None:
        """Refuse unless the store binds `actor`'s name to its role and scope.

        Raises:
            PermissionDenied: Naming the grant that would be needed (or the bootstrap).
        """
        identity, role, org, domain = _key(actor)
        row = connection.execute(
            sa.select(admins.c.id).where(
                admins.c.identity == identity,
                admins.c.role == role,
                admins.c.org == org,
                admins.c.domain == domain,
            )
        ).first()
        if row is not None:
            return
        anyone = connection.execute(
            sa.select(admins.c.id).where(admins.c.role == "platform").limit(1)
        ).first()
        if anyone is None:
            raise PermissionDenied(
                f"{actor.describe()} is not an admin of this profile store: no platform admin "
                "is bound yet. The OS user who owns the data directory runs "
                "`comptroller admin init` (see docs/SECURITY.md)"
            )
        raise PermissionDenied(
            f"{actor.describe()} is not an admin of this profile store: roles are granted, "
            f"not claimed; a platform admin runs {_grant_hint(actor)}"
        )

    def record_refusal(
        self,
        actor: Actor,
        *,
        attempted: str,
        scope: Scope,
        purpose: str | None,
        reason: str,
        detail: Mapping[str, Any] | None = None,
        role: str | None = None,
    ) -> None:
        """Write a `refused` audit entry: who tried what, and why it was refused.

        `role` overrides the actor's role in the entry (`token` for a refused token, whose
        presenter asked for no role). Never raises: the refusal itself is what the caller
        reports.
        """
        after: dict[str, Any] = {"attempted": attempted, **(detail or {})}

        def work(connection: Connection) -> None:
            self._store.add_audit(
                connection,
                actor=actor.name,
                role=role or actor.role,
                action="refused",
                scope=scope,
                purpose=purpose,
                version=None,
                before=None,
                after=after,
                reason=reason,
            )

        try:
            self._store.write(work)
        except Exception as exc:
            _log.warning("refused %s by %s not audited (%s)", attempted, actor.name, exc)

    # --- bindings --------------------------------------------------------------------------
    def init(self, identity: str) -> Actor:
        """Bind `identity` as the first platform admin.

        The CLI (`comptroller admin init`) calls it for the OS user who owns the data
        directory; a program that creates its own store calls it for itself.

        Raises:
            PermissionDenied: A platform admin is bound already (they grant further roles).
        """
        actor = Actor.platform(identity)

        def work(connection: Connection) -> None:
            first = connection.execute(
                sa.select(admins.c.identity).where(admins.c.role == "platform").limit(1)
            ).first()
            if first is not None:
                raise PermissionDenied(
                    f"this profile store has a platform admin already ({first[0]}); ask one "
                    f"to run `comptroller admin grant {identity} --role platform`"
                )
            self._insert(connection, actor, granted_by=identity)
            self._audit(connection, actor, "admin_init", actor, "first platform admin")

        self._refusable(actor, "admin_init", actor, lambda: self._store.write(work))
        return actor

    def grant(self, target: Actor, *, by: Actor, reason: str = "") -> Binding:
        """Bind `target`'s name to its role and scope (idempotent).

        Raises:
            PermissionDenied: `by` is not a bound platform admin (audited as refused).
        """

        def work(connection: Connection) -> Binding:
            self._require_platform(connection, by, f"grant {target.describe()}")
            existing = self._find(connection, target)
            if existing is not None:
                return existing
            binding = self._insert(connection, target, granted_by=by.name)
            self._audit(connection, by, "admin_grant", target, reason or "granted")
            return binding

        return self._refusable(by, "admin_grant", target, lambda: self._store.write(work))

    def revoke(self, target: Actor, *, by: Actor, reason: str = "") -> Binding:
        """Remove the binding of `target` (its tokens stop working with it).

        Raises:
            PermissionDenied: `by` is not a bound platform admin, the binding does not
                exist, or it is the last platform admin's.
        """

        def work(connection: Connection) -> Binding:
            self._require_platform(connection, by, f"revoke {target.describe()}")
            existing = self._find(connection, target)
            if existing is None:
                raise PermissionDenied(
                    f"{target.describe()} holds no such grant; `comptroller admin list` "
                    "shows the grants"
                )
            if target.role == "platform":
                count = connection.execute(
                    sa.select(sa.func.count()).where(admins.c.role == "platform")
                ).scalar_one()
                if int(count) <= 1:
                    raise PermissionDenied(
                        f"{target.name} is the last platform admin: grant the platform role "
                        "to someone else first"
                    )
            identity, role, org, domain = _key(target)
            connection.execute(
                admins.delete().where(
                    admins.c.identity == identity,
                    admins.c.role == role,
                    admins.c.org == org,
                    admins.c.domain == domain,
                )
            )
            self._audit(connection, by, "admin_revoke", target, reason or "revoked")
            return existing

        return self._refusable(by, "admin_revoke", target, lambda: self._store.write(work))

    def bindings(self) -> list[Binding]:
        """Every binding, by identity."""
        query = sa.select(admins).order_by(admins.c.identity, admins.c.role, admins.c.id)
        with self._store.reading() as connection:
            return [_binding(row) for row in connection.execute(query).mappings().all()]

    def bindings_of(self, identity: str) -> list[Binding]:
        """The bindings of one identity (platform first)."""
        found = [b for b in self.bindings() if b.identity == identity]
        return sorted(found, key=lambda b: ROLES.index(b.role))

    def act_as(
        self,
        identity: str,
        *,
        role: Role | None = None,
        org: str | None = None,
        domain: str | None = None,
    ) -> Actor:
        """The actor `identity` acts as: its grant that matches what is asked (with nothing
        asked: its platform grant, else its first).

        Without a matching grant it is the actor as asked, which every write refuses and
        audits: a refusal of `anyone (platform)` is worth recording.

        Raises:
            ValueError: No grant matches, and what is asked is malformed (an `org_admin`
                without its org, a `domain_admin` without its domain).
        """
        wanted = role or ("domain_admin" if domain else "org_admin" if org else None)
        for binding in self.bindings_of(identity):
            if (
                (wanted is None or binding.role == wanted)
                and (org is None or binding.org == org)
                and (domain is None or binding.domain == domain)
            ):
                return binding.actor()
        return Actor(name=identity, role=wanted or "platform", org=org, domain=domain)

    def os_principal(
        self, *, role: Role | None = None, org: str | None = None, domain: str | None = None
    ) -> Actor:
        """The actor of the OS user running this process (see `act_as`): the principal a
        program on an operator's account uses."""
        return self.act_as(os_identity(), role=role, org=org, domain=domain)

    # --- internals -------------------------------------------------------------------------
    def _refusable(self, by: Actor, attempted: str, target: Actor, run: Callable[[], T]) -> T:
        try:
            return run()
        except PermissionDenied as exc:
            self.record_refusal(
                by,
                attempted=attempted,
                scope=_binding_scope(target.role, target.org, target.domain),
                purpose=None,
                reason=str(exc),
                detail={"target": target.describe()},
            )
            raise

    def _require_platform(self, connection: Connection, actor: Actor, action: str) -> None:
        if actor.role != "platform":
            raise PermissionDenied(
                f"{actor.describe()} may not {action}: that needs the platform role"
            )
        self.require_bound(connection, actor)

    @staticmethod
    def _find(connection: Connection, actor: Actor) -> Binding | None:
        identity, role, org, domain = _key(actor)
        row = (
            connection.execute(
                sa.select(admins).where(
                    admins.c.identity == identity,
                    admins.c.role == role,
                    admins.c.org == org,
                    admins.c.domain == domain,
                )
            )
            .mappings()
            .first()
        )
        return _binding(row) if row is not None else None

    def _insert(self, connection: Connection, actor: Actor, *, granted_by: str) -> Binding:
        identity, role, org, domain = _key(actor)
        now = self._clock()
        connection.execute(
            admins.insert().values(
                identity=identity,
                role=role,
                org=org,
                domain=domain,
                granted_by=granted_by,
                granted_at=now,
            )
        )
        return Binding(
            identity=identity,
            role=cast(Role, role),
            org=org or None,
            domain=domain or None,
            granted_by=granted_by,
            granted_at=now,
        )

    def _audit(
        self, connection: Connection, by: Actor, action: AuditAction, target: Actor, reason: str
    ) -> None:
        identity, role, org, domain = _key(target)
        self._store.add_audit(
            connection,
            actor=by.name,
            role=by.role,
            action=action,
            scope=_binding_scope(target.role, target.org, target.domain),
            purpose=None,
            version=None,
            before=None,
            after={
                "identity": identity,
                "role": role,
                "org": org or None,
                "domain": domain or None,
            },
            reason=reason,
        )
