"""The in-process control plane around LangChain chat models.

Example:
    >>> from comptroller.control import ControlPlane  # doctest: +SKIP
    >>> model = ControlPlane().chat_model("reasoning", org="acme", domain="acme-eu", context="support")  # doctest: +SKIP
    >>> model.invoke("Summarise the ticket")  # doctest: +SKIP
"""

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

# --- profiles, purposes & credentials (issue 3): add imports below this line ---
# isort: split
from comptroller.control._credentials import (
    ENV_MASTER_KEY,
    CredentialInfo,
    CredentialKind,
    CredentialStore,
    MasterKeySource,
    generate_master_key,
)
from comptroller.control._governance import Actor, Role
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
from comptroller.control._profile_events import (
    ConfiguredCatalog,
    InMemoryProfileEvents,
    ModelCatalog,
    ProfileEventEmitter,
    RecordedEvent,
)
from comptroller.control._profile_service import ProfileService
from comptroller.control._profile_store import ProfileStore
from comptroller.control._profiles import (
    AuditEntry,
    FieldChange,
    ProfileSpec,
    ProfileVersion,
    Scope,
)
from comptroller.control._purposes import OverrideClass, Purpose, PurposeKey, PurposeRegistry
from comptroller.control._resolution import Resolution, resolve_active_profile

# --- guarded call, limits, budgets, pricing, telemetry (issue 4): add imports below this line ---
# isort: split
# guarded call core (issue 4)
from comptroller.control._call import CallInfo, CredentialResolver, RetryPolicy, current_call
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
from comptroller.control._guard import (
    BudgetReconciler,
    Guard,
    GuardKey,
    LedgerState,
    MemoryGuard,
    Ticket,
    make_guard,
    make_reconciler,
)
from comptroller.control._guard_redis import RedisGuard
from comptroller.control._otlp import OtlpSink, SpoolFull
from comptroller.control._plane import ControlPlane, GuardedChatModel, StaticProfiles
from comptroller.control._providers import ChatModelFactory, ModelSpec, ProviderRegistry
from comptroller.control._telemetry import EventEmitter, NullSink, TelemetrySink
from comptroller.pricing import Price, Pricer, Usage

__all__ = [
    "ENV_MASTER_KEY",
    "Actor",
    "AuditEntry",
    "BudgetError",
    "BudgetExceeded",
    "BudgetReconciler",
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
    "ConfiguredCatalog",
    "ControlError",
    "ControlPlane",
    "CredentialDecryptError",
    "CredentialError",
    "CredentialInfo",
    "CredentialKind",
    "CredentialNotFound",
    "CredentialResolver",
    "CredentialSource",
    "CredentialStore",
    "DegradationPolicy",
    "EventEmitter",
    "ExhaustedFallbacks",
    "FieldChange",
    "Guard",
    "GuardKey",
    "GuardUnavailable",
    "GuardedChatModel",
    "InMemoryProfileEvents",
    "LedgerState",
    "MasterKeyError",
    "MasterKeySource",
    "MemoryGuard",
    "MissingCredential",
    "ModelCatalog",
    "ModelNotApproved",
    "ModelRef",
    "ModelRefused",
    "ModelSpec",
    "NullSink",
    "OtlpSink",
    "OverrideClass",
    "PermissionDenied",
    "Price",
    "Pricer",
    "ProfileConflict",
    "ProfileError",
    "ProfileEventEmitter",
    "ProfileNotFound",
    "ProfileRefused",
    "ProfileResolver",
    "ProfileService",
    "ProfileSpec",
    "ProfileStore",
    "ProfileVersion",
    "ProviderError",
    "ProviderRegistry",
    "Purpose",
    "PurposeKey",
    "PurposeRegistry",
    "RateLimitSpec",
    "RateLimited",
    "RecordedEvent",
    "RedisGuard",
    "Resolution",
    "ResolvedProfile",
    "RetryPolicy",
    "Role",
    "Scope",
    "ScopeKind",
    "SpoolFull",
    "StaticProfiles",
    "SystemClock",
    "TelemetrySink",
    "Ticket",
    "TruncatedStream",
    "UnknownModel",
    "UnknownPrice",
    "UnknownPurpose",
    "Usage",
    "VersionNotFound",
    "current_call",
    "generate_master_key",
    "make_guard",
    "make_reconciler",
    "resolve_active_profile",
]
