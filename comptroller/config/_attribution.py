"""Budgets by attribution: a daily cap per end user, session, feature or tag.

Example (comptroller.toml)::

    [[control.attribution_budgets]]
    by = "user"              # each end user …
    daily_usd = 2            # … may spend $2 a day
    tenant = "acme-eu"       # of this tenant only (default: every tenant, each apart)

    [[control.attribution_budgets]]
    by = "tag.team"
    value = "search"         # only the calls tagged team=search
    purpose = "reasoning"
    daily_usd = 50
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

_DIMENSION = re.compile(r"user|session|feature|tag\.[a-z][a-z0-9_.\-]{0,31}")


class AttributionBudget(BaseModel):
    """A daily cap on the spend of each value of one attribution dimension.

    A call is counted by every rule that matches it (its tenant, org, context and purpose
    filters, and a value for the dimension); each rule keeps one guard key per (tenant,
    value): `GuardKey(tenant, context or "*", purpose or "*", "<by>=<value>")`. A call
    without a value for the dimension is not counted by that rule.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    by: str
    """`user`, `session`, `feature` or `tag.<name>`."""
    daily_usd: Annotated[Decimal, Field(ge=0)]
    """The cap of one value's spend in one budget day (USD)."""
    value: str | None = None
    """Only this value (e.g. `search` for `by = "tag.team"`); default: each value apart."""
    tenant: str | None = None
    """Only calls of this tenant (domain). The cap is per tenant either way."""
    org: str | None = None
    """Only calls of this org."""
    context: str | None = None
    """Only calls of this context (the key's context; default `*`: every context together)."""
    purpose: str | None = None
    """Only calls of this purpose (the key's purpose; default `*`: every purpose together)."""

    @field_validator("by")
    @classmethod
    def _dimension(cls, value: str) -> str:
        if not _DIMENSION.fullmatch(value):
            raise ValueError(
                f"by must be 'user', 'session', 'feature' or 'tag.<name>', got {value!r}"
            )
        return value

    @property
    def key_context(self) -> str:
        """The context of this rule's guard keys."""
        return self.context or "*"

    @property
    def key_purpose(self) -> str:
        """The purpose of this rule's guard keys."""
        return self.purpose or "*"

    def matches(
        self, tenant: str | None, org: str | None, context: str | None, purpose: str
    ) -> bool:
        """Whether a call of this scope is counted by the rule (given a value)."""
        return (
            (self.tenant is None or self.tenant == tenant)
            and (self.org is None or self.org == org)
            and (self.context is None or self.context == context)
            and (self.purpose is None or self.purpose == purpose)
        )


AttributionBudgets = tuple[AttributionBudget, ...]
