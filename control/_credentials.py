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

import dataclasses
import logging
import secrets
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
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
from comptroller.control._oauth import (
    CredentialRefreshFailed,
    OAuthBundle,
    OAuthNotAllowed,
    ProcessRefreshLock,
    RefreshLocks,
    fingerprint,
    refresh_grant,
)
from comptroller.control._principal import AdminRegistry
from comptroller.control._profile_errors import (
    CredentialError,
    CredentialNotFound,
    MasterKeyError,
    PermissionDenied,
)
from comptroller.control._profile_store import ProfileStore
from comptroller.control._profile_types import CredentialSource, ResolvedProfile
from comptroller.control._profiles import Scope
from comptroller.control._provider_names import canonical_provider, provider_names
from comptroller.control._providers import BearerToken
from comptroller.control._redact import Redactor, looks_like_secret
from comptroller.control._store_schema import credentials

# `comptroller.control` re-exports these from here (its import list is not this module's to move).
__all__ = [
    "ENV_MASTER_KEY",
    "CredentialInfo",
    "CredentialKind",
    "CredentialRefreshFailed",
    "CredentialStore",
    "MasterKeySource",
    "OAuthBundle",
    "OAuthNotAllowed",
    "generate_master_key",
]

_log = logging.getLogger(__name__)
_REFRESHER = "comptroller (oauth refresh)"
_RETRY_FAILED_REFRESH_S = 5.0
"""How long after a failed refresh the token endpoint is asked again: meanwhile a token that
still works is used, and one that expired fails the calls with the same error."""
_MAX_ISSUED = 10_000
_ALLOW_HINT = (
    "they are allowed by default only in local development (COMPTROLLER_ENVIRONMENT="
    "development), unless control.allow_oauth_credentials = false; set it to true "
    "(COMPTROLLER_CONTROL_ALLOW_OAUTH_CREDENTIALS=1) to allow them here, or store an API key "
    "instead"
)


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
    # Stored under the provider's one name (`google` → `gcp.gemini`), as profiles name it.
    return canonical_provider(provider)


class CredentialStore:
    """Write-only credentials in the profile store.

    Args:
        store: The profile store (same database, same transactions and audit log).
        master_key: Where the master key comes from.
        admins: Who is bound to which role (default: the bindings in `store`).
        redactor: Learns every secret `resolve_secret` hands out, so that the call path can
            scrub it from provider errors (default: a fresh one; share the plane's).
        allow_oauth: Whether `oauth` credentials may be set and used
            (`control.allow_oauth_credentials`).
        oauth_refresh_margin_s: An OAuth access token closer than this to its expiry is
            renewed before it is used.
        oauth_timeout_s: Time limit of one request to a token endpoint.
        wall_clock: Seconds since the epoch, compared with token expiries (default: the
            store's clock).
    """

    def __init__(
        self,
        store: ProfileStore,
        master_key: MasterKeySource,
        *,
        admins: AdminRegistry | None = None,
        redactor: Redactor | None = None,
        allow_oauth: bool = False,
        oauth_refresh_margin_s: float = 60.0,
        oauth_timeout_s: float = 10.0,
        wall_clock: Callable[[], float] | None = None,
    ) -> None:
        self._store = store
        self._keys = master_key
        self.admins = admins or AdminRegistry(store)
        """Who may write keys (the profile service shares it)."""
        self.redactor = redactor if redactor is not None else Redactor()
        self.allow_oauth = allow_oauth
        self.oauth_refresh_margin_s = oauth_refresh_margin_s
        self.oauth_timeout_s = oauth_timeout_s
        self.wall_clock: Callable[[], float] = wall_clock or (
            lambda: self._store.clock().timestamp()
        )
        self._listeners: list[Callable[[], None]] = []
        self._locks = RefreshLocks()
        # Another process's refresh takes at most one grant's time limit; the wait allows for
        # a queue of a few.
        self._process_lock = ProcessRefreshLock(store.engine, wait_s=max(30.0, 3 * oauth_timeout_s))
        # (ref, credential revision of the profile) -> fingerprint of the access token handed
        # out for it: after a 401, tells whether the failed token was renewed meanwhile.
        self._issued: dict[tuple[str, str | None], str] = {}
        # ref -> (until when, message, code) of a refresh that just failed.
        self._failed: dict[str, tuple[float, str, str]] = {}
        # ref -> when (wall clock) a call next renews the OAuth credential (see
        # `renewal_pending`).
        self._due: dict[str, float] = {}

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

        An `oauth` secret is the JSON of an `OAuthBundle` (access_token, refresh_token,
        expires_at, token_url, client_id, optional client_secret and scope).

        Raises:
            PermissionDenied: `actor` does not administer `scope`.
            MasterKeyError: No usable master key.
            OAuthNotAllowed: `kind="oauth"` while OAuth credentials are turned off.
            ValueError: Empty secret, malformed provider, unknown kind, malformed bundle.
        """
        provider = _check_provider(provider)
        if kind not in CREDENTIAL_KINDS:
            raise ValueError(f"credential kind must be one of {CREDENTIAL_KINDS}, got {kind!r}")
        if not secret.strip():
            raise ValueError(f"the secret for provider {provider!r} at {scope} is empty")
        if kind == "oauth":
            if not self.allow_oauth:
                raise OAuthNotAllowed(
                    f"OAuth credentials are turned off: not storing the {provider!r} "
                    f"credential at {scope}; {_ALLOW_HINT}"
                )
            secret = OAuthBundle.parse(secret).to_json()
        key = self._keys.load()
        plaintext = secret.encode("utf-8")

        def work(connection: Connection) -> CredentialInfo:
            self._authorize(connection, actor, scope)
            now = self._store.clock()
            row = next(
                (
                    found
                    for alias in provider_names(provider)
                    if (found := _row(connection, scope, alias, name)) is not None
                ),
                None,
            )
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

    def oauth_expiry(self, ref: str) -> datetime | None:
        """When the access token of OAuth credential `ref` expires: what may be shown of a
        bundle (`credentials list`), never a token. None for an API key, a credential that
        does not exist, or a bundle that does not open (no master key, not a bundle)."""
        with self._store.reading() as connection:
            row = (
                connection.execute(sa.select(credentials).where(credentials.c.ref == ref))
                .mappings()
                .first()
            )
        if row is None or row["kind"] != "oauth":
            return None
        try:
            bundle = OAuthBundle.parse(self._open(row))
            return datetime.fromtimestamp(bundle.expires_at, UTC)
        except (ValueError, OverflowError, OSError, CredentialError):
            return None

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

        For an `oauth` credential this is its access token, renewed first when it is within
        `oauth_refresh_margin_s` of its expiry.

        Raises:
            CredentialDecryptError: The stored secret does not open under the master key.
            MasterKeyError: No usable master key.
            OAuthNotAllowed: The credential is `oauth` and OAuth credentials are turned off.
            CredentialRefreshFailed: An expired OAuth token could not be renewed.
        """
        row = self._lookup_for(profile, domain=domain, org=org, provider=provider)
        if row is None:
            return None
        if row["kind"] == "oauth":
            bundle, _, _ = self._fresh_bundle(row)
            token = bundle.access_token
            if len(self._issued) >= _MAX_ISSUED:
                self._issued.clear()
            self._issued[(row["ref"], profile.credential_revision)] = fingerprint(token)
            return BearerToken(token)  # sent as Authorization: Bearer, never as an API key
        secret = self._open(row)
        self.redactor.add(secret)  # before it leaves: a provider may echo it in an error
        return secret

    # --- OAuth ---------------------------------------------------------------------------
    def ensure_fresh(self, info: CredentialInfo) -> tuple[CredentialInfo, float | None]:
        """Renew an `oauth` credential if it is due; returns its info (new revision when
        renewed) and when it is next due (epoch seconds; None for an API key, or when OAuth
        is turned off and the credential will be refused when used).

        A refresh that fails while the token still works is logged and tried again shortly.
        One that fails after the token expired returns the info with a revision of its own,
        so that no model built with the expired token is used again: the call that builds
        its model then raises `CredentialRefreshFailed` (without calling the provider).
        """
        if info.kind != "oauth" or not self.allow_oauth:
            return info, None
        with self._store.reading() as connection:
            row = (
                connection.execute(sa.select(credentials).where(credentials.c.ref == info.ref))
                .mappings()
                .first()
            )
        if row is None:
            return info, None
        try:
            bundle, retry_at, renewed = self._fresh_bundle(row)
        except CredentialRefreshFailed:
            expired = dataclasses.replace(info, revision=f"{info.revision}:expired")
            return expired, self.wall_clock() + _RETRY_FAILED_REFRESH_S
        fresh = self.get_info(info.ref) if renewed else None
        deadline = (
            retry_at if retry_at is not None else (bundle.expires_at - self.oauth_refresh_margin_s)
        )
        return fresh or info, deadline

    def refresh_after_unauthorized(
        self,
        profile: ResolvedProfile,
        *,
        domain: str | None,
        org: str | None,
        provider: str | None = None,
    ) -> bool:
        """After a provider answered 401: renew the call's `oauth` credential, unless the
        token that failed was renewed meanwhile (by another thread or process). True when the
        call should be retried with the credential as it now is; False for an API key.

        Raises:
            CredentialRefreshFailed: The token endpoint refused or failed.
        """
        row = self._lookup_for(profile, domain=domain, org=org, provider=provider)
        if row is None or row["kind"] != "oauth" or not self.allow_oauth:
            return False
        failed = self._issued.get((row["ref"], profile.credential_revision))
        self._refresh(
            row["ref"],
            due=lambda bundle: failed is None or fingerprint(bundle.access_token) == failed,
        )
        # Also when another process renewed it: this process's cached resolutions still carry
        # the old revision, and the retry must build its model with the new token.
        self._changed()
        return True

    def _lookup_for(
        self,
        profile: ResolvedProfile,
        *,
        domain: str | None,
        org: str | None,
        provider: str | None,
    ) -> Mapping[Any, Any] | None:
        wanted = provider or profile.model.provider
        with self._store.reading() as connection:
            return _lookup(
                connection,
                wanted,
                source=profile.credential_source,
                ref=profile.credential_ref,
                domain=domain,
                org=org,
            )

    def _open(self, row: Mapping[Any, Any]) -> str:
        key = self._keys.load(create=False)
        keyring = self._keys.keyring(key)
        aad = _aad(row["ref"], row["scope_kind"], row["scope_id"], row["provider"], row["kind"])
        return _unseal(keyring, row, aad).decode("utf-8")

    def _bundle(self, row: Mapping[Any, Any]) -> OAuthBundle:
        if not self.allow_oauth:
            raise OAuthNotAllowed(
                f"credential {row['ref']} (provider {row['provider']!r} at "
                f"{_info(row).scope}) is an OAuth credential, and OAuth credentials are "
                f"turned off; {_ALLOW_HINT}"
            )
        plaintext = self._open(row)
        try:
            bundle = OAuthBundle.parse(plaintext)
        except ValueError as exc:
            self.redactor.add(plaintext)
            raise CredentialRefreshFailed(
                f"credential {row['ref']} (provider {row['provider']!r} at "
                f"{_info(row).scope}) is not a usable OAuth bundle ({exc}); store it again "
                "with `comptroller credentials set --kind oauth`",
                ref=row["ref"],
                code="invalid_bundle",
            ) from None
        self.redactor.add(*bundle.secrets())  # a provider may echo a token in an error
        return bundle

    def _fresh_bundle(self, row: Mapping[Any, Any]) -> tuple[OAuthBundle, float | None, bool]:
        """The bundle of `row`, renewed when due; the time of the next try when a refresh
        failed but the token still works (else None); whether it was renewed."""
        bundle = self._bundle(row)
        ref = row["ref"]
        margin = self.oauth_refresh_margin_s
        if bundle.expires_at - self.wall_clock() > margin:
            self._note_due(ref, bundle.expires_at - margin)
            return bundle, None, False  # the hot case: nothing to do
        try:
            renewed = self._refresh(ref, due=lambda b: b.expires_at - self.wall_clock() <= margin)
        except CredentialRefreshFailed as exc:
            now = self.wall_clock()
            retry_at = now + _RETRY_FAILED_REFRESH_S
            if bundle.expires_at <= now:
                self._note_due(ref, retry_at)
                raise
            _log.warning("%s; using the current token until it expires", exc)
            retry_at = min(retry_at, bundle.expires_at)
            self._note_due(ref, retry_at)
            return bundle, retry_at, False
        self._note_due(ref, renewed.expires_at - margin)
        return renewed, None, renewed != bundle

    def _note_due(self, ref: str, at: float) -> None:
        due = self._due
        if due.get(ref) != at:
            if len(due) >= _MAX_ISSUED:
                due.clear()
            due[ref] = at

    def renewal_pending(self) -> bool:
        """Whether an OAuth credential this store has handed out is due for a refresh (or
        for another try after a failed one): what an async caller checks, cheaply, before
        resolving, so that the token endpoint's round trip runs off its event loop."""
        if not self._due:
            return False
        now = self.wall_clock()
        return any(now >= at for at in list(self._due.values()))

    def _refresh(self, ref: str, *, due: Callable[[OAuthBundle], bool]) -> OAuthBundle:
        """Renew credential `ref` if `due(bundle)` still holds once it is locked.

        Threads of this process wait on a lock per ref, processes on a lock per ref in the
        database (PostgreSQL advisory lock) or beside it (SQLite lock file); the row is read
        again under both, so only the first of them runs the grant. The grant runs outside
        any transaction: only the short read-compare-write at the end takes the store's
        write lock, and a slow token endpoint holds up no other write.
        """
        with self._locks.of(ref):
            failed = self._failed.get(ref)
            if failed is not None and self.wall_clock() < failed[0]:
                # Failed a moment ago (this thread's turn came after it, or the calls go on):
                # the token endpoint is not asked again at the rate of the calls.
                raise CredentialRefreshFailed(failed[1], ref=ref, code=failed[2])
            try:
                with self._process_lock.hold(ref):
                    bundle, changed = self._renew_locked(ref, due)
            except CredentialRefreshFailed as exc:
                self._failed[ref] = (
                    self.wall_clock() + _RETRY_FAILED_REFRESH_S,
                    str(exc),
                    exc.code,
                )
                raise
            self._failed.pop(ref, None)
        if changed:
            self._changed()
        return bundle

    def _read_row(self, connection: Connection, ref: str) -> Mapping[Any, Any]:
        row = (
            connection.execute(sa.select(credentials).where(credentials.c.ref == ref))
            .mappings()
            .first()
        )
        if row is None:
            raise CredentialNotFound(
                f"credential {ref} was deleted while it was being refreshed; set it again "
                "with `comptroller credentials set --kind oauth`"
            )
        return row

    def _renew_locked(
        self, ref: str, due: Callable[[OAuthBundle], bool]
    ) -> tuple[OAuthBundle, bool]:
        """Read → grant → write, under the credential's locks; (bundle, whether renewed)."""
        with self._store.reading() as connection:
            row = self._read_row(connection, ref)
        bundle = self._bundle(row)
        if not due(bundle):
            return bundle, False  # another thread or process renewed it meanwhile
        result = refresh_grant(bundle, now=self.wall_clock(), timeout_s=self.oauth_timeout_s)
        if isinstance(result, str):
            raise _refresh_failed(row, bundle, result)
        renewed = result
        self.redactor.add(*renewed.secrets())

        def work(connection: Connection) -> tuple[OAuthBundle, bool]:
            current = self._read_row(connection, ref)
            if current["kind"] != "oauth":
                raise CredentialNotFound(
                    f"credential {ref} was replaced by an API key while it was being "
                    "refreshed; nothing to renew"
                )
            stored = self._bundle(current)
            if (stored.access_token, stored.refresh_token) != (
                bundle.access_token,
                bundle.refresh_token,
            ):
                # Someone stored a new bundle while the grant ran (refreshes cannot: they hold
                # the lock): theirs is newer than the one the grant started from.
                return stored, False
            key = self._keys.load(create=False)
            aad = _aad(
                ref, current["scope_kind"], current["scope_id"], current["provider"], "oauth"
            )
            nonce, sealed = key.seal(renewed.to_json().encode("utf-8"), aad)
            connection.execute(
                credentials.update()
                .where(credentials.c.ref == ref)
                .values(
                    key_id=key.key_id,
                    nonce=nonce,
                    ciphertext=sealed,
                    updated_at=self._store.clock(),
                    updated_by=_REFRESHER,
                )
            )
            self._store.add_audit(
                connection,
                actor=_REFRESHER,
                role="system",
                action="credential_set",
                scope=_info(current).scope,
                purpose=None,
                version=None,
                before={"ref": ref, "provider": current["provider"], "name": current["name"]},
                after={
                    "ref": ref,
                    "provider": current["provider"],
                    "name": current["name"],
                    "kind": "oauth",
                    "key_id": key.key_id,
                    "expires_at": renewed.expires_at,
                },
                reason="oauth refresh",
            )
            return renewed, True

        return self._store.write(work)

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


def _refresh_failed(row: Mapping[Any, Any], bundle: OAuthBundle, code: str) -> Exception:
    scope = _info(row).scope
    where = {
        "global": "--global",
        "org": f"--org {scope.id}",
        "domain": f"--domain {scope.id} --org {scope.org}" if scope.org else f"--domain {scope.id}",
    }
    host = bundle.token_url.split("://", 1)[-1].split("/", 1)[0]
    return CredentialRefreshFailed(
        f"OAuth credential {row['ref']} (provider {row['provider']!r} at {scope}, name "
        f"{row['name']!r}) could not be refreshed at its token endpoint {host}: {code}. "
        "Re-authorise with the provider and store the new bundle with `comptroller "
        f"credentials set --kind oauth --provider {row['provider']} "
        f"{where.get(scope.kind, '')} --from-env VAR` (or on stdin)",
        ref=row["ref"],
        code=code,
    )
