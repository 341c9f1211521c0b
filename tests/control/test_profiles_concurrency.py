"""Concurrent activations (threads with their own connections) and two real processes."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_profiles_kit import (
    ACME,
    PLATFORM,
    STORE_PARAMS,
    make_service,
    make_settings,
    spec,
    store_urls,
    with_openai,
)

from comptroller.control.profiles import ProfileService


@pytest.fixture(params=STORE_PARAMS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield from store_urls(request, tmp_path)


def test_concurrent_activations_never_collide_and_lose_no_audit_entry(
    store_url: str, data_dir: Path
) -> None:
    threads_n, per_thread = 6, 5
    setup = make_service(store_url, data_dir)
    with_openai(setup)
    setup.service.set_profile(ACME, "reasoning", spec(model="openai:gpt-4o"), actor=PLATFORM)
    # One service (engine, connection pool) per thread: concurrent connections, like several
    # operators' processes.
    services = [make_service(store_url, data_dir).service for _ in range(threads_n)]
    barrier = threading.Barrier(threads_n)
    errors: list[BaseException] = []

    def operator(index: int, service: ProfileService) -> None:
        try:
            barrier.wait()
            for step in range(per_thread):
                service.set_profile(
                    ACME,
                    "reasoning",
                    spec(max_tokens=1000 * (index + 1) + step),
                    actor=PLATFORM,
                    reason=f"op{index}-{step}",
                )
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=operator, args=(i, s)) for i, s in enumerate(services)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert errors == []
    total = 1 + threads_n * per_thread
    history = setup.service.history(ACME, "reasoning")
    assert [v.version for v in history] == list(range(1, total + 1))
    assert [v.version for v in history if v.active] == [total]
    # Each version deactivated exactly when its successor activated: no interleaving.
    for older, newer in itertools.pairwise(history):
        assert older.deactivated_at == newer.activated_at
    entries = setup.service.audit(scope=ACME, purpose="reasoning")
    assert sorted(e.version or 0 for e in entries) == list(range(1, total + 1))
    assert {e.reason for e in entries} >= {
        f"op{i}-{s}" for i in range(threads_n) for s in range(per_thread)
    }
    # Each audit entry's "before" is the version the change replaced.
    assert all(
        (e.before or {}).get("version") == (e.version or 0) - 1
        for e in entries
        if (e.version or 0) > 1
    )
    for service in (setup.service, *services):
        service.close()


_WRITER = textwrap.dedent(
    """
    import sys
    from comptroller.config import load_settings
    from comptroller.control import ModelRef
    from comptroller.control.profiles import Actor, ProfileService, ProfileSpec, Scope

    service = ProfileService.from_settings(load_settings(), url=sys.argv[1])
    service.set_profile(
        Scope.of_org("acme"),
        "reasoning",
        ProfileSpec(model=ModelRef.parse("openai:gpt-4.1")),
        actor=Actor.platform("other-process"),
    )
    print("written", flush=True)
    """
)


@pytest.mark.slow
def test_write_in_another_process_invalidates_this_process_within_the_ttl(
    tmp_path: Path, data_dir: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'shared.sqlite'}"
    manual = make_service(url, data_dir)  # cache clock moved by hand
    with_openai(manual)
    manual.service.set_profile(ACME, "reasoning", spec(model="openai:gpt-4o"), actor=PLATFORM)
    ttl = 0.25
    live = ProfileService.from_settings(
        make_settings(data_dir, resolution_cache_ttl_s=ttl), url=url, environ={}
    )  # real monotonic clock
    for service in (manual.service, live):
        assert str(service.resolve("reasoning", domain=None, org="acme").model) == "openai:gpt-4o"

    result = subprocess.run(
        [sys.executable, "-c", _WRITER, url],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=120,
        check=False,
    )
    written_at = time.monotonic()
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "written"

    # Deterministic: stale until one ttl has passed on the cache's clock, fresh right after.
    assert (
        str(manual.service.resolve("reasoning", domain=None, org="acme").model) == "openai:gpt-4o"
    )
    manual.clock.advance(manual.settings.control.resolution_cache_ttl_s)
    assert (
        str(manual.service.resolve("reasoning", domain=None, org="acme").model) == "openai:gpt-4.1"
    )

    # Real time: the other process's change shows within the ttl (plus one poll).
    while str(live.resolve("reasoning", domain=None, org="acme").model) != "openai:gpt-4.1":
        assert time.monotonic() - written_at < ttl + 0.5, "change not seen within the bound"
    assert time.monotonic() - written_at <= ttl + 0.5
    live.close()
    manual.service.close()
