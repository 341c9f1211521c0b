"""Dashboard speed: first paint, refresh, the hourly spend query, key latency during a refresh.

    uv run python bench/bench_tui.py [--db /tmp/usage-10m.duckdb] [--repeat 20]

The database is the 10M-row one of `bench/gen_usage_db.py` (generated once, then reused; a
file of an older schema is migrated first). Every figure is set against a floor measured in
the same run, alternating, because this machine's load changes from minute to minute.

1. First paint: `comptroller tui --db FILE` in a pseudo-terminal, from spawning the process
   to (a) the first frame (the view bar is drawn) and (b) the first rows on screen (the
   status bar says "updated"), against a bare Textual app showing one label. Budget: 1 s.
2. Refresh in the app: each view's refresh, from starting it to its rows applied to the
   widgets (queries in the worker, the message, the handler; unchanged rows and redrawn
   rows), against a bare Textual app's worker → message → label round trip. Budget: 100 ms.
3. Refresh query time: every view's queries, as one refresh runs them (capped, through the
   panels), median and p95 over `--repeat` runs, for each range.
4. Hourly spend of today: from the hourly rollup (`spend_hourly`) against the same sums over
   the raw rows since local midnight (what the dashboard ran before the rollup).
5. Key latency: while the Spend view refreshes in its worker, a key press switches views;
   the time from sending the key to the action running. Budget: one frame (16.7 ms at 60 Hz).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pty
import select
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
from textual import on
from textual.app import App, ComposeResult
from textual.message import Message
from textual.widgets import Label

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gen_usage_db

from comptroller.analytics import connect
from comptroller.dashboards import load_panels
from comptroller.tui import VIEW_IDS, ComptrollerApp, DuckDBSource, Filters
from comptroller.tui._app import AppOptions
from comptroller.tui._model import RANGES, time_frame
from comptroller.tui._queries import run_query, view_queries

NOW = gen_usage_db.END


_HELLO = (
    "from textual.app import App\nfrom textual.widgets import Label\n"
    "class Hello(App):\n    def compose(self):\n        yield Label('Overview updated')\n"
    "Hello().run()\n"
)


def first_paint(
    db: Path | None,
    *,
    size: tuple[int, int] = (120, 40),
    timeout: float = 20.0,
    env: Mapping[str, str] | None = None,
) -> tuple[float, float]:
    """Seconds from spawning `comptroller tui` to its first frame, and to its first rows.

    Without `db`, the same for a bare Textual app that shows one label: the floor that
    Python and Textual set on this machine.
    """
    master, slave = pty.openpty()
    os.set_blocking(master, False)
    env = dict(
        os.environ, **(env or {}), TERM="xterm-256color", COLUMNS=str(size[0]), LINES=str(size[1])
    )
    began = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "comptroller", "tui", "--db", str(db), "--refresh", "60"]
        if db is not None
        else [sys.executable, "-c", _HELLO],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        close_fds=True,
    )
    os.close(slave)
    seen = b""
    frame = rows = None
    try:
        while time.perf_counter() - began < timeout and rows is None:
            ready, _, _ = select.select([master], [], [], 0.01)
            if ready:
                try:
                    seen += os.read(master, 1 << 16)
                except OSError:
                    break
                if frame is None and b"Overview" in seen:
                    frame = time.perf_counter() - began
                if b"updated" in seen:
                    rows = time.perf_counter() - began
                if b"STALE" in seen:
                    raise SystemExit(f"the first refresh failed (a query error): {seen[-300:]!r}")
            if proc.poll() is not None:
                break
        os.write(master, b"\x11")  # ctrl+q: quit (both apps)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    if frame is None or rows is None:
        raise SystemExit(f"no first paint within {timeout} s; output tail: {seen[-500:]!r}")
    return frame, rows


_RAW_HOURLY = """
SELECT purpose, date_trunc('hour', timezone($tz, ts)) AS bucket,
       coalesce(sum(cost_usd), 0)::DOUBLE AS cost_usd
FROM llm_usage
WHERE ts >= $day_start::TIMESTAMPTZ
GROUP BY ALL
ORDER BY purpose, bucket
"""
"""The hourly spend as the dashboard summed it before the hourly rollup: raw rows since
local midnight."""


def hourly_spend(db: Path, *, repeat: int) -> tuple[list[float], list[float], int, int]:
    """Seconds of today's hourly spend from the rollup and from the raw rows, alternating;
    and the rows each reads."""
    source = DuckDBSource.open(db)
    reader = source()
    panels = load_panels()
    frame = time_frame(NOW, "today", "UTC")
    spec = next(s for s in view_queries("spend") if s.key == "spend_hourly")
    rollup: list[float] = []
    raw: list[float] = []
    try:
        for _ in range(repeat):
            began = time.perf_counter()
            fast = run_query(reader, panels, spec, filters=Filters(), frame=frame, max_rows=500)
            rollup.append(time.perf_counter() - began)
            began = time.perf_counter()
            slow = reader.query(_RAW_HOURLY, {"tz": "UTC", "day_start": frame.day_start})
            raw.append(time.perf_counter() - began)
        assert fast.table.num_rows == slow.num_rows, "rollup and raw rows disagree"
        counts = reader.query(
            "SELECT (SELECT count(*) FROM llm_usage_hourly WHERE hour >= $d::DATE) AS h, "
            "(SELECT count(*) FROM llm_usage WHERE ts >= $s::TIMESTAMPTZ) AS r",
            {"d": frame.day_start.date(), "s": frame.day_start},
        ).to_pylist()[0]
    finally:
        reader.close()
        source.close()
    return rollup, raw, int(counts["h"]), int(counts["r"])


def refresh_times(db: Path, *, repeat: int) -> dict[tuple[str, str], list[float]]:
    """Wall time of one refresh's queries, per (view, range), `repeat` times."""
    source = DuckDBSource.open(db)
    panels = load_panels()
    reader = source()
    out: dict[tuple[str, str], list[float]] = {}
    try:
        for range_ in RANGES:
            frame = time_frame(NOW, range_, "UTC")
            for view in VIEW_IDS:
                specs = view_queries(view, drill="reasoning" if view == "spend" else None)
                times = []
                for _ in range(repeat):
                    began = time.perf_counter()
                    for spec in specs:
                        run_query(
                            reader,
                            panels,
                            spec,
                            filters=Filters(range=range_),
                            frame=frame,
                            max_rows=500,
                        )
                    times.append(time.perf_counter() - began)
                out[(view, range_)] = times
    finally:
        reader.close()
        source.close()
    return out


class _Bare(App[None]):
    """A bare Textual app whose 'refresh' is a thread worker posting to a label."""

    class Done(Message):
        pass

    def __init__(self) -> None:
        super().__init__()
        self.done = asyncio.Event()

    def compose(self) -> ComposeResult:
        yield Label("0", id="n")

    def refresh_once(self) -> None:
        self.done.clear()
        self.run_worker(lambda: self.post_message(self.Done()), thread=True)

    @on(Done)
    def _done(self, message: Done) -> None:
        label = self.query_one("#n", Label)
        label.update(str(int(str(label.render())) + 1))
        self.done.set()


async def app_refreshes(db: Path, *, repeat: int) -> dict[str, tuple[list[float], list[float]]]:
    """Seconds from starting each view's refresh to its rows applied (unchanged rows,
    then rows redrawn), in the app over `db`; and "bare" for the bare app's round trip."""
    source = DuckDBSource.open(db)
    applied = asyncio.Event()

    class Timed(ComptrollerApp):
        def _apply_refresh(self, view: Any, message: Any) -> None:
            super()._apply_refresh(view, message)
            applied.set()

    app = Timed(
        source,
        options=AppOptions(refresh_s=3600, timezone="UTC"),
        clock=lambda: NOW,
        interval_refresh=False,
    )
    out: dict[str, tuple[list[float], list[float]]] = {}
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            for number, view in enumerate(VIEW_IDS, start=1):
                await pilot.press(str(number))
                while not app.is_loaded(view) or app.inflight:
                    await pilot.pause(0.01)
                same: list[float] = []
                redrawn: list[float] = []
                for n in range(2 * repeat):
                    if n % 2:
                        app.last_shown_at[view] = 0.0  # too old: the rows are drawn again
                    applied.clear()
                    began = time.perf_counter()
                    app.start_refresh(view)
                    await applied.wait()
                    (redrawn if n % 2 else same).append(time.perf_counter() - began)
                    await pilot.pause()
                out[view] = (same, redrawn)
    finally:
        source.close()
    bare = _Bare()
    trips: list[float] = []
    async with bare.run_test(size=(120, 40)) as pilot:
        for _ in range(repeat):
            began = time.perf_counter()
            bare.refresh_once()
            await bare.done.wait()
            trips.append(time.perf_counter() - began)
            await pilot.pause()
    out["bare"] = (trips, trips)
    return out


class _SlowReader:
    """The real reader, plus a fixed delay per query: holds a refresh in flight."""

    def __init__(self, inner: object, delay: float) -> None:
        self.inner = inner
        self.delay = delay

    def query(self, sql: str, params: Mapping[str, object] | None = None) -> pa.Table:
        time.sleep(self.delay)
        return self.inner.query(sql, params)  # type: ignore[attr-defined, no-any-return]

    def close(self) -> None:
        self.inner.close()  # type: ignore[attr-defined]


async def key_latency(db: Path, *, presses: int = 20) -> list[float]:
    """Seconds from a key press to its action, each press while a refresh runs."""
    source = DuckDBSource.open(db)
    stamps: list[float] = []
    pressed = asyncio.Event()

    class Timed(ComptrollerApp):
        async def action_show_view(self, view_id: str) -> None:
            stamps.append(time.perf_counter())
            pressed.set()
            await super().action_show_view(view_id)

    app = Timed(
        lambda: _SlowReader(source(), 0.05),
        options=AppOptions(refresh_s=3600, timezone="UTC"),
        clock=lambda: NOW,
        interval_refresh=False,
    )
    latencies: list[float] = []
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            for n in range(presses + 2):
                view = "2" if n % 2 == 0 else "1"
                while app.inflight:
                    await pilot.pause(0.005)
                app.start_refresh(app.current)
                assert app.inflight  # a refresh is running in its thread now
                pressed.clear()
                sent = time.perf_counter()
                app.simulate_key(view)
                await pressed.wait()
                if n >= 2:  # the first two switches lay out views for the first time
                    latencies.append(stamps[-1] - sent)
    finally:
        source.close()
    return latencies


def _ms(values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
    return f"median {statistics.median(values) * 1000:7.1f} ms   p95 {p95 * 1000:7.1f} ms   max {ordered[-1] * 1000:7.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--db", type=Path, default=None, help="default: the cached 10M-row database"
    )
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--paints", type=int, default=5, help="first-paint runs of each app")
    args = parser.parse_args()
    db = args.db or gen_usage_db.cached(gen_usage_db.DEFAULT.with_name("tui-usage-10m.duckdb"))
    connect(db).close()  # a file of an older schema gets its migrations (the hourly rollup)
    print(f"database: {db} ({db.stat().st_size / 1e6:.0f} MB)")

    # Alternating, so that both see the same load.
    floors, paints = [], []
    for _ in range(args.paints):
        floors.append(first_paint(None)[1])
        paints.append(first_paint(db))
    floor = statistics.median(floors)
    frame = statistics.median(p[0] for p in paints)
    rows = statistics.median(p[1] for p in paints)
    print(
        f"first paint (median of {args.paints}): first frame {frame * 1000:.0f} ms, first rows "
        f"{rows * 1000:.0f} ms (budget 1000 ms); a bare Textual app: {floor * 1000:.0f} ms "
        f"(first rows {rows / floor:.1f}x the bare app)"
    )

    refreshes = asyncio.run(app_refreshes(db, repeat=args.repeat))
    bare = refreshes.pop("bare")[0]
    print(
        "refresh in the app, start → rows applied (today; unchanged rows / rows redrawn); "
        f"a bare Textual app's worker → message → label: median {statistics.median(bare) * 1000:.1f} ms"
    )
    slowest = 0.0
    for view, (same, redrawn) in refreshes.items():
        slowest = max(slowest, statistics.median(same), statistics.median(redrawn))
        print(f"  {view:9} unchanged {_ms(same)}   redrawn {_ms(redrawn)}")
    print(f"  slowest median {slowest * 1000:.1f} ms (budget 100 ms)")

    rollup, raw, hours, raw_rows = hourly_spend(db, repeat=args.repeat)
    print(
        f"hourly spend today: rollup ({hours:,} rows) {_ms(rollup)}; "
        f"raw rows since midnight ({raw_rows:,} rows) {_ms(raw)}"
    )

    print("refresh query time per view (all of its queries, capped at 500 rows):")
    worst = 0.0
    for (view, range_), times in refresh_times(db, repeat=args.repeat).items():
        worst = max(worst, statistics.median(times))
        print(f"  {view:9} {range_:5}  {_ms(times)}")
    print(f"  worst median {worst * 1000:.1f} ms (budget 100 ms)")

    latencies = asyncio.run(key_latency(db))
    print(f"key press → action while a refresh runs: {_ms(latencies)} (budget 16.7 ms)")


if __name__ == "__main__":
    main()
