"""One provider attempt of a call, and what a stream delivered of it."""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING, Any

from langchain_core.messages import AIMessageChunk
from langchain_core.messages.ai import add_ai_message_chunks
from opentelemetry.trace import INVALID_SPAN_CONTEXT, SpanContext
from opentelemetry.util.types import AttributeValue

from comptroller.control._call._context import CallInfo
from comptroller.control._errors import TruncatedStream
from comptroller.control._profile_types import ModelRef
from comptroller.control._usage import usage_of

if TYPE_CHECKING:
    from comptroller.control._attribution import Attribution
    from comptroller.control._classify import Classified
    from comptroller.pricing import Price, Usage

ZERO = Decimal(0)


class Attempt:
    """The state of one attempt: which model, its ticket, its span, what it cost."""

    __slots__ = (
        "attempt",
        "attribution",
        "attrs",
        "cls",
        "depth",
        "estimated",
        "fee_cost",
        "fees",
        "info_prefix",
        "model",
        "otel_ctx",
        "price",
        "ref",
        "reserve",
        "span_ctx",
        "start_ns",
        "started_ns",
        "started_s",
        "ticket",
        "usage",
        "waited_s",
    )

    def __init__(
        self,
        ref: ModelRef,
        depth: int,
        attempt: int,
        model: str,
        info_prefix: tuple[str, str | None, str | None, str | None],
    ) -> None:
        self.ref = ref
        self.info_prefix = info_prefix
        self.depth = depth
        self.attempt = attempt
        self.model = model
        """The model requested of the provider: the chain's, or the caller's per-call `model=`."""
        self.ticket: Any = None
        self.reserve = ZERO
        self.waited_s = 0.0
        self.span_ctx: SpanContext = INVALID_SPAN_CONTEXT
        self.otel_ctx: Any = None
        self.attrs: dict[str, AttributeValue] = {}
        """What the attempt's outcome adds to its span (the profile's attributes are added
        when the span is built, in the export thread)."""
        self.start_ns = 0
        self.started_ns = 0
        self.started_s = 0.0
        self.usage: Usage | None = None
        self.price: Price | None = None
        self.estimated = False
        self.cls: Classified | None = None
        self.attribution: Attribution | None = None
        self.fees: dict[str, int] | None = None
        """The non-token fees the answer reported (web searches, …), if any."""
        self.fee_cost: Decimal | None = None
        """Their cost (part of `price`); None when none were reported or none is known."""

    def call_info(self) -> CallInfo:
        """What `current_call()` tells code running inside this attempt."""
        purpose, tenant, org, context = self.info_prefix
        return CallInfo(
            purpose, tenant, org, context, self.ref.provider, self.model, self.attempt, self.depth
        )


class StreamAccumulator:
    """The chunks a stream delivered, merged once at the end (linear in the chunk count)."""

    __slots__ = ("chunks", "finished", "usage_chunk")

    def __init__(self) -> None:
        self.chunks: list[Any] = []
        self.finished = False
        self.usage_chunk: Any = None

    @property
    def delivered(self) -> bool:
        """Whether the caller has received a chunk (a retry would then repeat output)."""
        return bool(self.chunks)

    def add(self, chunk: Any) -> None:
        self.chunks.append(chunk)
        # Most chunks carry neither: two attribute reads, no merging.
        meta = getattr(chunk, "response_metadata", None)
        # OpenAI says `finish_reason`, Anthropic `stop_reason`.
        if meta and (meta.get("finish_reason") or meta.get("stop_reason")):
            self.finished = True
        if getattr(chunk, "usage_metadata", None):
            self.usage_chunk = chunk

    def merged(self) -> Any:
        chunks = self.chunks
        if not chunks:
            return None
        if len(chunks) == 1 or not all(isinstance(c, AIMessageChunk) for c in chunks):
            merged = chunks[0]
            for chunk in chunks[1:]:
                merged = merged + chunk
            return merged
        return add_ai_message_chunks(chunks[0], *chunks[1:])

    def usage_so_far(self) -> Usage | None:
        """Usage the provider reported before the stream stopped, if it did."""
        if self.usage_chunk is None:
            return None
        return usage_of(self.merged())

    def complete(self, ref: ModelRef) -> Any:
        """The whole message of a stream that ended; a stream without its usage or its finish
        reason was cut short and is an error (it would otherwise be priced at nothing)."""
        if self.usage_chunk is None:
            raise TruncatedStream(ref.provider, ref.model, "usage (final chunk)")
        if not self.finished:
            raise TruncatedStream(ref.provider, ref.model, "finish reason")
        return self.merged()
