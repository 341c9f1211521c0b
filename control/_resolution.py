"""Profile resolution: a pure precedence function, and the in-process cache in front of it.

The chain is domain → org → global → server default, most specific first. Each field of the
`ResolvedProfile` comes from the most specific scope that sets it, so a domain that sets only
the model of `reflection` inherits its budget, limits and defaults from the org.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

from comptroller.control._profile_types import (
    CallDefaults,
    ModelRef,
    ResolvedProfile,
    ScopeKind,
)
from comptroller.control._profiles import SPEC_FIELDS, ProfileVersion

ActiveKey: TypeAlias = tuple[ScopeKind, str]
"""(scope kind, scope id) of an active profile version; the id is empty for global."""

SERVER_DEFAULT = "server default"

_log = logging.getLogger("comptroller.control.profiles")


@dataclass(frozen=True, kw_only=True, slots=True)
class Resolution:
    """A resolved profile and, per field, the scope that supplied it."""

    profile: ResolvedProfile
    sources: Mapping[str, str]
    """Field name → `domain:acme-eu v3`, `org:acme v1`, `global v2` or `server default`."""


def _chain(domain_id: str | None, org_id: str | None) -> list[ActiveKey]:
    chain: list[ActiveKey] = []
    if domain_id:
        chain.append(("domain", domain_id))
    if org_id:
        chain.append(("org", org_id))
    chain.append(("global", ""))
    return chain


def explain_resolution(
    domain_id: str | None,
    org_id: str | None,
    purpose: str,
    *,
    active: Mapping[ActiveKey, ProfileVersion],
    server_defaults: Mapping[str, ModelRef],
) -> Resolution | None:
    """Resolve like `resolve_active_profile`, also saying where each field came from."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    contributor: ProfileVersion | None = None
    for key in _chain(domain_id, org_id):
        version = active.get(key)
        if version is None:
            continue
        for name in version.spec.set_fields():
            if name not in values:
                values[name] = getattr(version.spec, name)
                sources[name] = f"{version.scope} v{version.version}"
                if contributor is None:
                    contributor = version
    if "model" not in values:
        default = server_defaults.get(purpose)
        if default is None:
            return None
        values["model"] = default
        sources["model"] = SERVER_DEFAULT
    profile = ResolvedProfile(
        purpose=purpose,
        model=values["model"],
        fallbacks=values.get("fallbacks", ()),
        allow_cross_provider=values.get("allow_cross_provider", False),
        rate_limit=values.get("rate_limit"),
        budget=values.get("budget"),
        defaults=CallDefaults(
            temperature=values.get("temperature"),
            max_tokens=values.get("max_tokens"),
            timeout_s=values.get("timeout_s"),
        ),
        credential_source=values.get("credential_source", "managed"),
        credential_ref=values.get("credential_ref"),
        base_url=values.get("base_url"),
        degradation=values.get("degradation"),
        variant=values.get("variant"),
        profile_id=contributor.profile_id if contributor else None,
        version=contributor.version if contributor else None,
        scope_kind=contributor.scope.kind if contributor else "global",
        scope_id=(contributor.scope.id or None) if contributor else None,
    )
    ordered = {name: sources[name] for name in SPEC_FIELDS if name in sources}
    return Resolution(profile=profile, sources=ordered)


def resolve_active_profile(
    domain_id: str | None,
    org_id: str | None,
    purpose: str,
    *,
    active: Mapping[ActiveKey, ProfileVersion],
    server_defaults: Mapping[str, ModelRef],
) -> ResolvedProfile | None:
    """The effective profile of `purpose` at (domain, org): a pure precedence function.

    Args:
        domain_id: The tenant's domain (workspace), or None.
        org_id: The domain's org, or None.
        purpose: The purpose of the call.
        active: The active profile version of `purpose` per (scope kind, scope id); only the
            entries of this call's chain are read.
        server_defaults: The server-level model per purpose (configuration and
            `COMPTROLLER_MODEL_<PURPOSE>`).

    Returns:
        Field by field the most specific value, or None when no scope sets a model for
        `purpose` and there is no server default.
    """
    resolution = explain_resolution(
        domain_id, org_id, purpose, active=active, server_defaults=server_defaults
    )
    return resolution.profile if resolution is not None else None


CacheKey: TypeAlias = tuple[str, str | None, str | None]


class ResolutionCache:
    """Resolved profiles per (purpose, domain, org), invalidated by a store change counter.

    A write in this process calls `invalidate()` (effective at once); writes of other
    processes are seen by polling the store's change counter at most every `ttl_s`, so a
    stale entry lives at most `ttl_s` (plus one poll) after another process's write.
    """

    def __init__(
        self,
        *,
        ttl_s: float,
        poll: Callable[[], int],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl_s = ttl_s
        self._poll = poll
        self._clock = clock
        self._entries: dict[CacheKey, ResolvedProfile] = {}
        self._seen: int | None = None
        self._next_poll = float("-inf")
        self._generation = 0
        self._lock = threading.Lock()

    def get(self, key: CacheKey) -> ResolvedProfile | None:
        """The cached profile for `key`, after a change-counter poll if one is due."""
        if self._clock() >= self._next_poll:
            self._refresh()
        return self._entries.get(key)

    @property
    def generation(self) -> int:
        """Bumped at every invalidation; `put` ignores results computed before one."""
        return self._generation

    def put(self, key: CacheKey, profile: ResolvedProfile, generation: int) -> None:
        """Cache `profile` unless an invalidation happened since `generation` was read."""
        with self._lock:
            if generation == self._generation:
                self._entries[key] = profile

    def invalidate(self) -> None:
        """Drop every entry (a write of this process)."""
        with self._lock:
            self._generation += 1
            self._entries = {}

    def _refresh(self) -> None:
        with self._lock:
            now = self._clock()
            if now < self._next_poll:
                return  # another thread polled meanwhile
            # Schedule first: if the store is unreachable we keep serving what we have and try
            # again after one ttl, instead of hammering it on every call.
            self._next_poll = now + self._ttl_s
            try:
                seen = self._poll()
            except Exception as exc:
                _log.warning(
                    "profile store change poll failed (%s); serving cached profiles",
                    type(exc).__name__,
                )
                return
            if seen != self._seen:
                self._seen = seen
                self._generation += 1
                self._entries = {}
