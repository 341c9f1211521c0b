from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

ALERT_KINDS = (
    "budget.warning",
    "budget.exceeded",
    "budget.rejected",
    "budget.anomaly",
    "circuit.opened",
)
"""What a webhook can be told of (`WebhookSettings.events`)."""


class WebhookSettings(BaseModel):
    """One webhook the collector notifies (`[[alerts.webhooks]]` in the file).

    Example (comptroller.toml):

        [[alerts.webhooks]]
        url = "https://hooks.slack.com/services/T000/B000/XXXX"
        format = "slack"
        events = ["budget.warning", "budget.rejected"]
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str
    """Where to POST. Its query string and path may hold a secret (Slack's do): it is shown
    by its name (or host) only, never whole."""
    name: str | None = None
    """How deliveries of this webhook are shown (TUI, `/health`). Default: the URL's host."""
    format: Literal["json", "slack"] = "json"
    """`json`: the event as a JSON object; `slack`: a Slack-compatible incoming-webhook
    message (`{"text": …}`)."""
    events: tuple[str, ...] = ALERT_KINDS
    """The kinds of event sent: `budget.warning` (a share of the cap crossed, or a projected
    overrun), `budget.exceeded` (the cap reached), `budget.rejected` (a call refused),
    `budget.anomaly` (a key spending far above its usual for the hour), `circuit.opened`."""
    timeout_s: float = Field(default=5.0, gt=0)
    """Timeout of one delivery attempt."""

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"webhook url must start with http:// or https://, got {value!r}")
        return value

    @field_validator("events")
    @classmethod
    def _known_events(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [kind for kind in value if kind not in ALERT_KINDS]
        if unknown:
            raise ValueError(
                f"unknown webhook event(s) {', '.join(unknown)}; use: {', '.join(ALERT_KINDS)}"
            )
        return value

    @property
    def label(self) -> str:
        """The name shown for this webhook (never the whole URL)."""
        if self.name:
            return self.name
        return self.url.split("://", 1)[-1].split("/", 1)[0].rsplit("@", 1)[-1]


class AlertSettings(BaseModel):
    """Warnings before a budget stops calls, and who is told (`[alerts]` in the file).

    Environment: `COMPTROLLER_ALERTS_<FIELD>` (lists and webhooks as JSON).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    budget_warn_at: tuple[float, ...] = (0.5, 0.8, 1.0)
    """Shares of a daily cap at which a `comptroller.budget.warning` event is raised, once per
    budget key, threshold and day. Empty: no threshold warnings."""
    budget_warn_projected: bool = True
    """Also warn once a day when the day's burn rate will cross the cap before the day ends."""
    projected_min_share: float = Field(default=0.1, ge=0, le=1)
    """No projection before this share of the cap is spent (an early call is no trend)."""
    projected_min_elapsed_s: float = Field(default=3600.0, ge=0)
    """No projection in the first seconds of the budget day."""
    webhooks: tuple[WebhookSettings, ...] = ()
    """Webhooks the collector (or the embedded sink) POSTs alerts to."""
    webhook_max_attempts: int = Field(default=6, ge=1)
    """Delivery attempts of one alert before it is recorded failed."""
    webhook_backoff_s: float = Field(default=1.0, gt=0)
    """First retry delay; doubles per attempt (with jitter), up to `webhook_max_backoff_s`."""
    webhook_max_backoff_s: float = Field(default=60.0, gt=0)
    """Longest wait between two attempts."""

    @field_validator("budget_warn_at")
    @classmethod
    def _shares(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        for share in value:
            if not 0 < share <= 10:
                raise ValueError(
                    f"budget_warn_at holds shares of the cap such as 0.8 (80 %), got {share}"
                )
        return tuple(sorted(set(value)))
