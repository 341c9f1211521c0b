"""The embedded sink: the control plane's default, landing in-process into a DuckDB file.

It encodes the SDK's spans and log records with the OTLP exporters' own encoders and feeds
the result through the SAME normaliser, validation and landing code as the OTLP receiver, so
both paths produce identical rows. Exporters report failure, they never raise into the
application.

It never says "landed" when a row did not land: a span, usage row or event that was rejected
(quarantined in `rejected_records`) or whose landing failed makes `check_delivered` — and so
`Telemetry.flush` and `ControlPlane.flush` — return False, and `shutdown` logs a warning with
the count and the reasons.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
from google.protobuf.message import Message
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk._logs.export import LogRecordExporter, LogRecordExportResult
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from comptroller import analytics
from comptroller.budget_alerts import WarningPolicy
from comptroller.collector._alert_log import start_notifier
from comptroller.collector._land import Lander
from comptroller.collector._native import NativeDecoder, available
from comptroller.collector._normalise import Batch, Normaliser
from comptroller.collector._validate import validate
from comptroller.config import AlertSettings
from comptroller.config._collector import is_postgres_url
from comptroller.errors import ConfigError
from comptroller.pricing import Pricer

if TYPE_CHECKING:
    from comptroller.config import AttributionBudget

_log = logging.getLogger(__name__)
_EMPTY = pa.table({})


class EmbeddedSink:
    """A `TelemetrySink` that lands spans and usage rows into a DuckDB file in-process.

    Args:
        db_path: The DuckDB file (created and migrated if needed). This process becomes its
            only writer until `shutdown`. A PostgreSQL ledger is refused (ConfigError): a
            fleet lands into it through `comptroller collect`.
        timezone: Time zone of the daily rollup's days.
        prices: Prices usage derived from third-party GenAI spans (the control plane passes
            its own pricer, so both price with the same fallback registry).

    Example:
        >>> sink = EmbeddedSink(Path("comptroller.duckdb"))  # doctest: +SKIP
        >>> provider.add_span_processor(BatchSpanProcessor(sink.span_exporter()))  # doctest: +SKIP
    """

    def __init__(
        self,
        db_path: Path | str,
        *,
        timezone: str = "UTC",
        prices: Pricer | None = None,
        alerts: AlertSettings | None = None,
        attribution_budgets: Sequence[AttributionBudget] = (),
    ) -> None:
        if is_postgres_url(db_path) or str(db_path).startswith(("postgresql:", "postgres:")):
            raise ConfigError(
                "the embedded sink lands into a DuckDB file only, not a PostgreSQL ledger: "
                "run `comptroller collect --db postgresql://…` and send it OTLP "
                '(telemetry = "otlp"), or give the embedded sink a DuckDB file'
            )
        self.db_path = Path(db_path)
        self.timezone = timezone
        self.attribution_budgets = tuple(attribution_budgets)
        self.con = analytics.connect(self.db_path)
        self.normaliser = Normaliser(prices=prices)
        self.native = NativeDecoder(self.normaliser) if available() else None
        self.notifier = start_notifier(self.con, alerts) if alerts is not None else None
        """Tells the configured webhooks of budget and circuit alerts (None: no webhooks)."""
        self.lander = Lander(
            self.con,
            timezone=timezone,
            warnings=WarningPolicy.from_settings(alerts) if alerts is not None else None,
            on_alerts=self.notifier.offer if self.notifier is not None else None,
            attribution_budgets=self.attribution_budgets,
        )
        self.rejected: dict[str, int] = {}
        """Rows rejected or refused (quarantined in `rejected_records`), by reason."""
        self.failed: dict[str, int] = {}
        """Rows whose landing failed (not landed at all), by error."""
        self._undelivered = 0
        """Rows not landed since the last `check_delivered`."""
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

    def land(self, batch: Batch, *, signal: str = "traces", message: Message | None = None) -> bool:
        """Validate and land one normalised batch.

        Returns:
            False when a row of it did not land: rejected (then quarantined) or failed
            (logged). The rest of the batch lands either way.
        """
        now = self.normaliser.now_ns()
        validate(
            batch,
            signal=signal,
            latest_ns=self.normaliser.latest_ns(),
            received=dt.datetime.fromtimestamp(now / 1e9, dt.UTC),
            request=lambda: message,
        )
        with self._lock:
            if self._closed:
                self._note(self.failed, {"sink closed": batch.rows})
                return False
            self._note(self.rejected, batch.reasons)
            try:
                result = self.lander.land_safely([batch])
            except Exception as exc:
                _log.exception("comptroller: the embedded sink could not land a batch")
                rows = batch.rows - batch.tables.get("rejected_records", _EMPTY).num_rows
                self._note(self.failed, {f"{type(exc).__name__}: {exc}": rows})
                return False
            if result.quarantined is not None:
                refused: dict[str, int] = {}
                for reason in result.quarantined.column("reason").to_pylist():
                    refused[reason] = refused.get(reason, 0) + 1
                self._note(self.rejected, refused)
                return False
        return not batch.rejected

    def _note(self, into: dict[str, int], counts: dict[str, int]) -> None:
        for reason, count in counts.items():
            into[reason] = into.get(reason, 0) + count
            self._undelivered += count

    def check_delivered(self) -> bool:
        """True when every row handed to the sink since the last check landed.

        `Telemetry.flush` asks after the providers flushed: a row rejected (it is in
        `rejected_records`) or whose landing failed makes the flush report failure.
        """
        with self._lock:
            undelivered, self._undelivered = self._undelivered, 0
        return undelivered == 0

    def budget_state(self) -> list[analytics.BudgetState]:
        """Today's budget state in this sink's database.

        A control plane seeds its budget ledger from it at start, so that a restarted
        process does not forget the spend it already landed today.
        """
        with self._lock:
            if self._closed:
                return []
            reader = analytics.DuckDBReader(self.con)
        return analytics.budget_state(
            reader, timezone=self.timezone, attribution_budgets=self.attribution_budgets
        )

    def shutdown(self) -> None:
        """Close the database (after the providers flushed into the sink). Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            lost = sum(self.rejected.values()) + sum(self.failed.values())
            if lost:
                reasons = "; ".join(
                    f"{count} {reason}"
                    for reason, count in sorted({**self.rejected, **self.failed}.items())
                )
                _log.warning(
                    "comptroller: %d spans, usage rows or events did not land in %s (%s); "
                    "the rejected ones are in its rejected_records table",
                    lost,
                    self.db_path,
                    reasons,
                )
            if self.notifier is not None:
                self.notifier.close()
            # The WAL has the data; a checkpoint is a courtesy.
            with contextlib.suppress(Exception):
                self.con.execute("CHECKPOINT").fetchall()
            self.con.close()


class _SpanExporter(SpanExporter):
    def __init__(self, sink: EmbeddedSink) -> None:
        self._sink = sink

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            message = encode_spans(spans)
            batch = self._sink.normalise("traces", message)
        except Exception:
            _log.exception("comptroller: the embedded sink could not encode spans")
            return SpanExportResult.FAILURE
        landed = self._sink.land(batch, signal="traces", message=message)
        return SpanExportResult.SUCCESS if landed else SpanExportResult.FAILURE

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


class _LogExporter(LogRecordExporter):
    def __init__(self, sink: EmbeddedSink) -> None:
        self._sink = sink

    def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
        try:
            message = encode_logs(batch)
            normalised = self._sink.normalise("logs", message)
        except Exception:
            _log.exception("comptroller: the embedded sink could not encode log records")
            return LogRecordExportResult.FAILURE
        if self._sink.land(normalised, signal="logs", message=message):
            return LogRecordExportResult.SUCCESS
        return LogRecordExportResult.FAILURE

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True
