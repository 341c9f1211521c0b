"""Errors of purposes, profiles and credentials.

Every one is a configuration or usage problem of an operator (the CLI exits with 2)::

    ComptrollerError
    ├── ProfileError                 a profile could not be read, resolved or changed
    │   ├── UnknownPurpose           the purpose is not declared (or its name is malformed)
    │   ├── ProfileNotFound          no scope sets a model for it and there is no server default
    │   ├── VersionNotFound          the version asked for does not exist
    │   ├── PermissionDenied         the actor's role may not make this change
    │   ├── ProfileRefused           configuration-time validation refused the change
    │   │   ├── UnknownModel         neither genai-prices nor the fallback registry knows it
    │   │   ├── ModelNotApproved     not among the platform-approved ids of the purpose
    │   │   └── MissingCredential    the scope cannot resolve a credential for the provider
    │   └── ProfileConflict          a concurrent write kept winning; retry
    └── CredentialError              a credential could not be stored or read
        ├── CredentialNotFound       nothing stored under that scope / provider / name
        ├── MasterKeyError           the master key is missing, malformed or unusable
        └── CredentialDecryptError   a stored secret does not open under the master key

Messages name the scope, purpose, provider and model involved, never a secret.
"""

from __future__ import annotations

from comptroller.errors import ComptrollerError


class ProfileError(ComptrollerError):
    """A profile could not be read, resolved or changed."""

    exit_code = 2


class UnknownPurpose(ProfileError):
    """The purpose is not declared in this deployment, or its name is malformed."""


class ProfileNotFound(ProfileError):
    """No scope sets a model for the purpose and no server default exists."""


class VersionNotFound(ProfileError):
    """The profile version asked for does not exist."""


class PermissionDenied(ProfileError):
    """The actor's role does not allow this change (the message says which role would)."""


class ProfileRefused(ProfileError):
    """Validation at configuration time refused the change."""


class UnknownModel(ProfileRefused):
    """Neither genai-prices nor the fallback price registry knows the model."""


class ModelNotApproved(ProfileRefused):
    """A scope admin picked a model that the platform has not approved for the purpose."""


class MissingCredential(ProfileRefused):
    """The scope cannot resolve a credential for the model's provider."""


class ProfileConflict(ProfileError):
    """Concurrent writes kept conflicting with this one; it was not applied."""


class CredentialError(ComptrollerError):
    """A credential could not be stored or read (never carries the secret)."""

    exit_code = 2


class CredentialNotFound(CredentialError):
    """Nothing is stored under that scope, provider and name."""


class MasterKeyError(CredentialError):
    """The master key is missing, malformed, or its file is unusable."""


class CredentialDecryptError(CredentialError):
    """A stored secret does not open under the master key in use."""
