"""Writing query results: aligned text, CSV, JSON and Parquet."""

from __future__ import annotations

import datetime as dt
import io
import json
import math
from decimal import Decimal
from pathlib import Path
from typing import IO, Literal, TypeAlias

import pyarrow as pa

from comptroller.errors import UsageError

OutputFormat: TypeAlias = Literal["table", "csv", "json", "parquet"]
OUTPUT_FORMATS: tuple[OutputFormat, ...] = ("table", "csv", "json", "parquet")


def write_result(
    table: pa.Table,
    fmt: OutputFormat,
    *,
    text: IO[str],
    binary: IO[bytes] | None = None,
    output: Path | None = None,
) -> None:
    """Write `table` in `fmt` to `output`, or to `text` (`binary` for Parquet).

    Raises:
        UsageError: Parquet to a terminal, or an unknown format.
    """
    if fmt == "parquet":
        import pyarrow.parquet as pq

        if output is not None:
            pq.write_table(table, str(output))
            return
        if binary is None:
            raise UsageError("Parquet is binary: write it to a file with --output FILE")
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        binary.write(buffer.getvalue())
        binary.flush()
        return
    rendered = render(table, fmt)
    if output is not None:
        output.write_text(rendered, encoding="utf-8")
    else:
        text.write(rendered)
        text.flush()


def render(table: pa.Table, fmt: OutputFormat) -> str:
    """`table` as text: an aligned table, CSV (RFC 4180) or a JSON array of objects.

    Decimals stay exact: digits in the table and CSV, strings in JSON. A float that is not
    a number (a division by zero gives `Infinity`, `0/0` gives `NaN`) is written as the text
    `NaN`, `Infinity` or `-Infinity` in every format, a string in JSON: JSON has no such
    numbers, and a null would pass it off as a missing value.
    """
    if fmt == "table":
        return render_table(table)
    if fmt == "csv":
        return _csv(table)
    if fmt == "json":
        rows = [{k: _json_value(v) for k, v in row.items()} for row in table.to_pylist()]
        return json.dumps(rows, ensure_ascii=False, indent=None) + "\n"
    raise UsageError(f"unknown format {fmt!r} (choose from {', '.join(OUTPUT_FORMATS)})")


def render_table(table: pa.Table, *, max_width: int = 60) -> str:
    """An aligned plain-text table: a header, a rule, one line per row, numbers right-aligned."""
    names = table.column_names
    if not names:
        return ""
    numeric = [_is_numeric(table.schema.field(name).type) for name in names]
    cells = [[_cell(v, max_width) for v in row.values()] for row in table.to_pylist()]
    widths = [max([len(name), *(len(row[i]) for row in cells)]) for i, name in enumerate(names)]

    def line(values: list[str]) -> str:
        parts = [
            v.rjust(widths[i]) if numeric[i] else v.ljust(widths[i]) for i, v in enumerate(values)
        ]
        return "  ".join(parts).rstrip()

    out = [line(list(names)), "  ".join("-" * w for w in widths)]
    out.extend(line(row) for row in cells)
    count = table.num_rows
    out.append(f"({count} row{'s' if count != 1 else ''})")
    return "\n".join(out) + "\n"


def _csv(table: pa.Table) -> str:
    import csv

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(table.column_names)
    for row in table.to_pylist():
        writer.writerow(["" if v is None else _text(v) for v in row.values()])
    return buffer.getvalue()


def _is_numeric(kind: pa.DataType) -> bool:
    return bool(
        pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind)
    )


def _non_finite(value: float) -> str | None:
    """`NaN`, `Infinity` or `-Infinity` for a float that is not finite, else None."""
    if math.isfinite(value):
        return None
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def _text(value: object) -> str:
    if isinstance(value, Decimal):
        return _decimal(value)
    if isinstance(value, float):
        special = _non_finite(value)
        if special is not None:
            return special
        return repr(value) if value != int(value) or abs(value) >= 1e16 else f"{value:.1f}"
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, list | dict):
        return json.dumps(value, default=_json_value, ensure_ascii=False)
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def _cell(value: object, max_width: int) -> str:
    if value is None:
        return "NULL"
    text = _text(value).replace("\n", " ")
    return text if len(text) <= max_width else text[: max_width - 1] + "…"


def _decimal(value: Decimal) -> str:
    # Fixed-point digits without trailing zeros: 0.0100000000 -> 0.01, never 1E-2.
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


def _json_value(value: object) -> object:
    if isinstance(value, Decimal):
        # A scale-0 decimal is an integer (DuckDB's sum of BIGINT is HUGEINT, which Arrow
        # carries as DECIMAL(38, 0)): a JSON number; other decimals stay exact strings.
        exponent = value.as_tuple().exponent
        if isinstance(exponent, int) and exponent >= 0:
            return int(value)
        return _decimal(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, list | tuple):  # a MAP arrives as a list of (key, value) tuples
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items()}
    if isinstance(value, float):
        special = _non_finite(value)
        return value if special is None else special
    return value
