"""Profile, credential and admin administration: what operators and org admins use.

Applications that only make calls need `comptroller.control`; this package is for the code
and tools that change profiles, rotate credentials and grant roles (the `comptroller
profiles …`, `credentials …` and `admin …` commands are built on it).

Example:
    >>> from comptroller.control.profiles import ProfileService, ProfileSpec, Scope  # doctest: +SKIP
    >>> service = ProfileService.from_settings(settings)  # doctest: +SKIP
    >>> actor = service.admins.os_principal(role="platform")  # doctest: +SKIP
    >>> service.set_profile(Scope.global_(), "reasoning", ProfileSpec(model="openai:gpt-4o"), actor=actor)  # doctest: +SKIP
"""

from comptroller.control._admin_grants import Binding
from comptroller.control._credential_crypto import (
    ENV_MASTER_KEY,
    MasterKeySource,
    generate_master_key,
)
from comptroller.control._credential_lookup import CredentialInfo, CredentialKind
from comptroller.control._credentials import CredentialStore
from comptroller.control._governance import Actor, Role
from comptroller.control._oauth import CredentialRefreshFailed, OAuthBundle, OAuthNotAllowed
from comptroller.control._os_identity import os_identity
from comptroller.control._principal import AdminRegistry
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

__all__ = [
    "ENV_MASTER_KEY",
    "Actor",
    "AdminRegistry",
    "AuditEntry",
    "Binding",
    "ConfiguredCatalog",
    "CredentialDecryptError",
    "CredentialError",
    "CredentialInfo",
    "CredentialKind",
    "CredentialNotFound",
    "CredentialRefreshFailed",
    "CredentialStore",
    "FieldChange",
    "InMemoryProfileEvents",
    "MasterKeyError",
    "MasterKeySource",
    "MissingCredential",
    "ModelCatalog",
    "ModelNotApproved",
    "OAuthBundle",
    "OAuthNotAllowed",
    "OverrideClass",
    "PermissionDenied",
    "ProfileConflict",
    "ProfileError",
    "ProfileEventEmitter",
    "ProfileNotFound",
    "ProfileRefused",
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
    "UnknownModel",
    "UnknownPurpose",
    "VersionNotFound",
    "generate_master_key",
    "os_identity",
    "resolve_active_profile",
]
