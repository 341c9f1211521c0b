"""Fixtures of the collector tests: a real collector on an ephemeral port, real SDK exporters."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from comptroller.collector import Collector, create_app


@dataclass
class Running:
    collector: Collector
    url: str
    db: Path

    def endpoint(self, signal: str) -> str:
        return f"{self.url}/v1/{signal}"

    def sql(self, query: str, params: dict[str, object] | None = None) -> list[dict[str, Any]]:
        """Rows of a read-only query, through the collector's own read path, once every
        acknowledged request has landed.

        A read waits for landing only up to 2 s (the product's bound) and then answers with
        what has landed; on a loaded machine the writer can be further behind, and a test
        asserting the rows it just exported would race it.
        """
        landed = self.collector.pipeline.wait_landed(60)
        assert landed, f"acknowledged requests did not land: {self.collector.stats.last_error}"
        return self.collector.query(query, params).to_pylist()  # type: ignore[no-any-return]


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # the test thread is not the main thread
        return None


def start_collector(db: Path, **kwargs: object) -> tuple[Running, _Server, threading.Thread]:
    collector = Collector(db, **kwargs)  # type: ignore[arg-type]
    config = uvicorn.Config(
        create_app(collector), host="127.0.0.1", port=0, log_level="warning", lifespan="on"
    )
    server = _Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("collector did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    return Running(collector, f"http://127.0.0.1:{port}", db), server, thread


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    run, server, thread = start_collector(tmp_path / "c.duckdb")
    yield run
    server.should_exit = True
    thread.join(10)
    run.collector.close()


@pytest.fixture
def make_running(tmp_path: Path) -> Iterator[object]:
    started: list[tuple[Running, _Server, threading.Thread]] = []

    def make(**kwargs: object) -> Running:
        item = start_collector(tmp_path / f"c{len(started)}.duckdb", **kwargs)
        started.append(item)
        return item[0]

    yield make
    for run, server, thread in started:
        server.should_exit = True
        thread.join(10)
        run.collector.close()
