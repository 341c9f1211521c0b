"""The reading commands on a PostgreSQL ledger (`--db postgresql://…`), and its readers'
row-level security, enforced by PostgreSQL for two real roles.

A PostgreSQL ledger and a DuckDB ledger are filled with the same batches by the real landers
(tests/analytics/_pg_ledger.py); every command's output over the first equals its output
over the second. The row-level security tests create real roles on the local server (trust
authentication): a writing role that owns the ledger (as a collector's would), an ops role
bound to every row and an org admin's role bound to one org.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import adbc_driver_manager
import pyarrow.parquet as pq
import pytest
from _usage_db import run_cli
from analytics._pg_ledger import batches, fill, ledger_url, pg_schema

from comptroller.analytics._pg_schema import connect_pg, libpq_url
from comptroller.collector._land_pg import PgLander

pytestmark = pytest.mark.postgres


@pytest.fixture
def ledgers(postgres_url: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """(PostgreSQL ledger URL, DuckDB file): the same batches landed in both."""
    with pg_schema(postgres_url) as schema:
        duck = tmp_path / "ledger.duckdb"
        fill(postgres_url, schema, duck)
        yield ledger_url(postgres_url, schema), duck


def _both(
    capsys: pytest.CaptureFixture[str], ledgers: tuple[str, Path], *args: str
) -> tuple[tuple[int, str, str], tuple[int, str, str]]:
    """The command's (exit code, stdout, stderr) on the PostgreSQL ledger, then on DuckDB's."""
    url, duck = ledgers
    return run_cli(capsys, *args, "--db", url), run_cli(capsys, *args, "--db", str(duck))


@pytest.mark.parametrize(
    "sql",
    [
        "select purpose, sum(cost_usd) as usd, sum(calls) as calls from llm_usage_daily "
        "group by 1 order by 1",
        "select * from llm_usage order by usage_id",
        "from llm_budget_daily order by all",
        "select tenant, tags['team'] as team, count(*) as n from llm_usage group by all order by all",
    ],
)
@pytest.mark.parametrize("fmt", ["table", "csv", "json"])
def test_sql_prints_what_it_prints_over_the_duckdb_ledger(
    capsys: pytest.CaptureFixture[str], ledgers: tuple[str, Path], sql: str, fmt: str
) -> None:
    (code, out, err), (duck_code, duck_out, _) = _both(capsys, ledgers, "sql", "-f", fmt, sql)
    assert code == duck_code == 0, err
    assert out == duck_out
    assert len(out) > 80  # rows, not an empty result


def test_sql_writes_parquet_and_refuses_writes(
    capsys: pytest.CaptureFixture[str], ledgers: tuple[str, Path], tmp_path: Path
) -> None:
    url, duck = ledgers
    out = tmp_path / "usage.parquet"
    code, _, err = run_cli(
        capsys, "sql", "--db", url, "-f", "parquet", "-o", str(out), "from llm_usage"
    )
    assert code == 0, err
    theirs = tmp_path / "theirs.parquet"
    run_cli(capsys, "sql", "--db", str(duck), "-f", "parquet", "-o", str(theirs), "from llm_usage")
    sort = [("usage_id", "ascending")]
    assert pq.read_table(out).sort_by(sort).equals(pq.read_table(theirs).sort_by(sort))
    code, _, err = run_cli(capsys, "sql", "--db", url, "delete from llm_usage")
    assert code == 2
    assert "only one read-only statement" in err


def test_budget_check_and_forecast_equal_duckdbs(
    capsys: pytest.CaptureFixture[str], ledgers: tuple[str, Path]
) -> None:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S%z")
    (code, out, err), (duck_code, duck_out, _) = _both(
        capsys, ledgers, "budget", "check", "--json", "--now", now
    )
    assert code == duck_code == 3, err  # lab's refused call
    assert json.loads(out) == json.loads(duck_out)
    assert any(b["status"] == "refused" for b in json.loads(out)["budgets"])
    (code, out, err), (duck_code, duck_out, _) = _both(
        capsys, ledgers, "budget", "check", "--now", now
    )
    assert code == duck_code == 3, err
    assert out == duck_out
    (code, out, err), (_, duck_out, _) = _both(
        capsys, ledgers, "budget", "forecast", "--json", "--now", now
    )
    assert code == 0, err
    assert json.loads(out) == json.loads(duck_out)
    assert json.loads(out)


def test_report_export_and_alerts_equal_duckdbs(
    capsys: pytest.CaptureFixture[str], ledgers: tuple[str, Path], tmp_path: Path
) -> None:
    (code, out, err), (_, duck_out, _) = _both(capsys, ledgers, "report", "--json", "--by", "all")
    assert code == 0, err
    report = json.loads(out)
    assert report == json.loads(duck_out)
    assert report["by_attribution"]
    url, duck = ledgers
    ours, theirs = tmp_path / "pg.parquet", tmp_path / "duck.parquet"
    code, _, err = run_cli(capsys, "export", "--focus", "-o", str(ours), "--db", url)
    assert code == 0, err
    run_cli(capsys, "export", "--focus", "-o", str(theirs), "--db", str(duck))
    assert pq.read_table(ours).num_rows > 0
    assert pq.read_table(ours).equals(pq.read_table(theirs))
    (code, out, err), (_, duck_out, _) = _both(capsys, ledgers, "alerts", "list", "--json")
    assert code == 0, err
    alerts = json.loads(out)
    assert {a["alert"] for a in alerts} == {a["alert"] for a in json.loads(duck_out)}
    assert "budget.rejected" in {a["alert"] for a in alerts} or alerts


def test_the_db_setting_names_the_postgres_ledger(
    capsys: pytest.CaptureFixture[str], ledgers: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, duck = ledgers
    monkeypatch.setenv("COMPTROLLER_DB", url)
    code, out, err = run_cli(capsys, "sql", "-f", "csv", "select count(*) as n from llm_usage")
    assert code == 0, err
    _, duck_out, _ = run_cli(
        capsys, "sql", "--db", str(duck), "-f", "csv", "select count(*) as n from llm_usage"
    )
    assert out == duck_out


# --- row-level security with real roles ----------------------------------------------------


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


def _rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    """`sql` run by hand over a plain connection as the URL's role (not through comptroller)."""
    con = connect_pg(url, migrate=False, create_schema=False)
    try:
        cur = con.cursor()
        try:
            cur.execute(sql)
            return list(cur.fetchall())
        finally:
            cur.close()
            con.rollback()
    finally:
        con.close()


@pytest.fixture
def roles(postgres_url: str) -> Iterator[dict[str, str]]:
    """A writer (owns the ledger; not a superuser), an ops reader and an org admin's reader,
    created for this test and dropped afterwards; the ledger, filled by the writer."""
    tag = uuid.uuid4().hex[:8]
    names = {kind: f"t_{kind}_{tag}" for kind in ("writer", "ops", "acme")}
    database = libpq_url(postgres_url).rsplit("/", 1)[-1].split("?")[0]
    _admin(
        postgres_url,
        *(f"CREATE ROLE {name} LOGIN" for name in names.values()),
        f"GRANT CREATE ON DATABASE {database} TO {names['writer']}",
    )
    try:
        with pg_schema(postgres_url) as schema:
            writer = ledger_url(postgres_url, schema, user=names["writer"])
            fill(writer, schema)
            yield {
                "schema": schema,
                "writer": writer,
                "ops": ledger_url(postgres_url, schema, user=names["ops"]),
                "acme": ledger_url(postgres_url, schema, user=names["acme"]),
                "ops_role": names["ops"],
                "acme_role": names["acme"],
            }
    finally:
        _admin(
            postgres_url,
            f"REVOKE CREATE ON DATABASE {database} FROM {names['writer']}",
            *(f"DROP OWNED BY {name}" for name in names.values()),
            *(f"DROP ROLE {name}" for name in names.values()),
        )


def _sql_json(capsys: pytest.CaptureFixture[str], url: str, sql: str) -> list[dict[str, Any]]:
    code, out, err = run_cli(capsys, "sql", "--db", url, "-f", "json", sql)
    assert code == 0, err
    return json.loads(out)  # type: ignore[no-any-return]


def test_an_org_bound_role_sees_its_org_and_ops_sees_all(
    capsys: pytest.CaptureFixture[str], roles: dict[str, str]
) -> None:
    writer, ops, acme = roles["writer"], roles["ops"], roles["acme"]
    # Before a grant a role reads nothing, and is told who can grant it.
    code, _, err = run_cli(capsys, "sql", "--db", acme, "select count(*) from llm_usage")
    assert code == 2
    assert "grant-reader" in err
    code, out, err = run_cli(capsys, "db", "grant-reader", roles["ops_role"], "--db", writer)
    assert code == 0, err
    assert "every row" in out
    code, out, err = run_cli(
        capsys, "db", "grant-reader", roles["acme_role"], "--org", "acme", "--db", writer
    )
    assert code == 0, err
    code, out, _ = run_cli(capsys, "db", "readers", "--db", writer, "--json")
    assert {(r["role"], r["org"], r["tenant"]) for r in json.loads(out)} == {
        (roles["ops_role"], None, None),
        (roles["acme_role"], "acme", None),
    }

    everything = _rows(writer, "SELECT org, count(*) FROM llm_usage GROUP BY org ORDER BY org")
    by_org = {org: n for org, n in everything}
    assert set(by_org) >= {"acme", "lab-org"}
    query = "select org, count(*) as n from llm_usage group by org order by org"
    assert {r["org"]: r["n"] for r in _sql_json(capsys, ops, query)} == by_org
    assert {r["org"]: r["n"] for r in _sql_json(capsys, acme, query)} == {"acme": by_org["acme"]}
    # Hand-written SQL asks for the other org's rows: the database never hands them over.
    assert _sql_json(capsys, acme, "select * from llm_usage where org <> 'acme'") == []
    assert _sql_json(capsys, acme, "select distinct tenant from llm_budget_daily order by 1") == [
        {"tenant": "acme-eu"},
        {"tenant": "acme-us"},
    ]
    assert _sql_json(capsys, acme, "select count(*) as n from spans") == [{"n": 0}]
    assert _sql_json(capsys, acme, "select count(*) as n from rejected_records") == [{"n": 0}]
    # Not through comptroller either: a plain connection as the role gets the same rows.
    assert _rows(acme, "SELECT count(*) FROM llm_usage WHERE org = 'lab-org'") == [(0,)]
    assert _rows(acme, "SELECT DISTINCT tenant FROM llm_usage_hourly ORDER BY 1") == [
        ("acme-eu",),
        ("acme-us",),
    ]
    assert _rows(acme, "SELECT count(*) FROM ledger_readers") == [(1,)]  # its own binding
    for escalation in (
        f"INSERT INTO ledger_readers (role_name) VALUES ('{roles['acme_role']}')",
        "ALTER TABLE llm_usage DISABLE ROW LEVEL SECURITY",
        "DELETE FROM llm_usage",
    ):
        with pytest.raises(adbc_driver_manager.Error, match=r"permission denied|must be owner"):
            _rows(acme, escalation)

    # budget check: the org's keys only, so lab's refused call is not its finding.
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S%z")
    code, out, err = run_cli(capsys, "budget", "check", "--json", "--now", now, "--db", acme)
    assert code in (0, 1), err
    assert {b["tenant"] for b in json.loads(out)["budgets"]} <= {"acme-eu", "acme-us"}
    code, out, err = run_cli(capsys, "budget", "check", "--json", "--now", now, "--db", ops)
    assert code == 3, err
    assert "lab" in {b["tenant"] for b in json.loads(out)["budgets"]}

    # The writer owns the tables and is not subject to the policies: it keeps landing.
    con = connect_pg(writer)
    try:
        landed = PgLander(con, collector_id="c-after", timezone="UTC").land(
            batches(rows=10, requests=1)[:1], positions=[1]
        )
    finally:
        con.close()
    assert landed.inserted["llm_usage"] == 0  # the same ids: landed once, before
    count = _sql_json(capsys, ops, "select count(*) as n from llm_usage")[0]["n"]
    assert count == sum(by_org.values())


def test_a_tenant_binding_and_revoking(
    capsys: pytest.CaptureFixture[str], roles: dict[str, str]
) -> None:
    writer, acme, role = roles["writer"], roles["acme"], roles["acme_role"]
    code, _, err = run_cli(capsys, "db", "grant-reader", role, "--tenant", "lab", "--db", writer)
    assert code == 0, err
    assert _sql_json(capsys, acme, "select distinct tenant from llm_usage") == [{"tenant": "lab"}]
    budgets = _sql_json(capsys, acme, "select distinct tenant from budget_events")
    assert budgets == [{"tenant": "lab"}]
    code, out, err = run_cli(capsys, "db", "revoke-reader", role, "--tenant", "lab", "--db", writer)
    assert code == 0, err
    assert "1 binding revoked" in out
    code, _, err = run_cli(capsys, "sql", "--db", acme, "select count(*) from llm_usage")
    assert code == 2
    assert "permission denied" in err
    code, _, err = run_cli(capsys, "db", "grant-reader", "t_no_such_role_x", "--db", writer)
    assert code == 2
    assert "CREATE ROLE" in err
    code, _, err = run_cli(capsys, "db", "grant-reader", role)
    assert code == 2
    assert "postgresql://" in err


def test_db_migrate_creates_and_then_keeps_a_postgres_ledger(
    capsys: pytest.CaptureFixture[str], postgres_url: str
) -> None:
    from comptroller.analytics._pg_schema import PG_SCHEMA_VERSION

    with pg_schema(postgres_url) as schema:
        url = ledger_url(postgres_url, schema)
        _admin(postgres_url, f"CREATE SCHEMA {schema}")
        code, out, err = run_cli(capsys, "db", "migrate", "--db", url)
        assert code == 0, err
        assert f"created at schema version {PG_SCHEMA_VERSION}" in out
        assert "?" not in out  # the URL shown without its query (or a password)
        code, out, err = run_cli(capsys, "db", "migrate", "--db", url)
        assert code == 0, err
        assert "current" in out
        assert _rows(url, "SELECT count(*) FROM ledger_readers") == [(0,)]
