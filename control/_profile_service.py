"""The profile service: cached resolution for calls, and the audited management API.

`ProfileService.resolve` is what the guarded call uses (it implements `ProfileResolver`);
`set_profile`, `rollback`, `history`, `diff` and `audit` are what operators use, each with
an explicit `Actor`: the store must bind its name to its role and scope (`_principal`), and
`_governance` checks what that role may change. Refused changes are audited as `refused`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from dataclasses import replace as dataclass_replace
from typing import TYPE_CHECKING, Any

from opentelemetry.util.types import AttributeValue
from sqlalchemy.engine import Connection

from comptroller import semconv
from comptroller.control._credentials import CredentialStore, MasterKeySource, credential_chain
from comptroller.control._governance import Actor, authorize_profile_change
from comptroller.control._principal import AdminRegistry
from comptroller.control._profile_errors import (
    MissingCredential,
    PermissionDenied,
    ProfileNotFound,
    ProfileRefused,
    UnknownModel,
    VersionNotFound,
)
from comptroller.control._profile_events import (
    ConfiguredCatalog,
    ModelCatalog,
    ProfileEventEmitter,
)
from comptroller.control._profile_store import ProfileStore
from comptroller.control._profile_types import ModelRef, ProfileResolver, ResolvedProfile
from comptroller.control._profiles import (
    AuditAction,
    AuditEntry,
    FieldChange,
    ProfileSpec,
    ProfileVersion,
    Scope,
    diff_specs,
)
from comptroller.control._purposes import Purpose, PurposeRegistry
from comptroller.control._resolution import (
    ActiveKey,
    Resolution,
    ResolutionCache,
    explain_resolution,
)
from comptroller.errors import UsageError

if TYPE_CHECKING:
    from comptroller.config import Settings

_log = logging.getLogger("comptroller.control.profiles")


def _chain_of(scope: Scope) -> tuple[str | None, str | None]:
    """(domain, org) of a call made at exactly `scope`."""
    if scope.kind == "domain":
        return scope.id, scope.org
    if scope.kind == "org":
        return None, scope.id
    return None, None


@dataclass(frozen=True, kw_only=True, slots=True)
class _Change:
    version: ProfileVersion
    previous: ProfileVersion | None
    before: Resolution | None
    after: Resolution | None


class ProfileService:
    """Profiles per (scope, purpose): resolution for calls, management for operators.

    Build it with `ProfileService.from_settings(settings)`; the store URL, the resolution
    cache bound, the purposes and the server defaults come from the settings.

    Args:
        store: The profile store.
        credentials: The credential store (same database).
        purposes: The purposes of this deployment.
        server_defaults: Model per purpose when no scope sets one.
        catalog: Known model ids (unknown ones are refused unless the purpose is `open`).
        keyless_providers: Providers that need no credential.
        events: Receives activation, rollback and warning events.
        cache_ttl_s: Bound on how long another process's write may go unseen.
        clock: Monotonic clock of the cache (injectable for tests).
    """

    def __init__(
        self,
        store: ProfileStore,
        *,
        credentials: CredentialStore,
        purposes: PurposeRegistry,
        server_defaults: Mapping[str, ModelRef] | None = None,
        catalog: ModelCatalog | None = None,
        keyless_providers: Iterable[str] = (),
        events: ProfileEventEmitter | None = None,
        cache_ttl_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.admins = AdminRegistry(store)
        """Who may act: admin bindings and tokens (`comptroller admin …`)."""
        self.credentials = credentials
        self.purposes = purposes
        self.server_defaults: Mapping[str, ModelRef] = dict(server_defaults or {})
        self.catalog: ModelCatalog = catalog or ConfiguredCatalog()
        self.keyless_providers = frozenset(keyless_providers)
        self.events = events
        self._cache = ResolutionCache(ttl_s=cache_ttl_s, poll=store.change_count, clock=clock)
        # A credential write changes `credential_revision` of resolved profiles: drop them now.
        credentials.on_change(self._cache.invalidate)

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        url: str | None = None,
        events: ProfileEventEmitter | None = None,
        catalog: ModelCatalog | None = None,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> ProfileService:
        """The service over `url` (default: `settings.profile_store_url`).

        Args:
            settings: The settings in force.
            url: SQLAlchemy URL of the store, overriding the settings.
            events: Receives profile events (default: none).
            catalog: Known model ids (default: genai-prices + fallback registry + extras).
            environ: Environment for `COMPTROLLER_MASTER_KEY` (default: os.environ).
            clock: Monotonic clock of the resolution cache.
        """
        store = ProfileStore(url or settings.profile_store_url)
        server_defaults = {
            purpose: ModelRef.parse(text) for purpose, text in settings.model.items()
        }
        registry = PurposeRegistry.from_settings(settings)
        undeclared = [name for name in server_defaults if name not in registry]
        if undeclared:
            # A server default (`COMPTROLLER_MODEL_EXTRACTION`) declares its purpose.
            registry = PurposeRegistry(
                [
                    *registry.values(),
                    *(Purpose(key=name, override="operator_allowed") for name in undeclared),
                ]
            )
        if catalog is None:
            from comptroller.control._pricing import Pricer

            catalog = ConfiguredCatalog(
                Pricer.from_settings(settings), settings.control.known_models
            )
        return cls(
            store,
            credentials=CredentialStore(
                store, MasterKeySource(settings.master_key_file, environ=environ)
            ),
            purposes=registry,
            server_defaults=server_defaults,
            catalog=catalog,
            keyless_providers=settings.control.keyless_providers,
            events=events,
            cache_ttl_s=settings.control.resolution_cache_ttl_s,
            clock=clock,
        )

    def close(self) -> None:
        """Release the store's connections."""
        self.store.close()

    def __repr__(self) -> str:
        return f"ProfileService({self.store!r})"

    # --- resolution (the call path) ------------------------------------------------------
    def resolve(self, purpose: str, *, domain: str | None, org: str | None) -> ResolvedProfile:
        """The effective profile for `purpose` at (domain, org), from the cache when warm.

        Raises:
            UnknownPurpose: `purpose` is not declared.
            ProfileNotFound: No scope sets a model and there is no server default.
        """
        key = (purpose, domain, org)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        generation = self._cache.generation
        resolution = self.explain(purpose, domain=domain, org=org)
        self._cache.put(key, resolution.profile, generation)
        return resolution.profile

    def explain(self, purpose: str, *, domain: str | None, org: str | None) -> Resolution:
        """Resolve without the cache, saying which scope supplied each field.

        Raises:
            UnknownPurpose: `purpose` is not declared.
            ProfileNotFound: No scope sets a model and there is no server default.
        """
        self.purposes.get_purpose(purpose)
        active = self.store.active_for(purpose, domain=domain, org=org)
        resolution = explain_resolution(
            domain, org, purpose, active=active, server_defaults=self.server_defaults
        )
        if resolution is None:
            where = f"domain:{domain}" if domain else f"org:{org}" if org else "global"
            raise ProfileNotFound(
                f"no model for purpose {purpose!r} at {where}: set one with "
                f"`comptroller profiles set {purpose} --model provider:model` or "
                f"COMPTROLLER_MODEL_{purpose.upper()}=provider:model"
            )
        revision = self._credential_revision(resolution.profile, domain=domain, org=org)
        if revision is None:
            return resolution
        return dataclass_replace(
            resolution,
            profile=dataclass_replace(resolution.profile, credential_revision=revision),
        )

    def _credential_revision(
        self, profile: ResolvedProfile, *, domain: str | None, org: str | None
    ) -> str | None:
        parts: list[str] = []
        providers = dict.fromkeys(
            [profile.model.provider, *(f.provider for f in profile.fallbacks)]
        )
        for provider in providers:
            if provider in self.keyless_providers:
                continue
            info = self.credentials.find(
                provider,
                source=profile.credential_source,
                ref=profile.credential_ref,
                domain=domain,
                org=org,
            )
            stamp = f"{info.ref}@{info.updated_at.isoformat()}" if info is not None else "-"
            parts.append(f"{provider}={stamp}")
        if not parts:
            return None
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]

    def invalidate(self) -> None:
        """Drop cached resolutions now (writes of this service do it themselves)."""
        self._cache.invalidate()

    # --- management ----------------------------------------------------------------------
    def set_profile(
        self,
        scope: Scope,
        purpose: str,
        spec: ProfileSpec,
        *,
        actor: Actor,
        reason: str = "",
        unset: tuple[str, ...] = (),
        replace: bool = False,
    ) -> ProfileVersion:
        """Activate a new version of (scope, purpose).

        The new version is the active one updated with the fields `spec` sets (or `spec`
        alone with `replace=True`), minus the fields named in `unset` (which inherit again).

        Raises:
            UnknownPurpose: `purpose` is not declared.
            PermissionDenied: `actor` may not change this scope or purpose.
            ModelNotApproved: A scope admin picked a model not approved for the purpose.
            UnknownModel: A model genai-prices and the fallback registry do not know, and the
                purpose is not `open`.
            MissingCredential: The scope cannot resolve a credential for a model's provider.
            ProfileConflict: Concurrent writes kept conflicting.
        """
        detail = {"spec": spec.to_json(), "unset": list(unset), "replace": replace}
        with self._audited_refusal(actor, "activate", scope, purpose, detail):
            change = self._set_profile(scope, purpose, spec, actor, reason, unset, replace)
        self._cache.invalidate()
        self._emit_change(semconv.EVENT_PROFILE_ACTIVATED, change, actor, reason)
        return change.version

    def _set_profile(
        self,
        scope: Scope,
        purpose: str,
        spec: ProfileSpec,
        actor: Actor,
        reason: str,
        unset: tuple[str, ...],
        replace: bool,
    ) -> _Change:
        definition = self.purposes.get_purpose(purpose)
        self._check_models_known(definition, spec.models())
        if spec.degradation is not None:
            target = spec.degradation.upgrade_to
            self.purposes.get_purpose(target)
            if target == purpose:
                raise UsageError(
                    f"the degradation policy of {purpose!r} upgrades to itself; name a "
                    "stronger purpose"
                )

        def work(connection: Connection) -> _Change:
            self.admins.require_bound(connection, actor)
            recorded = self._recorded_org(connection, scope)
            authorize_profile_change(actor, scope, definition, spec, recorded_org=recorded)
            current = self.store.current(connection, scope, purpose)
            base = ProfileSpec() if replace or current is None else current.spec
            new_spec = base.updated(spec, unset=unset)
            before, after = self._effect(connection, scope, purpose, new_spec)
            check_credentials = set(spec.models())
            if spec.credential_source is not None or spec.credential_ref is not None:
                check_credentials |= (
                    {after.profile.model, *after.profile.fallbacks} if after else set()
                )
            self._check_credentials(connection, scope, after, check_credentials)
            result = self.store.append_version(
                connection,
                scope=scope,
                purpose=purpose,
                spec=new_spec,
                created_by=actor.name,
                reason=reason,
            )
            self._audit(connection, actor, "activate", result.version, result.previous, reason)
            return _Change(
                version=result.version, previous=result.previous, before=before, after=after
            )

        return self.store.write(work)

    def rollback(
        self,
        scope: Scope,
        purpose: str,
        *,
        to_version: int | None = None,
        actor: Actor,
        reason: str = "",
    ) -> ProfileVersion:
        """Re-activate a prior version as a new version (default: the one before the active).

        Raises:
            VersionNotFound: No such version (or nothing to roll back to).
            UsageError: The version asked for is the active one.
            PermissionDenied, ModelNotApproved, UnknownModel, MissingCredential: As for
                `set_profile`, checked against the version being re-activated.
        """
        detail = {"to_version": to_version}
        with self._audited_refusal(actor, "rollback", scope, purpose, detail):
            change = self._rollback(scope, purpose, to_version, actor, reason)
        self._cache.invalidate()
        self._emit_change(semconv.EVENT_PROFILE_ROLLED_BACK, change, actor, change.version.reason)
        return change.version

    def _rollback(
        self, scope: Scope, purpose: str, to_version: int | None, actor: Actor, reason: str
    ) -> _Change:
        definition = self.purposes.get_purpose(purpose)

        def work(connection: Connection) -> _Change:
            self.admins.require_bound(connection, actor)
            recorded = self._recorded_org(connection, scope)
            current = self.store.current(connection, scope, purpose)
            number = to_version
            if number is None:
                if current is None or current.version < 2:
                    raise VersionNotFound(
                        f"profile {scope}/{purpose} has no earlier version to roll back to"
                    )
                number = current.version - 1
            target = self.store.version_in(connection, scope, purpose, number)
            if target is None:
                last = current.version if current else 0
                raise VersionNotFound(
                    f"profile {scope}/{purpose} has no version {number} "
                    f"(versions 1–{last}); see `comptroller profiles history {purpose}`"
                )
            if current is not None and current.version == target.version:
                raise UsageError(f"version {number} of {scope}/{purpose} is already active")
            authorize_profile_change(actor, scope, definition, target.spec, recorded_org=recorded)
            self._check_models_known(definition, target.spec.models())
            before, after = self._effect(connection, scope, purpose, target.spec)
            models = {after.profile.model, *after.profile.fallbacks} if after else set()
            self._check_credentials(connection, scope, after, models)
            result = self.store.append_version(
                connection,
                scope=scope,
                purpose=purpose,
                spec=target.spec,
                created_by=actor.name,
                reason=reason or f"rollback to version {number}",
                rollback_of=number,
            )
            self._audit(
                connection,
                actor,
                "rollback",
                result.version,
                result.previous,
                reason or f"rollback to version {number}",
            )
            return _Change(
                version=result.version, previous=result.previous, before=before, after=after
            )

        return self.store.write(work)

    def history(self, scope: Scope, purpose: str) -> list[ProfileVersion]:
        """Every version of (scope, purpose), oldest first."""
        self.purposes.get_purpose(purpose)
        return self.store.history(scope, purpose)

    def active(self, scope: Scope, purpose: str | None = None) -> list[ProfileVersion]:
        """The active versions set at exactly `scope`."""
        return self.store.active_at(scope, purpose)

    def diff(
        self, scope: Scope, purpose: str, *, a: int | None = None, b: int | None = None
    ) -> tuple[FieldChange, ...]:
        """Fields that differ from version `a` to version `b`.

        Defaults: `b` is the active version, `a` the one before `b`; version 0 is the empty
        profile before version 1.

        Raises:
            VersionNotFound: A version does not exist.
        """
        versions = {v.version: v for v in self.history(scope, purpose)}
        if not versions:
            raise VersionNotFound(f"profile {scope}/{purpose} has no versions")
        active = next((v.version for v in versions.values() if v.active), max(versions))
        right = b if b is not None else active
        left = a if a is not None else right - 1
        for number in (left, right):
            if number not in versions and number != 0:  # version 0: nothing set yet
                raise VersionNotFound(
                    f"profile {scope}/{purpose} has no version {number} "
                    f"(versions 1–{max(versions)})"
                )
        before = versions[left].spec if left in versions else None
        return diff_specs(before, versions[right].spec)

    def audit(
        self, *, scope: Scope | None = None, purpose: str | None = None, limit: int | None = None
    ) -> list[AuditEntry]:
        """Audit entries (profiles and credentials), oldest first."""
        return self.store.audit(scope=scope, purpose=purpose, limit=limit)

    # --- internals -----------------------------------------------------------------------
    @contextmanager
    def _audited_refusal(
        self,
        actor: Actor,
        attempted: AuditAction,
        scope: Scope,
        purpose: str,
        detail: Mapping[str, Any],
    ) -> Iterator[None]:
        # A refusal rolls its transaction back: the `refused` entry is written in its own.
        try:
            yield
        except (PermissionDenied, ProfileRefused) as exc:
            self.admins.record_refusal(
                actor,
                attempted=attempted,
                scope=scope,
                purpose=purpose,
                reason=str(exc),
                detail=detail,
            )
            raise

    def _recorded_org(self, connection: Connection, scope: Scope) -> str | None:
        return self.store.recorded_org(connection, scope.id) if scope.kind == "domain" else None

    def _effect(
        self, connection: Connection, scope: Scope, purpose: str, new_spec: ProfileSpec
    ) -> tuple[Resolution | None, Resolution | None]:
        """The resolution at `scope` itself before and after `new_spec` is activated."""
        domain, org = _chain_of(scope)
        active: dict[ActiveKey, ProfileVersion] = dict(
            self.store.active_for(purpose, domain=domain, org=org, connection=connection)
        )
        before = explain_resolution(
            domain, org, purpose, active=active, server_defaults=self.server_defaults
        )
        active[(scope.kind, scope.id)] = ProfileVersion(
            profile_id="(pending)",
            scope=scope,
            purpose=purpose,
            version=0,
            spec=new_spec,
            created_by="",
            created_at=self.store.clock(),
            activated_at=self.store.clock(),
            deactivated_at=None,
            reason="",
        )
        after = explain_resolution(
            domain, org, purpose, active=active, server_defaults=self.server_defaults
        )
        return before, after

    def _check_models_known(self, purpose: Purpose, models: Iterable[ModelRef]) -> None:
        if purpose.override == "open":
            return
        for ref in models:
            if not self.catalog.knows(ref.provider, ref.model):
                raise UnknownModel(
                    f"unknown model {ref} for purpose {purpose.key!r}: neither genai-prices nor "
                    "the fallback price registry knows it; add its price to the fallback "
                    "registry (or `control.known_models`), or use a purpose whose override "
                    "class is 'open'"
                )

    def _check_credentials(
        self,
        connection: Connection,
        scope: Scope,
        after: Resolution | None,
        models: Iterable[ModelRef],
    ) -> None:
        if after is None:
            return
        profile = after.profile
        domain, org = _chain_of(scope)
        if profile.credential_ref is not None:
            info = self.credentials.get_info(profile.credential_ref, connection=connection)
            if info is None:
                raise MissingCredential(
                    f"credential ref {profile.credential_ref!r} of {scope}/{profile.purpose} "
                    "does not exist (deleted?); set the credential again or choose another ref"
                )
            chain = credential_chain(domain, org)
            if (info.scope.kind, info.scope.id) not in chain:
                # Pointing a profile at another scope's key would bill that scope's account.
                allowed = ", ".join("global" if k == "global" else f"{k}:{i}" for k, i in chain)
                raise PermissionDenied(
                    f"credential ref {profile.credential_ref!r} belongs to {info.scope}, outside "
                    f"the scopes {scope} may use ({allowed})"
                )
        for provider in sorted({ref.provider for ref in models}):
            if provider in self.keyless_providers:
                continue
            found = self.credentials.find(
                provider,
                source=profile.credential_source,
                ref=profile.credential_ref,
                domain=domain,
                org=org,
                connection=connection,
            )
            if found is None:
                looked = (
                    "global (managed)"
                    if profile.credential_source == "managed"
                    else " then ".join(
                        f"{kind}:{ident}"
                        for kind, ident in (("domain", domain), ("org", org))
                        if ident
                    )
                    or "nowhere (byo needs a domain or org)"
                )
                hint = (
                    "--global"
                    if profile.credential_source == "managed"
                    else f"--{scope.kind} {scope.id}"
                )
                raise MissingCredential(
                    f"no credential for provider {provider!r} resolvable at {scope} "
                    f"(credential source {profile.credential_source}: looked at {looked}); "
                    f"set one with `comptroller credentials set --provider {provider} {hint}` "
                    "or list the provider in control.keyless_providers"
                )

    def _audit(
        self,
        connection: Connection,
        actor: Actor,
        action: AuditAction,
        version: ProfileVersion,
        previous: ProfileVersion | None,
        reason: str,
    ) -> None:
        before = (
            {"version": previous.version, "spec": previous.spec.to_json()} if previous else None
        )
        after: dict[str, Any] = {"version": version.version, "spec": version.spec.to_json()}
        if version.rollback_of is not None:
            after["rollback_of"] = version.rollback_of
        self.store.add_audit(
            connection,
            actor=actor.name,
            role=actor.role,
            action=action,
            scope=version.scope,
            purpose=version.purpose,
            version=version.version,
            before=before,
            after=after,
            reason=reason,
        )

    def _emit_change(self, name: str, change: _Change, actor: Actor, reason: str) -> None:
        version = change.version
        changes = diff_specs(change.previous.spec if change.previous else None, version.spec)
        detail: dict[str, Any] = {
            "changes": {c.field: {"before": c.before, "after": c.after} for c in changes}
        }
        if version.rollback_of is not None:
            detail["rollback_of"] = version.rollback_of
        attributes: dict[str, AttributeValue] = {
            semconv.PURPOSE: version.purpose,
            semconv.SCOPE_KIND: version.scope.kind,
            semconv.SCOPE_ID: version.scope.id,
            semconv.PROFILE_ID: version.profile_id,
            semconv.PROFILE_VERSION: version.version,
            semconv.ACTOR: actor.name,
            semconv.REASON: reason,
            semconv.PROFILE_DETAIL: json.dumps(detail, sort_keys=True),
        }
        if change.previous is not None:
            attributes[semconv.PROFILE_PREVIOUS_VERSION] = change.previous.version
        if change.after is not None:
            attributes[semconv.PROFILE_MODEL] = str(change.after.profile.model)
        self._emit(name, attributes)
        definition = self.purposes.get_purpose(version.purpose)
        old = change.before.profile.model if change.before else None
        new = change.after.profile.model if change.after else None
        if definition.embedding and old is not None and new is not None and old != new:
            warning = dict(attributes)
            warning[semconv.PROFILE_DETAIL] = json.dumps(
                {
                    "warning": "embedding_model_changed",
                    "before": str(old),
                    "after": str(new),
                    "message": (
                        f"embedding model of {version.scope} changed from {old} to {new}: "
                        "existing vectors are incompatible with new ones; re-embed them"
                    ),
                },
                sort_keys=True,
            )
            self._emit(semconv.EVENT_PROFILE_WARNING, warning)

    def _emit(self, name: str, attributes: Mapping[str, AttributeValue]) -> None:
        if self.events is None:
            return
        try:
            self.events.emit(name, attributes)
        except Exception as exc:
            # The change is committed; telemetry trouble must not turn it into an error.
            _log.warning("profile event %s was not emitted (%s)", name, type(exc).__name__)


if TYPE_CHECKING:

    def _is_a_resolver(service: ProfileService) -> ProfileResolver:
        return service  # mypy proves ProfileService satisfies the guarded call's protocol
