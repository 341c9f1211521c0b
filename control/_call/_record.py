"""What a call leaves behind: each attempt's CLIENT span and usage row, the call's span."""

from __future__ import annotations

import json
import random
import time
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode

from comptroller import semconv
from comptroller.control._call._steps import Record

if TYPE_CHECKING:
    from comptroller.control._call._attempt import Attempt
    from comptroller.control._call._route import CallCore, Prepared

UNSET = Status(StatusCode.UNSET)


class AttemptRecord(Record):
    """An attempt's outcome, exported as its span and usage row when the flow yields it."""

    __slots__ = ("at", "call_ctx", "core", "cost", "outcome", "prep", "response_model", "status")

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
        self.outcome = outcome
        self.cost = cost
        self.response_model = response_model
        self.status = status
        self.core, self.prep, self.call_ctx = where

    def run(self) -> None:
        """Export the attempt's CLIENT span and its usage row (never sampled)."""
        core = self.core
        prep = self.prep
        at = self.at
        cost = self.cost
        outcome = self.outcome
        response_model = self.response_model
        telemetry = core.telemetry
        attrs = at.attrs
        # The usage row: the span's identity and labels plus the billing fields. Token
        # counts always present on the row (0 when reported so); on the span only as reported.
        row = dict(prep.row_attrs[at.depth])
        if at.model != at.ref.model:
            row[semconv.GEN_AI_REQUEST_MODEL] = at.model
        row[semconv.ATTEMPT] = at.attempt
        error_type = attrs.get(semconv.ERROR_TYPE)
        if error_type is not None:
            row[semconv.ERROR_TYPE] = error_type
        usage = at.usage
        if usage is not None:
            attrs[semconv.GEN_AI_USAGE_INPUT_TOKENS] = usage.input_tokens
            attrs[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] = usage.output_tokens
            row[semconv.GEN_AI_USAGE_INPUT_TOKENS] = usage.input_tokens
            row[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] = usage.output_tokens
            row[semconv.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] = usage.cache_read_tokens
            row[semconv.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS] = usage.cache_write_tokens
            row[semconv.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS] = usage.reasoning_tokens
            if usage.cache_read_tokens:
                attrs[semconv.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] = usage.cache_read_tokens
            if usage.cache_write_tokens:
                attrs[semconv.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS] = usage.cache_write_tokens
            if usage.reasoning_tokens:
                attrs[semconv.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS] = usage.reasoning_tokens
        price = at.price
        if price is not None and price.cost_usd is not None:
            source = price.source
        elif cost is not None:
            source = "reservation"
        else:
            source = "unpriced"
        attrs[semconv.PRICE_SOURCE] = row[semconv.PRICE_SOURCE] = source
        attrs[semconv.OUTCOME] = row[semconv.OUTCOME] = outcome
        if cost is not None:
            attrs[semconv.COST_USD] = float(cost)
            row[semconv.COST_USD] = str(cost)
        row[semconv.USAGE_ID] = f"{random.getrandbits(128):032x}"
        row[semconv.ESTIMATED] = at.estimated
        row[semconv.LATENCY_MS] = (core.clock.time() - at.started_s) * 1000.0
        if response_model is not None:
            row[semconv.GEN_AI_RESPONSE_MODEL] = response_model
        telemetry.export_record(semconv.EVENT_USAGE, row, at.started_ns, at.span_ctx)
        name = prep.attempt_names[at.depth]
        if at.model != at.ref.model:
            name = semconv.OPERATION_CHAT + " " + at.model
        telemetry.export_span(
            name,
            SpanKind.CLIENT,
            at.span_ctx,
            self.call_ctx,
            attrs,
            at.start_ns,
            time.time_ns(),
            self.status,
        )


def export_call(
    core: CallCore,
    prep: Prepared,
    call_ctx: SpanContext,
    caller: SpanContext | None,
    start_ns: int,
    outcome: str,
    error: BaseException | None,
    error_text: str | None,
) -> None:
    """Export the call's INTERNAL span, parent of its attempts, with the final outcome."""
    attrs = dict(prep.parent_attrs)
    attrs[semconv.OUTCOME] = outcome
    status = UNSET
    if error is not None:
        attrs[semconv.ERROR_TYPE] = type(error).__name__
        status = Status(StatusCode.ERROR, (error_text or "")[:200])
    core.telemetry.export_span(
        prep.call_name,
        SpanKind.INTERNAL,
        call_ctx,
        caller,
        attrs,
        start_ns,
        time.time_ns(),
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
