"""The in-process control plane around LangChain chat models: what an application needs.

`ControlPlane(...).chat_model(purpose, ...)` returns a LangChain chat model whose every call
is routed, rate-limited, budgeted, retried, priced and traced. This package holds that, the
values to configure it in code (`StaticProfiles`, `ResolvedProfile`, …), the guards and sinks
to wire it, and the error types its calls raise. Profile, credential and role administration
is `comptroller.control.profiles`; test doubles are `comptroller.control.testing`.

Example:
    >>> from comptroller.control import ControlPlane  # doctest: +SKIP
    >>> model = ControlPlane().chat_model("reasoning", org="acme", domain="acme-eu", context="support")  # doctest: +SKIP
    >>> model.invoke("Summarise the ticket")  # doctest: +SKIP
"""

from typing import Any

from comptroller.control._call import CallInfo, CredentialResolver, RetryPolicy, current_call
from comptroller.control._chat_model import GuardedChatModel
from comptroller.control._circuit import CircuitPolicy, CircuitSnapshot, CircuitState
from comptroller.control._clock import Clock, SystemClock
from comptroller.control._errors import (
    BudgetError,
    BudgetExceeded,
    BudgetUnverifiable,
    CircuitOpen,
    ControlError,
    ExhaustedFallbacks,
    GuardUnavailable,
    ModelRefused,
    ProviderError,
    RateLimited,
    TruncatedStream,
    UnknownPrice,
)
from comptroller.control._guard import Guard, GuardKey, LedgerState, MemoryGuard, RedisGuard
from comptroller.control._otlp import OtlpSink, SpoolFull
from comptroller.control._plane import ControlPlane, StaticProfiles
from comptroller.control._profile_errors import (
    CredentialDecryptError,
    CredentialError,
    CredentialNotFound,
    MasterKeyError,
    MissingCredential,
    ModelNotApproved,
    PermissionDenied,
    ProfileConflict,
    ProfileError,
    ProfileNotFound,
    ProfileRefused,
    UnknownModel,
    UnknownPurpose,
    VersionNotFound,
)
from comptroller.control._profile_types import (
    BudgetSpec,
    CallDefaults,
    CredentialSource,
    DegradationPolicy,
    ModelRef,
    ProfileResolver,
    RateLimitSpec,
    ResolvedProfile,
    ScopeKind,
)
from comptroller.control._providers import ChatModelFactory, ModelSpec, ProviderRegistry
from comptroller.control._redact import Redactor
from comptroller.control._telemetry import EventEmitter, NullSink, TelemetrySink
from comptroller.pricing import Price, Pricer, Usage

__all__ = [
    "BudgetError",
    "BudgetExceeded",
    "BudgetSpec",
    "BudgetUnverifiable",
    "CallDefaults",
    "CallInfo",
    "ChatModelFactory",
    "CircuitOpen",
    "CircuitPolicy",
    "CircuitSnapshot",
    "CircuitState",
    "Clock",
    "ControlError",
    "ControlPlane",
    "CredentialDecryptError",
    "CredentialError",
    "CredentialNotFound",
    "CredentialResolver",
    "CredentialSource",
    "DegradationPolicy",
    "EventEmitter",
    "ExhaustedFallbacks",
    "Guard",
    "GuardKey",
    "GuardUnavailable",
    "GuardedChatModel",
    "LedgerState",
    "MasterKeyError",
    "MemoryGuard",
    "MissingCredential",
    "ModelNotApproved",
    "ModelRef",
    "ModelRefused",
    "ModelSpec",
    "NullSink",
    "OtlpSink",
    "PermissionDenied",
    "Price",
    "Pricer",
    "ProfileConflict",
    "ProfileError",
    "ProfileNotFound",
    "ProfileRefused",
    "ProfileResolver",
    "ProviderError",
    "ProviderRegistry",
    "RateLimitSpec",
    "RateLimited",
    "Redactor",
    "RedisGuard",
    "ResolvedProfile",
    "RetryPolicy",
    "ScopeKind",
    "SpoolFull",
    "StaticProfiles",
    "SystemClock",
    "TelemetrySink",
    "TruncatedStream",
    "UnknownModel",
    "UnknownPrice",
    "UnknownPurpose",
    "Usage",
    "VersionNotFound",
    "current_call",
]

_MOVED_TO_PROFILES = frozenset(
    [
        "ENV_MASTER_KEY",
        "Actor",
        "AdminRegistry",
        "AuditEntry",
        "Binding",
        "ConfiguredCatalog",
        "CredentialInfo",
        "CredentialKind",
        "CredentialStore",
        "FieldChange",
        "InMemoryProfileEvents",
        "MasterKeySource",
        "ModelCatalog",
        "OverrideClass",
        "ProfileEventEmitter",
        "ProfileService",
        "ProfileSpec",
        "ProfileStore",
        "ProfileVersion",
        "Purpose",
        "PurposeKey",
        "PurposeRegistry",
        "RecordedEvent",
        "Resolution",
        "Role",
        "Scope",
        "generate_master_key",
        "resolve_active_profile",
    ]
)


def __getattr__(name: str) -> Any:
    # Administration moved out of the application's surface: say where, rather than a bare
    # AttributeError.
    if name in _MOVED_TO_PROFILES:
        raise AttributeError(
            f"comptroller.control.{name} is administration: import it from "
            f"comptroller.control.profiles"
        )
    raise AttributeError(f"module 'comptroller.control' has no attribute {name!r}")
