"""Reconciliation: the guard's ledger seeded from the analytics budget state (the rollups).

The ledger's spend is only ever raised (`Guard.seed` takes the larger of the two), so
reconciliation restores spend the ledger missed (a restarted process, a flushed Redis,
other processes with in-memory ledgers) and never lets a lagging rollup undo spend. The
same source serves the Redis backend's re-seeding of a state it finds lost (`_redis.py`).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from datetime import date
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from comptroller.control._guard._kernel import Guard, GuardKey

if TYPE_CHECKING:
    from comptroller.config import Settings

ReconcileSource = Callable[[], Iterable[Any] | Mapping[GuardKey, Decimal]]
"""Today's settled spend: rows with `tenant`, `context`, `purpose`, `day`, `spent_usd` (and
`attribute` for a budget by attribution)
(attributes or keys, e.g. `comptroller.analytics.budget_state(reader)` or the JSON of the
collector's `GET /api/budget-state`), or a mapping GuardKey → spend for today."""

_log = logging.getLogger("comptroller.control.guard")


def budget_state_url_source(
    url: str, *, token: str | None = None, timeout_s: float = 2.0
) -> ReconcileSource:
    """A reconciliation source reading the collector's `GET /api/budget-state`.

    Args:
        url: The full URL, e.g. `http://127.0.0.1:4318/api/budget-state`.
        token: The collector's bearer token, if it requires one.
        timeout_s: Timeout of one request.
    """

    def fetch() -> list[Any]:
        import urllib.request  # only reconciling processes pay for http.client

        request = urllib.request.Request(url, headers={"Accept": "application/json"})
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            rows = json.loads(response.read())
        if not isinstance(rows, list):
            raise ValueError(f"{url}: expected a JSON list of budget states")
        return rows

    return fetch


def _field(row: Any, name: str) -> Any:
    return row.get(name) if isinstance(row, Mapping) else getattr(row, name, None)


def spend_by_day(
    rows: Iterable[Any] | Mapping[GuardKey, Decimal], *, today: str
) -> dict[str, dict[GuardKey, Decimal]]:
    """Group budget-state rows into {day: {key: settled spend}} (a mapping is `today`'s)."""
    if isinstance(rows, Mapping):
        return {today: {key: Decimal(str(spent)) for key, spent in rows.items()}}
    out: dict[str, dict[GuardKey, Decimal]] = {}
    for row in rows:
        spent = _field(row, "spent_usd")
        if spent is None:
            continue
        day = _field(row, "day")
        day_text = day.isoformat() if isinstance(day, date) else str(day or today)[:10]
        key = GuardKey(
            str(_field(row, "tenant") or ""),
            str(_field(row, "context") or ""),
            str(_field(row, "purpose") or ""),
            str(_field(row, "attribute") or ""),
        )
        out.setdefault(day_text, {})[key] = Decimal(str(spent))
    return out


class BudgetReconciler:
    """Seeds a guard's ledger from the analytics budget state, once or periodically.

    The source is also named to a guard that can re-seed itself (`RedisGuard`): a state it
    finds lost is restored from it before anything is admitted.

    Example:
        >>> reconciler = BudgetReconciler(guard, "http://127.0.0.1:4318/api/budget-state")  # doctest: +SKIP
        >>> reconciler.run_once()  # doctest: +SKIP
        >>> reconciler.start()  # doctest: +SKIP
    """

    def __init__(
        self,
        guard: Guard,
        source: ReconcileSource | str,
        *,
        interval_s: float = 60.0,
        token: str | None = None,
        today: Callable[[], str] | None = None,
    ) -> None:
        """Build a reconciler.

        Args:
            guard: The guard whose ledger is seeded.
            source: A callable returning budget-state rows, or the collector's URL.
            interval_s: Period of the background reconciliation.
            token: Bearer token for a URL source.
            today: Today's ISO date in the budget time zone (default: the guard's `today`).
        """
        self._guard = guard
        self._source = (
            budget_state_url_source(source, token=token) if isinstance(source, str) else source
        )
        self._interval = interval_s
        self._today = today or guard.today
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        from comptroller.control._guard._redis import RedisGuard

        if isinstance(guard, RedisGuard):
            guard.use_ledger_source(self._source)

    def run_once(self) -> int:
        """Fetch the budget state and seed the ledger; returns the number of keys seeded.

        Raises:
            Exception: Whatever the source or the guard raised (the background loop logs it).
        """
        seeded = 0
        for day, spend in spend_by_day(self._source(), today=self._today()).items():
            self._guard.seed(spend, day=day)
            seeded += len(spend)
        return seeded

    def start(self) -> None:
        """Reconcile every `interval_s` in a daemon thread until `stop`."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._loop, name="comptroller-budget-reconcile", daemon=True
        )
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception as exc:  # a failed reconciliation must not kill the loop
                _log.warning("budget reconciliation failed: %s", exc)
            self._stop.wait(self._interval)

    def stop(self) -> None:
        """Stop the background reconciliation."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


def make_reconciler(settings: Settings, guard: Guard) -> BudgetReconciler | None:
    """The reconciler of `settings.control.budget_state_url`, or None when none is set."""
    url = settings.control.budget_state_url
    if not url:
        return None
    return BudgetReconciler(guard, url, interval_s=settings.control.reconcile_interval_s)
