from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator


class CollectorSettings(BaseModel):
    """Settings of the OTLP collector (`[collector]` in the file).

    Environment: `COMPTROLLER_COLLECTOR_<FIELD>`, e.g. `COMPTROLLER_COLLECTOR_PORT`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    host: str = "127.0.0.1"
    """Interface to listen on. Anything but loopback requires `token`."""
    port: int = Field(default=4318, ge=0, le=65535)
    """OTLP/HTTP port (the OpenTelemetry standard is 4318)."""
    grpc_port: int | None = Field(default=4317, ge=0, le=65535)
    """OTLP/gRPC port (the standard is 4317); unset to disable gRPC."""
    token: str | None = None
    """Bearer token that clients must send. Required when not on loopback."""
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
    """Largest single attribute value; a span or record holding a bigger one is rejected."""
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

    duckdb_memory_mb: int = Field(default=128, ge=64)
    """DuckDB's memory limit in the collector (its buffer pool: the largest part of the
    collector's memory; the process needs ~150 MB more, and the landing queue)."""
