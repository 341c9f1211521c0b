from __future__ import annotations

from typing import Any

from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, LogRecordExporter
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from comptroller import semconv


class InMemorySink:
    """A `TelemetrySink` that keeps every span and log record in memory, for tests.

    Call `ControlPlane.flush()` before reading: the control plane exports in batches.

    Example:
        >>> sink = InMemorySink()
        >>> plane = ControlPlane(settings, sink=sink)  # doctest: +SKIP
        >>> plane.flush(); sink.usage_rows()  # doctest: +SKIP
    """

    def __init__(self) -> None:
        self._spans = InMemorySpanExporter()
        self._logs = InMemoryLogRecordExporter()  # type: ignore[no-untyped-call]

    def span_exporter(self) -> SpanExporter:
        """The in-memory span exporter."""
        return self._spans

    def log_exporter(self) -> LogRecordExporter:
        """The in-memory log-record exporter."""
        return self._logs

    def shutdown(self) -> None:
        """Keep the data readable after the control plane shut down."""

    def spans(self, name: str | None = None) -> list[ReadableSpan]:
        """Finished spans, in end order (only those named `name` if given)."""
        found = list(self._spans.get_finished_spans())
        return [s for s in found if name is None or s.name == name]

    def attempt_spans(self) -> list[ReadableSpan]:
        """The CLIENT spans of provider attempts."""
        from opentelemetry.trace import SpanKind

        return [s for s in self.spans() if s.kind == SpanKind.CLIENT]

    def call_spans(self) -> list[ReadableSpan]:
        """The parent spans of logical calls."""
        return [s for s in self.spans() if s.name.startswith("comptroller.call ")]

    def log_records(self) -> list[ReadableLogRecord]:
        """Every exported log record (usage rows and events)."""
        return list(self._logs.get_finished_logs())

    def events(self, event_name: str | None = None) -> list[dict[str, Any]]:
        """Attributes of the log records named `event_name` (all events when None),
        each with its `event_name` under the key `"event_name"`."""
        out: list[dict[str, Any]] = []
        for record in self.log_records():
            log = record.log_record
            if event_name is None or log.event_name == event_name:
                attrs = dict(log.attributes or {})
                attrs["event_name"] = log.event_name
                out.append(attrs)
        return out

    def usage_rows(self) -> list[dict[str, Any]]:
        """Attributes of every usage row (`comptroller.usage` log records)."""
        rows = self.events(semconv.EVENT_USAGE)
        for row in rows:
            row.pop("event_name", None)
        return rows

    def clear(self) -> None:
        """Forget everything received so far."""
        self._spans.clear()
        self._logs.clear()
