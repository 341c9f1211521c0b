"""The collector: OTLP in, DuckDB (or PostgreSQL) out.

It receives OTLP over HTTP (`/v1/traces`, `/v1/logs`, `/v1/metrics`; protobuf or JSON,
gzip) and gRPC, normalises GenAI spans of comptroller and of third-party instrumentations
(OpenTelemetry contrib openai-v2, OpenLLMetry, OpenLIT, Logfire, OpenInference) into the same
columns through one alias table, prices calls that have no comptroller usage row with
genai-prices, and lands everything in batched, idempotent transactions: into a DuckDB file
it owns, or into a PostgreSQL ledger that a fleet of collectors shares, exactly once per
collector id and ingest-log position (`collect --db postgresql://…`). The embedded sink
runs the same code inside the control plane's process (DuckDB only).

Example:
    >>> from comptroller.collector import EmbeddedSink
    >>> sink = EmbeddedSink("comptroller.duckdb")  # doctest: +SKIP

Errors::

    ComptrollerError
    └── CollectorError
        ├── QueueFull        landing queue full (HTTP 429, gRPC UNAVAILABLE)
        └── Unavailable      cannot land now (HTTP 503, gRPC UNAVAILABLE)
"""

from typing import TYPE_CHECKING, Any

from comptroller.collector._aliases import ALIAS_TABLE_VERSION, LEAF_OPERATIONS, Dialect
from comptroller.collector._embedded import EmbeddedSink
from comptroller.collector._ingest_log import IngestLog, IngestLogError
from comptroller.collector._land import Lander, LandResult
from comptroller.collector._normalise import Batch, Limits, Normaliser
from comptroller.collector._pipeline import (
    CollectorError,
    Pipeline,
    QueueFull,
    Stats,
    Unavailable,
)

if TYPE_CHECKING:
    from comptroller.collector._run import serve
    from comptroller.collector._server import create_app
    from comptroller.collector._service import Collector

# The servers load on first use: a control plane that only needs EmbeddedSink does not pay
# for starlette, uvicorn and grpc.
_LAZY = {
    "Collector": "comptroller.collector._service",
    "create_app": "comptroller.collector._server",
    "serve": "comptroller.collector._run",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'comptroller.collector' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = [
    "ALIAS_TABLE_VERSION",
    "LEAF_OPERATIONS",
    "Batch",
    "Collector",
    "CollectorError",
    "Dialect",
    "EmbeddedSink",
    "IngestLog",
    "IngestLogError",
    "LandResult",
    "Lander",
    "Limits",
    "Normaliser",
    "Pipeline",
    "QueueFull",
    "Stats",
    "Unavailable",
    "create_app",
    "serve",
]
