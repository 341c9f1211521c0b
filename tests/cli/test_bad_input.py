"""Every subcommand answers bad input with one line on stderr and exit 2, never a traceback.

One table drives them all: each row is a command line with placeholders ({db}: a usage
database, {missing}: a folder that does not exist, {notdb}: a file that is not a database,
{absent}: a database file that does not exist, {closed}: a URL where nothing listens,
{closed_host}: its host:port, {busy}: a port another socket holds) and a piece of the one
line it must print. Leading NAME=value words set the environment.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from _usage_db import NOW, fill, run_cli, usage_row

from comptroller.cli import COMMANDS

CASES: list[tuple[str, str]] = [
    # sql
    ('sql --db {db} -o {missing}/out.csv "select 1"', "does not exist"),
    ('sql --db {db} -f parquet -o {missing}/out.parquet "select 1"', "does not exist"),
    ('sql --db {db} -f xml "select 1"', "'xml' is not one of"),
    ('sql --db {db} "select nosuch from llm_usage"', "nosuch"),
    # DuckDB's suggestions stay on the one line: close column and table names.
    ('sql --db {db} "select cost_us from llm_usage"', 'Candidate bindings: "cost_usd"'),
    ('sql --db {db} "select * from llm_usag"', 'Did you mean "llm_usage"'),
    ('sql --db {db} "drop table llm_usage"', "read-only"),
    ('sql --db {db} "select 1 // 0"', "Division by zero"),
    # ...and the advice it gives is advice the read API takes (TRY, not a refused SET).
    ('sql --db {db} "select 1 // 0"', "Use TRY(...) to return NULL for this expression."),
    ('sql --db {notdb} "select 1"', "not a valid DuckDB"),
    ('sql --db {absent} "select 1"', "no such database"),
    ('sql --url {closed} "select 1"', "unreachable"),
    ('sql --url http://256.0.0.1:1 "select 1"', "invalid URL"),
    # collect (each fails before it listens)
    ("collect --port 99999", "99999"),
    ("collect --port {busy} --no-grpc", "is not free"),
    ("collect --port 0 --grpc-port {busy}", "is not free"),
    ("collect --db {missing}/c.duckdb --port 0 --no-grpc", "does not exist"),
    ("collect --token-file {missing}/token --port 0 --no-grpc", "token file"),
    ("collect --host 0.0.0.0 --port 0 --no-grpc", "bearer token"),
    # budget
    ("budget check --db {db} --junit {missing}/junit.xml", "does not exist"),
    ("budget check --db {db} --warn-ratio 7", "--warn-ratio"),
    ("budget check --db {notdb}", "not a valid DuckDB"),
    ("budget check --url {closed}", "unreachable"),
    ("budget check --db {db} --now 2026-13-45", "--now"),
    ("budget check --db {db} --anomalies --anomaly-min-usd -1", "--anomaly-min-usd"),
    ("budget forecast --db {db} --by tenant", "'tenant' is not one of"),
    ("budget forecast --db {db} --days 0", "--days"),
    ("budget forecast --db {notdb}", "not a valid DuckDB"),
    ("budget forecast --url {closed}", "unreachable"),
    # alerts
    ("alerts list --db {absent}", "no such database"),
    ("alerts list --db {db} --since someday", "--since 'someday' is not a time"),
    ("alerts list --db {db} --limit 0", "--limit"),
    ("alerts list --url {closed}", "unreachable"),
    ("alerts test", "no webhook is configured"),
    # report
    ("report --db {db} --baseline {absent}", "does not exist"),
    ("report --db {db} --baseline {notdb}", "not a valid DuckDB"),
    ("report --db {db} --baseline {db} --since 2026-02-30", "--since"),
    ('report --db {db} --what-if "purpose=chat model=openai:gpt-9-nosuch"', "openai:gpt-9-nosuch"),
    ('report --db {db} --what-if "purpose=chat"', "needs the model"),
    ('report --db {db} --what-if "colour=red model=openai:gpt-4o"', "unknown key 'colour'"),
    ('report --db {db} --what-if "model=gpt-4o"', "provider:model"),
    ('report --db {db} --baseline {db} --what-if "model=openai:gpt-4o"', "give one of them"),
    ("report --db {db} --fail-above-pct 5", "--baseline"),
    # export
    ("export --focus --db {db} -o {missing}/spend.csv", "does not exist"),
    ("export --focus --db {db} -o {notdb}", ".parquet or .csv"),
    ("export --db {db} -o {notdb}.csv", "--focus"),
    ("export --focus --db {absent} -o {notdb}.csv", "no such database"),
    ("export --focus --db {db} -o {notdb}.csv --since 2026-02-30", "--since"),
    ("export --focus --db {db} -o {notdb}.csv --since 2026-02-03 --until 2026-02-01", "before"),
    # reprice
    ("reprice --db {db} --since notadate", "--since"),
    ("reprice --db {absent}", "does not exist"),
    # db
    ("db migrate --db {missing}/new.duckdb", "does not exist"),
    ("db info --db {absent}", "no such database"),
    ("db compact --db {notdb}", "not a valid DuckDB"),
    # tui (each fails before the screen opens)
    ("tui --refresh -1", "--refresh"),
    ("tui --db {absent}", "no such database"),
    # demo
    ("demo --calls 0", "--calls"),
    ("demo --db {missing}/demo.duckdb", "does not exist"),
    # profiles
    ("profiles set reasoning --global --model nocolon", "provider:model"),
    ("profiles set nosuchpurpose --global --model openai:gpt-4o", "unknown purpose"),
    ("profiles diff reasoning --global --to 999", "no versions"),
    ("COMPTROLLER_CONTROL_PROFILE_STORE_URL=bogus://x profiles show", "profile store"),
    (
        "COMPTROLLER_CONTROL_PROFILE_STORE_URL=postgresql://u:pw@{closed_host} profiles show",
        "refused",
    ),
    # credentials
    (
        "COMPTROLLER_CONTROL_PROFILE_STORE_URL=postgresql://u@{closed_host} credentials list",
        "refused",
    ),
    ("credentials set --provider openai --global --from-env NOSUCH_VAR_XYZ", "NOSUCH_VAR_XYZ"),
    ("credentials delete --global", "--provider"),
    # check-imports
    ("check-imports {missing}", "does not exist"),
    ("check-imports --allow 'my app' {notdb}", "neither a module"),
    ("check-imports --pyproject {notdb} {notdb}", "not valid TOML"),
    ("check-imports --format xml {notdb}", "'xml' is not one of"),
    # admin
    ("admin grant bob --role superuser", "superuser"),
    ("admin token mint nobody", "--role"),  # click lists the choices on several lines
    # config and the global options
    ("config show --nosuch", "--nosuch"),
    (
        "COMPTROLLER_CONTROL_PRICES=notjson config show",
        "COMPTROLLER_CONTROL_PRICES: not valid JSON",
    ),
    ("COMPTROLLER_MODEL=notjson sql select", "COMPTROLLER_MODEL: not valid JSON"),
    ("--config {missing}/comptroller.toml config show", "not found"),
    ("--config {notdb} config show", "invalid TOML"),
    ("--data-dir {notdb} sql select", "is a file"),
    ("frobnicate", "frobnicate"),
]


def _split(case: str, places: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """(environment, argv) of a case: leading NAME=value words set the environment."""
    import shlex

    words = [part.format(**places) for part in shlex.split(case)]
    env: dict[str, str] = {}
    while words and "=" in words[0] and words[0].split("=", 1)[0].isupper():
        name, value = words.pop(0).split("=", 1)
        env[name] = value
    return env, words


def test_the_table_drives_every_subcommand() -> None:
    driven = {word for case, _ in CASES for word in case.split() if word in COMMANDS}
    assert set(COMMANDS) <= driven, set(COMMANDS) - driven


@pytest.fixture
def places(tmp_path: Path) -> Iterator[dict[str, str]]:
    db = fill(tmp_path / "u.duckdb", [usage_row(NOW, cost="0.25", purpose="chat")])
    notdb = tmp_path / "notes.txt"
    notdb.write_text("this is [not a database\n")
    with socket.socket() as sock:  # bound, then closed: nothing listens on it
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    with socket.socket() as busy:  # another process's port
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        yield {
            "db": str(db),
            "missing": str(tmp_path / "missing" / "folder"),
            "notdb": str(notdb),
            "absent": str(tmp_path / "absent.duckdb"),
            "closed": closed,
            "closed_host": closed.removeprefix("http://"),
            "busy": str(busy.getsockname()[1]),
        }


@pytest.mark.parametrize(("case", "expected"), CASES, ids=[case for case, _ in CASES])
def test_bad_input_is_one_line_on_stderr_and_exit_2(
    capsys: pytest.CaptureFixture[str],
    places: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    case: str,
    expected: str,
) -> None:
    env, argv = _split(case, places)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code, _out, err = run_cli(capsys, *argv)

    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("comptroller: error: "), err
    assert expected in lines[0], err
    assert ":pw@" not in err  # a password in a URL is never echoed
    # Nothing was created in the folder that did not exist.
    assert not (tmp_path / "missing").exists()


@pytest.mark.parametrize("fmt", ["table", "csv", "json"])
def test_sql_writes_nan_and_infinity_explicitly(
    capsys: pytest.CaptureFixture[str], places: dict[str, str], fmt: str
) -> None:
    code, out, err = run_cli(
        capsys,
        "sql",
        "--db",
        places["db"],
        "-f",
        fmt,
        "select 1 / 0 as up, -1 / 0 as down, 0 / 0 as nan, [1 / 0] as listed",
    )
    assert code == 0, err
    if fmt == "json":
        import json

        assert json.loads(out) == [
            {"up": "Infinity", "down": "-Infinity", "nan": "NaN", "listed": ["Infinity"]}
        ]
    else:
        assert "-Infinity" in out
        assert "NaN" in out
        assert "null" not in out.lower()
