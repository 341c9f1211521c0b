"""A provider nobody listens for: the call ends in seconds with one clear line, not a
25-second retry storm ending in a group of identical connection tracebacks."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import pytest
from langchain_core.language_models import BaseChatModel

from comptroller import semconv
from comptroller.config import load_settings
from comptroller.control import (
    CircuitPolicy,
    ControlPlane,
    MemoryGuard,
    ModelRef,
    ProviderError,
    ResolvedProfile,
    RetryPolicy,
    StaticProfiles,
)
from comptroller.control._errors import ProviderUnavailable
from comptroller.control._providers import ChatModelFactory, ModelSpec, openai_chat_model
from comptroller.control.testing import FakeClock, FakeOpenAIServer, InMemorySink

README_EXAMPLE = textwrap.dedent(
    """
    from comptroller.control import ControlPlane

    with ControlPlane() as plane:  # settings from comptroller.toml / COMPTROLLER_*
        model = plane.chat_model("reasoning", org="acme", domain="acme-eu", context="support")
        reply = model.invoke("Summarise this ticket: …")
    """
)


def _closed_port() -> int:
    # Bound and closed again: nothing listens there, so a connection is refused at once.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_readme_example_against_a_closed_port_ends_quickly_with_one_clear_line(
    tmp_path: Path,
) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    script = tmp_path / "app.py"
    script.write_text(README_EXAMPLE)
    env = {
        **os.environ,
        "COMPTROLLER_DATA_DIR": str(tmp_path / "data"),
        "COMPTROLLER_MODEL_REASONING": "openai:gpt-4o",
        "OPENAI_API_KEY": "sk-test-not-a-key",
        "OPENAI_BASE_URL": url,
    }
    env.pop("COMPTROLLER_CONFIG", None)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(script)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    elapsed = time.monotonic() - started

    assert done.returncode == 1
    # Start-up included; before: 4 attempts with backoff (and 4 connect timeouts for a host
    # that drops packets: 28 s).
    assert elapsed < 20, elapsed
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("comptroller.control._errors.ProviderUnavailable: cannot reach ")
    assert f"openai:gpt-4o at {url}" in last
    assert "Connection refused" in last
    assert "OPENAI_BASE_URL" in last
    assert "ExceptionGroup" not in done.stderr
    assert "sub-exception" not in done.stderr
    assert len(done.stderr.splitlines()) < 25


def test_an_unreachable_model_falls_back_at_once_without_retrying() -> None:
    clock = FakeClock()
    sink = InMemorySink()
    start = clock.monotonic()
    with FakeOpenAIServer() as server:
        profile = ResolvedProfile(
            purpose="reasoning",
            model=ModelRef(provider="openai", model="gpt-4o"),
            fallbacks=(ModelRef(provider="local", model="gpt-4o-mini"),),
            allow_cross_provider=True,
            base_url=f"http://127.0.0.1:{_closed_port()}/v1",
        )
        plane = ControlPlane(
            load_settings(telemetry="none"),
            resolver=StaticProfiles({"reasoning": profile}),
            guard=MemoryGuard(clock=clock),
            sink=sink,
            clock=clock,
            retry_policy=RetryPolicy(max_retries=3, base_s=5.0),
            circuit_policy=CircuitPolicy(consecutive_failures=50),
        )
        # The fallback is another provider, on the live server.
        plane.register_provider("local", _local_factory(server.base_url))
        with plane:
            reply = plane.chat_model("reasoning").invoke("hi")

    assert reply.content
    # One attempt at the closed port, no backoff slept on the fake clock, then the fallback.
    assert clock.monotonic() - start < 1.0
    models = [row[semconv.GEN_AI_REQUEST_MODEL] for row in sink.usage_rows()]
    assert models == ["gpt-4o", "gpt-4o-mini"]


def _local_factory(base_url: str) -> ChatModelFactory:
    """Provider `local`: an OpenAI-compatible server at `base_url`."""

    def build(spec: ModelSpec) -> BaseChatModel:
        return openai_chat_model(replace(spec, provider="openai", base_url=base_url))

    return build


def test_every_model_unreachable_is_one_provider_error() -> None:
    profile = ResolvedProfile(
        purpose="reasoning",
        model=ModelRef(provider="openai", model="gpt-4o"),
        fallbacks=(ModelRef(provider="openai", model="gpt-4o-mini"),),
        base_url=f"http://127.0.0.1:{_closed_port()}/v1",
    )
    plane = ControlPlane(
        load_settings(telemetry="none"),
        resolver=StaticProfiles({"reasoning": profile}),
        guard=MemoryGuard(clock=FakeClock()),
        sink=InMemorySink(),
        clock=FakeClock(),
        retry_policy=RetryPolicy(max_retries=3, base_s=5.0),
    )
    with plane, pytest.raises(ProviderError) as caught:
        plane.chat_model("reasoning").invoke("hi")

    error = caught.value
    assert isinstance(error, ProviderUnavailable)
    assert not isinstance(error, BaseExceptionGroup)
    assert len(error.attempts) == 2  # one per model: no retries against a closed port
    assert "openai:gpt-4o, openai:gpt-4o-mini" in str(error)
    assert "\n" not in str(error)
