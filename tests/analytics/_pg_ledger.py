"""A PostgreSQL ledger and a DuckDB ledger filled with the same batches, for the reading tests.

The batches come from the collector's own decoding path (OTLP requests made with the
OpenTelemetry SDK, decoded, normalised and validated) and land through the real landers:
`PgLander` into a schema of the test's own, `Lander` into a DuckDB file.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path

from collector.helpers import genai_spans, log_records, usage_event
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

from comptroller import analytics
from comptroller import semconv as sc
from comptroller.analytics._pg_schema import connect_pg, libpq_url
from comptroller.collector._decode import decode
from comptroller.collector._land import Lander
from comptroller.collector._land_pg import PgLander
from comptroller.collector._normalise import Batch, Normaliser
from comptroller.collector._validate import validate

ORGS = {"acme-eu": "acme", "acme-us": "acme", "lab": "lab-org"}
"""Tenant (domain) -> its org."""
PURPOSES = ("reasoning", "scoring", "agent_turn")
ZONE = "UTC"


def usage_payload(seed: int, rows: int, *, now: dt.datetime | None = None) -> bytes:
    """An OTLP logs request of `rows` usage records over the last hours of `now`."""
    rng = random.Random(seed)
    events = []
    for i in range(rows):
        name, attributes = usage_event(f"u-{seed}-{i}")
        attributes = dict(attributes)
        tenant = rng.choice(sorted(ORGS))
        attributes[sc.TENANT] = tenant
        attributes[sc.ORG] = ORGS[tenant]
        attributes[sc.PURPOSE] = rng.choice(PURPOSES)
        attributes[sc.COST_USD] = str(Decimal(rng.randint(1, 999_999)) / Decimal(10**7))
        attributes[sc.GEN_AI_USAGE_INPUT_TOKENS] = rng.randint(1, 5000)
        attributes[sc.GEN_AI_USAGE_OUTPUT_TOKENS] = rng.randint(1, 900)
        attributes[sc.BUDGET_CAP_USD] = rng.choice(("0.5", "2", "10"))
        attributes[sc.USER_ID] = rng.choice(("alice", "bob"))
        attributes[sc.FEATURE] = rng.choice(("search", "chat"))
        attributes[sc.TAGS] = json.dumps({"team": rng.choice(("growth", "core"))})
        if rng.random() < 0.1:
            attributes[sc.OUTCOME] = "error"
        if rng.random() < 0.05:
            attributes[sc.PRICE_SOURCE] = "unpriced"
            del attributes[sc.COST_USD]
        events.append((name, attributes))
    return encode_logs(log_records(events)).SerializeToString()


def refusal_payload() -> bytes:
    """A budget refusal of lab's reasoning key (budget state shows it REFUSED)."""
    refused = log_records(
        [
            (
                sc.EVENT_BUDGET_REJECTED,
                {
                    sc.TENANT: "lab",
                    sc.CONTEXT: "support",
                    sc.PURPOSE: "reasoning",
                    sc.BUDGET_CAP_USD: "0.5",
                    sc.BUDGET_SPENT_USD: "0.49",
                    sc.BUDGET_RESERVED_USD: "0.01",
                    sc.BUDGET_REQUESTED_USD: "0.02",
                },
            )
        ]
    )
    return encode_logs(refused).SerializeToString()


def span_payload() -> bytes:
    """An OTLP traces request: one third-party GenAI span (a derived usage row)."""
    spans = genai_spans(
        [
            (
                "chat gpt-4o",
                {
                    "gen_ai.operation.name": "chat",
                    "gen_ai.provider.name": "openai",
                    "gen_ai.request.model": "gpt-4o",
                    "gen_ai.usage.input_tokens": 10,
                    "gen_ai.usage.output_tokens": 5,
                },
            )
        ],
        "opentelemetry.instrumentation.openai_v2",
    )
    return encode_spans(spans).SerializeToString()


def decode_batch(normaliser: Normaliser, signal_name: str, payload: bytes) -> Batch:
    """The collector's decoding path: protobuf, normalise, validate."""
    message = decode(signal_name, "protobuf", payload)  # type: ignore[arg-type]
    batch = (
        normaliser.traces(message)  # type: ignore[arg-type]
        if signal_name == "traces"
        else normaliser.logs(message)  # type: ignore[arg-type]
    )
    return validate(
        batch,
        signal=signal_name,
        latest_ns=normaliser.latest_ns(),
        received=dt.datetime.now(dt.UTC),
    )


def batches(rows: int = 60, requests: int = 4) -> list[Batch]:
    """Usage requests, one refusal and one third-party span, decoded."""
    normaliser = Normaliser()
    out = [decode_batch(normaliser, "logs", usage_payload(seed, rows)) for seed in range(requests)]
    out.append(decode_batch(normaliser, "logs", refusal_payload()))
    out.append(decode_batch(normaliser, "traces", span_payload()))
    return out


def fill(url: str, schema: str, duck_path: Path | None = None, *, rows: int = 60) -> int:
    """Land the same batches into the PostgreSQL schema (and the DuckDB file); the number of
    usage rows in PostgreSQL."""
    landing = batches(rows)
    con = connect_pg(url, schema=schema)
    duck = analytics.connect(duck_path) if duck_path is not None else None
    try:
        # Budget crossings looked for after every landing, as the DuckDB lander does.
        lander = PgLander(con, collector_id="c-test", timezone=ZONE, budget_events_every_s=0)
        duck_lander = Lander(duck, timezone=ZONE) if duck is not None else None
        for i, batch in enumerate(landing, start=1):
            lander.land([batch], positions=[i])
            if duck_lander is not None:
                duck_lander.land([batch], log_seq=i)
        cur = con.cursor()
        cur.execute("SELECT count(*) FROM llm_usage")
        (count,) = cur.fetchone()  # type: ignore[misc]
        cur.close()
        con.commit()
        return int(count)
    finally:
        con.close()
        if duck is not None:
            duck.close()


def ledger_url(base: str, schema: str, *, user: str | None = None) -> str:
    """`postgresql://[user@]host:port/db?schema=…`: the URL a command is given."""
    from urllib.parse import urlsplit, urlunsplit

    plain = urlsplit(libpq_url(base))
    netloc = plain.netloc
    if user is not None:
        netloc = f"{user}@{netloc.rsplit('@', 1)[-1]}"
    return urlunsplit(("postgresql", netloc, plain.path, f"schema={schema}", ""))


@contextmanager
def pg_schema(base: str) -> Iterator[str]:
    """A schema of the test's own, dropped afterwards."""
    schema = f"t_read_{uuid.uuid4().hex[:12]}"
    try:
        yield schema
    finally:
        con = connect_pg(base, migrate=False)
        try:
            cur = con.cursor()
            cur.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            cur.close()
            con.commit()
        finally:
            con.close()
