"""OAuth credentials that refresh: the stored bundle, the `refresh_token` grant, and the locks
that let one thread of one process per credential run the grant.

An `oauth` credential is sealed like an API key, but its plaintext is the JSON of an
`OAuthBundle`. The call path only ever sees its access token; `CredentialStore` renews it with
the refresh token shortly before it expires (or after a 401) and rotates the sealed value in
place, so the credential's `ref` never changes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlsplit

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from comptroller._net import is_loopback
from comptroller.control._profile_errors import CredentialError

DEFAULT_EXPIRES_IN_S = 3600.0
"""Lifetime assumed when a token endpoint's answer has no `expires_in` (RFC 6749 §5.1 only
recommends it)."""


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
    if parts.scheme == "http" and is_loopback(host):
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
    except (TypeError, ValueError, OverflowError):
        lifetime = DEFAULT_EXPIRES_IN_S
    if isinstance(expires_in, bool) or not math.isfinite(lifetime) or lifetime <= 0:
        # NaN or infinity would be sealed into a bundle that no longer parses, and a lifetime
        # of zero would send every call to the token endpoint.
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


_LOCK_POLL_S = 0.01
_LOCK_POLL_MAX_S = 0.1


class ProcessRefreshLock:
    """Serialises the refresh of one credential across processes, and only that one.

    PostgreSQL: a session-level advisory lock keyed by the credential's ref, held on a
    connection of its own. SQLite: an exclusive `flock` on a lock file per credential beside
    the database. An in-memory SQLite database lives in one process: the thread locks
    (`RefreshLocks`) are enough. Neither takes the profile store's write lock, so a slow token
    endpoint delays only the calls that need that credential, never other writes.

    Args:
        engine: The profile store's engine.
        wait_s: How long to wait for another process's refresh before giving up.
    """

    def __init__(self, engine: Engine, *, wait_s: float) -> None:
        self._engine = engine
        self.wait_s = wait_s
        url = engine.url
        self._dialect = url.get_backend_name()
        database = url.database if self._dialect == "sqlite" else None
        self._dir: Path | None = None
        if database and database != ":memory:" and not database.startswith("file::memory:"):
            db = Path(database)
            self._dir = db.parent / f"{db.name}.oauth-locks"

    @contextlib.contextmanager
    def hold(self, ref: str) -> Iterator[None]:
        """Hold the lock of credential `ref`.

        Raises:
            CredentialRefreshFailed: Another process held it longer than `wait_s` (code
                `lock_timeout`).
        """
        if self._dialect == "postgresql":
            with self._advisory(ref):
                yield
        elif self._dir is not None:
            with self._flock(ref):
                yield
        else:
            yield

    def _timeout(self, ref: str) -> CredentialRefreshFailed:
        return CredentialRefreshFailed(
            f"OAuth credential {ref} is being refreshed by another process that has not "
            f"finished after {self.wait_s:g}s: lock_timeout. Retry the call; if it persists, "
            f"look for a process stuck holding {self._where(ref)}",
            ref=ref,
            code="lock_timeout",
        )

    def _where(self, ref: str) -> str:
        if self._dir is not None:
            return f"the lock file {self._dir / ref}.lock"
        return "its PostgreSQL advisory lock (pg_locks, locktype advisory)"

    @contextlib.contextmanager
    def _advisory(self, ref: str) -> Iterator[None]:
        digest = hashlib.sha256(f"comptroller.oauth-refresh:{ref}".encode()).digest()
        key = int.from_bytes(digest[:8], "big", signed=True)
        # Autocommit: the lock belongs to the session, and no transaction stays open while
        # the token endpoint answers.
        connection = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        locked = False
        try:
            deadline = time.monotonic() + self.wait_s
            pause = _LOCK_POLL_S
            while not connection.execute(
                sa.text("SELECT pg_try_advisory_lock(:key)"), {"key": key}
            ).scalar_one():
                if time.monotonic() >= deadline:
                    raise self._timeout(ref)
                time.sleep(pause)
                pause = min(pause * 2, _LOCK_POLL_MAX_S)
            locked = True
            yield
        finally:
            try:
                if locked:
                    connection.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": key})
            except Exception:
                # The session may be gone (which released the lock): do not pool it.
                connection.invalidate()
            finally:
                connection.close()

    @contextlib.contextmanager
    def _flock(self, ref: str) -> Iterator[None]:
        import fcntl

        from comptroller._private import private_dir

        assert self._dir is not None
        private_dir(self._dir)
        name = "".join(c if c.isalnum() or c in "_-" else "_" for c in ref)
        fd = os.open(self._dir / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            deadline = time.monotonic() + self.wait_s
            pause = _LOCK_POLL_S
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise self._timeout(ref) from None
                    time.sleep(pause)
                    pause = min(pause * 2, _LOCK_POLL_MAX_S)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)  # closing also releases the lock if unlocking was not reached
