"""Profile values as stored: scopes, partial specs, versions, audit entries, diffs.

A `ProfileSpec` is what one scope sets for one purpose; every field is optional, and a field
left unset inherits from the next scope of the chain (domain → org → global → server
default). Specs are stored as JSON, so adding a field needs no schema migration.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal, TypeAlias, cast

from comptroller.control._profile_types import (
    BudgetSpec,
    CredentialSource,
    DegradationPolicy,
    ModelRef,
    RateLimitSpec,
    ScopeKind,
)

AuditAction: TypeAlias = Literal[
    "activate",
    "rollback",
    "credential_set",
    "credential_delete",
    "master_key_rotated",
    "refused",
    "admin_init",
    "admin_grant",
    "admin_revoke",
    "token_mint",
    "token_revoke",
]

_SCOPE_KINDS: tuple[ScopeKind, ...] = ("global", "org", "domain")


@dataclass(frozen=True, kw_only=True, slots=True)
class Scope:
    """Where a profile or credential applies: global, an org, or a domain of an org."""

    kind: ScopeKind
    id: str = ""
    """The org or domain id; empty for the global scope."""
    org: str | None = None
    """For a domain: the org it belongs to (governs which org admin may write it)."""

    def __post_init__(self) -> None:
        if self.kind not in _SCOPE_KINDS:
            raise ValueError(f"scope kind must be one of {_SCOPE_KINDS}, got {self.kind!r}")
        if self.kind == "global" and (self.id or self.org):
            raise ValueError("the global scope has no id and no org")
        if self.kind != "global" and not self.id:
            raise ValueError(f"a {self.kind} scope needs an id")
        if self.kind == "org" and self.org not in (None, self.id):
            raise ValueError("an org scope has no parent org")

    @classmethod
    def global_(cls) -> Scope:
        """The global scope (platform defaults)."""
        return cls(kind="global")

    @classmethod
    def of_org(cls, org: str) -> Scope:
        """The scope of one org."""
        return cls(kind="org", id=org)

    @classmethod
    def of_domain(cls, domain: str, *, org: str | None) -> Scope:
        """The scope of one domain (a tenant's workspace) of `org`."""
        return cls(kind="domain", id=domain, org=org)

    @classmethod
    def parse(cls, text: str, *, org: str | None = None) -> Scope:
        """Parse `global`, `org:<id>` or `domain:<id>` (with the domain's `org`)."""
        if text == "global":
            return cls.global_()
        kind, sep, ident = text.partition(":")
        if not sep or kind not in ("org", "domain", "workspace") or not ident:
            raise ValueError(f"expected 'global', 'org:<id>' or 'domain:<id>', got {text!r}")
        if kind == "org":
            return cls.of_org(ident)
        return cls.of_domain(ident, org=org)

    def __str__(self) -> str:
        return "global" if self.kind == "global" else f"{self.kind}:{self.id}"


@dataclass(frozen=True, kw_only=True, slots=True)
class ProfileSpec:
    """What one scope sets for one purpose; None means "inherit from the next scope"."""

    model: ModelRef | None = None
    fallbacks: tuple[ModelRef, ...] | None = None
    allow_cross_provider: bool | None = None
    rate_limit: RateLimitSpec | None = None
    budget: BudgetSpec | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    timeout_s: float | None = None
    credential_source: CredentialSource | None = None
    credential_ref: str | None = None
    base_url: str | None = None
    degradation: DegradationPolicy | None = None
    variant: str | None = None

    def __post_init__(self) -> None:
        # A written profile names each provider once, so that a `gcp.gemini:` model with a
        # `google:` fallback is one provider to the chain (and to credentials and pricing).
        if self.model is not None:
            object.__setattr__(self, "model", self.model.canonical())
        if self.fallbacks is not None:
            object.__setattr__(self, "fallbacks", tuple(ref.canonical() for ref in self.fallbacks))

    def set_fields(self) -> tuple[str, ...]:
        """Names of the fields this spec sets, in declaration order."""
        return tuple(f.name for f in fields(self) if getattr(self, f.name) is not None)

    def updated(self, other: ProfileSpec, *, unset: tuple[str, ...] = ()) -> ProfileSpec:
        """This spec with the fields `other` sets, minus the fields named in `unset`."""
        changes: dict[str, Any] = {name: getattr(other, name) for name in other.set_fields()}
        for name in unset:
            if name not in SPEC_FIELDS:
                raise ValueError(
                    f"unknown profile field {name!r}; fields: {', '.join(SPEC_FIELDS)}"
                )
            changes[name] = None
        return replace(self, **changes)

    def models(self) -> tuple[ModelRef, ...]:
        """The primary model and the fallbacks this spec sets."""
        out = [self.model] if self.model is not None else []
        return (*out, *(self.fallbacks or ()))

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict of the set fields (decimals as strings, models as text:
        `provider:model`, or `provider:model@URL` for a model at its own endpoint)."""
        out: dict[str, Any] = {}
        for name in self.set_fields():
            out[name] = _encode(getattr(self, name))
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ProfileSpec:
        """Rebuild a spec from `to_json` output."""
        unknown = set(data) - set(SPEC_FIELDS)
        if unknown:
            raise ValueError(f"unknown profile fields {sorted(unknown)}")
        kwargs: dict[str, Any] = {}
        for name, value in data.items():
            if value is None:
                continue
            kwargs[name] = _decode(name, value)
        return cls(**kwargs)

    def dumps(self) -> str:
        """Canonical JSON text (sorted keys), as stored."""
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def loads(cls, text: str) -> ProfileSpec:
        """Parse `dumps` output."""
        return cls.from_json(json.loads(text))


SPEC_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(ProfileSpec))


def _encode(value: object) -> Any:
    if isinstance(value, ModelRef):
        return value.to_text()
    if isinstance(value, tuple):
        return [_encode(item) for item in value]
    if isinstance(value, RateLimitSpec | DegradationPolicy):
        return {f.name: getattr(value, f.name) for f in fields(value)}
    if isinstance(value, BudgetSpec):
        return {"daily_usd": str(value.daily_usd)}
    return value


def _decode(name: str, value: Any) -> Any:
    if name == "model":
        return ModelRef.parse(_ref_text(name, value))
    if name == "fallbacks":
        if not isinstance(value, list | tuple):
            raise ValueError(f"fallbacks must be a list of 'provider:model[@URL]', got {value!r}")
        return tuple(ModelRef.parse(_ref_text(name, item)) for item in value)
    if name == "rate_limit":
        return RateLimitSpec(**value)
    if name == "budget":
        # str() first: a TOML or JSON number is a float, whose Decimal is not the written one.
        return BudgetSpec(daily_usd=Decimal(str(value["daily_usd"])))
    if name == "degradation":
        return DegradationPolicy(**value)
    if name == "credential_source":
        if value not in ("managed", "byo"):
            raise ValueError(f"credential_source must be 'managed' or 'byo', got {value!r}")
        return cast(CredentialSource, value)
    return value


def _ref_text(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{name} must be text 'provider:model[@URL]', got {value!r}")
    return value


def read_profile_set(text: str, *, json_format: bool = False) -> dict[str, ProfileSpec]:
    """Parse a profile file: one spec per purpose, in the fields of `ProfileSpec.to_json`.

    TOML (default) holds a table per purpose, `[profiles.reasoning]`; JSON holds the same
    as `{"profiles": {"reasoning": {...}}}`. Example:

        [profiles.reasoning]
        model = "anthropic:claude-opus-4-7"
        fallbacks = ["anthropic:claude-sonnet-4-6", "anthropic:claude-haiku-4-5"]

    Raises:
        ValueError: Not TOML/JSON, no `profiles` table, or a spec that does not parse
            (naming the purpose).
    """
    try:
        data = json.loads(text) if json_format else tomllib.loads(text)
    except ValueError as exc:  # JSONDecodeError and TOMLDecodeError are ValueErrors
        kind = "JSON" if json_format else "TOML"
        raise ValueError(f"not valid {kind}: {exc}") from None
    table = data.get("profiles") if isinstance(data, dict) else None
    if not isinstance(table, dict) or not table:
        raise ValueError(
            "expected a non-empty 'profiles' table with one entry per purpose, e.g. "
            '[profiles.reasoning] model = "anthropic:claude-opus-4-7"'
        )
    out: dict[str, ProfileSpec] = {}
    for purpose, entry in table.items():
        if not isinstance(entry, dict):
            raise ValueError(f"profiles.{purpose} must be a table of profile fields")
        try:
            spec = ProfileSpec.from_json(entry)
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"profiles.{purpose}: {exc}") from None
        if not spec.set_fields():
            raise ValueError(f"profiles.{purpose} sets no field; fields: {', '.join(SPEC_FIELDS)}")
        out[purpose] = spec
    return out


def profile_id(scope: Scope, purpose: str) -> str:
    """The stable id of the profile of (scope, purpose), e.g. `org:acme/reasoning`."""
    return f"{scope}/{purpose}"


@dataclass(frozen=True, kw_only=True, slots=True)
class ProfileVersion:
    """One numbered, append-only version of the profile of (scope, purpose)."""

    profile_id: str
    scope: Scope
    purpose: str
    version: int
    spec: ProfileSpec
    created_by: str
    created_at: datetime
    activated_at: datetime
    deactivated_at: datetime | None
    """None while this version is the active one."""
    reason: str
    rollback_of: int | None = None
    """The version this one re-activated, for a rollback."""

    @property
    def active(self) -> bool:
        """Whether this is the active version of its profile."""
        return self.deactivated_at is None


@dataclass(frozen=True, kw_only=True, slots=True)
class AuditEntry:
    """Who changed what, when, from what to what, and why. Never holds a secret."""

    id: int
    at: datetime
    actor: str
    role: str
    action: AuditAction
    scope: Scope
    purpose: str | None
    version: int | None
    before: Mapping[str, Any] | None
    after: Mapping[str, Any] | None
    reason: str


@dataclass(frozen=True, kw_only=True, slots=True)
class FieldChange:
    """One field that differs between two specs (JSON-encoded values, None = unset)."""

    field: str
    before: Any
    after: Any


def diff_specs(before: ProfileSpec | None, after: ProfileSpec | None) -> tuple[FieldChange, ...]:
    """The fields that differ between two specs, in field order."""
    a = before.to_json() if before is not None else {}
    b = after.to_json() if after is not None else {}
    return tuple(
        FieldChange(field=name, before=a.get(name), after=b.get(name))
        for name in SPEC_FIELDS
        if a.get(name) != b.get(name)
    )
