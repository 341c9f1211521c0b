"""The fuzzers' seeds and every input they found a bug with, replayed through both paths.

`fuzz/run.sh` fuzzes the C decoder under ASan and UBSan (CI runs it for a minute); an input it
crashed on goes to `fuzz/regressions/<entry>/<name>.pb` with the fix. Here each of those inputs, and
each seed, must be declined natively or decoded exactly as the reference decodes it, and
neither path may fail other than with a `DecodeError`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from comptroller.collector._decode import DecodeError, decode
from comptroller.collector._native import NativeDecoder, available
from comptroller.collector._normalise import Batch, Limits, Normaliser

from .test_native import assert_same, same_column

FUZZ = Path(__file__).resolve().parents[2] / "fuzz"
INPUTS = sorted(
    (entry, path)
    for entry in ("spans", "usage")
    for folder in ("corpus", "regressions")
    for path in (FUZZ / folder / entry).glob("*.pb")
)

pytestmark = pytest.mark.skipif(not available(), reason="the native decoder is not built")


@pytest.fixture(scope="module", params=["default", "small"])
def pair(request: pytest.FixtureRequest) -> tuple[Normaliser, NativeDecoder]:
    # "small": the limits the fuzz harness uses (fuzz/fuzz_otlp.c), so that their checks run
    limits = Limits(
        max_attribute_bytes=64,
        max_span_attributes=16,
        max_record_attributes=16,
        max_record_attribute_bytes=64,
        max_resource_fanout_bytes=4096,
    )
    normaliser = Normaliser(limits=limits if request.param == "small" else None)
    return normaliser, NativeDecoder(normaliser)


def test_the_corpus_is_there() -> None:
    assert {entry for entry, _ in INPUTS} == {"spans", "usage"}


@pytest.mark.parametrize(("entry", "path"), INPUTS, ids=[f"{e}/{p.name}" for e, p in INPUTS])
def test_each_input_is_declined_or_agrees(
    pair: tuple[Normaliser, NativeDecoder], entry: str, path: Path
) -> None:
    normaliser, native = pair
    body = path.read_bytes()
    signal = "traces" if entry == "spans" else "logs"
    got = native.normalise(signal, body)
    try:
        message = decode(signal, "protobuf", body)
    except DecodeError:
        assert isinstance(got, str), "the native path accepted what upb refuses"
        return
    if isinstance(got, str):
        return  # declined: the reference answers
    assert isinstance(got, Batch)
    if signal == "traces":
        assert_same(got, normaliser.traces(message, size=len(body)))  # type: ignore[arg-type]
        return
    ref = normaliser.logs(message)  # type: ignore[arg-type]
    assert set(got.tables) == set(ref.tables)
    for name, table in ref.tables.items():
        for column in table.column_names:
            assert same_column(got.tables[name].column(column), table.column(column)), column
    assert (got.accepted, got.rejected, got.usage_refs) == (
        ref.accepted,
        ref.rejected,
        ref.usage_refs,
    )
