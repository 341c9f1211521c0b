"""Every script the Redis guard runs touches the keys of one hash tag (one Redis Cluster
slot), and its Lua scripts ship with the package."""

from __future__ import annotations

import re
import tomllib
import uuid
from collections.abc import Iterator
from decimal import Decimal
from fnmatch import fnmatch
from pathlib import Path
from typing import Any, ClassVar

import pytest
import redis

from comptroller.control import BudgetSpec, GuardKey, RateLimitSpec, RedisGuard
from comptroller.control.testing import FakeClock

ROOT = Path(__file__).resolve().parents[2]
CAP = BudgetSpec(daily_usd=Decimal("1.00"))


class RecordingConnection(redis.Connection):
    """A real connection that keeps every command it sends."""

    sent: ClassVar[list[bytes]] = []

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        chunks = [command] if isinstance(command, bytes) else list(command)
        RecordingConnection.sent.extend(chunks)
        super().send_packed_command(command, check_health)  # type: ignore[no-untyped-call]


def parse(command: bytes) -> list[bytes]:
    """The arguments of one packed RESP command."""
    count, rest = command.split(b"\r\n", 1)
    assert count.startswith(b"*")
    args: list[bytes] = []
    for _ in range(int(count[1:])):
        size, rest = rest.split(b"\r\n", 1)
        n = int(size[1:])
        args.append(rest[:n])
        rest = rest[n + 2 :]
    assert rest == b""
    return args


def script_keys(command: bytes) -> list[bytes]:
    args = parse(command)
    assert args[0] in (b"EVALSHA", b"EVAL"), args[0]
    return args[3 : 3 + int(args[2])]


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    name = f"test-slots-{uuid.uuid4().hex}"
    yield name
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{name}*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.mark.redis
def test_each_script_touches_one_hash_tag_and_admits_carry_only_their_keys_settlements(
    redis_url: str, prefix: str
) -> None:
    pool = redis.ConnectionPool.from_url(redis_url, connection_class=RecordingConnection)
    guard = RedisGuard(
        redis_url,
        prefix=prefix,
        clock=FakeClock(),
        client=redis.Redis(connection_pool=pool),
        background_flush=False,
        ledger_source=lambda: [],
    )
    spec = RateLimitSpec(requests_per_interval=600, tokens_per_interval=100_000)
    a, b = GuardKey("acme", "support", "chat"), GuardKey("acme", "worlds", "chat")
    RecordingConnection.sent = []

    def admit(key: GuardKey) -> Any:
        return guard.admit(key, tokens=10, reserve_usd=Decimal("0.1"), rate_limit=spec, budget=CAP)

    first_a, first_b = admit(a), admit(b)  # each seeded from the (empty) ledger first
    guard.settle(first_a, cost_usd=Decimal("0.05"), tokens=5)
    guard.settle(first_b, cost_usd=Decimal("0.05"), tokens=5)
    admit(a)
    assert guard.pending_settlements == 1  # b's waits: a's admit does not carry it
    guard.seed({a: Decimal("0.2"), b: Decimal("0.3")})
    guard.ledger(b)
    guard.close()

    scripts = [c for c in RecordingConnection.sent if parse(c)[0] in (b"EVALSHA", b"EVAL")]
    assert len(scripts) >= 8
    for command in scripts:
        tags = {re.search(rb"\{[^}]*\}", key).group(0) for key in script_keys(command)}  # type: ignore[union-attr]
        assert len(tags) == 1, parse(command)
    assert guard.ledger(b).spent_usd == Decimal("0.3")


def test_the_lua_scripts_are_shipped_with_the_package() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "comptroller.control._guard" in config["packages"]
    patterns = config["package-data"]["*"]
    scripts = sorted((ROOT / "control" / "_guard").glob("*.lua"))
    assert scripts
    for script in scripts:
        assert any(fnmatch(script.name, pattern) for pattern in patterns), script.name
