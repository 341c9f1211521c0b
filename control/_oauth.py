"""OAuth credentials that refresh: the stored bundle, the `refresh_token` grant, and the lock
that lets one thread per credential run the grant.

An `oauth` credential is sealed like an API key, but its plaintext is the JSON of an
`OAuthBundle`. The call path only ever sees its access token; `CredentialStore` renews it with
the refresh token shortly before it expires (or after a 401) and rotates the sealed value in
place, so the credential's `ref` never changes.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from dataclasses import asdict, dataclass, replace
from typing import Any, Self
from urllib.parse import urlsplit

from comptroller.control._profile_errors import CredentialError

DEFAULT_EXPIRES_IN_S = 3600.0
"""Lifetime assumed when a token endpoint's answer has no `expires_in` (RFC 6749 §5.1 only
recommends it)."""
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


class OAuthNotAllowed(CredentialError):
    """OAuth credentials are turned off (`control.allow_oauth_credentials`)."""


class CredentialRefreshFailed(CredentialError):
    """The token endpoint did not renew an OAuth credential (names the credential and the
    endpoint's error code, never a token)."""

    def __init__(self, message: str, *, ref: str, code: str) -> None:
        super().__init__(message)
        self.ref = ref
        self.code = code


@dataclass(frozen=True, kw_only=True, slots=True)
class OAuthBundle:
    """What an `oauth` credential holds (its JSON is the sealed secret).

    `repr` shows where it refreshes and when it expires, never a token or the client secret.
    """

    access_token: str
    refresh_token: str
    expires_at: float
    """Seconds since the epoch at which the access token stops working."""
    token_url: str
    client_id: str
    client_secret: str | None = None
    scope: str | None = None

    def __repr__(self) -> str:
        return (
            f"OAuthBundle(token_url={self.token_url!r}, client_id={self.client_id!r}, "
            f"expires_at={self.expires_at})"
        )

    @classmethod
    def parse(cls, text: str) -> Self:
        """The bundle in `text` (JSON), checked.

        Raises:
            ValueError: Not JSON, a field missing or of the wrong type, an insecure token URL.
                The message names fields, never their values.
        """
        try:
            data = json.loads(text)
        except ValueError:
            raise ValueError(
                "an OAuth credential is a JSON object with access_token, refresh_token, "
                "expires_at (epoch seconds), token_url and client_id (optional "
                "client_secret, scope); what was given is not JSON"
            ) from None
        if not isinstance(data, dict):
            raise ValueError("an OAuth credential is a JSON object, not a list or a scalar")
        texts = ("access_token", "refresh_token", "token_url", "client_id")
        missing = [name for name in (*texts, "expires_at") if name not in data]
        if missing:
            raise ValueError(f"the OAuth credential lacks {', '.join(missing)}")
        unknown = sorted(set(data) - {f for f in cls.__dataclass_fields__})
        if unknown:
            raise ValueError(f"the OAuth credential has unknown fields {', '.join(unknown)}")
        for name in (*texts, "client_secret", "scope"):
            value = data.get(name)
            if name in texts and (not isinstance(value, str) or not value.strip()):
                raise ValueError(f"the OAuth credential's {name} must be a non-empty string")
            if value is not None and not isinstance(value, str):
                raise ValueError(f"the OAuth credential's {name} must be a string")
        expires = data["expires_at"]
        if (
            isinstance(expires, bool)
            or not isinstance(expires, int | float)
            or not math.isfinite(expires)
        ):
            raise ValueError("the OAuth credential's expires_at must be epoch seconds (a number)")
        _check_token_url(data["token_url"])
        return cls(**{**data, "expires_at": float(expires)})

    def to_json(self) -> str:
        """The JSON that is sealed (fields left unset are omitted)."""
        return json.dumps(
            {k: v for k, v in asdict(self).items() if v is not None}, separators=(",", ":")
        )

    def secrets(self) -> tuple[str, ...]:
        """Every secret part (for the redactor)."""
        return tuple(s for s in (self.access_token, self.refresh_token, self.client_secret) if s)


def fingerprint(token: str) -> str:
    """A short digest telling tokens apart without keeping them."""
    return hashlib.sha256(token.encode()).hexdigest()[:16]


def _check_token_url(url: str) -> None:
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme == "https" and host:
        return
    if parts.scheme == "http" and host in _LOOPBACK:
        return  # a token endpoint on this machine (development, tests)
    raise ValueError(
        "the OAuth credential's token_url must be an https:// URL (plain http only on "
        "127.0.0.1/localhost): the refresh token and client secret are sent to it"
    )


def refresh_grant(bundle: OAuthBundle, *, now: float, timeout_s: float) -> OAuthBundle | str:
    """Run the `refresh_token` grant (RFC 6749 §6) at the bundle's token endpoint.

    Returns:
        The renewed bundle (the old refresh token kept unless the endpoint issued a new one),
        or the endpoint's error code (`invalid_grant`, `http_503`, `unreachable`, …) — never
        anything the endpoint said besides a code, since an error body may echo a token.
    """
    import httpx

    form = {
        "grant_type": "refresh_token",
        "refresh_token": bundle.refresh_token,
        "client_id": bundle.client_id,
    }
    if bundle.client_secret:
        form["client_secret"] = bundle.client_secret
    if bundle.scope:
        form["scope"] = bundle.scope
    try:
        response = httpx.post(
            bundle.token_url,
            data=form,
            headers={"Accept": "application/json"},
            timeout=timeout_s,
            follow_redirects=False,
        )
    except httpx.TimeoutException:
        return "timeout"
    except httpx.HTTPError:
        return "unreachable"
    body = _json_object(response)
    if response.status_code != 200:
        code = body.get("error") if body is not None else None
        if isinstance(code, str) and code.isascii() and code.replace("_", "").isalnum():
            return code[:64]
        return f"http_{response.status_code}"
    if body is None:
        return "invalid_response"
    access = body.get("access_token")
    if not isinstance(access, str) or not access:
        return "invalid_response"
    expires_in = body.get("expires_in", DEFAULT_EXPIRES_IN_S)
    try:
        lifetime = float(expires_in)
    except (TypeError, ValueError):
        lifetime = DEFAULT_EXPIRES_IN_S
    rotated = body.get("refresh_token")
    return replace(
        bundle,
        access_token=access,
        refresh_token=rotated if isinstance(rotated, str) and rotated else bundle.refresh_token,
        expires_at=now + lifetime,
    )


def _json_object(response: Any) -> dict[str, Any] | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


class RefreshLocks:
    """One lock per credential ref, so that one thread of this process runs its grant while
    the others wait and then find it renewed."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    def of(self, ref: str) -> threading.Lock:
        """The lock of `ref`."""
        with self._guard:
            lock = self._locks.get(ref)
            if lock is None:
                lock = self._locks[ref] = threading.Lock()
            return lock
