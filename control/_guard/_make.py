"""`make_guard`: the backend the settings name."""

from __future__ import annotations

from typing import TYPE_CHECKING

from comptroller.control._guard._kernel import Guard
from comptroller.control._guard._memory import MemoryGuard

if TYPE_CHECKING:
    from comptroller.config import Settings
    from comptroller.control._clock import Clock


_REDIS_SCHEMES = ("redis://", "rediss://", "unix://", "redis+cluster://", "rediss+cluster://")


def make_guard(settings: Settings, *, clock: Clock | None = None) -> Guard:
    """The guard `settings.control.state_backend` names: `memory` or a Redis URL
    (`redis://`, `rediss://`, `unix://`; a Redis Cluster: `redis+cluster://host:port[,…]`,
    `rediss+cluster://…`, or `?cluster=true` on a `redis://`/`rediss://` URL).

    A Redis guard learns its ledger source (to re-seed a state Redis lost) from the
    `BudgetReconciler` built for it (`make_reconciler`, or the embedded sink's).

    Raises:
        ConfigError: The backend is neither, Redis support is not installed, or a cluster
            URL is malformed (no host, a Unix socket, a database other than 0).
    """
    from comptroller.errors import ConfigError

    backend = settings.control.state_backend
    if backend == "memory":
        return MemoryGuard(
            clock=clock,
            timezone=settings.timezone,
            reservation_ttl_s=settings.control.reservation_ttl_s,
        )
    if backend.startswith(_REDIS_SCHEMES):
        try:
            from comptroller.control._guard._redis import RedisGuard
        except ImportError as exc:  # pragma: no cover - depends on the installed extras
            raise ConfigError(
                f"control.state_backend is a Redis URL but Redis support is missing ({exc}); "
                "install comptroller[redis]"
            ) from exc
        return RedisGuard(
            backend,
            clock=clock,
            timezone=settings.timezone,
            prefix=settings.control.state_prefix,
            reservation_ttl_s=settings.control.reservation_ttl_s,
        )
    raise ConfigError(
        f"control.state_backend: expected 'memory', a redis:// URL or a Redis Cluster's "
        f"redis+cluster://host:port[,host:port…], got {backend!r}"
    )
