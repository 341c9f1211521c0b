"""Who is acting, proven: admin bindings, admin tokens, and the OS identity of the caller.

A role is never a claim. An `Actor` (name, role, scope) may change profiles or credentials
only when the profile store holds a *binding* of exactly that name, role and scope
(`comptroller_admins`); every write re-checks it inside its own transaction, so a revoked
grant takes effect at once. The name itself is proven at the edge:

- the CLI takes it from the operating system (`os_identity()`: the user of the process's
  real uid), never from the command line;
- or from an admin token (`AdminRegistry.verify_token`), which only a bound platform admin can
  mint. Only a SHA-256 of each token's secret is stored, so reading the table mints nothing,
  and a token dies with its grant, on revocation or at its expiry.

Bootstrap: `AdminRegistry.init(identity)` binds the first platform admin and is refused once
one exists; the CLI's `comptroller admin init` binds the OS user who owns the data directory.
Refused changes are written to the audit log as `refused` entries (who, what, why).

This module holds the registry and its tokens; the grants and the per-write check are in
`_admin_grants`, the OS identity in `_os_identity`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import cast

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from comptroller.control._admin_grants import _AdminGrants, _key
from comptroller.control._governance import Actor, Role
from comptroller.control._profile_errors import PermissionDenied
from comptroller.control._profile_store import ProfileStore
from comptroller.control._profiles import Scope
from comptroller.control._store_rows import _aware
from comptroller.control._store_schema import admin_tokens

TOKEN_PREFIX = "cta"
"""Admin tokens read `cta_<token id>_<secret>`: the prefix lets secret scanners find them."""
MAX_TOKEN_TTL = timedelta(days=90)


def _hash(secret: str) -> str:
    return hashlib.sha256(("comptroller-admin-token:" + secret).encode()).hexdigest()


class AdminRegistry(_AdminGrants):
    """Admin bindings and tokens in the profile store, and the audit of refusals.

    Args:
        store: The profile store (same database, transactions and audit log).
        clock: UTC wall clock for grants and token expiry (default: the store's).
        token_bytes: Source of token randomness (injectable for tests).
    """

    def __init__(
        self,
        store: ProfileStore,
        *,
        clock: Callable[[], datetime] | None = None,
        token_bytes: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        super().__init__(store, clock=clock)
        self._token_bytes = token_bytes

    def __repr__(self) -> str:
        return f"AdminRegistry({self._store!r})"

    # --- tokens ----------------------------------------------------------------------------
    def mint_token(self, target: Actor, *, by: Actor, ttl: timedelta) -> str:
        """A new admin token that proves `target` (which must be bound already).

        The token is shown once: only a hash of its secret is stored.

        Raises:
            PermissionDenied: `by` is not a bound platform admin, or `target` is not bound.
            ValueError: `ttl` is not positive or longer than `MAX_TOKEN_TTL`.
        """
        if ttl <= timedelta(0) or ttl > MAX_TOKEN_TTL:
            raise ValueError(f"a token's lifetime must be positive and at most {MAX_TOKEN_TTL}")
        token_id = self._token_bytes(8).hex()
        secret = self._token_bytes(32).hex()

        def work(connection: Connection) -> str:
            self._require_platform(connection, by, f"mint a token for {target.describe()}")
            self.require_bound(connection, target)
            now = self._clock()
            identity, role, org, domain = _key(target)
            connection.execute(
                admin_tokens.insert().values(
                    token_id=token_id,
                    secret_hash=_hash(secret),
                    identity=identity,
                    role=role,
                    org=org,
                    domain=domain,
                    minted_by=by.name,
                    minted_at=now,
                    expires_at=now + ttl,
                    revoked_at=None,
                )
            )
            self._audit(
                connection,
                by,
                "token_mint",
                target,
                f"token {token_id} for {target.describe()}, expires {(now + ttl).isoformat()}",
            )
            return f"{TOKEN_PREFIX}_{token_id}_{secret}"

        return self._refusable(by, "token_mint", target, lambda: self._store.write(work))

    def verify_token(self, token: str, *, presented_by: str | None = None) -> Actor:
        """The actor a token proves, if it is genuine, unexpired, unrevoked and still granted.

        Args:
            token: The token text.
            presented_by: Who presented it (the OS identity): a refusal is audited under it.

        Raises:
            PermissionDenied: Malformed, unknown, altered, expired or revoked token, or its
                grant was revoked. The message never repeats the token.
        """
        try:
            return self._verify(token.strip())
        except PermissionDenied as exc:
            if presented_by is not None:
                self.record_refusal(
                    Actor.platform(presented_by),
                    attempted="present_token",
                    scope=Scope.global_(),
                    purpose=None,
                    reason=str(exc),
                    role="token",
                )
            raise

    def _verify(self, token: str) -> Actor:
        prefix, _, rest = token.partition("_")
        token_id, _, secret = rest.partition("_")
        invalid = PermissionDenied(
            "the admin token is not valid (malformed, unknown or altered); ask a platform "
            "admin for a new one (`comptroller admin token mint`)"
        )
        if prefix != TOKEN_PREFIX or not token_id or not secret:
            raise invalid
        with self._store.reading() as connection:
            row = (
                connection.execute(
                    sa.select(admin_tokens).where(admin_tokens.c.token_id == token_id)
                )
                .mappings()
                .first()
            )
            if row is None or not hmac.compare_digest(row["secret_hash"], _hash(secret)):
                raise invalid
            if row["revoked_at"] is not None:
                raise PermissionDenied(
                    f"admin token {token_id} was revoked; ask a platform admin for a new one"
                )
            expires = _aware(row["expires_at"])
            if self._clock() >= expires:
                raise PermissionDenied(
                    f"admin token {token_id} expired at {expires.isoformat()}; ask a platform "
                    "admin for a new one"
                )
            actor = Actor(
                name=row["identity"],
                role=cast(Role, row["role"]),
                org=row["org"] or None,
                domain=row["domain"] or None,
            )
            try:
                self.require_bound(connection, actor)
            except PermissionDenied:
                raise PermissionDenied(
                    f"admin token {token_id} proves {actor.describe()}, whose grant was "
                    "revoked; the token no longer works"
                ) from None
        return actor

    def revoke_token(self, token_id: str, *, by: Actor, reason: str = "") -> None:
        """Revoke one token by its id (the part after `cta_`).

        Raises:
            PermissionDenied: `by` is not a bound platform admin, or no such token.
        """

        def work(connection: Connection) -> None:
            self._require_platform(connection, by, f"revoke admin token {token_id}")
            row = (
                connection.execute(
                    sa.select(admin_tokens).where(admin_tokens.c.token_id == token_id)
                )
                .mappings()
                .first()
            )
            if row is None:
                raise PermissionDenied(f"no admin token {token_id}")
            connection.execute(
                admin_tokens.update()
                .where(admin_tokens.c.token_id == token_id)
                .values(revoked_at=self._clock())
            )
            target = Actor(
                name=row["identity"],
                role=cast(Role, row["role"]),
                org=row["org"] or None,
                domain=row["domain"] or None,
            )
            self._audit(connection, by, "token_revoke", target, reason or f"token {token_id}")

        self._refusable(
            by, "token_revoke", Actor.platform(by.name), lambda: self._store.write(work)
        )
