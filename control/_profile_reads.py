"""The read side of the profile service: cached resolution for calls, history, diff and audit.

`ProfileService` (in `_profile_service`) adds the audited writes on top.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace as dataclass_replace

from comptroller.control._credentials import CredentialRefreshFailed, CredentialStore
from comptroller.control._principal import AdminRegistry
from comptroller.control._profile_errors import ProfileNotFound, VersionNotFound
from comptroller.control._profile_events import (
    ConfiguredCatalog,
    ModelCatalog,
    ProfileEventEmitter,
)
from comptroller.control._profile_store import ProfileStore
from comptroller.control._profile_types import ModelRef, ResolvedProfile
from comptroller.control._profiles import (
    AuditEntry,
    FieldChange,
    ProfileVersion,
    Scope,
    diff_specs,
)
from comptroller.control._purposes import PurposeRegistry
from comptroller.control._resolution import Resolution, ResolutionCache, explain_resolution


class _ProfileReads:
    """Resolution and the read-only management API over a profile store (see `ProfileService`
    for the arguments)."""

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
        shared = getattr(credentials, "admins", None)
        self.admins: AdminRegistry = (
            shared if isinstance(shared, AdminRegistry) else AdminRegistry(store)
        )
        """Who may act: admin bindings and tokens (`comptroller admin …`), one registry with
        the credential store."""
        self.credentials = credentials
        self.purposes = purposes
        self.server_defaults: Mapping[str, ModelRef] = dict(server_defaults or {})
        self.catalog: ModelCatalog = catalog or ConfiguredCatalog()
        self.keyless_providers = frozenset(keyless_providers)
        self.events = events
        self._cache = ResolutionCache(ttl_s=cache_ttl_s, poll=store.change_count, clock=clock)
        self._clock = clock
        # When (on `clock`) the first cached resolution holding an OAuth credential falls due
        # for a refresh; None while none does, so that API keys cost no check per call.
        self._refresh_due: float | None = None
        # A credential write changes `credential_revision` of resolved profiles: drop them now.
        credentials.on_change(self._cache.invalidate)

    def close(self) -> None:
        """Release the store's connections."""
        self.store.close()

    # --- resolution (the call path) ------------------------------------------------------
    def resolve(self, purpose: str, *, domain: str | None, org: str | None) -> ResolvedProfile:
        """The effective profile for `purpose` at (domain, org), from the cache when warm.

        Raises:
            UnknownPurpose: `purpose` is not declared.
            ProfileNotFound: No scope sets a model and there is no server default.
        """
        due = self._refresh_due
        if due is not None and self._clock() >= due:
            # An OAuth token a cached resolution (and the model built for its revision) uses
            # is about to expire: resolve again, which renews it and changes the revision.
            self._refresh_due = None
            self._cache.invalidate()
        key = (purpose, domain, org)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        generation = self._cache.generation
        resolution, deadline = self._explain(purpose, domain=domain, org=org, renew=True)
        self._cache.put(key, resolution.profile, generation)
        if deadline is not None:
            at = self._clock() + (deadline - self.credentials.wall_clock())
            current = self._refresh_due
            self._refresh_due = at if current is None else min(current, at)
        return resolution.profile

    def explain(self, purpose: str, *, domain: str | None, org: str | None) -> Resolution:
        """Resolve without the cache, saying which scope supplied each field.

        Raises:
            UnknownPurpose: `purpose` is not declared.
            ProfileNotFound: No scope sets a model and there is no server default.
        """
        return self._explain(purpose, domain=domain, org=org, renew=False)[0]

    def _explain(
        self, purpose: str, *, domain: str | None, org: str | None, renew: bool
    ) -> tuple[Resolution, float | None]:
        """The resolution, and when (epoch seconds) an OAuth credential it uses is due for a
        refresh; with `renew`, credentials already due are renewed first."""
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
        revision, deadline = self._credential_revision(
            resolution.profile, domain=domain, org=org, renew=renew
        )
        if revision is None:
            return resolution, deadline
        profile = dataclass_replace(resolution.profile, credential_revision=revision)
        return dataclass_replace(resolution, profile=profile), deadline

    def _credential_revision(
        self, profile: ResolvedProfile, *, domain: str | None, org: str | None, renew: bool
    ) -> tuple[str | None, float | None]:
        parts: list[str] = []
        deadline: float | None = None
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
            if info is not None and renew and info.kind == "oauth":
                try:
                    info, due = self.credentials.ensure_fresh(info)
                except CredentialRefreshFailed:
                    # Raised by the call that uses this credential (a fallback's must not
                    # fail the primary's calls); resolve again when a retry is due.
                    due = self.credentials.wall_clock() + 5.0
                if due is not None:
                    deadline = due if deadline is None else min(deadline, due)
            stamp = (
                f"{info.ref}@{info.updated_at.isoformat()}#{info.revision}"
                if info is not None
                else "-"
            )
            parts.append(f"{provider}={stamp}")
        if not parts:
            return None, deadline
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16], deadline

    def invalidate(self) -> None:
        """Drop cached resolutions now (writes of this service do it themselves)."""
        self._cache.invalidate()

    # --- history -----------------------------------------------------------------------
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
