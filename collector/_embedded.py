"""The embedded sink: the control plane's default, landing in-process into a DuckDB file.

It encodes the SDK's spans and log records with the OTLP exporters' own encoders and feeds
the result through the SAME normaliser and landing code as the OTLP receiver, so both paths
produce identical rows. Exporters report failure, they never raise into the application.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Sequence
from pathlib import Path

from google.protobuf.message import Message
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk._logs.export import LogRecordExporter, LogRecordExportResult
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from comptroller import analytics
from comptroller.collector._land import Lander
from comptroller.collector._native import NativeDecoder, available
from comptroller.collector._normalise import Batch, Normaliser
from comptroller.pricing import Pricer

_log = logging.getLogger(__name__)


class EmbeddedSink:
    """A `TelemetrySink` that lands spans and usage rows into a DuckDB file in-process.

    Args:
        db_path: The DuckDB file (created and migrated if needed). This process becomes its
            only writer until `shutdown`.
        timezone: Time zone of the daily rollup's days.
        prices: Prices usage derived from third-party GenAI spans (the control plane passes
            its own pricer, so both price with the same fallback registry).

    Example:
        >>> sink = EmbeddedSink(Path("comptroller.duckdb"))  # doctest: +SKIP
        >>> provider.add_span_processor(BatchSpanProcessor(sink.span_exporter()))  # doctest: +SKIP
    """

    def __init__(
        self, db_path: Path | str, *, timezone: str = "UTC", prices: Pricer | None = None
    ) -> None:
        self.db_path = Path(db_path)
        self.timezone = timezone
        self.con = analytics.connect(self.db_path)
        self.normaliser = Normaliser(prices=prices)
        self.native = NativeDecoder(self.normaliser) if available() else None
        self.lander = Lander(self.con, timezone=timezone)
        self.rejected: dict[str, int] = {}
        self._lock = threading.Lock()
        self._closed = False

    def span_exporter(self) -> SpanExporter:
        """The exporter for the control plane's span processor."""
        return _SpanExporter(self)

    def log_exporter(self) -> LogRecordExporter:
        """The exporter for usage rows and events (log records)."""
        return _LogExporter(self)

    def normalise(self, signal: str, message: Message) -> Batch:
        """Normalise an encoded export: natively when the decoder takes it, as the collector."""
        if self.native is not None:
            got = self.native.normalise(signal, message.SerializeToString())
            if not isinstance(got, str):
                return got
        if signal == "traces":
            return self.normaliser.traces(message)  # type: ignore[arg-type]
        return self.normaliser.logs(message)  # type: ignore[arg-type]

    def land(self, batch: Batch) -> bool:
        """Land one normalised batch; False (logged) when it could not be landed."""
        with self._lock:
            if self._closed:
                return False
            for reason, count in batch.reasons.items():
                self.rejected[reason] = self.rejected.get(reason, 0) + count
            try:
                self.lander.land([batch])
            except Exception:
                _log.exception("comptroller: the embedded sink could not land a batch")
                return False
        return True

    def budget_state(self) -> list[analytics.BudgetState]:
        """Today's budget state in this sink's database.

        A control plane seeds its budget ledger from it at start, so that a restarted
        process does not forget the spend it already landed today.
        """
        with self._lock:
            if self._closed:
                return []
            reader = analytics.DuckDBReader(self.con)
        return analytics.budget_state(reader, timezone=self.timezone)

    def shutdown(self) -> None:
        """Close the database (after the providers flushed into the sink). Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            # The WAL has the data; a checkpoint is a courtesy.
            with contextlib.suppress(Exception):
                self.con.execute("CHECKPOINT").fetchall()
            self.con.close()


class _SpanExporter(SpanExporter):
    def __init__(self, sink: EmbeddedSink) -> None:
        self._sink = sink

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            batch = self._sink.normalise("traces", encode_spans(spans))
        except Exception:
            _log.exception("comptroller: the embedded sink could not encode spans")
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS if self._sink.land(batch) else SpanExportResult.FAILURE

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


class _LogExporter(LogRecordExporter):
    def __init__(self, sink: EmbeddedSink) -> None:
        self._sink = sink

    def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
        try:
            normalised = self._sink.normalise("logs", encode_logs(batch))
        except Exception:
            _log.exception("comptroller: the embedded sink could not encode log records")
            return LogRecordExportResult.FAILURE
        if self._sink.land(normalised):
            return LogRecordExportResult.SUCCESS
        return LogRecordExportResult.FAILURE

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True
