"""`comptroller alerts`: the alerts sent to webhooks and what became of them, and a test send.

A webhook is always shown by its name (`WebhookSettings.label`), never by its URL: a Slack
incoming-webhook URL is its secret.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import click

from comptroller.cli._app import AppContext, Ledger, ledger_options, pass_app
from comptroller.errors import ConfigError, FindingError, UsageError

if TYPE_CHECKING:
    from comptroller.collector._notify import Delivery
    from comptroller.config import Settings, WebhookSettings

_SINCE_HELP = (
    "Alerts raised since: a date (2026-06-01), an instant (2026-06-01T12:00:00+00:00) or a "
    "relative time (today, today-6d, now-1h) [default: today-6d]."
)
_NO_WEBHOOK = (
    "no webhook is configured: add one to comptroller.toml as [[alerts.webhooks]] with its "
    'url, a name and format = "slack" or "json" (or set COMPTROLLER_ALERTS_WEBHOOKS as JSON)'
)


@click.group(name="alerts")
def alerts() -> None:
    """Budget and circuit alerts: what the webhooks were sent, and a test send."""


@alerts.command(name="list")
@ledger_options
@click.option("--since", default="today-6d", show_default=False, help=_SINCE_HELP)
@click.option(
    "--failed", is_flag=True, help="Only alerts some webhook failed to receive (and why)."
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=500,
    show_default=True,
    help="At most this many (alert, webhook) rows.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@pass_app
def list_alerts(
    app: AppContext,
    db: Ledger | None,
    url: str | None,
    since: str,
    failed: bool,
    limit: int,
    as_json: bool,
) -> None:
    """Print recent alerts, newest first, with their delivery status at each webhook.

    An alert is a budget warning (a share of the cap crossed, or a projected overrun), a
    cap reached, a refused call or a circuit that opened. At each configured webhook it is
    `delivered`, `failed` (after its retries, with the error) or has no outcome yet (queued,
    or no collector or embedded sink was running to send it).

    \b
    Example:
      comptroller alerts list --since today --failed
    """
    from comptroller.analytics import builtin_panels, reader_from_settings, run_panel

    settings = app.settings()
    panel = builtin_panels()["alert_deliveries"]
    status = "failed" if failed else None
    try:
        panel.bind({"since": since}, timezone=settings.timezone)
    except UsageError:
        raise UsageError(
            f"--since {since!r} is not a time: use a date (2026-06-01), an instant "
            "(2026-06-01T12:00:00+00:00) or a relative time (today, today-6d, now-1h)"
        ) from None
    reader = reader_from_settings(settings, db=db, url=url)
    try:
        rows = run_panel(
            reader, panel, timezone=settings.timezone, since=since, limit=limit, status=status
        ).to_pylist()
    finally:
        reader.close()
    grouped = _by_alert(rows, settings.alerts.webhooks, failed_only=failed)
    if as_json:
        click.echo(json.dumps(grouped, indent=2, default=_json_value))
        return
    if not grouped:
        click.echo("no alert" + (" failed" if failed else "") + f" since {since}")
    for alert in grouped:
        click.echo(_alert_line(alert, settings.timezone))
        for delivery in alert["deliveries"]:
            click.echo(f"    {delivery['webhook']}: {_outcome(delivery)}")
    if len(rows) >= limit:
        click.echo(f"(the first {limit} rows: more with --limit or a later --since)", err=True)
    if not settings.alerts.webhooks:
        click.echo(f"note: {_NO_WEBHOOK}", err=True)


@alerts.command(name="test")
@click.option(
    "--webhook",
    "names",
    multiple=True,
    metavar="NAME",
    help="Only the webhook of this name (repeatable) [default: every configured webhook].",
)
@pass_app
def test_alerts(app: AppContext, names: Sequence[str]) -> None:
    """Send a test alert to the configured webhooks now and print each outcome.

    One attempt per webhook, in this process (no collector needed), with the format the
    webhook is configured with: the way to check a Slack URL before relying on it. The
    test alert's kind is `test`; it is not recorded in the ledger.

    \b
    Exit codes:
      0  every webhook took the alert
      1  some webhook did not (its error is printed)
      2  no webhook configured, or no webhook of that name
    """
    settings = app.settings()
    hooks = _chosen(settings, names)
    outcomes = _send_test(settings, hooks)
    failures = 0
    for hook, delivery in outcomes:
        if delivery.status == "delivered":
            status = f" (HTTP {delivery.http_status})" if delivery.http_status else ""
            took = f"{delivery.last_ts - delivery.first_ts:.2f} s"
            click.echo(f"{hook.label}: delivered{status} in {took} [{hook.format}]")
        else:
            failures += 1
            click.echo(f"{hook.label}: FAILED: {delivery.error} [{hook.format}]")
    if failures:
        raise FindingError(
            f"{failures} of {len(outcomes)} webhook(s) did not take the test alert: check "
            "their url (and that the service accepts a POST of JSON) in [[alerts.webhooks]]"
        )


def _chosen(settings: Settings, names: Sequence[str]) -> list[WebhookSettings]:
    hooks = list(settings.alerts.webhooks)
    if not hooks:
        raise ConfigError(_NO_WEBHOOK)
    if not names:
        return hooks
    known = {hook.label: hook for hook in hooks}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise UsageError(
            f"no webhook named {', '.join(unknown)}; configured: {', '.join(sorted(known))}"
        )
    return [known[name] for name in dict.fromkeys(names)]


def _send_test(
    settings: Settings, hooks: Sequence[WebhookSettings]
) -> list[tuple[WebhookSettings, Delivery]]:
    from comptroller.collector._notify import Alert, Notifier

    now = dt.datetime.now(dt.UTC)
    # One attempt: the test is whether the webhook answers now, not after minutes of backoff.
    once = settings.alerts.model_copy(update={"webhook_max_attempts": 1, "webhooks": ()})
    notifier = Notifier(once)
    try:
        outcomes: list[tuple[WebhookSettings, Delivery]] = []
        for hook in hooks:
            alert = Alert(
                event_id=f"comptroller-test-{uuid.uuid4().hex[:12]}",
                kind="test",
                ts=now.isoformat(),
                text=(
                    f"Test alert from comptroller to webhook {hook.label}: alerts reach this "
                    "channel. No budget or circuit is affected."
                ),
                fields={"webhook": hook.label},
            )
            outcomes.append((hook, notifier.send_now(alert, hook)))
        return outcomes
    finally:
        notifier.close(timeout_s=1.0)


def _by_alert(
    rows: Sequence[Mapping[str, Any]],
    webhooks: Sequence[WebhookSettings],
    *,
    failed_only: bool,
) -> list[dict[str, Any]]:
    """One entry per alert with its deliveries; a configured webhook that takes the alert's
    kind but has no outcome for it is listed as `pending`."""
    alerts: dict[str, dict[str, Any]] = {}
    for row in rows:
        alert = alerts.get(row["event_id"])
        if alert is None:
            alert = alerts[row["event_id"]] = {
                "event_id": row["event_id"],
                "ts": row["ts"],
                "alert": row["alert"],
                "subject": row["subject"],
                "detail": _detail(row),
                "cap_usd": row.get("cap_usd"),
                "spent_usd": row.get("spent_usd"),
                "threshold": row.get("threshold"),
                "projected_usd": row.get("projected_usd"),
                "deliveries": [],
            }
        if row.get("webhook") is not None:
            alert["deliveries"].append(
                {
                    "webhook": row["webhook"],
                    "status": row["status"],
                    "attempts": row["attempts"],
                    "http_status": row["http_status"],
                    "error": row["error"],
                    "last_attempt_ts": row["last_attempt_ts"],
                }
            )
    if not failed_only:
        for alert in alerts.values():
            seen = {d["webhook"] for d in alert["deliveries"]}
            for hook in webhooks:
                if hook.label not in seen and alert["alert"] in hook.events:
                    alert["deliveries"].append(
                        {
                            "webhook": hook.label,
                            "status": "pending",
                            "attempts": 0,
                            "http_status": None,
                            "error": None,
                            "last_attempt_ts": None,
                        }
                    )
    return list(alerts.values())


def _detail(row: Mapping[str, Any]) -> str:
    from comptroller.money import usd

    cap = row.get("cap_usd")
    spent = row.get("spent_usd")
    money = f"{usd(spent)} of {usd(cap)}" if cap is not None and spent is not None else ""
    if row.get("projected_usd") is not None:
        return f"projected {usd(row['projected_usd'])} by midnight ({money} spent)"
    if row.get("threshold") is not None:
        return f"{float(row['threshold']) * 100:g} % of {usd(cap)} ({usd(spent)} spent)"
    return money


def _alert_line(alert: Mapping[str, Any], timezone: str) -> str:
    from zoneinfo import ZoneInfo

    ts = alert["ts"]
    when = ts.astimezone(ZoneInfo(timezone)).strftime("%Y-%m-%d %H:%M:%S %Z") if ts else "?"
    detail = f"  {alert['detail']}" if alert["detail"] else ""
    return f"{when}  {alert['alert']}  {alert['subject']}{detail}"


def _outcome(delivery: Mapping[str, Any]) -> str:
    attempts = int(delivery["attempts"] or 0)
    tries = f"{attempts} attempt" + ("" if attempts == 1 else "s")
    if delivery["status"] == "delivered":
        return f"delivered ({tries})"
    if delivery["status"] == "failed":
        return f"FAILED after {tries}: {delivery['error']}"
    return "pending (no outcome yet: queued, or no collector was running to send it)"


def _json_value(value: object) -> object:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return str(value)
