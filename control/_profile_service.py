"""The profile service: cached resolution for calls, and the audited management API.

`ProfileService.resolve` is what the guarded call uses (it implements `ProfileResolver`);
`set_profile`, `rollback`, `history`, `diff` and `audit` are what operators use, each with
an explicit `Actor`: the store must bind its name to its role and scope (`_principal`), and
`_governance` checks what that role may change. Refused changes are audited as `refused`.

The reads (resolution, history, diff, audit) are in `_profile_reads`; the audit entries and
events of a committed change in `_profile_audit`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Connection

from comptroller import semconv
from comptroller.control._credential_crypto import MasterKeySource
from comptroller.control._credentials import CredentialStore
from comptroller.control._governance import Actor, authorize_profile_change
from comptroller.control._profile_audit import _audit_change, _Change, _emit_change
from comptroller.control._profile_checks import (
    _chain_of,
    _check_chain_providers,
    _check_credentials,
    _check_models_known,
)
from comptroller.control._profile_errors import (
    PermissionDenied,
    ProfileRefused,
    VersionNotFound,
)
from comptroller.control._profile_events import (
    ConfiguredCatalog,
    ModelCatalog,
    ProfileEventEmitter,
)
from comptroller.control._profile_reads import _ProfileReads
from comptroller.control._profile_store import ProfileStore
from comptroller.control._profile_types import ModelRef, ProfileResolver
from comptroller.control._profiles import (
    AuditAction,
    ProfileSpec,
    ProfileVersion,
    Scope,
)
from comptroller.control._purposes import Purpose, PurposeRegistry
from comptroller.control._resolution import (
    ActiveKey,
    Resolution,
    explain_resolution,
)
from comptroller.errors import UsageError

if TYPE_CHECKING:
    from comptroller.config import Settings


class ProfileService(_ProfileReads):
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
        wall_clock: Callable[[], float] | None = None,
    ) -> ProfileService:
        """The service over `url` (default: `settings.profile_store_url`).

        Args:
            settings: The settings in force.
            url: SQLAlchemy URL of the store, overriding the settings.
            events: Receives profile events (default: none).
            catalog: Known model ids (default: genai-prices + fallback registry + extras).
            environ: Environment for `COMPTROLLER_MASTER_KEY` (default: os.environ).
            clock: Monotonic clock of the resolution cache.
            wall_clock: Seconds since the epoch, compared with OAuth token expiries
                (default: the store's clock).
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
                store,
                MasterKeySource(settings.master_key_file, environ=environ),
                allow_oauth=settings.oauth_allowed,
                oauth_refresh_margin_s=settings.control.oauth_refresh_margin_s,
                oauth_timeout_s=settings.control.oauth_timeout_s,
                wall_clock=wall_clock,
            ),
            purposes=registry,
            server_defaults=server_defaults,
            catalog=catalog,
            keyless_providers=settings.control.keyless_providers,
            events=events,
            cache_ttl_s=settings.control.resolution_cache_ttl_s,
            clock=clock,
        )

    def __repr__(self) -> str:
        return f"ProfileService({self.store!r})"

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
        _emit_change(
            self.events, self.purposes, semconv.EVENT_PROFILE_ACTIVATED, change, actor, reason
        )
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
        _check_models_known(self.catalog, definition, spec.models())
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
            _check_chain_providers(scope, after)
            check_credentials = set(spec.models())
            if spec.credential_source is not None or spec.credential_ref is not None:
                check_credentials |= (
                    {after.profile.model, *after.profile.fallbacks} if after else set()
                )
            _check_credentials(
                self.credentials,
                self.keyless_providers,
                connection,
                scope,
                after,
                check_credentials,
            )
            result = self.store.append_version(
                connection,
                scope=scope,
                purpose=purpose,
                spec=new_spec,
                created_by=actor.name,
                reason=reason,
            )
            _audit_change(
                self.store, connection, actor, "activate", result.version, result.previous, reason
            )
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
        _emit_change(
            self.events,
            self.purposes,
            semconv.EVENT_PROFILE_ROLLED_BACK,
            change,
            actor,
            change.version.reason,
        )
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
            _check_models_known(self.catalog, definition, target.spec.models())
            before, after = self._effect(connection, scope, purpose, target.spec)
            _check_chain_providers(scope, after)
            models = {after.profile.model, *after.profile.fallbacks} if after else set()
            _check_credentials(
                self.credentials, self.keyless_providers, connection, scope, after, models
            )
            result = self.store.append_version(
                connection,
                scope=scope,
                purpose=purpose,
                spec=target.spec,
                created_by=actor.name,
                reason=reason or f"rollback to version {number}",
                rollback_of=number,
            )
            _audit_change(
                self.store,
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


if TYPE_CHECKING:

    def _is_a_resolver(service: ProfileService) -> ProfileResolver:
        return service  # mypy proves ProfileService satisfies the guarded call's protocol
