from __future__ import annotations

import os
import re
import secrets
import socket
import stat
from pathlib import Path
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from comptroller.errors import ConfigError

_OTEL_LIMITS: Final = {
    "max_attribute_bytes": (
        "OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT",
        "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT",
    ),
    "max_span_attributes": ("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", "OTEL_ATTRIBUTE_COUNT_LIMIT"),
    "max_record_attribute_bytes": (
        "OTEL_LOGRECORD_ATTRIBUTE_VALUE_LENGTH_LIMIT",
        "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT",
    ),
    "max_record_attributes": (
        "OTEL_LOGRECORD_ATTRIBUTE_COUNT_LIMIT",
        "OTEL_ATTRIBUTE_COUNT_LIMIT",
    ),
}
"""Setting -> the OpenTelemetry variables that set its default, most specific first."""


class CollectorSettings(BaseModel):
    """Settings of the OTLP collector (`[collector]` in the file).

    Environment: `COMPTROLLER_COLLECTOR_<FIELD>`, e.g. `COMPTROLLER_COLLECTOR_PORT`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    """Interface to listen on. Anything but loopback requires `token`."""
    port: int = Field(default=4318, ge=0, le=65535)
    """OTLP/HTTP port (the OpenTelemetry standard is 4318)."""
    grpc_port: int | None = Field(default=4317, ge=0, le=65535)
    """OTLP/gRPC port (the standard is 4317); unset to disable gRPC."""
    token: str | None = None
    """Bearer token that clients must send (`/v1/*`, `/health`, `/api/*`). Required when not
    on loopback. Give it by `COMPTROLLER_COLLECTOR_TOKEN` or `token_file`, not on a command
    line (`ps` shows it to every user) nor in a shared configuration file."""
    max_request_bytes: int = Field(default=16 * 1024 * 1024, gt=0)
    """Largest accepted request body, after decompression."""
    max_queue_rows: int = Field(default=50_000, gt=0)
    """Rows that may wait for landing; beyond, clients get 429 with Retry-After."""
    max_queue_mb: int = Field(default=64, gt=0)
    """Memory (Arrow, in MiB) of the rows that may wait for landing; beyond, clients get 429
    with Retry-After. Spans with large resources or many attributes reach it before
    `max_queue_rows` (a request of 512 spans is 0.5 MB with a small resource, 1.1 MB with
    a Kubernetes pod's)."""
    max_future_s: float = Field(default=86_400.0, gt=0)
    """Spans and records starting further ahead of the collector's clock are rejected."""
    max_attribute_bytes: int = Field(default=1 << 20, gt=0)
    """Largest attribute value of a span, in characters (an array's: its items' total); a span
    holding a bigger one is rejected, never truncated (a truncated billing attribute would be
    a wrong value). Default: `OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT`, else
    `OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT`, else 1 MiB."""
    max_span_attributes: int = Field(default=1024, gt=0)
    """Most attributes a span (or its resource) may hold; a span over it is rejected whole,
    before any of its attributes is read. Default: `OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT`, else
    `OTEL_ATTRIBUTE_COUNT_LIMIT`, else 1024."""
    max_record_attribute_bytes: int = Field(default=1 << 20, gt=0)
    """Largest attribute value of a log record (usage records, events), measured and
    enforced as `max_attribute_bytes`: the record is rejected. Default:
    `OTEL_LOGRECORD_ATTRIBUTE_VALUE_LENGTH_LIMIT`, else `OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT`,
    else 1 MiB."""
    max_record_attributes: int = Field(default=1024, gt=0)
    """Most attributes a log record (or its resource) may hold; a record over it is rejected.
    Default: `OTEL_LOGRECORD_ATTRIBUTE_COUNT_LIMIT`, else `OTEL_ATTRIBUTE_COUNT_LIMIT`, else
    1024."""
    max_spans_per_request: int = Field(default=16_384, gt=0)
    """Most spans one trace export may hold; every span of a bigger request is rejected
    (partial success naming the limit: send smaller batches). The SDK's batch processor sends
    512 at most."""
    max_records_per_request: int = Field(default=16_384, gt=0)
    """Most log records one log export may hold; every record of a bigger request is
    rejected."""
    max_resource_fanout_mb: int = Field(default=64, gt=0)
    """Bound on a resource's attributes (as JSON) times its spans in one request, in MiB:
    every span row stores its resource, so a 1 MB resource on 10,000 spans would cost 10 GB
    of memory from a 1 MB request. Over it, that resource's spans are rejected."""

    def bearer_token(self) -> str | None:
        """The bearer token in force: `token`, else the first line of `token_file`.

        Raises:
            ConfigError: The token file cannot be read, is empty, or others may read it.
        """
        if self.token:
            return self.token
        if self.token_file is None:
            return None
        return read_token_file(self.token_file)

    @model_validator(mode="before")
    @classmethod
    def _otel_attribute_limits(cls, data: Any) -> Any:
        # OpenTelemetry's attribute-limit variables, where a setting of ours is not given:
        # the specific name (span, log record) wins over the general one.
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for name, envs in _OTEL_LIMITS.items():
            if name in out:
                continue
            for env in envs:
                raw = os.environ.get(env, "").strip()
                if raw:
                    if not raw.isdigit() or int(raw) == 0:
                        # Not a ValueError: pydantic would report it without the variable.
                        raise ConfigError(
                            f"environment variable {env}={raw!r} is not a positive integer: "
                            f"fix or unset it, or set collector.{name}"
                        )
                    out[name] = int(raw)
                    break
        return out

    token_file: Path | None = None
    """File holding the bearer token (its first line), so that the token is neither on a
    command line (`ps` shows it) nor in the configuration file. It must not be readable by
    group or others (mode 0600): the collector refuses it otherwise. Used when `token` is
    not set."""
    query_timeout_s: float = Field(default=30.0, gt=0)
    """Time limit of one `/api/query` statement (and of a budget-state read): a longer one
    is stopped and answered 408."""
    query_max_rows: int = Field(default=100_000, gt=0)
    """Most rows one `/api/query` answer holds; a longer result is cut there and marked
    (`comptroller sql` says "N of more than N rows")."""
    query_concurrency: int = Field(default=2, gt=0)
    """`/api/query` statements that run at once; budget state has a lane of its own and
    never waits behind them."""
    query_queue: int = Field(default=16, ge=0)
    """`/api/query` requests that may wait for a running slot; beyond, 429 with
    Retry-After."""
    query_max_body_bytes: int = Field(default=1 << 20, gt=0)
    """Largest `/api/query` request body (SQL and parameters); beyond, 413."""
    ingest_log_dir: Path | None = None
    """Where accepted requests are logged before they are acknowledged, to be replayed after
    a crash. Default: `<database>.ingest` beside the DuckDB file."""
    ingest_log_fsync: bool = False
    """Flush each logged request to the device before acknowledging it: survives a power
    cut, not only a crash of the collector, at the cost of a disk flush per request."""
    linger_ms: float = Field(default=5.0, ge=0)
    """How long the writer waits to gather more requests into one DuckDB transaction."""
    landing_nice: int = Field(default=10, ge=0, le=19)
    """How much lower (Linux nice increment) the writer and DuckDB's threads run than the
    threads that receive and acknowledge: landing can wait, a client's export should not.
    0 runs them at the same priority."""
    native_decoder: bool = True
    """Decode protobuf trace and usage-record exports with the collector's C extension
    (~2–7 µs a span or record instead of ~25–40), when it is built. Requests it is not sure
    of take the reference Python normaliser either way; false uses the reference for
    everything. `/health` tells which path requests took, under `native_decoder`."""
    checkpoint_mb: int = Field(default=128, ge=1)
    """DuckDB's write-ahead-log size that triggers a checkpoint (compressing what was landed
    into the database file). DuckDB's own default, 16 MB, makes a busy collector compress
    the same row groups many times over: 128 MB lands ~40 % faster and makes a file ~45 %
    smaller. A crash replays at most this much WAL on the next start."""
    row_group_size: int = Field(default=8192, ge=0)
    """Rows per DuckDB row group the collector writes (0: DuckDB's default, 122,880). A
    landing transaction that appends at least a row group's worth to a table writes it to
    the database file compressed, instead of to the write-ahead log first and compressed
    again at the next checkpoint: at 8192 a busy collector lands ~20 % more spans a second
    (docs/PERFORMANCE.md). The cost is disk: ~55 % more bytes a span, since small row
    groups compress less, and the collector's checkpoints do not merge row groups (merging
    rewrote them and left half the file as free blocks). `comptroller db compact` rewrites
    the file with DuckDB's row groups while the collector is stopped."""

    @field_validator("row_group_size")
    @classmethod
    def _whole_vectors(cls, value: int) -> int:
        if 0 < value < 2048:
            raise ValueError("must be 0 (DuckDB's default) or at least 2048 (a DuckDB vector)")
        return value

    collector_id: str | None = Field(default=None, min_length=1, max_length=200)
    """This collector's id in a PostgreSQL ledger (`db = "postgresql://…"`), under which
    the positions of its ingest log are recorded: what makes a replay after a crash land
    nothing twice. Every collector landing into one database needs its own, kept across
    restarts; a second collector started with an id a running one holds is refused.
    Default: `<host name>-<8 random hex digits>`, made on the first start and kept in the
    data directory's `collector_id` file (so one data directory is one collector). Unused
    with a DuckDB file (one writer per file)."""

    duckdb_memory_mb: int = Field(default=128, ge=64)
    """DuckDB's memory limit in the collector (its buffer pool: the largest part of the
    collector's memory; the process needs ~150 MB more, and the landing queue)."""


_PG_SCHEMES: Final = ("postgresql", "postgres")


def is_postgres_url(value: object) -> bool:
    """True when `value` names a PostgreSQL ledger (`postgresql://…`, `postgres://…`, or a
    SQLAlchemy `postgresql+psycopg://…`) rather than a DuckDB file."""
    if not isinstance(value, str):
        return False
    scheme, sep, _ = value.partition("://")
    return bool(sep) and scheme.split("+", 1)[0].lower() in _PG_SCHEMES


def redacted_url(url: str) -> str:
    """`url` with its password, if any, replaced by `***` (for messages and `/health`)."""
    scheme, sep, rest = url.partition("://")
    auth, at, host = rest.rpartition("@")
    if at and ":" in auth:
        return f"{scheme}{sep}{auth.split(':', 1)[0]}:***@{host}"
    return url


COLLECTOR_ID_FILE: Final = "collector_id"
"""File of the data directory keeping the collector's default id."""
_ID_TEXT: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,199}")


def stable_collector_id(data_dir: Path) -> str:
    """The collector id kept in `data_dir` (`collector_id`), made on first use.

    A new id is the host name and 8 random hex digits: readable in the ledger's
    `ledger_positions`, and different for two data directories of one host.

    Raises:
        ConfigError: The file cannot be read or written, or holds no valid id.
    """
    path = data_dir / COLLECTOR_ID_FILE
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        host = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname()).strip("-.") or "collector"
        text = f"{host[:60]}-{secrets.token_hex(4)}"
        try:
            # Created exclusively: of two collectors started at once on one directory, the
            # second reads the first's id (and is refused as holding the same id).
            with path.open("x", encoding="utf-8") as out:
                out.write(text + "\n")
        except FileExistsError:
            text = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(
                f"cannot write the collector id to {path} ({exc.strerror or exc}): make the "
                "data directory writable or set collector.collector_id"
            ) from exc
    except OSError as exc:
        raise ConfigError(
            f"cannot read the collector id in {path} ({exc.strerror or exc}): fix its "
            "permissions or set collector.collector_id"
        ) from exc
    if not _ID_TEXT.fullmatch(text):
        raise ConfigError(
            f"{path} holds no valid collector id ({text[:40]!r}): remove the file to have one "
            "made, or set collector.collector_id"
        )
    return text


def read_token_file(path: Path) -> str:
    """The bearer token held in `path` (its first line, stripped).

    A file that group or others may read is refused, as ssh refuses such a private key:
    whoever could read it may hold the token already, so the fix is the operator's (tighten
    the mode, and rotate the token if the file was exposed), not a silent chmod.

    Raises:
        ConfigError: Unreadable, empty, or readable by group or others.
    """
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise ConfigError(
                f"token file {path} has mode {mode:o}: group or others may read it; run "
                f"`chmod 600 {path}` (and change the token if others could have read it)"
            )
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"token file {path} cannot be read ({exc.strerror or exc}): fix the path "
            "(collector.token_file, COMPTROLLER_COLLECTOR_TOKEN_FILE or --token-file)"
        ) from exc
    lines = text.splitlines()
    token = lines[0].strip() if lines else ""
    if not token:
        raise ConfigError(f"token file {path} is empty: write the bearer token on its first line")
    return token
