"""Write the fuzzers' seed corpus: real OTLP requests as the SDK and the load generator encode them.

    uv run python fuzz/make_corpus.py     # rewrites fuzz/corpus/{spans,usage}/*.pb

Seeds for `spans`: every dialect fixture's spans (tests/collector/fixtures), a small request of
the benchmark's (bench/otlp_load.py), and spans with every kind of attribute value. Seeds for
`usage`: the control plane's usage records, an event record, and records of other loggers.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs  # noqa: E402
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans  # noqa: E402
from otlp_load import build_request  # noqa: E402

from comptroller import semconv as sc  # noqa: E402
from tests.collector.helpers import (  # noqa: E402
    DIALECTS,
    fixture_spans,
    genai_spans,
    load_fixture,
    log_records,
    usage_event,
)


def _write(folder: Path, name: str, body: bytes) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.pb").write_bytes(body)


def main() -> None:
    """Rewrite the seed corpus."""
    spans = ROOT / "fuzz" / "corpus" / "spans"
    usage = ROOT / "fuzz" / "corpus" / "usage"
    for dialect in DIALECTS:
        _write(
            spans, dialect, encode_spans(fixture_spans(load_fixture(dialect))).SerializeToString()
        )
    _write(spans, "bench", build_request(spans=4, at_ns=1_700_000_000_000_000_000))
    values = {
        "s": "text",
        "i": -7,
        "f": 1.5,
        "b": True,
        "strs": ("a", "b"),
        "ints": (1, 2),
        "floats": (0.5, 2.0),
        "bools": (True, False),
    }
    _write(spans, "values", encode_spans(genai_spans([("chat", values)], "x")).SerializeToString())
    _write(
        usage,
        "usage",
        encode_logs(log_records([usage_event("u-1"), usage_event("u-2")])).SerializeToString(),
    )
    event = (sc.EVENT_CIRCUIT_OPENED, {"gen_ai.provider.name": "openai"})
    _write(usage, "event", encode_logs(log_records([event])).SerializeToString())
    _write(usage, "other", encode_logs(log_records([("app.log", {"k": "v"})])).SerializeToString())


if __name__ == "__main__":
    main()
