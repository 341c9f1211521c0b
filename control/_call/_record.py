"""What a call leaves behind: each attempt's CLIENT span and usage row, the call's span."""

from __future__ import annotations

import json
import random
import time
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import orjson
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode

from comptroller import semconv
from comptroller.control._attribution import attribution_attributes

if TYPE_CHECKING:
    from comptroller.control._attribution import Attribution
    from comptroller.control._call._attempt import Attempt
    from comptroller.control._call._route import CallCore, Prepared
    from comptroller.control._telemetry import RowItem, SpanItem

UNSET = Status(StatusCode.UNSET)


class AttemptRecord:
    """An attempt's outcome. `export()` (on the caller's path) takes the two instants and
    queues the record; its span and usage row are built from it in the export threads, so the
    caller pays two queue appends, not the building of ~30 attributes."""

    __slots__ = (
        "at",
        "call_ctx",
        "context",
        "core",
        "cost",
        "end_ns",
        "error_type",
        "latency_ms",
        "outcome",
        "prep",
        "response_model",
        "status",
    )

    def __init__(
        self,
        at: Attempt,
        outcome: str,
        cost: Decimal | None,
        response_model: str | None,
        status: Status,
        where: tuple[CallCore, Prepared, SpanContext],
    ) -> None:
        self.at = at
        self.context = at.span_ctx
        self.outcome = outcome
        self.cost = cost
        self.response_model = response_model
        self.status = status
        self.core, self.prep, self.call_ctx = where
        self.error_type = at.attrs.get(semconv.ERROR_TYPE)
        self.end_ns = 0
        self.latency_ms = 0.0

    def export(self) -> None:
        """Queue the attempt's CLIENT span and its usage row (never sampled) for export."""
        self.end_ns = time.time_ns()
        self.latency_ms = (self.core.clock.time() - self.at.started_s) * 1000.0
        self.core.telemetry.export_deferred(self)

    def _source(self) -> str:
        price = self.at.price
        if price is not None and price.cost_usd is not None:
            return price.source
        return "unpriced" if self.cost is None else "reservation"

    def span_item(self) -> SpanItem:
        """The span, built in the span export thread."""
        at = self.at
        attrs = dict(self.prep.attempt_attrs[at.depth])
        attrs[semconv.ATTEMPT] = at.attempt
        if at.model != at.ref.model:
            attrs[semconv.GEN_AI_REQUEST_MODEL] = at.model
        if at.waited_s:
            attrs[semconv.RATE_LIMIT_WAIT_MS] = at.waited_s * 1000.0
        if self.response_model is not None:
            attrs[semconv.GEN_AI_RESPONSE_MODEL] = self.response_model
        attrs.update(at.attrs)
        usage = at.usage
        if usage is not None:
            attrs[semconv.GEN_AI_USAGE_INPUT_TOKENS] = usage.input_tokens
            attrs[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] = usage.output_tokens
            # On the span only the kinds reported (the row always has every count).
            if usage.cache_read_tokens:
                attrs[semconv.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] = usage.cache_read_tokens
            if usage.cache_write_tokens:
                attrs[semconv.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS] = usage.cache_write_tokens
            if usage.reasoning_tokens:
                attrs[semconv.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS] = usage.reasoning_tokens
        attrs[semconv.PRICE_SOURCE] = self._source()
        attrs[semconv.OUTCOME] = self.outcome
        if self.cost is not None:
            attrs[semconv.COST_USD] = attrs[semconv.GEN_AI_USAGE_COST] = float(self.cost)
        if at.fees:
            attrs[semconv.FEES] = orjson.dumps(at.fees, option=orjson.OPT_SORT_KEYS).decode()
            if at.fee_cost is not None:
                attrs[semconv.COST_FEES_USD] = float(at.fee_cost)
        if at.attribution is not None:
            attrs.update(attribution_attributes(at.attribution, span=True))
        name = self.prep.attempt_names[at.depth]
        if at.model != at.ref.model:
            name = self.prep.operation + " " + at.model
        return (
            name,
            SpanKind.CLIENT,
            at.span_ctx,
            self.call_ctx,
            attrs,
            at.start_ns,
            self.end_ns,
            self.status,
        )

    def row_item(self) -> RowItem:
        """The usage row (the span's identity and labels plus the billing fields), built in
        the log export thread."""
        at = self.at
        row = dict(self.prep.row_attrs[at.depth])
        if at.model != at.ref.model:
            row[semconv.GEN_AI_REQUEST_MODEL] = at.model
        row[semconv.ATTEMPT] = at.attempt
        if self.error_type is not None:
            row[semconv.ERROR_TYPE] = self.error_type
        usage = at.usage
        if usage is not None:
            row[semconv.GEN_AI_USAGE_INPUT_TOKENS] = usage.input_tokens
            row[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] = usage.output_tokens
            row[semconv.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] = usage.cache_read_tokens
            row[semconv.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS] = usage.cache_write_tokens
            row[semconv.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS] = usage.reasoning_tokens
        row[semconv.PRICE_SOURCE] = self._source()
        row[semconv.OUTCOME] = self.outcome
        if self.cost is not None:
            row[semconv.COST_USD] = str(self.cost)
        if at.fees:
            row[semconv.FEES] = orjson.dumps(at.fees, option=orjson.OPT_SORT_KEYS).decode()
            if at.fee_cost is not None:
                row[semconv.COST_FEES_USD] = str(at.fee_cost)
        if at.attribution is not None:
            row.update(attribution_attributes(at.attribution))
        row[semconv.USAGE_ID] = f"{random.getrandbits(128):032x}"
        row[semconv.ESTIMATED] = at.estimated
        row[semconv.LATENCY_MS] = self.latency_ms
        if self.response_model is not None:
            row[semconv.GEN_AI_RESPONSE_MODEL] = self.response_model
        return (semconv.EVENT_USAGE, row, at.started_ns, time.time_ns(), at.span_ctx)


class CallRecord:
    """The call's INTERNAL span, parent of its attempts, with the final outcome; built in the
    span export thread."""

    __slots__ = (
        "attribution",
        "caller",
        "context",
        "end_ns",
        "error_text",
        "error_type",
        "outcome",
        "prep",
        "start_ns",
    )

    def __init__(
        self,
        prep: Prepared,
        context: SpanContext,
        caller: SpanContext | None,
        start_ns: int,
        outcome: str,
        error: BaseException | None,
        attribution: Attribution | None = None,
    ) -> None:
        self.attribution = attribution
        self.prep = prep
        self.context = context
        self.caller = caller
        self.start_ns = start_ns
        self.end_ns = time.time_ns()
        self.outcome = outcome
        # The error's text now: it must not keep the error (and what it holds) alive.
        self.error_type = None if error is None else type(error).__name__
        self.error_text = None if error is None else str(error)[:200]

    def span_item(self) -> SpanItem:
        attrs = dict(self.prep.parent_attrs)
        attrs[semconv.OUTCOME] = self.outcome
        if self.attribution is not None:
            attrs.update(attribution_attributes(self.attribution, span=True))
        status = UNSET
        if self.error_type is not None:
            attrs[semconv.ERROR_TYPE] = self.error_type
            status = Status(StatusCode.ERROR, self.error_text)
        return (
            self.prep.call_name,
            SpanKind.INTERNAL,
            self.context,
            self.caller,
            attrs,
            self.start_ns,
            self.end_ns,
            status,
        )


def content_json(value: Any) -> str:
    """Messages as the GenAI conventions' JSON (only when content recording is enabled)."""
    if isinstance(value, str):
        return json.dumps([{"role": "user", "content": value}])
    if isinstance(value, list | tuple):
        out = []
        for item in value:
            role = getattr(item, "type", None) or "user"
            content = getattr(item, "content", item)
            out.append(
                {
                    "role": role,
                    "content": content if isinstance(content, str | list) else str(content),
                }
            )
        return json.dumps(out, default=str)
    to_messages = getattr(value, "to_messages", None)
    if to_messages is not None:
        return content_json(to_messages())
    return json.dumps([{"role": "user", "content": str(value)}])
