"""Telemetry names shared by the emitter (control) and the readers (collector, analytics).

This module is the contract between the parts: the control plane writes these attribute and
event names, the collector reads them (plus every alias of other instrumentations, kept in
the collector's alias table) and analytics stores them in columns.

GenAI attribute names come from `opentelemetry-semantic-conventions` (the pinned package),
never hand-typed; the `comptroller.*` names are the project's own. Keep this module free of
heavy imports: every subpackage imports it.
"""

from __future__ import annotations

from importlib.metadata import version
from typing import Final

from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as _g
from opentelemetry.semconv._incubating.attributes import session_attributes as _session
from opentelemetry.semconv._incubating.attributes import user_attributes as _user
from opentelemetry.semconv.attributes import error_attributes as _err
from opentelemetry.semconv.attributes import server_attributes as _srv

SEMCONV_PACKAGE_VERSION: Final = version("opentelemetry-semantic-conventions")
"""Version of the semantic-conventions package whose names we emit (recorded on spans)."""

# --- GenAI semantic conventions (names of the pinned package) -------------------------------
GEN_AI_OPERATION_NAME: Final = _g.GEN_AI_OPERATION_NAME
GEN_AI_PROVIDER_NAME: Final = _g.GEN_AI_PROVIDER_NAME
GEN_AI_REQUEST_MODEL: Final = _g.GEN_AI_REQUEST_MODEL
GEN_AI_REQUEST_MAX_TOKENS: Final = _g.GEN_AI_REQUEST_MAX_TOKENS
GEN_AI_REQUEST_TEMPERATURE: Final = _g.GEN_AI_REQUEST_TEMPERATURE
GEN_AI_RESPONSE_MODEL: Final = _g.GEN_AI_RESPONSE_MODEL
GEN_AI_RESPONSE_ID: Final = _g.GEN_AI_RESPONSE_ID
GEN_AI_RESPONSE_FINISH_REASONS: Final = _g.GEN_AI_RESPONSE_FINISH_REASONS
GEN_AI_EMBEDDINGS_DIMENSION_COUNT: Final = _g.GEN_AI_EMBEDDINGS_DIMENSION_COUNT
GEN_AI_USAGE_INPUT_TOKENS: Final = _g.GEN_AI_USAGE_INPUT_TOKENS
GEN_AI_USAGE_OUTPUT_TOKENS: Final = _g.GEN_AI_USAGE_OUTPUT_TOKENS
GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: Final = _g.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS
GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS: Final = _g.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS
GEN_AI_USAGE_REASONING_OUTPUT_TOKENS: Final = _g.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS
ERROR_TYPE: Final = _err.ERROR_TYPE
SERVER_ADDRESS: Final = _srv.SERVER_ADDRESS

OPERATION_CHAT: Final = "chat"
OPERATION_EMBEDDINGS: Final = "embeddings"

# --- comptroller.* attributes (on spans and on log records) ---------------------------------
PURPOSE: Final = "comptroller.purpose"
TENANT: Final = "comptroller.tenant"
ORG: Final = "comptroller.org"
CONTEXT: Final = "comptroller.context"
PROFILE_ID: Final = "comptroller.profile.id"
PROFILE_VERSION: Final = "comptroller.profile.version"
ATTEMPT: Final = "comptroller.attempt"
FALLBACK_DEPTH: Final = "comptroller.fallback.depth"
COST_USD: Final = "comptroller.cost.usd"
"""Cost of one attempt in USD, fees included. On log records a decimal string (exact); on
spans a float."""
GEN_AI_USAGE_COST: Final = "gen_ai.usage.cost"
"""The cost of the request in USD under the name GenAI instrumentations are converging on
(not yet in the OpenTelemetry conventions); spans carry it beside `COST_USD`."""
COST_FEES_USD: Final = "comptroller.cost.fees_usd"
"""The part of `COST_USD` that is non-token fees (web searches, file searches, code runs);
absent when the response reported none."""
FEES: Final = "comptroller.fees"
"""The non-token fees a response reported, as a JSON object (`{"web_searches": 2}`)."""
USER_ID: Final = _user.USER_ID
"""The end user a call was made for (attribution)."""
SESSION_ID: Final = _session.SESSION_ID
GEN_AI_CONVERSATION_ID: Final = _g.GEN_AI_CONVERSATION_ID
"""The session or conversation a call belongs to (attribution)."""
FEATURE: Final = "comptroller.feature"
"""The product feature that made the call (attribution)."""
TAGS: Final = "comptroller.tags"
"""The call's attribution tags as a JSON object with sorted keys (`{"team":"search"}`)."""
PRICE_SOURCE: Final = "comptroller.price.source"
"""`genai-prices@<version>`, `fallback`, `provider`, `reservation` or `unpriced`."""
OUTCOME: Final = "comptroller.outcome"
"""`ok`, `error`, `budget_exceeded`, `rate_limited`, `circuit_open`, `exhausted_fallbacks`, …"""
ESTIMATED: Final = "comptroller.estimated"
"""True when usage was missing and the row charges the reservation instead."""
USAGE_ID: Final = "comptroller.usage.id"
"""Unique id of a usage row: the idempotency key of the landing."""
RATE_LIMIT_WAIT_MS: Final = "comptroller.rate_limit.wait_ms"
LATENCY_MS: Final = "comptroller.latency_ms"
SEMCONV_VERSION: Final = "comptroller.semconv.version"

# --- log-record event names (`event_name` of the OTel log record) ---------------------------
EVENT_USAGE: Final = "comptroller.usage"
EVENT_CIRCUIT_OPENED: Final = "llm.circuit.opened"
EVENT_CIRCUIT_HALF_OPENED: Final = "llm.circuit.half_opened"
EVENT_CIRCUIT_CLOSED: Final = "llm.circuit.closed"
EVENT_PROFILE_ACTIVATED: Final = "comptroller.profile.activated"
EVENT_PROFILE_ROLLED_BACK: Final = "comptroller.profile.rolled_back"
EVENT_PROFILE_WARNING: Final = "comptroller.profile.warning"
EVENT_BUDGET_WARNING: Final = "comptroller.budget.warning"
EVENT_BUDGET_EXCEEDED: Final = "comptroller.budget.exceeded"
EVENT_BUDGET_REJECTED: Final = "comptroller.budget.rejected"
EVENT_PURPOSE_UPGRADED: Final = "comptroller.purpose.upgraded"

# Attributes of circuit / profile / budget events.
CIRCUIT_STATE: Final = "comptroller.circuit.state"
CIRCUIT_REASON: Final = "comptroller.circuit.reason"
CIRCUIT_FAILURES: Final = "comptroller.circuit.failures"
CIRCUIT_CALLS: Final = "comptroller.circuit.calls"
CIRCUIT_COOLDOWN_S: Final = "comptroller.circuit.cooldown_s"
SCOPE_KIND: Final = "comptroller.scope.kind"
SCOPE_ID: Final = "comptroller.scope.id"
ACTOR: Final = "comptroller.actor"
REASON: Final = "comptroller.reason"
PROFILE_PREVIOUS_VERSION: Final = "comptroller.profile.previous_version"
PROFILE_MODEL: Final = "comptroller.profile.model"
PROFILE_PREVIOUS_MODEL: Final = "comptroller.profile.previous_model"
"""On a profile warning: the model the scope used before the change (`PROFILE_MODEL` is the new)."""
PROFILE_WARNING: Final = "comptroller.profile.warning"
"""On a profile warning: what it warns of (`embedding_model_changed`)."""
WARNING_EMBEDDING_MODEL_CHANGED: Final = "embedding_model_changed"
PROFILE_DETAIL: Final = "comptroller.profile.detail"
BUDGET_CAP_USD: Final = "comptroller.budget.cap_usd"
BUDGET_SPENT_USD: Final = "comptroller.budget.spent_usd"
BUDGET_RESERVED_USD: Final = "comptroller.budget.reserved_usd"
BUDGET_REQUESTED_USD: Final = "comptroller.budget.requested_usd"
"""On a budget rejection: the worst-case reservation the refused call needed."""
BUDGET_DAY: Final = "comptroller.budget.day"
BUDGET_ATTRIBUTE: Final = "comptroller.budget.attribute"
"""On a budget event of a budget by attribution: what it counts (`user=alice`)."""
BUDGET_THRESHOLD: Final = "comptroller.budget.threshold"
"""On a budget warning: the share of the cap crossed (0.8), or absent for a projection."""
BUDGET_WARNING_KIND: Final = "comptroller.budget.warning_kind"
"""On a budget warning: `threshold` (a share of the cap was crossed) or `projected` (the
day's burn rate will cross the cap before the day ends)."""
BUDGET_PROJECTED_USD: Final = "comptroller.budget.projected_usd"
"""On a projected-overrun warning: the day's spend at the current burn rate."""
EVENT_ID: Final = "comptroller.event.id"
"""An event's identity: landing and notifications deduplicate on it."""

# Appended by the guarded call (issue 4).
GEN_AI_INPUT_MESSAGES: Final = _g.GEN_AI_INPUT_MESSAGES
"""Prompt content (JSON); only recorded when `record_content` is enabled."""
GEN_AI_OUTPUT_MESSAGES: Final = _g.GEN_AI_OUTPUT_MESSAGES
"""Completion content (JSON); only recorded when `record_content` is enabled."""
PURPOSE_UPGRADED_TO: Final = "comptroller.purpose.upgraded_to"
"""The stronger purpose whose profile served a call (and of `comptroller.purpose.upgraded`)."""
