"""Random and mutated payloads: every one gets a defined status and the collector keeps serving."""

from __future__ import annotations

import gzip

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

from .conftest import Running
from .helpers import fixture_spans, load_fixture, otlp_json

_VALID = encode_spans(fixture_spans(load_fixture("openllmetry"))).SerializeToString()
_VALID_JSON = otlp_json(encode_spans(fixture_spans(load_fixture("openinference"))))


def _mutate(data: bytes, flips: list[tuple[int, int]], cut: int | None) -> bytes:
    buf = bytearray(data)
    for pos, value in flips:
        buf[pos % len(buf)] = value
    return bytes(buf[: cut % (len(buf) + 1)] if cut is not None else buf)


payloads = st.one_of(
    st.binary(max_size=512).map(lambda b: ("application/x-protobuf", b)),
    st.binary(max_size=512).map(lambda b: ("application/json", b)),
    st.tuples(
        st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=8),
        st.none() | st.integers(0, 1 << 16),
    ).map(lambda m: ("application/x-protobuf", _mutate(_VALID, *m))),
    st.tuples(
        st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=4),
        st.none() | st.integers(0, 1 << 16),
    ).map(lambda m: ("application/json", _mutate(_VALID_JSON, *m))),
)


@pytest.mark.slow
@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    payload=payloads, gzipped=st.booleans(), signal=st.sampled_from(["traces", "logs", "metrics"])
)
def test_random_payloads_get_a_defined_answer(
    running: Running, payload: tuple[str, bytes], gzipped: bool, signal: str
) -> None:
    content_type, body = payload
    headers = {"Content-Type": content_type}
    if gzipped:
        body = gzip.compress(body)
        headers["Content-Encoding"] = "gzip"
    response = httpx.post(running.endpoint(signal), content=body, headers=headers, timeout=30)
    assert response.status_code in (200, 400), response.text
    assert httpx.get(f"{running.url}/health", timeout=30).json()["status"] == "ok"
