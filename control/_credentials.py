"""Write-only provider credentials, encrypted at rest with AES-GCM under a master key.

A credential belongs to a scope and a provider (and a name, `default` unless several keys
coexist): a static API key or an opaque refreshable OAuth bundle. The API sets, overwrites
(rotates) and deletes them; reading returns only *which* providers are configured. The
plaintext leaves the store through `CredentialStore.resolve_secret`, which only the call path
uses, never through a repr, a log line, an exception, an audit entry or an event.

The master key and the sealing are in `_credential_crypto`; which credential a call uses is
decided in `_credential_lookup`.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from comptroller.control._credential_crypto import (
    ENV_MASTER_KEY,
    MasterKey,
    MasterKeySource,
    _aad,
    _unseal,
    generate_master_key,
)
from comptroller.control._credential_lookup import (
    CREDENTIAL_KINDS,
    DEFAULT_NAME,
    CredentialInfo,
    CredentialKind,
    _info,
    _lookup,
    _row,
)
from comptroller.control._governance import Actor, authorize_credential_change, authorize_platform
from comptroller.control._principal import AdminRegistry
from comptroller.control._profile_errors import CredentialNotFound, MasterKeyError, PermissionDenied
from comptroller.control._profile_store import ProfileStore
from comptroller.control._profile_types import CredentialSource, ResolvedProfile
from comptroller.control._profiles import Scope
from comptroller.control._redact import Redactor, looks_like_secret
from comptroller.control._store_schema import credentials

# `comptroller.control` re-exports these from here (its import list is not this module's to move).
__all__ = [
    "ENV_MASTER_KEY",
    "CredentialInfo",
    "CredentialKind",
    "CredentialStore",
    "MasterKeySource",
    "generate_master_key",
]


def _check_provider(provider: str) -> str:
    if looks_like_secret(provider):
        # A key pasted into --provider would be stored, listed and audited in plain text.
        raise ValueError(
            f"the provider id ({len(provider)} characters, not shown) looks like a key: give "
            "the provider's name (e.g. 'openai'); the secret is read from stdin or --from-env"
        )
    if not provider or len(provider) > 100 or not all(c.isalnum() or c in "._-" for c in provider):
        # A key pasted into --provider by mistake must not be echoed back into a terminal log.
        shown = (
            repr(provider) if len(provider) <= 40 else f"({len(provider)} characters, not shown)"
        )
        raise ValueError(
            f"provider id {shown} is malformed: use the OpenTelemetry provider name "
            "(letters, digits, '.', '_', '-'), e.g. 'openai'"
        )
    return provider


class CredentialStore:
    """Write-only credentials in the profile store.

    Args:
        store: The profile store (same database, same transactions and audit log).
        master_key: Where the master key comes from.
        admins: Who is bound to which role (default: the bindings in `store`).
        redactor: Learns every secret `resolve_secret` hands out, so that the call path can
            scrub it from provider errors (default: a fresh one; share the plane's).
    """

    def __init__(
        self,
        store: ProfileStore,
        master_key: MasterKeySource,
        *,
        admins: AdminRegistry | None = None,
        redactor: Redactor | None = None,
    ) -> None:
        self._store = store
        self._keys = master_key
        self.admins = admins or AdminRegistry(store)
        """Who may write keys (the profile service shares it)."""
        self.redactor = redactor if redactor is not None else Redactor()
        self._listeners: list[Callable[[], None]] = []

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call `listener` after every committed write of this store (cache invalidation)."""
        self._listeners.append(listener)

    def _changed(self) -> None:
        for listener in self._listeners:
            listener()

    def __repr__(self) -> str:
        return f"CredentialStore({self._store!r})"

    # --- writing -------------------------------------------------------------------------
    def set(
        self,
        scope: Scope,
        provider: str,
        secret: str,
        *,
        actor: Actor,
        name: str = DEFAULT_NAME,
        kind: CredentialKind = "api_key",
        reason: str = "",
    ) -> CredentialInfo:
        """Store (or overwrite, keeping its `ref`) the secret of `provider` at `scope`.

        Raises:
            PermissionDenied: `actor` does not administer `scope`.
            MasterKeyError: No usable master key.
            ValueError: Empty secret, malformed provider, unknown kind.
        """
        _check_provider(provider)
        if kind not in CREDENTIAL_KINDS:
            raise ValueError(f"credential kind must be one of {CREDENTIAL_KINDS}, got {kind!r}")
        if not secret.strip():
            raise ValueError(f"the secret for provider {provider!r} at {scope} is empty")
        key = self._keys.load()
        plaintext = secret.encode("utf-8")

        def work(connection: Connection) -> CredentialInfo:
            self._authorize(connection, actor, scope)
            now = self._store.clock()
            row = _row(connection, scope, provider, name)
            ref = row["ref"] if row is not None else f"cred_{secrets.token_hex(12)}"
            nonce, sealed = key.seal(plaintext, _aad(ref, scope.kind, scope.id, provider, kind))
            values = {
                "kind": kind,
                "key_id": key.key_id,
                "nonce": nonce,
                "ciphertext": sealed,
                "updated_at": now,
                "updated_by": actor.name,
            }
            if row is None:
                connection.execute(
                    credentials.insert().values(
                        ref=ref,
                        scope_kind=scope.kind,
                        scope_id=scope.id,
                        scope_org=scope.org,
                        provider=provider,
                        name=name,
                        created_at=now,
                        **values,
                    )
                )
            else:
                connection.execute(
                    credentials.update().where(credentials.c.ref == ref).values(**values)
                )
            self._store.add_audit(
                connection,
                actor=actor.name,
                role=actor.role,
                action="credential_set",
                scope=scope,
                purpose=None,
                version=None,
                before={"ref": ref, "provider": provider, "name": name} if row else None,
                after={
                    "ref": ref,
                    "provider": provider,
                    "name": name,
                    "kind": kind,
                    "key_id": key.key_id,
                },
                reason=reason or ("rotated" if row else "created"),
            )
            found = _row(connection, scope, provider, name)
            assert found is not None
            return _info(found)

        detail = {"provider": provider, "name": name, "kind": kind}
        info = self._refusable(actor, "credential_set", scope, detail, work)
        self._changed()
        return info

    def delete(
        self,
        scope: Scope,
        provider: str,
        *,
        actor: Actor,
        name: str = DEFAULT_NAME,
        reason: str = "",
    ) -> CredentialInfo:
        """Delete the credential of `provider` at `scope`.

        Raises:
            CredentialNotFound: Nothing stored there.
            PermissionDenied: `actor` does not administer `scope`.
        """

        def work(connection: Connection) -> CredentialInfo:
            self._authorize(connection, actor, scope)
            row = _row(connection, scope, provider, name)
            if row is None:
                raise CredentialNotFound(
                    f"no credential {name!r} for provider {provider!r} at {scope}; "
                    f"`comptroller credentials list` shows what is configured"
                )
            info = _info(row)
            connection.execute(credentials.delete().where(credentials.c.ref == info.ref))
            self._store.add_audit(
                connection,
                actor=actor.name,
                role=actor.role,
                action="credential_delete",
                scope=scope,
                purpose=None,
                version=None,
                before={"ref": info.ref, "provider": provider, "name": name, "kind": info.kind},
                after=None,
                reason=reason or "deleted",
            )
            return info

        detail = {"provider": provider, "name": name}
        deleted = self._refusable(actor, "credential_delete", scope, detail, work)
        self._changed()
        return deleted

    def rotate_master_key(self, *, actor: Actor, new_key: str | None = None) -> int:
        """Re-encrypt every credential under a new master key; returns how many.

        With a key file, a new key is generated (or `new_key` used), staged beside the file,
        every row re-sealed in one transaction, then the file replaced. With
        `COMPTROLLER_MASTER_KEY`, pass `new_key` and then set the variable to it.

        Raises:
            PermissionDenied: Not the platform role.
            MasterKeyError: `COMPTROLLER_MASTER_KEY` is in use and no `new_key` was given.
            CredentialDecryptError: A row does not open under the current key.
        """
        try:
            authorize_platform(actor, "rotate the master key")
            with self._store.reading() as connection:
                self.admins.require_bound(connection, actor)
        except PermissionDenied as exc:
            self.admins.record_refusal(
                actor,
                attempted="master_key_rotated",
                scope=Scope.global_(),
                purpose=None,
                reason=str(exc),
            )
            raise
        if self._keys.from_environment and new_key is None:
            raise MasterKeyError(
                f"the master key comes from {ENV_MASTER_KEY}: pass the new key (e.g. "
                "`comptroller credentials rotate-master-key --new-key-env NEW_KEY`), "
                f"then set {ENV_MASTER_KEY} to it"
            )
        old = self._keys.load()
        text = new_key if new_key is not None else generate_master_key()
        fresh = MasterKey(text, origin="the new master key")
        if not self._keys.from_environment:
            self._keys.stage(text)
        keyring = self._keys.keyring(old)

        def work(connection: Connection) -> int:
            rows = connection.execute(sa.select(credentials)).mappings().all()
            for row in rows:
                aad = _aad(
                    row["ref"], row["scope_kind"], row["scope_id"], row["provider"], row["kind"]
                )
                plaintext = _unseal(keyring, row, aad)
                nonce, sealed = fresh.seal(plaintext, aad)
                connection.execute(
                    credentials.update()
                    .where(credentials.c.ref == row["ref"])
                    .values(key_id=fresh.key_id, nonce=nonce, ciphertext=sealed)
                )
            self._store.add_audit(
                connection,
                actor=actor.name,
                role=actor.role,
                action="master_key_rotated",
                scope=Scope.global_(),
                purpose=None,
                version=None,
                before={"key_id": old.key_id},
                after={"key_id": fresh.key_id, "credentials": len(rows)},
                reason="master key rotated",
            )
            return len(rows)

        count = self._store.write(work)
        if not self._keys.from_environment:
            self._keys.install(text)
        self._changed()
        return count

    # --- reading -------------------------------------------------------------------------
    def list(self, scope: Scope | None = None) -> list[CredentialInfo]:
        """Every credential (of one scope), without secrets."""
        query = sa.select(credentials).order_by(
            credentials.c.scope_kind,
            credentials.c.scope_id,
            credentials.c.provider,
            credentials.c.name,
        )
        if scope is not None:
            query = query.where(
                credentials.c.scope_kind == scope.kind, credentials.c.scope_id == scope.id
            )
        with self._store.reading() as connection:
            return [_info(row) for row in connection.execute(query).mappings().all()]

    def configured_providers(self, scope: Scope) -> dict[str, bool]:
        """`{"openai": True, …}`: which providers have a credential at exactly `scope`."""
        return {info.provider: True for info in self.list(scope)}

    def find(
        self,
        provider: str,
        *,
        source: CredentialSource,
        ref: str | None,
        domain: str | None,
        org: str | None,
        connection: Connection | None = None,
    ) -> CredentialInfo | None:
        """The credential a call at (domain, org) would use for `provider`, without opening it.

        A `ref` naming a credential of `provider` in the call's chain wins; otherwise
        `managed` looks at the global scope, `byo` at the domain then the org. Pass
        `connection` to read inside a write transaction.
        """
        with self._connection(connection) as con:
            row = _lookup(con, provider, source=source, ref=ref, domain=domain, org=org)
        return _info(row) if row is not None else None

    def get_info(self, ref: str, *, connection: Connection | None = None) -> CredentialInfo | None:
        """The credential with `ref`, without its secret."""
        with self._connection(connection) as con:
            row = (
                con.execute(sa.select(credentials).where(credentials.c.ref == ref))
                .mappings()
                .first()
            )
        return _info(row) if row is not None else None

    @contextmanager
    def _connection(self, connection: Connection | None) -> Iterator[Connection]:
        if connection is not None:
            yield connection
        else:
            with self._store.reading() as reader:
                yield reader

    def resolve_secret(
        self,
        profile: ResolvedProfile,
        *,
        domain: str | None,
        org: str | None,
        provider: str | None = None,
    ) -> str | None:
        """The plaintext secret a call needs — for the call path only; never log it.

        Args:
            profile: The resolved profile of the call.
            domain: The call's domain.
            org: The call's org.
            provider: The provider of the model being called (a fallback's); default: the
                profile's primary model's provider.

        Returns:
            The secret, or None when the scope has no credential for the provider (for a
            keyless provider that is expected).

        Raises:
            CredentialDecryptError: The stored secret does not open under the master key.
            MasterKeyError: No usable master key.
        """
        wanted = provider or profile.model.provider
        with self._store.reading() as connection:
            row = _lookup(
                connection,
                wanted,
                source=profile.credential_source,
                ref=profile.credential_ref,
                domain=domain,
                org=org,
            )
        if row is None:
            return None
        key = self._keys.load(create=False)
        keyring = self._keys.keyring(key)
        aad = _aad(row["ref"], row["scope_kind"], row["scope_id"], row["provider"], row["kind"])
        secret = _unseal(keyring, row, aad).decode("utf-8")
        self.redactor.add(secret)  # before it leaves: a provider may echo it in an error
        return secret

    # --- internals -----------------------------------------------------------------------
    def _refusable(
        self,
        actor: Actor,
        attempted: str,
        scope: Scope,
        detail: Mapping[str, Any],
        work: Callable[[Connection], CredentialInfo],
    ) -> CredentialInfo:
        try:
            return self._store.write(work)
        except PermissionDenied as exc:
            # The refusal rolled its transaction back: audit it in a transaction of its own.
            self.admins.record_refusal(
                actor,
                attempted=attempted,
                scope=scope,
                purpose=None,
                reason=str(exc),
                detail=detail,
            )
            raise

    def _authorize(self, connection: Connection, actor: Actor, scope: Scope) -> None:
        self.admins.require_bound(connection, actor)
        recorded = (
            self._store.recorded_org(connection, scope.id) if scope.kind == "domain" else None
        )
        authorize_credential_change(actor, scope, recorded_org=recorded)
