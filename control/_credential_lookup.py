"""Finding a stored credential: what may be read about it, and the chain of scopes a call
draws its credential from (an explicit ref, else `managed` → global, `byo` → domain then org).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, TypeAlias

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from comptroller.control._profile_types import CredentialSource
from comptroller.control._profiles import Scope
from comptroller.control._provider_names import provider_names
from comptroller.control._store_rows import _aware, _scope
from comptroller.control._store_schema import credentials

CredentialKind: TypeAlias = Literal["api_key", "oauth"]
CREDENTIAL_KINDS: tuple[CredentialKind, ...] = ("api_key", "oauth")
DEFAULT_NAME = "default"


@dataclass(frozen=True, kw_only=True, slots=True)
class CredentialInfo:
    """What may be read about a stored credential: everything but the secret."""

    ref: str
    """Stable reference (profiles point at it); unchanged when the secret is rotated."""
    scope: Scope
    provider: str
    name: str
    kind: CredentialKind
    key_id: str
    """Id of the master key that seals it."""
    created_at: datetime
    updated_at: datetime
    updated_by: str
    revision: str = ""
    """Changes with every write of the secret (a set, a rotation, an OAuth refresh), even
    within one clock tick: what cached models are keyed on."""

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (for `credentials list --json`)."""
        return {
            "ref": self.ref,
            "scope": str(self.scope),
            "provider": self.provider,
            "name": self.name,
            "kind": self.kind,
            "key_id": self.key_id,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "updated_by": self.updated_by,
        }


def _info(row: Mapping[Any, Any]) -> CredentialInfo:
    return CredentialInfo(
        ref=row["ref"],
        scope=_scope(row["scope_kind"], row["scope_id"], row["scope_org"]),
        provider=row["provider"],
        name=row["name"],
        kind=row["kind"],
        key_id=row["key_id"],
        created_at=_aware(row["created_at"]),
        updated_at=_aware(row["updated_at"]),
        updated_by=row["updated_by"],
        # Every seal draws a fresh nonce, so its digest tells two writes apart.
        revision=hashlib.sha256(bytes(row["nonce"])).hexdigest()[:12],
    )


def credential_chain(domain: str | None, org: str | None) -> tuple[tuple[str, str], ...]:
    """(scope kind, scope id) of every credential a call at (domain, org) may use."""
    chain: list[tuple[str, str]] = []
    if domain:
        chain.append(("domain", domain))
    if org:
        chain.append(("org", org))
    chain.append(("global", ""))
    return tuple(chain)


def _row(
    connection: Connection, scope: Scope, provider: str, name: str
) -> Mapping[Any, Any] | None:
    """The row of the credential `name` of `provider` at exactly `scope`."""
    return (
        connection.execute(
            sa.select(credentials).where(
                credentials.c.scope_kind == scope.kind,
                credentials.c.scope_id == scope.id,
                credentials.c.provider == provider,
                credentials.c.name == name,
            )
        )
        .mappings()
        .first()
    )


def _lookup(
    connection: Connection,
    provider: str,
    *,
    source: CredentialSource,
    ref: str | None,
    domain: str | None,
    org: str | None,
) -> Mapping[Any, Any] | None:
    """The row a call at (domain, org) would use for `provider` (see `CredentialStore.find`).

    A provider's other names find its credentials too (a key stored for `google` serves a
    `gcp.gemini` profile): the canonical name first.
    """
    names = provider_names(provider)
    if ref is not None:
        named = (
            connection.execute(sa.select(credentials).where(credentials.c.ref == ref))
            .mappings()
            .first()
        )
        # A ref only counts inside the call's own chain: never another scope's key.
        if (
            named is not None
            and named["provider"] in names
            and (named["scope_kind"], named["scope_id"]) in credential_chain(domain, org)
        ):
            return named
    if source == "managed":
        chain = [Scope.global_()]
    else:
        chain = []
        if domain:
            chain.append(Scope.of_domain(domain, org=org))
        if org:
            chain.append(Scope.of_org(org))
    for scope in chain:
        for name in names:
            row = _row(connection, scope, name, DEFAULT_NAME)
            if row is not None:
                return row
    return None
