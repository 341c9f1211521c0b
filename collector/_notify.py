"""Alerts to webhooks: budget warnings, refusals and cap crossings, circuits that open.

The lander hands over each alert-worthy event it landed for the first time (an event landed
again — a re-delivery, a replay — inserts nothing and alerts nobody). The notifier queues it
per webhook and a background thread POSTs it: JSON, or a Slack-compatible incoming-webhook
message. Failures are retried with exponential backoff and jitter (tenacity); a 4xx other
than 408/429 is not retried. Nothing here ever blocks a call or a landing: the queue is
bounded and an alert that does not fit is counted as dropped.

Every outcome is recorded in `alert_deliveries` (one row per event and webhook: delivered or
failed, attempts, the last error) for the TUI, and counted for `/health`. An event that has
no outcome there yet — the process stopped with it queued — is queued again when the next
notifier starts on the same database (`pending_since`), so an alert is not lost; one that
was delivered is not sent twice.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence, Set
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Final

import httpx
from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from comptroller.config import AlertSettings, WebhookSettings
from comptroller.money import usd

_log = logging.getLogger("comptroller.collector.alerts")

_BUDGET_KINDS: Final = {
    "warning": "budget.warning",
    "rejected": "budget.rejected",
    "exceeded": "budget.exceeded",
    "anomaly": "budget.anomaly",
}
_CIRCUIT_OPENED: Final = "opened"
_QUEUE_SIZE: Final = 10_000


@dataclass(frozen=True, kw_only=True, slots=True)
class Alert:
    """One event worth telling somebody about."""

    event_id: str
    kind: str
    """`budget.warning`, `budget.rejected`, `budget.exceeded` or `circuit.opened`."""
    ts: str
    """When it happened (ISO 8601)."""
    text: str
    """One line a person can act on."""
    fields: Mapping[str, Any] = field(default_factory=dict)
    """The event's values (key, money as decimal text, threshold, …)."""

    def body(self, fmt: str) -> dict[str, Any]:
        """The JSON a webhook of format `fmt` receives."""
        if fmt == "slack":
            return {"text": self.text}
        return {
            "event_id": self.event_id,
            "kind": self.kind,
            "ts": self.ts,
            "text": self.text,
            **{k: v for k, v in self.fields.items() if v is not None},
        }


@dataclass(frozen=True, kw_only=True, slots=True)
class Delivery:
    """The outcome of one alert at one webhook."""

    event_id: str
    webhook: str
    kind: str
    status: str
    """`delivered` or `failed`."""
    attempts: int
    http_status: int | None
    error: str | None
    first_ts: float
    last_ts: float


class _Retryable(Exception):
    def __init__(self, message: str, status: int | None) -> None:
        super().__init__(message)
        self.status = status


class _Permanent(Exception):
    def __init__(self, message: str, status: int | None) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class _Counts:
    delivered: int = 0
    failed: int = 0
    last_error: str | None = None
    last_delivered_ts: float | None = None


class Notifier:
    """Delivers alerts to the configured webhooks from a background thread.

    Args:
        settings: The `[alerts]` settings (webhooks, attempts, backoff).
        record: Stores a delivery's outcome (the collector writes `alert_deliveries`).
        claim: Asked, just before an alert is sent to a webhook, whether this process is the
            one to send it (a PostgreSQL fleet's collectors claim each pair in the ledger:
            `collector/_alert_log.py`); False skips it. An error sends it anyway (a
            duplicate is better than a lost alert). None: always this process.
        sleep: Waits between attempts (tests pass a recorder instead of sleeping).
        client: The HTTP client (default: an `httpx.Client` owned by the notifier).
    """

    def __init__(
        self,
        settings: AlertSettings,
        *,
        record: Callable[[Delivery], None] | None = None,
        claim: Callable[[Alert, str], bool] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        client: httpx.Client | None = None,
        queue_size: int = _QUEUE_SIZE,
    ) -> None:
        self.webhooks: tuple[WebhookSettings, ...] = tuple(settings.webhooks)
        self._settings = settings
        self._record = record
        self._claim = claim
        self.skipped = 0
        """Alerts not sent because another process claimed them (`claim` said False)."""
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._client = client or httpx.Client(follow_redirects=False)
        self._owns_client = client is None
        self._queue: queue.Queue[tuple[Alert, WebhookSettings] | None] = queue.Queue(queue_size)
        self._counts = {hook.label: _Counts() for hook in self.webhooks}
        self._dropped = 0
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._busy = 0
        self._on_close: list[Callable[[], None]] = []
        self._thread = threading.Thread(target=self._run, name="comptroller-alerts", daemon=True)
        self._thread.start()

    # -- taking alerts -------------------------------------------------------------------

    def offer(self, alerts: Iterable[Alert], *, skip: Set[tuple[str, str]] = frozenset()) -> None:
        """Queue `alerts` for every webhook that wants their kind; never blocks.

        Args:
            skip: (event id, webhook name) pairs already delivered or failed.
        """
        for alert in alerts:
            for hook in self.webhooks:
                if alert.kind not in hook.events or (alert.event_id, hook.label) in skip:
                    continue
                with self._lock:
                    try:
                        self._queue.put_nowait((alert, hook))
                    except queue.Full:
                        self._dropped += 1
                        _log.warning(
                            "comptroller: alert %s for webhook %s dropped: %d alerts queued",
                            alert.event_id,
                            hook.label,
                            self._queue.qsize(),
                        )
                        continue
                    self._busy += 1

    def wait_idle(self, timeout_s: float = 30.0) -> bool:
        """Wait until every queued alert has an outcome (tests, shutdown)."""
        deadline = time.monotonic() + timeout_s
        with self._idle:
            while self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def health(self) -> dict[str, Any]:
        """Deliveries per webhook (by name, never by URL), queued and dropped alerts."""
        with self._lock:
            claimed: dict[str, Any] = (
                {} if self._claim is None else {"sent_by_another_collector": self.skipped}
            )
            return {
                **claimed,
                "webhooks": [
                    {
                        "name": label,
                        "delivered": counts.delivered,
                        "failed": counts.failed,
                        "last_error": counts.last_error,
                        "last_delivered_ts": counts.last_delivered_ts,
                    }
                    for label, counts in self._counts.items()
                ],
                "queued": self._busy,
                "dropped": self._dropped,
            }

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop after what is queued (at most `timeout_s`); what is left stays pending."""
        self.wait_idle(timeout_s)
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)
        self._thread.join(timeout_s)
        if self._owns_client:
            self._client.close()
        for callback in self._on_close:
            callback()

    def on_close(self, callback: Callable[[], None]) -> None:
        """Call `callback` once the notifier has stopped (release what it wrote through)."""
        self._on_close.append(callback)

    def send_now(self, alert: Alert, hook: WebhookSettings) -> Delivery:
        """Deliver `alert` to `hook` in the calling thread, whatever kinds `hook` takes, and
        return the outcome without recording or counting it (`comptroller alerts test`)."""
        return self._deliver(alert, hook)

    # -- delivering ------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            alert, hook = item
            try:
                if not self._claimed(alert, hook):
                    continue
                delivery = self._deliver(alert, hook)
                self._note(delivery, hook)
            except Exception:  # a bug here must not kill the thread for every later alert
                _log.exception("comptroller: alert %s could not be delivered", alert.event_id)
            finally:
                with self._idle:
                    self._busy -= 1
                    self._idle.notify_all()

    def _claimed(self, alert: Alert, hook: WebhookSettings) -> bool:
        if self._claim is None:
            return True
        try:
            mine = self._claim(alert, hook.label)
        except Exception:
            _log.exception(
                "comptroller: alert %s could not be claimed for webhook %s; sending it anyway",
                alert.event_id,
                hook.label,
            )
            return True
        if not mine:
            with self._lock:
                self.skipped += 1
        return mine

    def _deliver(self, alert: Alert, hook: WebhookSettings) -> Delivery:
        settings = self._settings
        attempts = 0
        first = time.time()
        status: int | None = None
        body = json.dumps(alert.body(hook.format), default=str).encode()

        def attempt() -> None:
            nonlocal attempts, status
            attempts += 1
            try:
                response = self._client.post(
                    hook.url,
                    content=body,
                    headers={
                        "content-type": "application/json",
                        "idempotency-key": alert.event_id,
                    },
                    timeout=hook.timeout_s,
                )
            except httpx.HTTPError as exc:
                status = None
                raise _Retryable(f"{type(exc).__name__}: {_no_url(str(exc), hook)}", None) from None
            status = response.status_code
            if response.is_success:
                return
            message = f"HTTP {response.status_code}"
            if response.status_code in (408, 429) or response.status_code >= 500:
                raise _Retryable(message, response.status_code)
            raise _Permanent(message, response.status_code)

        retrying = Retrying(
            stop=stop_after_attempt(settings.webhook_max_attempts),
            wait=wait_exponential_jitter(
                initial=settings.webhook_backoff_s, max=settings.webhook_max_backoff_s
            ),
            retry=retry_if_exception(lambda exc: isinstance(exc, _Retryable)),
            sleep=self._sleep,
            reraise=False,
        )
        error: str | None = None
        try:
            retrying(attempt)
        except RetryError as exc:
            last = exc.last_attempt.exception()
            error = str(last) if last is not None else "failed"
        except _Permanent as exc:
            error = str(exc)
        return Delivery(
            event_id=alert.event_id,
            webhook=hook.label,
            kind=alert.kind,
            status="failed" if error is not None else "delivered",
            attempts=attempts,
            http_status=status,
            error=error,
            first_ts=first,
            last_ts=time.time(),
        )

    def _note(self, delivery: Delivery, hook: WebhookSettings) -> None:
        with self._lock:
            counts = self._counts[hook.label]
            if delivery.status == "delivered":
                counts.delivered += 1
                counts.last_delivered_ts = delivery.last_ts
            else:
                counts.failed += 1
                counts.last_error = delivery.error
        if delivery.status == "failed":
            _log.warning(
                "comptroller: alert %s to webhook %s failed after %d attempts: %s",
                delivery.event_id,
                hook.label,
                delivery.attempts,
                delivery.error,
            )
        if self._record is not None:
            try:
                self._record(delivery)
            except Exception:
                _log.exception(
                    "comptroller: the delivery of alert %s was not recorded", delivery.event_id
                )


def _no_url(message: str, hook: WebhookSettings) -> str:
    # An httpx error may quote the URL, whose path or query can hold the webhook's secret.
    return message.replace(hook.url, hook.label)


# --- alerts from landed events -----------------------------------------------------------


def budget_alert(row: Mapping[str, Any]) -> Alert | None:
    """The alert of a `budget_events` row (None for a kind nobody is alerted of)."""
    kind = _BUDGET_KINDS.get(str(row.get("kind")))
    if kind is None:
        return None
    attrs = _attributes(row.get("attributes"))
    key = " / ".join(str(row.get(part) or "-") for part in ("tenant", "context", "purpose"))
    # A budget by attribution names what it counts (`user=alice`): the ledger's column, or the
    # control plane's attribute on the event.
    attribute = row.get("attribute") or attrs.get("comptroller.budget.attribute") or None
    if attribute:
        key = f"{key} [{attribute}]"
    cap = _decimal(row.get("cap_usd"))
    spent = _decimal(row.get("spent_usd"))
    day = str(row.get("day") or "")
    money = f"{usd(spent) if spent is not None else '?'} of its {usd(cap) if cap is not None else '?'} daily cap"
    threshold = attrs.get("comptroller.budget.threshold")
    projected = _decimal(attrs.get("comptroller.budget.projected_usd"))
    if kind == "budget.anomaly":
        median = _decimal(attrs.get("median_usd"))
        ratio = attrs.get("ratio")
        hour = str(attrs.get("hour") or "")[11:16]
        usual = f"its usual {usd(median)}" if median is not None else "its usual"
        times = f"{float(ratio):.1f}× " if isinstance(ratio, int | float) else ""
        spent_text = usd(spent) if spent is not None else "?"
        text = (
            f"Spend anomaly: {key} spent {spent_text} in the hour from {hour} on {day}, "
            f"{times}{usual} for that hour."
        )
    elif kind == "budget.warning" and projected is not None:
        text = (
            f"Budget projection: {key} will spend {usd(projected)} by the end of {day} at "
            f"today's burn rate ({money} spent so far)."
        )
    elif kind == "budget.warning":
        share = f" ({float(threshold) * 100:g} % of the cap)" if threshold is not None else ""
        text = f"Budget warning: {key} has spent {money}{share} on {day}."
    elif kind == "budget.exceeded":
        text = f"Budget cap reached: {key} has spent {money} on {day}; further calls are refused."
    else:
        requested = _decimal(attrs.get("comptroller.budget.requested_usd"))
        need = f" (the call needed up to {usd(requested)})" if requested is not None else ""
        text = f"Budget refused a call: {key} has spent {money} on {day}{need}."
    return Alert(
        event_id=str(row["event_id"]),
        kind=kind,
        ts=_iso(row.get("ts")),
        text=text,
        fields={
            "tenant": row.get("tenant"),
            "context": row.get("context"),
            "purpose": row.get("purpose"),
            "attribute": attribute,
            "day": day or None,
            "cap_usd": str(cap) if cap is not None else None,
            "spent_usd": str(spent) if spent is not None else None,
            "threshold": threshold,
            "projected_usd": str(projected) if projected is not None else None,
        },
    )


def circuit_alert(row: Mapping[str, Any]) -> Alert | None:
    """The alert of a `circuit_events` row (only circuits that open)."""
    if str(row.get("state")) != _CIRCUIT_OPENED:
        return None
    target = f"{row.get('provider') or '?'}:{row.get('model') or '?'}"
    reason = row.get("reason")
    failures = row.get("failures")
    cooldown = row.get("cooldown_s")
    why = ", ".join(
        part
        for part in (
            f"reason {reason}" if reason else "",
            f"{failures} failures" if failures is not None else "",
        )
        if part
    )
    text = f"Circuit opened for {target}" + (f" ({why})" if why else "")
    if cooldown is not None:
        text += f"; its calls go to their fallbacks for {float(cooldown):g} s."
    else:
        text += "; its calls go to their fallbacks."
    return Alert(
        event_id=str(row["event_id"]),
        kind="circuit.opened",
        ts=_iso(row.get("ts")),
        text=text,
        fields={
            "provider": row.get("provider"),
            "model": row.get("model"),
            "reason": reason,
            "failures": failures,
            "cooldown_s": cooldown,
        },
    )


def budget_event_alert(event: Any) -> Alert | None:
    """The alert of an `analytics.BudgetEvent` the ledger recorded."""
    attributes: dict[str, Any] = {}
    if getattr(event, "threshold", None) is not None:
        attributes["comptroller.budget.threshold"] = event.threshold
    if getattr(event, "projected_usd", None) is not None:
        attributes["comptroller.budget.projected_usd"] = str(event.projected_usd)
    return budget_alert(
        {
            "event_id": event.event_id,
            "kind": event.kind,
            "ts": datetime.now(UTC),
            "day": event.day.isoformat(),
            "tenant": event.tenant,
            "context": event.context,
            "purpose": event.purpose,
            "attribute": getattr(event, "attribute", "") or None,
            "cap_usd": event.cap_usd,
            "spent_usd": event.spent_usd,
            "attributes": attributes,
        }
    )


ALERT_COLUMNS: Final = {
    "budget_events": "event_id, epoch(ts) AS ts, day::VARCHAR AS day, kind, tenant, context, "
    "purpose, cap_usd::VARCHAR AS cap_usd, spent_usd::VARCHAR AS spent_usd, "
    "attributes::VARCHAR AS attributes, attribute",
    "circuit_events": "event_id, epoch(ts) AS ts, provider, model, state, reason, failures, "
    "cooldown_s",
}
"""What an alert reads of each event table, as plain values (no time zone objects)."""
PG_ALERT_COLUMNS: Final = {
    "budget_events": "event_id, extract(epoch FROM ts)::FLOAT8 AS ts, day::TEXT AS day, kind, "
    "tenant, context, purpose, cap_usd::TEXT AS cap_usd, spent_usd::TEXT AS spent_usd, "
    "attributes::TEXT AS attributes, attribute",
    "circuit_events": "event_id, extract(epoch FROM ts)::FLOAT8 AS ts, provider, model, state, "
    "reason, failures, cooldown_s",
}
"""`ALERT_COLUMNS` in PostgreSQL."""


def anomaly_alert(anomaly: Any) -> Alert | None:
    """The alert of an `analytics.Anomaly` the ledger recorded (as its `budget_events` row)."""
    return budget_alert(
        {
            "event_id": anomaly.event_id,
            "kind": "anomaly",
            "ts": datetime.now(UTC),
            "day": anomaly.hour.date().isoformat(),
            "tenant": anomaly.tenant,
            "context": anomaly.context,
            "purpose": anomaly.purpose,
            "spent_usd": anomaly.spent_usd,
            "attributes": {
                "hour": anomaly.hour.isoformat(),
                "median_usd": str(anomaly.median_usd),
                "ratio": anomaly.ratio,
                "history_days": anomaly.history_days,
            },
        }
    )


def alerts_of(table: str, rows: Sequence[Mapping[str, Any]]) -> list[Alert]:
    """The alerts of rows just landed in `table`."""
    make = budget_alert if table == "budget_events" else circuit_alert
    if table not in ("budget_events", "circuit_events"):
        return []
    return [alert for row in rows if (alert := make(row)) is not None]


def _attributes(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    if isinstance(value, str | bytes):
        try:
            loaded = json.loads(value)
        except ValueError:
            return {}
        return loaded if isinstance(loaded, dict) else {}
    return {}


def _decimal(value: Any) -> Decimal | None:
    if value is None:
        return None
    try:
        return Decimal(str(value))
    except InvalidOperation:
        return None


def _iso(value: Any) -> str:
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC).isoformat()
    isoformat = getattr(value, "isoformat", None)
    return str(isoformat()) if callable(isoformat) else str(value or "")
