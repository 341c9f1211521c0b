"""A local OAuth 2.0 token endpoint answering the `refresh_token` grant, for testing OAuth
credentials (`comptroller credentials set --kind oauth`) without an identity provider."""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
from collections import deque
from typing import Any
from urllib.parse import parse_qsl

from comptroller.control.testing._http_server import LocalHttpServer


class FakeTokenServer(LocalHttpServer):
    """`POST /token` with `grant_type=refresh_token`, on 127.0.0.1 (a real HTTP server).

    Every grant it answers issues a new access token and, with `rotate_refresh_tokens`, a new
    refresh token while the old one stops working, as identity providers that rotate refresh
    tokens do: a credential refreshed twice from the same refresh token fails the second time.

    Example:
        >>> with FakeTokenServer() as tokens:  # doctest: +SKIP
        ...     bundle = tokens.bundle(expires_at=time.time() + 30)
        ...     # comptroller credentials set --kind oauth … < bundle
    """

    _thread_name = "fake-token-endpoint"

    def __init__(
        self,
        *,
        lifetime_s: float = 3600.0,
        rotate_refresh_tokens: bool = True,
        client_id: str = "comptroller-test",
        client_secret: str | None = None,
        delay_s: float = 0.0,
    ) -> None:
        """Build a server (call `start`, or use it as a context manager).

        Args:
            lifetime_s: `expires_in` of the access tokens it issues.
            rotate_refresh_tokens: Issue a new refresh token with each grant (the old one is
                then refused with `invalid_grant`).
            client_id: The client it knows.
            client_secret: The client's secret, required with each grant when set.
            delay_s: How long each grant takes to answer (to widen races in tests).
        """
        super().__init__()
        self.lifetime_s = lifetime_s
        self.rotate_refresh_tokens = rotate_refresh_tokens
        self.client_id = client_id
        self.client_secret = client_secret
        self.delay_s = delay_s
        self.grants: list[dict[str, str]] = []
        """The form of every request received, in order."""
        self.issued: list[str] = []
        """Every access token issued, in order (the one `bundle()` made first)."""
        self.started = 0
        """How many requests have arrived, answered or not (one still waiting out `delay_s`
        counts here, not yet in `grants`)."""
        self._refresh_tokens: set[str] = set()
        self._failures: deque[tuple[int, str | None]] = deque()
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        """`http://127.0.0.1:<port>/token`: the bundle's `token_url`."""
        return f"http://127.0.0.1:{self.port}/token"

    def bundle(self, *, expires_at: float | None = None, scope: str | None = None) -> str:
        """A fresh credential bundle (JSON) this server will refresh: what the user stores
        with `comptroller credentials set --kind oauth` after authorising."""
        access, refresh = self._mint()
        data: dict[str, Any] = {
            "access_token": access,
            "refresh_token": refresh,
            "expires_at": expires_at if expires_at is not None else time.time() + self.lifetime_s,
            "token_url": self.url,
            "client_id": self.client_id,
        }
        if self.client_secret is not None:
            data["client_secret"] = self.client_secret
        if scope is not None:
            data["scope"] = scope
        return json.dumps(data)

    def fail(self, status: int = 400, error: str | None = "invalid_grant") -> None:
        """Answer the next grant with `status` and `{"error": error}` (no body when None)."""
        with self._lock:
            self._failures.append((status, error))

    def revoke_refresh_tokens(self) -> None:
        """Forget every refresh token (a user revoked the grant): refreshes then fail."""
        with self._lock:
            self._refresh_tokens.clear()

    def _mint(self) -> tuple[str, str]:
        with self._lock:
            access = f"at-{len(self.issued) + 1}-{secrets.token_hex(8)}"
            refresh = f"rt-{secrets.token_hex(12)}"
            self.issued.append(access)
            self._refresh_tokens.add(refresh)
        return access, refresh

    def _answer(self, form: dict[str, str]) -> tuple[int, dict[str, Any] | None]:
        with self._lock:
            self.grants.append(form)
            if self._failures:
                status, error = self._failures.popleft()
                return status, {"error": error} if error is not None else None
            if form.get("grant_type") != "refresh_token":
                return 400, {"error": "unsupported_grant_type"}
            if form.get("client_id") != self.client_id or (
                self.client_secret is not None and form.get("client_secret") != self.client_secret
            ):
                return 401, {"error": "invalid_client"}
            used = form.get("refresh_token", "")
            if used not in self._refresh_tokens:
                return 400, {"error": "invalid_grant"}
            if self.rotate_refresh_tokens:
                self._refresh_tokens.discard(used)
        access, refresh = self._mint()
        body: dict[str, Any] = {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": self.lifetime_s,
        }
        if self.rotate_refresh_tokens:
            body["refresh_token"] = refresh
        return 200, body

    def _app(self) -> Any:
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import JSONResponse, Response
        from starlette.routing import Route

        async def token(request: Request) -> Response:
            # Parsed by hand: Starlette's `request.form()` needs python-multipart.
            form = dict(parse_qsl((await request.body()).decode(), keep_blank_values=True))
            with self._lock:
                self.started += 1
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            status, body = self._answer(form)
            if body is None:
                return Response(status_code=status)
            return JSONResponse(body, status_code=status, headers={"cache-control": "no-store"})

        return Starlette(routes=[Route("/token", token, methods=["POST"])])
