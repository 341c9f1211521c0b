"""The public surface of each package: what `__all__` promises exists and is public.

(Its order is ruff's RUF022, checked by `ruff check`.)"""

from __future__ import annotations

import importlib

import pytest

PACKAGES = [
    "comptroller",
    "comptroller.config",
    "comptroller.control",
    "comptroller.control.profiles",
    "comptroller.control.testing",
    "comptroller.collector",
    "comptroller.analytics",
    "comptroller.dashboards",
    "comptroller.tui",
]


@pytest.mark.parametrize("name", PACKAGES)
def test_all_is_public_and_importable(name: str) -> None:
    module = importlib.import_module(name)
    exported = list(module.__all__)
    assert len(exported) == len(set(exported)), f"{name}.__all__ repeats a name"
    for member in exported:
        assert not member.startswith("_") or member == "__version__", f"{name} exports {member}"
        assert getattr(module, member, None) is not None, f"{name}.{member} does not exist"


@pytest.mark.parametrize("name", PACKAGES)
def test_exported_errors_derive_from_comptroller_error(name: str) -> None:
    from comptroller.errors import ComptrollerError

    module = importlib.import_module(name)
    for member in module.__all__:
        value = getattr(module, member)
        if isinstance(value, type) and issubclass(value, Exception):
            assert issubclass(value, ComptrollerError), f"{name}.{member} is outside the error tree"


def test_the_application_surface_is_pinned_and_holds_no_administration() -> None:
    """`comptroller.control` is what an application developer needs: the control plane, the
    values that configure it, the guards and sinks that wire it, the errors its calls raise.
    Profile, credential and role administration is `comptroller.control.profiles`; adding a
    name here is a decision, made by changing this list."""
    import comptroller.control as control
    import comptroller.control.profiles as profiles

    assert set(control.__all__) == {
        *[
            "BudgetSpec",
            "CallDefaults",
            "CallInfo",
            "ChatModelFactory",
            "CircuitPolicy",
            "CircuitSnapshot",
        ],
        *["CircuitState", "Clock", "ControlPlane", "CredentialResolver", "CredentialSource"],
        *[
            "DegradationPolicy",
            "Embedder",
            "EmbeddingResult",
            "EmbeddingsFactory",
            "EventEmitter",
            "Guard",
            "GuardKey",
            "GuardedChatModel",
            "GuardedEmbeddings",
            "LedgerState",
        ],
        *[
            "MemoryGuard",
            "ModelRef",
            "ModelSpec",
            "NullSink",
            "OtlpSink",
            "Price",
            "Pricer",
            "ProfileResolver",
        ],
        *[
            "ProviderRegistry",
            "RateLimitSpec",
            "RedisGuard",
            "Redactor",
            "ResolvedProfile",
            "RetryPolicy",
        ],
        *["ScopeKind", "StaticProfiles", "SystemClock", "TelemetrySink", "Usage", "current_call"],
        # attribution of calls to end users, sessions, features and tags
        *["Attribution", "attribution", "current_attribution", "InvalidAttribution"],
        # errors
        *["BudgetError", "BudgetExceeded", "BudgetUnverifiable", "CircuitOpen", "ControlError"],
        *["CredentialDecryptError", "CredentialError", "CredentialNotFound", "ExhaustedFallbacks"],
        *["CredentialRefreshFailed", "OAuthNotAllowed"],
        *[
            "GuardUnavailable",
            "MasterKeyError",
            "MissingCredential",
            "ModelNotApproved",
            "ModelRefused",
        ],
        *[
            "PermissionDenied",
            "ProfileConflict",
            "ProfileError",
            "ProfileNotFound",
            "ProfileRefused",
        ],
        *[
            "ProviderError",
            "ProviderUnavailable",
            "RateLimited",
            "SpoolFull",
            "TruncatedStream",
            "UnknownModel",
            "UnknownPrice",
        ],
        *["UnknownPurpose", "VersionNotFound"],
    }
    for name in ("ProfileService", "CredentialStore", "Actor", "Scope", "AdminRegistry"):
        assert name in profiles.__all__
        with pytest.raises(AttributeError, match=r"comptroller\.control\.profiles"):
            getattr(control, name)
