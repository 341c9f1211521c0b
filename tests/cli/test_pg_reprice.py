"""`comptroller reprice --db postgresql://…`: the same rows, provenance, rollups and output as
on a DuckDB ledger filled with the same batches (tests/analytics/_pg_ledger.py), done in one
transaction, refused to a reader bound by row-level security, and safe against a collector
landing meanwhile.

Everything is real: the batches come from the collector's decoding path and land through
`PgLander` (a schema of the test's own) and `Lander` (a DuckDB file); prices come from the
installed genai-prices, a fallback price and a price override in the settings file.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from _usage_db import run_cli
from analytics._pg_ledger import (
    ZONE,
    batches,
    decode_batch,
    fill,
    ledger_url,
    pg_schema,
)
from collector.helpers import log_records, usage_event
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs

from comptroller import analytics
from comptroller import semconv as sc
from comptroller.analytics._pg_schema import connect_pg, libpq_url
from comptroller.analytics._reprice import reprice_pg
from comptroller.collector._land import Lander
from comptroller.collector._land_pg import PgLander, rebuild_rollups_pg
from comptroller.collector._normalise import Normaliser
from comptroller.config._prices import PriceOverride

pytestmark = pytest.mark.postgres

FALLBACK = '[control.prices."ollama:llama3"]\ninput_mtok = 0.5\noutput_mtok = 1.5\n'
OVERRIDE = (
    "[[control.price_overrides]]\n"
    'model = "openai:gpt-4o"\n'
    'org = "acme"\n'
    'id = "acme-deal"\n'
    "discount = 0.25\n"
    "effective_from = 2026-01-01\n"
)
ROWS = (
    "select usage_id, cost_usd, price_source, repriced_from_usd, repriced_from_source, "
    "price_version, repriced_at is not null as repriced from llm_usage order by usage_id"
)
ROLLUPS = (
    "from llm_usage_daily order by all",
    "from llm_budget_daily order by all",
    "from llm_usage_hourly order by all",
)


def _local_model_payload(rows: int = 6) -> bytes:
    """Usage of a model genai-prices does not know (ollama:llama3), landed unpriced."""
    events = []
    for i in range(rows):
        name, attributes = usage_event(f"local-{i}")
        attributes = dict(attributes)
        attributes[sc.GEN_AI_PROVIDER_NAME] = "ollama"
        attributes[sc.GEN_AI_REQUEST_MODEL] = "llama3"
        attributes[sc.GEN_AI_RESPONSE_MODEL] = "llama3"
        attributes[sc.GEN_AI_USAGE_INPUT_TOKENS] = 1000 * (i + 1)
        attributes[sc.PRICE_SOURCE] = "unpriced"
        del attributes[sc.COST_USD]
        if i % 2:
            attributes[sc.TENANT], attributes[sc.ORG] = "lab", "lab-org"
        events.append((name, attributes))
    return encode_logs(log_records(events)).SerializeToString()


def _land_local_model(url: str, schema: str, duck: Path) -> None:
    batch = decode_batch(Normaliser(), "logs", _local_model_payload())
    con = connect_pg(url, schema=schema)
    db = analytics.connect(duck)
    try:
        PgLander(con, collector_id="c-local", timezone=ZONE).land([batch], positions=[1])
        Lander(db, timezone=ZONE).land([batch], log_seq=100)
    finally:
        con.close()
        db.close()


@pytest.fixture
def ledgers(postgres_url: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """(PostgreSQL ledger URL, DuckDB file): the same batches landed in both, with some
    unpriced usage of ollama:llama3."""
    with pg_schema(postgres_url) as schema:
        duck = tmp_path / "ledger.duckdb"
        fill(postgres_url, schema, duck)
        _land_local_model(postgres_url, schema, duck)
        yield ledger_url(postgres_url, schema), duck


def _config(tmp_path: Path, *parts: str) -> str:
    path = tmp_path / f"comptroller-{uuid.uuid4().hex[:6]}.toml"
    path.write_text("\n".join(parts))
    return str(path)


def _reprice_both(
    capsys: pytest.CaptureFixture[str], ledgers: tuple[str, Path], config: str, *args: str
) -> tuple[dict[str, Any], dict[str, Any], str, str]:
    """`reprice --json` on PostgreSQL then on DuckDB (JSON), then the text output of a dry
    run on each (compared by the caller)."""
    url, duck = ledgers
    texts = []
    for db in (url, str(duck)):
        code, out, err = run_cli(
            capsys, "--config", config, "reprice", "--dry-run", *args, "--db", db
        )
        assert code == 0, err
        texts.append(out)
    results = []
    for db in (url, str(duck)):
        code, out, err = run_cli(capsys, "--config", config, "reprice", "--json", *args, "--db", db)
        assert code == 0, err
        result = json.loads(out)
        del result["repriced_at"]  # now, different on each run
        results.append(result)
    return results[0], results[1], texts[0], texts[1]


def _sql(capsys: pytest.CaptureFixture[str], db: str, sql: str) -> str:
    code, out, err = run_cli(capsys, "sql", "-f", "csv", sql, "--db", db)
    assert code == 0, err
    return out


def _assert_same_ledgers(capsys: pytest.CaptureFixture[str], ledgers: tuple[str, Path]) -> None:
    url, duck = ledgers
    for sql in (ROWS, *ROLLUPS):
        assert _sql(capsys, url, sql) == _sql(capsys, str(duck), sql), sql


def _pg_rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    con = connect_pg(url, migrate=False, create_schema=False)
    try:
        cur = con.cursor()
        cur.execute(sql)
        rows = list(cur.fetchall())
        cur.close()
        con.rollback()
        return rows
    finally:
        con.close()


def _rollups(url: str) -> list[list[tuple[Any, ...]]]:
    return [
        sorted(_pg_rows(url, f"SELECT * FROM {table}"), key=repr)
        for table in ("llm_usage_daily", "llm_budget_daily", "llm_usage_hourly")
    ]


def _assert_rollups_are_a_full_recompute(url: str) -> None:
    """The rollups equal a rebuild from the raw rows, and sum to them."""
    ((raw_cost, raw_calls, raw_unpriced),) = _pg_rows(
        url,
        "SELECT sum(cost_usd), count(*), count(*) FILTER (WHERE cost_usd IS NULL "
        "OR price_source IN ('unpriced', 'reservation')) FROM llm_usage",
    )
    assert _pg_rows(
        url,
        "SELECT sum(cost_usd), sum(calls)::BIGINT, sum(unpriced_calls)::BIGINT "
        "FROM llm_usage_daily",
    ) == [(raw_cost, raw_calls, raw_unpriced)]
    assert _pg_rows(url, "SELECT sum(spent_usd), sum(calls)::BIGINT FROM llm_budget_daily") == [
        (raw_cost, raw_calls)
    ]
    assert _pg_rows(url, "SELECT sum(cost_usd), sum(calls)::BIGINT FROM llm_usage_hourly") == [
        (raw_cost, raw_calls)
    ]
    kept = _rollups(url)
    con = connect_pg(url, migrate=False, create_schema=False)
    try:
        rebuild_rollups_pg(con, timezone=ZONE)
    finally:
        con.close()
    assert _rollups(url) == kept


def test_reprice_gives_the_rows_rollups_and_output_it_gives_on_duckdb(
    capsys: pytest.CaptureFixture[str], ledgers: tuple[str, Path], tmp_path: Path
) -> None:
    url, _ = ledgers
    before = _pg_rows(url, "SELECT count(*) FROM llm_usage WHERE price_source = 'unpriced'")
    assert before[0][0] >= 6  # the llama3 rows, and some gpt-4o ones

    # 1. A price override for one org: genai-prices' price, 25 % off for acme.
    config = _config(tmp_path, OVERRIDE)
    pg, duckdb_result, pg_text, duck_text = _reprice_both(capsys, ledgers, config)
    assert pg == duckdb_result
    assert pg_text == duck_text
    assert pg["changed"] > 100
    assert pg["new_unpriced"] == 6  # the llama3 rows: no price yet
    sources = {line["source"] for line in pg["models"]}
    assert "mixed" in sources or any(s.startswith("override:acme-deal") for s in sources)
    _assert_same_ledgers(capsys, ledgers)
    acme = _pg_rows(
        url,
        "SELECT DISTINCT price_source, price_version LIKE 'overrides-%', "
        "repriced_from_source IS NOT NULL FROM llm_usage "
        "WHERE org = 'acme' AND response_model = 'gpt-4o' AND source = 'comptroller'",
    )
    assert len(acme) == 1
    assert acme[0][0].startswith("override:acme-deal")
    assert acme[0][1:] == (True, True)
    _assert_rollups_are_a_full_recompute(url)

    # 2. Unpriced, then priced: the fallback price for llama3 arrives.
    config = _config(tmp_path, OVERRIDE, FALLBACK)
    pg, duckdb_result, pg_text, duck_text = _reprice_both(
        capsys, ledgers, config, "--model", "ollama:llama3"
    )
    assert pg == duckdb_result
    assert pg_text == duck_text
    assert (pg["changed"], pg["old_unpriced"], pg["new_unpriced"]) == (6, 6, 0)
    assert "ollama:llama3  6 rows" in pg_text
    _assert_same_ledgers(capsys, ledgers)
    local = _pg_rows(
        url,
        "SELECT usage_id, cost_usd, price_source, repriced_from_usd, repriced_from_source, "
        "price_version FROM llm_usage WHERE provider = 'ollama' ORDER BY usage_id",
    )
    assert len(local) == 6
    _, cost, source, from_usd, from_source, version = local[0]
    assert Decimal(cost) == Decimal("0.00065")  # 1000 × 0.5 + 100 × 1.5 per million
    assert (source, from_usd, from_source) == ("fallback", None, "unpriced")
    assert version.startswith("registry-")
    assert _pg_rows(
        url, "SELECT count(*) FROM llm_budget_daily WHERE 'llama3' = ANY(unpriced_models)"
    ) == [(0,)]
    _assert_rollups_are_a_full_recompute(url)

    # 3. Again: nothing left to reprice, on either.
    pg, duckdb_result, pg_text, duck_text = _reprice_both(capsys, ledgers, config)
    assert pg == duckdb_result
    assert pg["changed"] == 0
    assert pg["rollup_groups"] == 0
    rows = _sql(capsys, url, ROWS)
    run_cli(capsys, "--config", config, "reprice", "--db", url)
    assert _sql(capsys, url, ROWS) == rows


def test_a_dry_run_and_since_on_postgres(
    capsys: pytest.CaptureFixture[str], ledgers: tuple[str, Path], tmp_path: Path
) -> None:
    url, _ = ledgers
    config = _config(tmp_path, FALLBACK)
    rows = _sql(capsys, url, ROWS)
    rollups = _rollups(url)
    code, out, err = run_cli(capsys, "--config", config, "reprice", "--dry-run", "--db", url)
    assert code == 0, err
    assert "rows would change" in out
    assert _sql(capsys, url, ROWS) == rows
    assert _rollups(url) == rollups
    tomorrow = (dt.datetime.now(dt.UTC) + dt.timedelta(days=2)).strftime("%Y-%m-%d")
    code, out, err = run_cli(
        capsys, "--config", config, "reprice", "--since", tomorrow, "--json", "--db", url
    )
    assert code == 0, err
    assert json.loads(out)["rows"] == 0
    assert _sql(capsys, url, ROWS) == rows


def test_the_db_setting_names_the_ledger_to_reprice(
    capsys: pytest.CaptureFixture[str],
    ledgers: tuple[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, _ = ledgers
    monkeypatch.setenv("COMPTROLLER_DB", url)
    config = _config(tmp_path, FALLBACK)
    code, out, err = run_cli(capsys, "--config", config, "reprice", "--model", "llama3", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["changed"] == 6
    # Each changed row records the instant the command reports, to the microsecond.
    assert _pg_rows(
        url, "SELECT DISTINCT repriced_at FROM llm_usage WHERE provider = 'ollama'"
    ) == [(dt.datetime.fromisoformat(result["repriced_at"]),)]
    _assert_rollups_are_a_full_recompute(url)


# --- who may reprice -----------------------------------------------------------------------


def _admin(base: str, *statements: str) -> None:
    con = connect_pg(base, migrate=False)
    try:
        cur = con.cursor()
        for statement in statements:
            cur.execute(statement)
        cur.close()
        con.commit()
    finally:
        con.close()


def test_a_reader_bound_by_row_level_security_may_not_reprice(
    capsys: pytest.CaptureFixture[str], postgres_url: str, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:8]
    writer_role, reader_role = f"t_writer_{tag}", f"t_acme_{tag}"
    database = libpq_url(postgres_url).rsplit("/", 1)[-1].split("?")[0]
    _admin(
        postgres_url,
        f"CREATE ROLE {writer_role} LOGIN",
        f"CREATE ROLE {reader_role} LOGIN",
        f"GRANT CREATE ON DATABASE {database} TO {writer_role}",
    )
    try:
        with pg_schema(postgres_url) as schema:
            writer = ledger_url(postgres_url, schema, user=writer_role)
            reader = ledger_url(postgres_url, schema, user=reader_role)
            fill(writer, schema, rows=20)
            code, _, err = run_cli(
                capsys, "db", "grant-reader", reader_role, "--org", "acme", "--db", writer
            )
            assert code == 0, err
            # A reader also granted UPDATE (by mistake) is refused all the same: it sees
            # only acme's rows, and would rewrite the rollups from them.
            _admin(
                postgres_url,
                f"GRANT UPDATE ON {schema}.llm_usage TO {reader_role}",
            )
            config = _config(tmp_path, OVERRIDE)
            rows = _pg_rows(writer, "SELECT * FROM llm_usage ORDER BY usage_id")
            for args in ((), ("--dry-run",)):
                code, _, err = run_cli(capsys, "--config", config, "reprice", *args, "--db", reader)
                assert code == 2, err
                assert "row-level security" in err
                assert f"run it as the ledger's owner, '{writer_role}'" in err
            assert _pg_rows(writer, "SELECT * FROM llm_usage ORDER BY usage_id") == rows
            code, out, err = run_cli(capsys, "--config", config, "reprice", "--db", writer)
            assert code == 0, err
            assert "rows changed" in out
            _assert_rollups_are_a_full_recompute(writer)
    finally:
        _admin(
            postgres_url,
            f"REVOKE CREATE ON DATABASE {database} FROM {writer_role}",
            f"DROP OWNED BY {writer_role}",
            f"DROP OWNED BY {reader_role}",
            f"DROP ROLE {writer_role}",
            f"DROP ROLE {reader_role}",
        )


# --- a collector landing meanwhile ---------------------------------------------------------


def test_reprice_while_a_collector_lands_keeps_the_rollups_whole(
    postgres_url: str,
) -> None:
    with pg_schema(postgres_url) as schema:
        fill(postgres_url, schema, rows=40)
        url = ledger_url(postgres_url, schema)
        landing = batches(rows=50, requests=12)[:12]
        errors: list[BaseException] = []

        def land() -> None:
            con = connect_pg(url)
            try:
                lander = PgLander(con, collector_id="c-busy", timezone=ZONE)
                for i, batch in enumerate(landing, start=1):
                    lander.land([batch], positions=[i])
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)
            finally:
                con.close()

        thread = threading.Thread(target=land)
        thread.start()
        repriced = 0
        con = connect_pg(url, migrate=False, create_schema=False)
        try:
            # Alternate two overrides: every repricing changes rows while batches land.
            for n in range(6):
                discount = Decimal("0.1") if n % 2 else Decimal("0.3")
                override = PriceOverride(
                    model="openai:gpt-4o",
                    discount=discount,
                    effective_from=dt.date(2026, 1, 1),
                )
                repriced += reprice_pg(con, price_overrides=[override]).changed
        finally:
            con.close()
        thread.join(timeout=120)
        assert not thread.is_alive()
        assert not errors, errors
        assert repriced > 0
        landed = _pg_rows(url, "SELECT count(*) FROM llm_usage WHERE usage_id LIKE 'u-%'")
        assert landed[0][0] >= 40 * 4
        _assert_rollups_are_a_full_recompute(url)


def test_reprice_waits_for_a_landing_that_has_added_to_the_rollups(
    postgres_url: str,
) -> None:
    """A landing held after its rollup upserts (before it records its position): the
    repricing waits at the rollups' lock for it to commit, then counts its rows once."""
    with pg_schema(postgres_url) as schema:
        fill(postgres_url, schema, rows=20)
        url = ledger_url(postgres_url, schema)
        # The landing blocks inserting into ledger_positions, its last statement.
        holder = connect_pg(url, migrate=False, create_schema=False)
        hold = holder.cursor()
        hold.execute("LOCK TABLE ledger_positions IN EXCLUSIVE MODE")
        errors: list[BaseException] = []
        results: list[int] = []

        def land() -> None:
            con = connect_pg(url)
            try:
                lander = PgLander(con, collector_id="c-held", timezone=ZONE)
                lander.land(batches(rows=30, requests=1)[:1], positions=[1])
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)
            finally:
                con.close()

        def reprice() -> None:
            con = connect_pg(url, migrate=False, create_schema=False)
            try:
                override = PriceOverride(
                    model="openai:gpt-4o",
                    discount=Decimal("0.5"),
                    effective_from=dt.date(2026, 1, 1),
                )
                results.append(reprice_pg(con, price_overrides=[override]).changed)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)
            finally:
                con.close()

        def waiting(sql_start: str) -> bool:
            rows = _pg_rows(
                postgres_url,
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                f"AND query LIKE '{sql_start}%'",
            )
            return bool(rows[0][0])

        def until(condition: Any) -> None:
            deadline = time.monotonic() + 30
            while not condition():
                assert time.monotonic() < deadline, errors
                time.sleep(0.05)

        lander_thread = threading.Thread(target=land)
        lander_thread.start()
        until(lambda: waiting("INSERT INTO ledger_positions"))
        reprice_thread = threading.Thread(target=reprice)
        reprice_thread.start()
        until(lambda: waiting("LOCK TABLE llm_usage_daily"))
        holder.rollback()  # the landing commits; then the repricing goes on
        hold.close()
        holder.close()
        lander_thread.join(timeout=60)
        reprice_thread.join(timeout=60)
        assert not errors, errors
        assert len(results) == 1
        assert results[0] > 0
        # The landing's 10 new rows (u-0-20 … u-0-29) are in, counted once.
        assert _pg_rows(url, "SELECT count(*) FROM llm_usage WHERE usage_id LIKE 'u-0-%'") == [
            (30,)
        ]
        _assert_rollups_are_a_full_recompute(url)


def test_reprice_names_what_is_missing(
    capsys: pytest.CaptureFixture[str], postgres_url: str
) -> None:
    code, _, err = run_cli(capsys, "reprice", "--db", "/no/such/file.duckdb")
    assert code == 2
    assert "does not exist" in err
    with pg_schema(postgres_url) as schema:
        # A schema that holds no ledger (a typo in ?schema=): said, and nothing created.
        code, _, err = run_cli(capsys, "reprice", "--db", ledger_url(postgres_url, schema))
        assert code == 2
        assert "no ledger in this database or schema" in err
        assert _pg_rows(
            postgres_url,
            f"SELECT count(*) FROM information_schema.schemata WHERE schema_name = '{schema}'",
        ) == [(0,)]
