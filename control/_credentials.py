"""Write-only provider credentials, encrypted at rest with AES-GCM under a master key.

A credential belongs to a scope and a provider (and a name, `default` unless several keys
coexist): a static API key or an opaque refreshable OAuth bundle. The API sets, overwrites
(rotates) and deletes them; reading returns only *which* providers are configured. The
plaintext leaves the store through `CredentialStore.resolve_secret`, which only the call path
uses, never through a repr, a log line, an exception, an audit entry or an event.

The master key comes from `COMPTROLLER_MASTER_KEY` (URL-safe base64 of 32 bytes) or from a
key file created with mode 0600 on first use. Each ciphertext records the id of the key that
sealed it, so `rotate_master_key` can re-encrypt everything under a new key.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
import secrets
import stat
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, TypeAlias

import sqlalchemy as sa
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy.engine import Connection

from comptroller._private import private_dir
from comptroller.control._governance import Actor, authorize_credential_change, authorize_platform
from comptroller.control._principal import AdminRegistry
from comptroller.control._profile_errors import (
    CredentialDecryptError,
    CredentialNotFound,
    MasterKeyError,
    PermissionDenied,
)
from comptroller.control._profile_store import ProfileStore, _aware, _scope, credentials
from comptroller.control._profile_types import CredentialSource, ResolvedProfile
from comptroller.control._profiles import Scope
from comptroller.control._redact import Redactor, looks_like_secret

ENV_MASTER_KEY = "COMPTROLLER_MASTER_KEY"
"""Environment variable holding the master key (URL-safe base64 of 32 random bytes)."""

CredentialKind: TypeAlias = Literal["api_key", "oauth"]
CREDENTIAL_KINDS: tuple[CredentialKind, ...] = ("api_key", "oauth")
DEFAULT_NAME = "default"


def generate_master_key() -> str:
    """A fresh master key, as the text `COMPTROLLER_MASTER_KEY` or the key file holds."""
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode("ascii")


class MasterKey:
    """A 256-bit AES-GCM key and its id. The key bytes never show in a repr."""

    __slots__ = ("_aead", "key_id")

    def __init__(self, text: str, *, origin: str) -> None:
        try:
            raw = base64.urlsafe_b64decode(text.strip().encode("ascii"))
        except (binascii.Error, UnicodeEncodeError, ValueError):
            raw = b""
        if len(raw) != 32:
            raise MasterKeyError(
                f"the master key from {origin} is not URL-safe base64 of 32 bytes; "
                'create one with `python -c "import base64,os;'
                'print(base64.urlsafe_b64encode(os.urandom(32)).decode())"`'
            )
        # The id is a hash prefix: it names the key without revealing anything usable.
        self.key_id = hashlib.sha256(b"comptroller-master-key:" + raw).hexdigest()[:16]
        self._aead = AESGCM(raw)

    def seal(self, plaintext: bytes, aad: bytes) -> tuple[bytes, bytes]:
        """(nonce, ciphertext) of `plaintext` bound to `aad`."""
        nonce = secrets.token_bytes(12)
        return nonce, self._aead.encrypt(nonce, plaintext, aad)

    def open(self, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        """The plaintext.

        Raises:
            cryptography.exceptions.InvalidTag: Wrong key, or the row was tampered with.
        """
        return self._aead.decrypt(nonce, ciphertext, aad)

    def __repr__(self) -> str:
        return f"MasterKey(key_id={self.key_id!r})"


class MasterKeySource:
    """Where the master key lives: the environment, else a 0600 file created on first use.

    Args:
        key_file: The key file (`settings.master_key_file`).
        environ: The environment to read `COMPTROLLER_MASTER_KEY` from (default: os.environ).
    """

    def __init__(self, key_file: Path, *, environ: Mapping[str, str] | None = None) -> None:
        self.key_file = key_file
        self._environ = environ if environ is not None else os.environ
        self._loaded: MasterKey | None = None

    @property
    def from_environment(self) -> bool:
        """Whether `COMPTROLLER_MASTER_KEY` supplies the key."""
        return bool(self._environ.get(ENV_MASTER_KEY))

    def load(self, *, create: bool = True) -> MasterKey:
        """The master key in force (created in the key file on first use when `create`).

        Raises:
            MasterKeyError: Malformed key, unreadable file, or a file others may read.
        """
        if self._loaded is not None:
            return self._loaded
        text = self._environ.get(ENV_MASTER_KEY)
        if text:
            key = MasterKey(text, origin=f"environment variable {ENV_MASTER_KEY}")
        else:
            key = MasterKey(self._read_or_create(create), origin=f"key file {self.key_file}")
        self._loaded = key
        return key

    def pending(self) -> MasterKey | None:
        """A key left in `<key file>.new` by an interrupted rotation, if any."""
        path = self._pending_path()
        if not path.exists():
            return None
        return MasterKey(path.read_text(), origin=f"key file {path}")

    def install(self, text: str) -> None:
        """Make `text` the key of the key file (stage it in `.new`, then rename)."""
        staged = self._pending_path()
        _write_private(staged, text, replace=True)
        os.replace(staged, self.key_file)
        self._loaded = None

    def stage(self, text: str) -> None:
        """Keep the next key in `<key file>.new` while a rotation re-encrypts."""
        _write_private(self._pending_path(), text, replace=True)

    def _pending_path(self) -> Path:
        return self.key_file.with_name(self.key_file.name + ".new")

    def _read_or_create(self, create: bool) -> str:
        path = self.key_file
        if not path.exists():
            if not create:
                raise MasterKeyError(
                    f"no master key: set {ENV_MASTER_KEY} or restore the key file {path}"
                )
            # Another process may have created it first: then use theirs.
            with contextlib.suppress(FileExistsError):
                _write_private(path, generate_master_key(), replace=False)
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
            if mode & 0o077:
                # Refused, not tightened: whoever could read it may hold the key already.
                raise MasterKeyError(
                    f"key file {path} has mode {mode:o}: others may read it; run "
                    f"`chmod 600 {path}`, and rotate the master key if others could have "
                    "read it (`comptroller credentials rotate-master-key`)"
                )
            return path.read_text()
        except OSError as exc:
            raise MasterKeyError(
                f"key file {path} cannot be read ({exc.strerror}); fix its permissions "
                f"or set {ENV_MASTER_KEY}"
            ) from None


def _write_private(path: Path, text: str, *, replace: bool) -> None:
    if not path.parent.exists():
        private_dir(path.parent)  # made for the key: 0700 (an existing one is not ours)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if replace else os.O_EXCL)
    fd = os.open(path, flags, 0o600)
    try:
        os.write(fd, text.encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(path, 0o600)


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


def _aad(ref: str, scope_kind: str, scope_id: str, provider: str, kind: str) -> bytes:
    # Binding the ciphertext to its row: a sealed key copied onto another scope or provider
    # does not open there.
    return "\x1f".join(
        ("comptroller-credential-v1", ref, scope_kind, scope_id, provider, kind)
    ).encode()


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
            repr(provider)
            if len(provider) <= 40 and not looks_like_secret(provider)
            else f"({len(provider)} characters, not shown)"
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
        self._admins = admins or AdminRegistry(store)
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
            row = self._row(connection, scope, provider, name)
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
            found = self._row(connection, scope, provider, name)
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
            row = self._row(connection, scope, provider, name)
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
                self._admins.require_bound(connection, actor)
        except PermissionDenied as exc:
            self._admins.record_refusal(
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
        keyring = {old.key_id: old}
        pending = self._keys.pending()
        if pending is not None:
            keyring[pending.key_id] = pending

        def work(connection: Connection) -> int:
            rows = connection.execute(sa.select(credentials)).mappings().all()
            for row in rows:
                aad = _aad(
                    row["ref"], row["scope_kind"], row["scope_id"], row["provider"], row["kind"]
                )
                plaintext = self._open(keyring, row, aad)
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
            row = self._lookup(con, provider, source=source, ref=ref, domain=domain, org=org)
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
            row = self._lookup(
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
        keyring = {key.key_id: key}
        pending = self._keys.pending()
        if pending is not None:
            keyring[pending.key_id] = pending
        aad = _aad(row["ref"], row["scope_kind"], row["scope_id"], row["provider"], row["kind"])
        secret = self._open(keyring, row, aad).decode("utf-8")
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
            self._admins.record_refusal(
                actor,
                attempted=attempted,
                scope=scope,
                purpose=None,
                reason=str(exc),
                detail=detail,
            )
            raise

    def _authorize(self, connection: Connection, actor: Actor, scope: Scope) -> None:
        self._admins.require_bound(connection, actor)
        recorded = (
            self._store.recorded_org(connection, scope.id) if scope.kind == "domain" else None
        )
        authorize_credential_change(actor, scope, recorded_org=recorded)

    @staticmethod
    def _row(
        connection: Connection, scope: Scope, provider: str, name: str
    ) -> Mapping[Any, Any] | None:
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
        self,
        connection: Connection,
        provider: str,
        *,
        source: CredentialSource,
        ref: str | None,
        domain: str | None,
        org: str | None,
    ) -> Mapping[Any, Any] | None:
        if ref is not None:
            named = (
                connection.execute(sa.select(credentials).where(credentials.c.ref == ref))
                .mappings()
                .first()
            )
            # A ref only counts inside the call's own chain: never another scope's key.
            if (
                named is not None
                and named["provider"] == provider
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
            row = self._row(connection, scope, provider, DEFAULT_NAME)
            if row is not None:
                return row
        return None

    @staticmethod
    def _open(keyring: Mapping[str, MasterKey], row: Mapping[Any, Any], aad: bytes) -> bytes:
        key = keyring.get(row["key_id"])
        where = f"credential {row['ref']} (provider {row['provider']!r} at {_scope(row['scope_kind'], row['scope_id'], None)})"
        if key is None:
            raise CredentialDecryptError(
                f"{where} is sealed under master key id {row['key_id']}, but the key in force "
                f"has id {', '.join(keyring)}; restore that master key, or set the "
                "credential again"
            )
        try:
            return key.open(bytes(row["nonce"]), bytes(row["ciphertext"]), aad)
        except InvalidTag:
            raise CredentialDecryptError(
                f"{where} does not open under master key id {key.key_id}: the row was altered; "
                "set the credential again"
            ) from None
