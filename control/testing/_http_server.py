"""A real HTTP server on a free local port, run by uvicorn in a background thread: what the
fake provider servers (`FakeOpenAIServer`, `FakeAnthropicServer`) share."""

from __future__ import annotations

import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, Self, TypeVar


class LocalHttpServer:
    """Serves the ASGI app of `_app()` on 127.0.0.1 (an ephemeral port) until `stop()`.

    Subclasses give the app, a thread name and, if they need them, more uvicorn settings.
    Usable as a context manager.
    """

    _thread_name = "fake-server"
    _backlog = 256
    _url_path = ""
    """What the SDK's `base_url` adds to the server's address (OpenAI's `/v1`)."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._server: Any = None
        self._socket: socket.socket | None = None
        self.port = 0

    def _app(self) -> Any:
        raise NotImplementedError

    @property
    def base_url(self) -> str:
        """The `base_url` to give the provider's SDK (or a comptroller profile).

        Raises:
            RuntimeError: The server is not started.
        """
        if not self.port:
            # Port 0 would send the SDK to a URL nothing listens on, failing far from here.
            raise RuntimeError(
                f"{type(self).__name__} is not started: use it as a context manager "
                f"(`with {type(self).__name__}() as server:`) or call start() first"
            )
        return f"http://127.0.0.1:{self.port}{self._url_path}"

    def _uvicorn_options(self) -> dict[str, Any]:
        """More `uvicorn.Config` settings (e.g. backlog, keep-alive)."""
        return {}

    def start(self) -> Self:
        """Start serving in a background thread; returns when the port accepts connections.

        Raises:
            RuntimeError: Already started (a second server would leak the first).
        """
        import uvicorn

        if self._thread is not None:
            raise RuntimeError(f"{type(self).__name__} is already started (port {self.port})")

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(self._backlog)
        self._socket = sock
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self._app(),
            log_level="error",
            lifespan="off",
            access_log=False,
            **self._uvicorn_options(),
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [sock]},
            daemon=True,
            name=self._thread_name,
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"{type(self).__name__} did not start within 10 s")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        """Stop serving and wait for the thread."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._socket is not None:
            self._socket.close()
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


B = TypeVar("B")
R = TypeVar("R", bound="ScriptedReply")

ReplyKind = Literal["ok", "rate_limited", "server_error", "overloaded", "truncated_stream"]


@dataclass(frozen=True, kw_only=True, slots=True)
class ScriptedReply:
    """One scripted answer of a fake provider server (see the class methods); each server
    answers a kind the way its API does (its own error type names, its own stream events)."""

    kind: ReplyKind = "ok"
    status: int = 200
    retry_after_s: float | None = None
    content: str | None = None
    """Text of the answer (default: the model behaviour's content)."""

    @classmethod
    def ok(cls, content: str | None = None) -> Self:
        """A normal answer."""
        return cls(content=content)

    @classmethod
    def rate_limited(cls, retry_after_s: float | None = 1.0) -> Self:
        """HTTP 429 with `retry-after`."""
        return cls(kind="rate_limited", status=429, retry_after_s=retry_after_s)

    @classmethod
    def server_error(cls, status: int = 500) -> Self:
        """An HTTP error with status `status`: 5xx by default, any other to script one
        (401 for an expired token, 400 for a refused request)."""
        return cls(kind="server_error", status=status)

    @classmethod
    def overloaded(cls) -> Self:
        """HTTP 529 ("overloaded, try later")."""
        return cls(kind="overloaded", status=529)

    @classmethod
    def truncated_stream(cls) -> Self:
        """A stream cut after its first text chunk, before its finish and its usage (a plain
        answer when not streaming)."""
        return cls(kind="truncated_stream")


@dataclass
class _ModelState(Generic[B, R]):
    behaviour: B
    script: deque[R] = field(default_factory=deque)


class ScriptedServer(LocalHttpServer, Generic[B, R]):
    """A fake provider server answering each model by its behaviour, or by the replies
    scripted for it first (`behave`, `script`). Subclasses name their reply type (`_reply`)
    and serve the API in `_app`, taking each answer from `_next`."""

    _behaviour: type[B]
    _reply: type[R]

    def __init__(self, default: B | None = None) -> None:
        """Build a server (call `start`, or use it as a context manager).

        Args:
            default: Behaviour of models not configured with `behave`.

        Raises:
            TypeError: `default` is not this server's behaviour type.
        """
        if default is not None:
            self._check_behaviour(default, "")
        super().__init__()
        default = default if default is not None else self._behaviour()
        self._default = default
        self._models: dict[str, _ModelState[B, R]] = {}
        self._lock = threading.Lock()
        self.requests: list[dict[str, Any]] = []
        """Every request body received, in order."""
        self.headers: list[dict[str, str]] = []
        """The headers of every request, in order."""
        self._counter = 0

    def behave(self, model: str, behaviour: B) -> None:
        """Answer requests for `model` with `behaviour`.

        Raises:
            TypeError: `behaviour` is another server's (it would fail inside the server,
                where the test sees only an HTTP 500).
        """
        self._check_behaviour(behaviour, ".behave")
        with self._lock:
            self._state(model).behaviour = behaviour

    def script(self, model: str, *replies: R) -> None:
        """Answer the next requests for `model` with `replies`, in order, then normally.

        Raises:
            TypeError: A reply is not a scripted reply (e.g. another server's).
        """
        name = self._reply.__name__
        for reply in replies:
            if not isinstance(reply, ScriptedReply):
                raise TypeError(
                    f"{type(self).__name__}.script takes {name} values (e.g. "
                    f"{name}.rate_limited(retry_after_s=2)), not {type(reply).__name__}"
                )
        with self._lock:
            self._state(model).script.extend(replies)

    def _check_behaviour(self, behaviour: object, method: str) -> None:
        wanted = self._behaviour.__name__
        if not isinstance(behaviour, self._behaviour):
            article = "an" if wanted[0] in "AEIOU" else "a"
            raise TypeError(
                f"{type(self).__name__}{method} takes {article} {wanted}, not "
                f"{type(behaviour).__name__}"
            )

    def _state(self, model: str) -> _ModelState[B, R]:
        state = self._models.get(model)
        if state is None:
            state = self._models[model] = _ModelState(behaviour=self._default)
        return state

    def _next(self, model: str) -> tuple[B, R, int]:
        """The behaviour and reply for the next request of `model`, and its number."""
        with self._lock:
            state = self._state(model)
            reply = state.script.popleft() if state.script else self._reply.ok()
            self._counter += 1
            return state.behaviour, reply, self._counter
