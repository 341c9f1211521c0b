"""Telemetry of one control plane: its own TracerProvider and LoggerProvider, never the globals.

The control plane emits, per logical call, an INTERNAL parent span carrying the final
outcome, and per provider attempt a CLIENT span named `"{operation} {request model}"` with the
GenAI semantic-convention attributes plus `comptroller.*`. Per attempt, one usage row — an
OTel log record with `event_name = "comptroller.usage"`, in the attempt span's context — goes
through the log pipeline, which is never sampled. Circuit, budget and purpose events are log
records through the same pipeline.

Where the data goes is a `TelemetrySink`: the embedded DuckDB sink of the collector (default),
the OTLP/HTTP exporters with a durable spool (`_otlp.py`), an in-memory sink for tests, or
nothing. Telemetry trouble never breaks the caller's call: exporters run in the batch
processors' threads and report failure, they never raise into the application.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast, runtime_checkable

from opentelemetry._logs import LogRecord, SeverityNumber
from opentelemetry.context import Context
from opentelemetry.sdk._logs import (
    LoggerProvider,
    LogRecordLimits,
    ReadableLogRecord,
    ReadWriteLogRecord,
)
from opentelemetry.sdk._logs.export import (
    BatchLogRecordProcessor,
    LogRecordExporter,
    LogRecordExportResult,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, TraceFlags
from opentelemetry.util.types import AttributeValue

from comptroller import __version__

INSTRUMENTATION_NAME = "comptroller.control"

# Usage rows are the billing truth: the log queue is sized so that a burst never drops one
# before the exporter drains it (the SDK drops on a full queue).
_LOG_QUEUE_SIZE = 262_144
_SPAN_QUEUE_SIZE = 65_536


@runtime_checkable
class TelemetrySink(Protocol):
    """Where a control plane's spans and log records (usage rows, events) go."""

    def span_exporter(self) -> SpanExporter:
        """The exporter that receives the control plane's finished spans."""
        ...

    def log_exporter(self) -> LogRecordExporter:
        """The exporter that receives usage rows and events (OTel log records)."""
        ...

    def shutdown(self) -> None:
        """Release the sink's resources (after the providers have flushed into it).

        A sink that could not land some rows says so here (a warning naming the count and
        the reasons); one that can tell also offers `check_delivered() -> bool`, which
        `Telemetry.flush` asks (True: every row handed over since the last check landed).
        """
        ...


class EventEmitter(Protocol):
    """Emits a named event (an OTel log record) with attributes: circuit, profile, budget."""

    def emit(self, event_name: str, attributes: Mapping[str, AttributeValue | None]) -> None:
        """Emit `event_name` with `attributes` (None values are left out)."""
        ...


class _DropSpans(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


class _DropLogs(LogRecordExporter):
    def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
        return LogRecordExportResult.SUCCESS

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


class NullSink:
    """A sink that drops everything (`telemetry = "none"`)."""

    def span_exporter(self) -> SpanExporter:
        return _DropSpans()

    def log_exporter(self) -> LogRecordExporter:
        return _DropLogs()

    def shutdown(self) -> None:
        return None


@dataclass
class _TrustedLogRecord(ReadWriteLogRecord):
    """A log record whose attributes comptroller built from plain values: no re-validation."""

    def __post_init__(self) -> None:
        return None


def _queue_of(processor: object) -> Any:
    """The batch queue inside an SDK batch processor, if it has the expected shape."""
    queue = getattr(processor, "_batch_processor", None)
    return queue if callable(getattr(queue, "emit", None)) else None


_EMPTY_CONTEXT = Context()
SAMPLED = TraceFlags(TraceFlags.SAMPLED)
NOT_SAMPLED = TraceFlags(TraceFlags.DEFAULT)


def new_span_id() -> int:
    """A random non-zero 64-bit span id."""
    return random.getrandbits(64) or 1


def new_trace_id() -> int:
    """A random non-zero 128-bit trace id."""
    return random.getrandbits(128) or 1


SpanItem = tuple[
    str, SpanKind, SpanContext, "SpanContext | None", dict[str, AttributeValue], int, int, Status
]
RowItem = tuple[str, dict[str, AttributeValue], int, int, SpanContext]


def _log_record(row: RowItem) -> LogRecord:
    """The SDK log record of a queued usage row."""
    event_name, attributes, timestamp, observed, context = row
    record = LogRecord(
        timestamp=timestamp,
        observed_timestamp=observed,
        context=_EMPTY_CONTEXT,
        severity_number=SeverityNumber.INFO,
        severity_text="INFO",
        attributes=attributes,
        event_name=event_name,
    )
    # Ids set directly (the context is empty): no span object per row.
    record.trace_id = context.trace_id
    record.span_id = context.span_id
    record.trace_flags = context.trace_flags
    return record


class DeferredSpan(Protocol):
    """A finished span that the span export thread builds (`span_item`)."""

    context: SpanContext

    def span_item(self) -> SpanItem: ...


class Deferred(DeferredSpan, Protocol):
    """A finished attempt whose span and usage row the export threads build (`span_item` in
    the span thread, `row_item` in the log thread; the two must not share what they write)."""

    def row_item(self) -> RowItem: ...


class _DeferredSpans(SpanExporter):
    """Builds the SDK spans of queued hot-path items in the export thread, then exports."""

    def __init__(
        self, inner: SpanExporter, resource: Resource, scope: InstrumentationScope
    ) -> None:
        self.inner = inner
        self.resource = resource
        self.scope = scope

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        built: list[ReadableSpan] = []
        # The queue holds what the hot path put there: SDK spans, tuples, deferred records.
        for queued in cast("Sequence[object]", spans):
            if isinstance(queued, ReadableSpan):
                built.append(queued)
                continue
            item = queued if isinstance(queued, tuple) else cast(DeferredSpan, queued).span_item()
            name, kind, context, parent, attributes, start, end, status = item
            built.append(
                ReadableSpan(
                    name=name,
                    context=context,
                    parent=parent,
                    resource=self.resource,
                    attributes=attributes,
                    kind=kind,
                    status=status,
                    start_time=start,
                    end_time=end,
                    instrumentation_scope=self.scope,
                )
            )
        return self.inner.export(built)

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


class _DeferredRows(LogRecordExporter):
    """Builds the SDK log records of queued usage rows in the export thread, then exports."""

    def __init__(
        self,
        inner: LogRecordExporter,
        resource: Resource,
        scope: InstrumentationScope,
        limits: LogRecordLimits,
    ) -> None:
        self.inner = inner
        self.resource = resource
        self.scope = scope
        self.limits = limits

    def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
        built: list[ReadableLogRecord] = []
        for queued in cast("Sequence[object]", batch):
            if isinstance(queued, ReadableLogRecord):
                built.append(queued)
                continue
            row = queued if isinstance(queued, tuple) else cast(Deferred, queued).row_item()
            built.append(
                ReadableLogRecord(
                    log_record=_log_record(row),
                    resource=self.resource,
                    instrumentation_scope=self.scope,
                    limits=self.limits,
                )
            )
        return self.inner.export(built)

    def shutdown(self) -> None:
        self.inner.shutdown()  # type: ignore[no-untyped-call]

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


class Telemetry:
    """The OpenTelemetry providers of one control plane, wired to one sink.

    Args:
        sink: Where spans and log records go; None exports nothing (spans are still made,
            so the caller's trace context stays intact).
        record_content: Put prompt and completion content on attempt spans.
        service_name: `service.name` of the resource (default: `OTEL_SERVICE_NAME`, else
            `comptroller`).
        schedule_delay_ms: Batch processors' export delay.
    """

    def __init__(
        self,
        sink: TelemetrySink | None,
        *,
        record_content: bool = False,
        service_name: str | None = None,
        schedule_delay_ms: float = 500.0,
    ) -> None:
        self.sink = sink
        self.record_content = record_content
        resource = Resource.create(
            {"service.name": service_name or os.environ.get("OTEL_SERVICE_NAME") or "comptroller"}
        )
        self.resource = resource
        self.scope = InstrumentationScope(INSTRUMENTATION_NAME, __version__)
        self._limits = LogRecordLimits()
        self.tracer_provider = TracerProvider(resource=resource)
        self.logger_provider = LoggerProvider(resource=resource)
        self._span_processor: BatchSpanProcessor | None = None
        self._log_processor: BatchLogRecordProcessor | None = None
        self._span_queue: Any = None
        self._row_queue: Any = None
        if sink is not None:
            self._span_processor = BatchSpanProcessor(
                _DeferredSpans(sink.span_exporter(), resource, self.scope),
                max_queue_size=_SPAN_QUEUE_SIZE,
                schedule_delay_millis=schedule_delay_ms,
                max_export_batch_size=2048,
            )
            self._log_processor = BatchLogRecordProcessor(
                _DeferredRows(sink.log_exporter(), resource, self.scope, self._limits),
                max_queue_size=_LOG_QUEUE_SIZE,
                schedule_delay_millis=schedule_delay_ms,
                max_export_batch_size=2048,
            )
            self.tracer_provider.add_span_processor(self._span_processor)
            self.logger_provider.add_log_record_processor(self._log_processor)
            # The processors' queues, when the SDK exposes them (the pinned 1.45 does), take
            # the hot path's plain tuples; the SDK objects are built in the export thread.
            self._span_queue = _queue_of(self._span_processor)
            self._row_queue = _queue_of(self._log_processor)
        self.tracer = self.tracer_provider.get_tracer(INSTRUMENTATION_NAME, __version__)
        self.logger = self.logger_provider.get_logger(INSTRUMENTATION_NAME, __version__)
        self._closed = False

    # The guarded call's hot path hands finished spans and usage rows to the batch processors
    # as plain tuples; the export thread builds the SDK objects (`_DeferredSpans`,
    # `_DeferredRows`) and the sink's exporters receive ordinary `ReadableSpan`s and
    # `ReadableLogRecord`s. The caller pays a queue append, not the SDK's per-attribute
    # validation and live-span bookkeeping (its attributes are built from known names and
    # plain values). Ids come from `new_span_id`/`new_trace_id`, so the spans exist (for
    # log-record links and child spans) before they are exported.

    def export_span(
        self,
        name: str,
        kind: SpanKind,
        context: SpanContext,
        parent: SpanContext | None,
        attributes: dict[str, AttributeValue],
        start_ns: int,
        end_ns: int,
        status: Status,
    ) -> None:
        """Queue one finished span for export (dropped when not sampled)."""
        processor = self._span_processor
        if processor is None or not context.trace_flags.sampled:
            return
        item: SpanItem = (name, kind, context, parent, attributes, start_ns, end_ns, status)
        queue = self._span_queue
        if queue is not None:
            queue.emit(item)
            return
        processor.on_end(  # pragma: no cover - an SDK without the batch queue attribute
            ReadableSpan(
                name=name,
                context=context,
                parent=parent,
                resource=self.resource,
                attributes=attributes,
                kind=kind,
                status=status,
                start_time=start_ns,
                end_time=end_ns,
                instrumentation_scope=self.scope,
            )
        )

    def export_deferred(self, item: Deferred) -> None:
        """Queue a finished attempt: its span (when sampled) and its usage row (always) are
        built from it in the export threads."""
        if self._log_processor is None:
            return  # no sink: nothing is exported
        if self._span_queue is None or self._row_queue is None:
            # An SDK without the batch queue attribute: build them here.
            self.export_span(*item.span_item())  # pragma: no cover
            event_name, attributes, timestamp_ns, _, context = item.row_item()  # pragma: no cover
            self.export_record(event_name, attributes, timestamp_ns, context)  # pragma: no cover
            return  # pragma: no cover
        if item.context.trace_flags.sampled:
            self._span_queue.emit(item)
        self._row_queue.emit(item)

    def export_deferred_span(self, item: DeferredSpan) -> None:
        """Queue a finished span (dropped when not sampled), built in the export thread."""
        if self._span_processor is None or not item.context.trace_flags.sampled:
            return
        if self._span_queue is None:
            self.export_span(*item.span_item())  # pragma: no cover
            return  # pragma: no cover
        self._span_queue.emit(item)

    def export_record(
        self,
        event_name: str,
        attributes: dict[str, AttributeValue],
        timestamp_ns: int,
        context: SpanContext,
    ) -> None:
        """Queue one log record (a usage row) in `context` for export. Never sampled: the
        record goes whether or not the span is."""
        processor = self._log_processor
        if processor is None:
            return
        item: RowItem = (event_name, attributes, timestamp_ns, time.time_ns(), context)
        queue = self._row_queue
        if queue is not None:
            queue.emit(item)
            return
        processor.on_emit(  # pragma: no cover - an SDK without the batch queue attribute
            _TrustedLogRecord(
                log_record=_log_record(item),
                resource=self.resource,
                instrumentation_scope=self.scope,
                limits=self._limits,
            )
        )

    def emit(self, event_name: str, attributes: Mapping[str, AttributeValue | None]) -> None:
        """Emit an event as a log record (in the current trace context, if any)."""
        clean = {key: value for key, value in attributes.items() if value is not None}
        self.logger.emit(
            event_name=event_name,
            attributes=clean,
            severity_number=SeverityNumber.INFO,
            severity_text="INFO",
        )

    def flush(self, timeout_ms: int = 30_000) -> bool:
        """Export everything emitted so far.

        Returns:
            True when both pipelines flushed in time and the sink landed every row it was
            handed since the last flush (a sink that can tell: `check_delivered`). A row the
            sink rejected or failed to land makes it False: never "landed" when it did not.
        """
        spans = self.tracer_provider.force_flush(timeout_ms)
        logs = self.logger_provider.force_flush(timeout_ms)
        check = getattr(self.sink, "check_delivered", None)
        delivered = True if check is None else bool(check())
        return bool(spans and logs and delivered)

    def shutdown(self) -> None:
        """Flush and stop both pipelines, then the sink. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.tracer_provider.shutdown()
        self.logger_provider.shutdown()
        if self.sink is not None:
            self.sink.shutdown()
