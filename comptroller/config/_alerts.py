from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

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


def _valid_shares(value: tuple[float, ...], name: str) -> tuple[float, ...]:
    for share in value:
        if not 0 < share <= 10:
            raise ValueError(f"{name} holds shares of the cap such as 0.8 (80 %), got {share}")
    return tuple(sorted(set(value)))


_ATTRIBUTE_FORMS = (
    "use 'user=alice' (that budget by attribution), 'user=*' (every per-user budget; any "
    "prefix ending in '*'), '' (ordinary budgets only), or '*' / leave it out (any budget)"
)


class BudgetWarnSettings(BaseModel):
    """Warnings of their own for the budgets one entry matches (`[[alerts.budgets]]`).

    An entry matches a budget key by `tenant`, `context`, `purpose` and `attribute`, each an
    exact value, or `*` / left out for any. Of the entries matching a key, the one giving the
    most of these four wins; of equally specific ones, the one written last. The winner's
    `warn_at` and `warn_projected` apply, each left out taken from `[alerts]`
    (`budget_warn_at`, `budget_warn_projected`); a key no entry matches has those.

    Example (comptroller.toml):

        [[alerts.budgets]]
        tenant = "acme-eu"
        warn_at = [0.9]                 # acme-eu: only at 90 %, projections as [alerts]

        [[alerts.budgets]]
        attribute = "user=*"            # every per-user budget: no early warnings
        warn_at = [1.0]
        warn_projected = false
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    tenant: str | None = None
    """The tenant of the budgets matched (`*` or left out: any)."""
    context: str | None = None
    """The context of the budgets matched (`*` or left out: any)."""
    purpose: str | None = None
    """The purpose of the budgets matched (`*` or left out: any)."""
    attribute: str | None = None
    """The attribute of budgets by attribution: `user=alice` exactly, `user=*` for every
    per-user budget (a prefix ending in `*`), `""` for ordinary budgets only (`*` or left
    out: any)."""
    warn_at: tuple[float, ...] | None = None
    """Shares of the cap these budgets warn at, as `budget_warn_at` (`[]`: none)."""
    warn_projected: bool | None = None
    """Whether these budgets warn of a projected overrun, as `budget_warn_projected`."""

    @field_validator("tenant", "context", "purpose")
    @classmethod
    def _exact_or_any(cls, value: str | None) -> str | None:
        if value == "*":
            return None
        if value is not None and "*" in value:
            raise ValueError(
                "give one exact value, or '*' / leave it out for any; only attribute takes "
                "a prefix ending in '*'"
            )
        return value

    @field_validator("attribute")
    @classmethod
    def _attribute_form(cls, value: str | None) -> str | None:
        if value is None or value == "*":
            return None
        if value == "":
            return value
        if "*" in value[:-1]:
            raise ValueError(f"'*' may only end the attribute; {_ATTRIBUTE_FORMS}")
        if not value.endswith("*") and "=" not in value:
            raise ValueError(f"an attribute is written name=value; {_ATTRIBUTE_FORMS}")
        return value

    @field_validator("warn_at")
    @classmethod
    def _shares(cls, value: tuple[float, ...] | None) -> tuple[float, ...] | None:
        return _valid_shares(value, "warn_at") if value is not None else None

    @model_validator(mode="after")
    def _sets_something(self) -> BudgetWarnSettings:
        if self.warn_at is None and self.warn_projected is None:
            raise ValueError(
                "this entry changes no warning: give warn_at (shares of the cap, e.g. "
                "[0.5, 0.9]; [] for none) and/or warn_projected (true or false)"
            )
        return self

    @property
    def matcher(self) -> tuple[str | None, str | None, str | None, str | None]:
        """(tenant, context, purpose, attribute); None: any."""
        return (self.tenant, self.context, self.purpose, self.attribute)


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
    budgets: tuple[BudgetWarnSettings, ...] = ()
    """Budgets with warnings of their own (`[[alerts.budgets]]`): each entry matches keys by
    `tenant`, `context`, `purpose` and `attribute` (exact, or `*` / left out for any;
    `attribute = "user=*"` for every per-user budget) and sets `warn_at` and/or
    `warn_projected`. The entry naming most fields wins, the last of equally specific ones;
    what it leaves out, and every key no entry matches, follows `budget_warn_at` and
    `budget_warn_projected`."""
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
        return _valid_shares(value, "budget_warn_at")

    @field_validator("budgets")
    @classmethod
    def _distinct(cls, value: tuple[BudgetWarnSettings, ...]) -> tuple[BudgetWarnSettings, ...]:
        first: dict[tuple[str | None, ...], int] = {}
        for index, entry in enumerate(value):
            seen = first.setdefault(entry.matcher, index)
            if seen != index:
                names = ", ".join(
                    f"{name}={field!r}"
                    for name, field in zip(
                        ("tenant", "context", "purpose", "attribute"), entry.matcher, strict=True
                    )
                    if field is not None
                )
                raise ValueError(
                    f"alerts.budgets.{seen} and alerts.budgets.{index} (the "
                    f"[[alerts.budgets]] entries number {seen + 1} and {index + 1}) match the "
                    f"same budgets ({names or 'every budget'}): merge them into one entry"
                )
        return value
