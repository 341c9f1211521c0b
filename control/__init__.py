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

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from comptroller.control._attribution import (
        Attribution,
        InvalidAttribution,
        attribution,
        current_attribution,
    )
    from comptroller.control._call import CallInfo, CredentialResolver, RetryPolicy, current_call
    from comptroller.control._chat_model import GuardedChatModel
    from comptroller.control._circuit import CircuitPolicy, CircuitSnapshot, CircuitState
    from comptroller.control._clock import Clock, SystemClock
    from comptroller.control._embedders import Embedder, EmbeddingResult, EmbeddingsFactory
    from comptroller.control._embeddings import GuardedEmbeddings
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
        ProviderUnavailable,
        RateLimited,
        TruncatedStream,
        UnknownPrice,
    )
    from comptroller.control._guard import Guard, GuardKey, LedgerState, MemoryGuard, RedisGuard
    from comptroller.control._oauth import CredentialRefreshFailed, OAuthNotAllowed
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
    "Attribution",
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
    "CredentialRefreshFailed",
    "CredentialResolver",
    "CredentialSource",
    "DegradationPolicy",
    "Embedder",
    "EmbeddingResult",
    "EmbeddingsFactory",
    "EventEmitter",
    "ExhaustedFallbacks",
    "Guard",
    "GuardKey",
    "GuardUnavailable",
    "GuardedChatModel",
    "GuardedEmbeddings",
    "InvalidAttribution",
    "LedgerState",
    "MasterKeyError",
    "MemoryGuard",
    "MissingCredential",
    "ModelNotApproved",
    "ModelRef",
    "ModelRefused",
    "ModelSpec",
    "NullSink",
    "OAuthNotAllowed",
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
    "ProviderUnavailable",
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
    "attribution",
    "current_attribution",
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


_EXPORTS: dict[str, str] = {
    "Attribution": "comptroller.control._attribution",
    "InvalidAttribution": "comptroller.control._attribution",
    "attribution": "comptroller.control._attribution",
    "current_attribution": "comptroller.control._attribution",
    "BudgetError": "comptroller.control._errors",
    "BudgetExceeded": "comptroller.control._errors",
    "BudgetSpec": "comptroller.control._profile_types",
    "BudgetUnverifiable": "comptroller.control._errors",
    "CallDefaults": "comptroller.control._profile_types",
    "CallInfo": "comptroller.control._call",
    "ChatModelFactory": "comptroller.control._providers",
    "CircuitOpen": "comptroller.control._errors",
    "CircuitPolicy": "comptroller.control._circuit",
    "CircuitSnapshot": "comptroller.control._circuit",
    "CircuitState": "comptroller.control._circuit",
    "Clock": "comptroller.control._clock",
    "ControlError": "comptroller.control._errors",
    "ControlPlane": "comptroller.control._plane",
    "CredentialDecryptError": "comptroller.control._profile_errors",
    "CredentialError": "comptroller.control._profile_errors",
    "CredentialNotFound": "comptroller.control._profile_errors",
    "CredentialRefreshFailed": "comptroller.control._oauth",
    "CredentialResolver": "comptroller.control._call",
    "CredentialSource": "comptroller.control._profile_types",
    "DegradationPolicy": "comptroller.control._profile_types",
    "Embedder": "comptroller.control._embedders",
    "EmbeddingResult": "comptroller.control._embedders",
    "EmbeddingsFactory": "comptroller.control._embedders",
    "EventEmitter": "comptroller.control._telemetry",
    "ExhaustedFallbacks": "comptroller.control._errors",
    "Guard": "comptroller.control._guard",
    "GuardKey": "comptroller.control._guard",
    "GuardUnavailable": "comptroller.control._errors",
    "GuardedChatModel": "comptroller.control._chat_model",
    "GuardedEmbeddings": "comptroller.control._embeddings",
    "LedgerState": "comptroller.control._guard",
    "MasterKeyError": "comptroller.control._profile_errors",
    "MemoryGuard": "comptroller.control._guard",
    "MissingCredential": "comptroller.control._profile_errors",
    "ModelNotApproved": "comptroller.control._profile_errors",
    "ModelRef": "comptroller.control._profile_types",
    "ModelRefused": "comptroller.control._errors",
    "ModelSpec": "comptroller.control._providers",
    "NullSink": "comptroller.control._telemetry",
    "OAuthNotAllowed": "comptroller.control._oauth",
    "OtlpSink": "comptroller.control._otlp",
    "PermissionDenied": "comptroller.control._profile_errors",
    "Price": "comptroller.pricing",
    "Pricer": "comptroller.pricing",
    "ProfileConflict": "comptroller.control._profile_errors",
    "ProfileError": "comptroller.control._profile_errors",
    "ProfileNotFound": "comptroller.control._profile_errors",
    "ProfileRefused": "comptroller.control._profile_errors",
    "ProfileResolver": "comptroller.control._profile_types",
    "ProviderError": "comptroller.control._errors",
    "ProviderUnavailable": "comptroller.control._errors",
    "ProviderRegistry": "comptroller.control._providers",
    "RateLimitSpec": "comptroller.control._profile_types",
    "RateLimited": "comptroller.control._errors",
    "Redactor": "comptroller.control._redact",
    "RedisGuard": "comptroller.control._guard",
    "ResolvedProfile": "comptroller.control._profile_types",
    "RetryPolicy": "comptroller.control._call",
    "ScopeKind": "comptroller.control._profile_types",
    "SpoolFull": "comptroller.control._otlp",
    "StaticProfiles": "comptroller.control._plane",
    "SystemClock": "comptroller.control._clock",
    "TelemetrySink": "comptroller.control._telemetry",
    "TruncatedStream": "comptroller.control._errors",
    "UnknownModel": "comptroller.control._profile_errors",
    "UnknownPrice": "comptroller.control._errors",
    "UnknownPurpose": "comptroller.control._profile_errors",
    "Usage": "comptroller.pricing",
    "VersionNotFound": "comptroller.control._profile_errors",
    "current_call": "comptroller.control._call",
}
"""Where each public name lives. Loaded on first use (PEP 562), as langchain_core does, so
that `import comptroller.control` costs little and each name pays only for what it needs."""


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is not None:
        value = getattr(import_module(module), name)
        globals()[name] = value  # later lookups are plain attribute reads
        return value
    # Administration moved out of the application's surface: say where, rather than a bare
    # AttributeError.
    if name in _MOVED_TO_PROFILES:
        raise AttributeError(
            f"comptroller.control.{name} is administration: import it from "
            f"comptroller.control.profiles"
        )
    raise AttributeError(f"module 'comptroller.control' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
