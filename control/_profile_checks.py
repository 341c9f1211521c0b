"""What a profile change must satisfy before it is written: known models, and a credential
the changed scope can resolve for every provider it calls."""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from sqlalchemy.engine import Connection

from comptroller._net import is_loopback
from comptroller.control._call._route import endpoint
from comptroller.control._credential_lookup import credential_chain
from comptroller.control._credentials import CredentialStore
from comptroller.control._profile_errors import (
    MissingCredential,
    PermissionDenied,
    ProfileRefused,
    UnknownModel,
)
from comptroller.control._profile_events import ModelCatalog
from comptroller.control._profile_types import ModelRef
from comptroller.control._profiles import Scope
from comptroller.control._provider_names import canonical_provider
from comptroller.control._purposes import Purpose
from comptroller.control._resolution import Resolution


def _chain_of(scope: Scope) -> tuple[str | None, str | None]:
    """(domain, org) of a call made at exactly `scope`."""
    if scope.kind == "domain":
        return scope.id, scope.org
    if scope.kind == "org":
        return None, scope.id
    return None, None


def _check_models_known(
    catalog: ModelCatalog, purpose: Purpose, models: Iterable[ModelRef]
) -> None:
    """Refuse a model the catalog does not know, unless the purpose is `open`; and a chat
    model for an embedding purpose, whatever its override class."""
    models = tuple(models)
    makes_text = getattr(catalog, "makes_text", None)
    if purpose.embedding and makes_text is not None:
        for ref in models:
            if makes_text(ref.provider, ref.model):
                raise ProfileRefused(
                    f"{ref} is a chat model (it is priced for output tokens), and purpose "
                    f"{purpose.key!r} makes embeddings: give it an embedding model, e.g. "
                    "openai:text-embedding-3-small"
                )
    if purpose.override == "open":
        return
    for ref in models:
        if not catalog.knows(ref.provider, ref.model):
            # `openai:gpt-4o@localhost:8000` is a model id: only `@http(s)://` starts an endpoint.
            hint = (
                "; an endpoint is written PROVIDER:MODEL@http://HOST… or @https://HOST…"
                if "@" in ref.model
                else ""
            )
            raise UnknownModel(
                f"unknown model {ref} for purpose {purpose.key!r}: neither genai-prices nor "
                "the fallback price registry knows it; add its price to the fallback "
                "registry (or `control.known_models`), or use a purpose whose override "
                f"class is 'open'{hint}"
            )


def _check_chain_providers(scope: Scope, after: Resolution | None) -> None:
    """Refuse a chain whose fallbacks leave the model's provider while the profile does not
    allow it: such a fallback would be accepted and then never tried."""
    if after is None or after.profile.allow_cross_provider:
        return
    profile = after.profile
    own = canonical_provider(profile.model.provider)
    crossing = [str(ref) for ref in profile.fallbacks if canonical_provider(ref.provider) != own]
    if crossing:
        raise ProfileRefused(
            f"{scope}/{profile.purpose}: fallback {', '.join(crossing)} leaves the model's "
            f"provider {own!r} and would never be tried; allow it with --cross-provider "
            "(allow_cross_provider = true) or remove the fallback"
        )


def _check_credentials(
    credentials: CredentialStore,
    keyless_providers: frozenset[str],
    connection: Connection,
    scope: Scope,
    after: Resolution | None,
    models: Iterable[ModelRef],
) -> None:
    """Refuse a profile whose scope cannot resolve a credential for each model's provider,
    or whose credential ref points outside the scopes it may use."""
    if after is None:
        return
    profile = after.profile
    domain, org = _chain_of(scope)
    if profile.credential_ref is not None:
        info = credentials.get_info(profile.credential_ref, connection=connection)
        if info is None:
            raise MissingCredential(
                f"credential ref {profile.credential_ref!r} of {scope}/{profile.purpose} "
                "does not exist (deleted?); set the credential again or choose another ref"
            )
        chain = credential_chain(domain, org)
        if (info.scope.kind, info.scope.id) not in chain:
            # Pointing a profile at another scope's key would bill that scope's account.
            allowed = ", ".join("global" if k == "global" else f"{k}:{i}" for k, i in chain)
            raise PermissionDenied(
                f"credential ref {profile.credential_ref!r} belongs to {info.scope}, outside "
                f"the scopes {scope} may use ({allowed})"
            )
    # A provider whose every model is served on this machine (a local OpenAI-compatible
    # server) needs no key: the call path builds it keyless, as it does for tests.
    remote = {ref.provider for ref in models if not _on_this_machine(endpoint(profile, ref))}
    for provider in sorted(remote):
        if provider in keyless_providers:
            continue
        found = credentials.find(
            provider,
            source=profile.credential_source,
            ref=profile.credential_ref,
            domain=domain,
            org=org,
            connection=connection,
        )
        if found is None:
            looked = (
                "global (managed)"
                if profile.credential_source == "managed"
                else " then ".join(
                    f"{kind}:{ident}" for kind, ident in (("domain", domain), ("org", org)) if ident
                )
                or "nowhere (byo needs a domain or org)"
            )
            hint = (
                "--global"
                if profile.credential_source == "managed"
                else f"--{scope.kind} {scope.id}"
            )
            raise MissingCredential(
                f"no credential for provider {provider!r} resolvable at {scope} "
                f"(credential source {profile.credential_source}: looked at {looked}); "
                f"set one with `comptroller credentials set --provider {provider} {hint}` "
                "or list the provider in control.keyless_providers"
            )


def _on_this_machine(url: str | None) -> bool:
    return url is not None and is_loopback(urlsplit(url).hostname or "")
