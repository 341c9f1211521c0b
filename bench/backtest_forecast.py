"""Back-test of the spend forecast (`comptroller budget forecast`, the `forecast` panel) on
the demo's simulated days.

Plays the demo (`comptroller demo`: the control plane over the local provider endpoints,
an injected clock) over `--days` simulated days into a scratch data directory, or reads a
database it made (`--db`). Then, on every whole day with `--history` days before it, makes
the forecast as it stood at `--at` o'clock (the ledger as of then: the panel reads only the
hours begun by its `now`) and compares the day-end projections with what the day spent, per
budget key, per purpose and in total; and the month-end projections made on each day of a
month the ledger holds whole (its last day before today) with what that month spent.

    uv run python bench/backtest_forecast.py [--days 14] [--calls 4000] [--at 12]
    uv run python bench/backtest_forecast.py --db demo.duckdb

Prints, per level, the mean absolute percentage error (MAPE, over forecasts whose actual is
not 0) and the weighted one (WAPE: total absolute error over total actual) of the chosen
day-end method (hour-of-day profile) and of the burn rate. docs/FORECAST.md quotes a run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
import tempfile
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from comptroller.analytics import Forecast, forecast, open_reader


def _demo(data_dir: Path, *, days: int, calls: int, seed: int) -> Path:
    env = {
        k: v
        for k, v in os.environ.items()
        if not (k.startswith("COMPTROLLER_") or k.startswith("OTEL_"))
    }
    env["COMPTROLLER_DATA_DIR"] = str(data_dir)
    command = [sys.executable, "-m", "comptroller", "demo", "--no-tui"]
    command += ["--days", str(days), "--calls", str(calls), "--seed", str(seed)]
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    return data_dir / "comptroller.duckdb"


def _errors(pairs: Iterable[tuple[float, float]]) -> tuple[float, float, int]:
    """(MAPE, WAPE, forecasts) of (projected, actual) pairs."""
    pairs = list(pairs)
    relative = [abs(p - a) / a for p, a in pairs if a > 0]
    total = sum(a for _, a in pairs)
    mape = sum(relative) / len(relative) if relative else float("nan")
    wape = sum(abs(p - a) for p, a in pairs) / total if total else float("nan")
    return mape, wape, len(pairs)


def _level(f: Forecast, level: str) -> tuple[str, ...]:
    return {"key": f.key, "purpose": (f.purpose,), "total": ()}[level]


def backtest(db: Path, *, at: int, history: int, timezone: str = "UTC") -> list[str]:
    """The report's lines."""
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        actual_rows = con.execute(
            "SELECT day, tenant, context, purpose, spent_usd FROM llm_budget_daily"
        ).fetchall()
        first, last = con.execute("SELECT min(day), max(day) FROM llm_budget_daily").fetchone()  # type: ignore[misc]
    finally:
        con.close()
    actual: dict[str, dict[tuple[dt.date, tuple[str, ...]], float]] = {
        level: defaultdict(float) for level in ("key", "purpose", "total")
    }
    for day, tenant, context, purpose, spent in actual_rows:
        actual["key"][(day, (tenant, context, purpose))] += float(spent)
        actual["purpose"][(day, (purpose,))] += float(spent)
        actual["total"][(day, ())] += float(spent)
    today = last  # the demo's last day is today, still running: not a whole day
    reader = open_reader(db=db)
    day_pairs: dict[str, dict[str, list[tuple[float, float]]]] = {
        level: {"hour_of_day": [], "burn_rate": []} for level in ("key", "purpose", "total")
    }
    month_pairs: list[tuple[float, float]] = []
    months: dict[tuple[int, int], float] = defaultdict(float)
    for (day, _), spent in actual["total"].items():
        months[(day.year, day.month)] += spent
    try:
        day = first + dt.timedelta(days=history)
        while day < today:
            # A second before the hour: the panel reads the hours begun by its `now`.
            now = dt.datetime.combine(day, dt.time(at), tzinfo=dt.UTC) - dt.timedelta(seconds=1)
            found = forecast(reader, now=now, timezone=timezone, days=history)
            for level in ("key", "purpose", "total"):
                projected: dict[tuple[str, ...], list[float]] = defaultdict(lambda: [0.0, 0.0])
                for f in found:
                    sums = projected[_level(f, level)]
                    sums[0] += float(f.day_end_usd)
                    sums[1] += float(f.burn_usd)
                keys = {k for (d, k) in actual[level] if d == day} | set(projected)
                for k in keys:
                    spent = actual[level].get((day, k), 0.0)
                    profile, burn = projected.get(k, [0.0, 0.0])
                    day_pairs[level]["hour_of_day"].append((profile, spent))
                    day_pairs[level]["burn_rate"].append((burn, spent))
            month_end = (day.replace(day=28) + dt.timedelta(days=4)).replace(day=1)
            if month_end <= today:  # the ledger holds this month whole
                total = sum(float(f.month_end_usd) for f in found)
                month_pairs.append((total, months[(day.year, day.month)]))
            day += dt.timedelta(days=1)
    finally:
        reader.close()
    lines = [
        f"ledger {first} .. {last} (today, excluded); forecasts at {at:02d}:00 on each day "
        f"with {history} days of history before it",
        f"{'day end':<24}{'method':<14}{'MAPE':>8}{'WAPE':>8}{'forecasts':>11}",
    ]
    for level in ("key", "purpose", "total"):
        for method in ("hour_of_day", "burn_rate"):
            mape, wape, n = _errors(day_pairs[level][method])
            name = {"key": "per budget key", "purpose": "per purpose", "total": "total"}[level]
            lines.append(f"{name:<24}{method:<14}{mape:>8.1%}{wape:>8.1%}{n:>11}")
    if month_pairs:
        mape, wape, n = _errors(month_pairs)
        lines.append(f"{'month end (total)':<24}{'daily avg':<14}{mape:>8.1%}{wape:>8.1%}{n:>11}")
    else:
        lines.append("month end: no month is whole in this ledger (run more --days)")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, help="a database the demo made (default: run it)")
    parser.add_argument("--days", type=int, default=14, help="simulated days before today")
    parser.add_argument("--calls", type=int, default=4000, help="the demo's calls")
    parser.add_argument("--seed", type=int, default=7, help="the demo's seed")
    parser.add_argument("--at", type=int, default=12, help="local hour the forecasts are made")
    parser.add_argument(
        "--history", type=int, default=7, help="days of history (--days of the panel)"
    )
    args = parser.parse_args()
    if args.db is not None:
        db = args.db
        print("\n".join(backtest(db, at=args.at, history=args.history)))
        return
    with tempfile.TemporaryDirectory() as scratch:
        db = _demo(Path(scratch), days=args.days, calls=args.calls, seed=args.seed)
        print(
            f"demo: {args.calls} calls over {args.days} days and today (seed {args.seed})",
            flush=True,
        )
        print("\n".join(backtest(db, at=args.at, history=args.history)))


if __name__ == "__main__":
    main()
