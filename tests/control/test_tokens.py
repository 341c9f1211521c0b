"""The input-token estimate is an upper bound for every script and every input shape.

No real vocabulary is available offline (tiktoken downloads its files), but tiktoken's BPE
engine is: the tokenizer below is that engine over the worst byte-level vocabulary (every
byte a token, a few merges), so it counts at least as many tokens as cl100k or o200k would.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.prompt_values import ChatPromptValue, StringPromptValue
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import BaseModel

from comptroller.control._tokens import (
    IMAGE_TOKENS,
    MESSAGE_FRAMING_TOKENS,
    REQUEST_FRAMING_TOKENS,
    TOOL_USE_TOKENS,
    estimate_tokens,
    estimate_tool_tokens,
    utf8_len,
)

# cl100k's pre-tokenizer pattern (the split before BPE merges).
_CL100K_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)


def _byte_level_encoding() -> Any:
    import tiktoken

    ranks = {bytes([b]): b for b in range(256)}
    for merged in (b"th", b"the", b"in", b"ing", b" t", b" the", "预".encode()[:2]):
        ranks.setdefault(merged, len(ranks))
    return tiktoken.Encoding(
        "byte-level-worst", pat_str=_CL100K_PATTERN, mergeable_ranks=ranks, special_tokens={}
    )


ENCODING = _byte_level_encoding()
OLD_GUESS = 4  # characters a token: what the estimate used to assume

LATIN = "Summarise the quarterly budget and list the overruns. "
CJK = "请总结支持团队本季度的预算，并列出所有超支的项目和原因。"
MIXED = "Budget 预算 — Überschreitung ✅ 👍🏽 予算の見直し; "


def bpe_tokens(text: str) -> int:
    """Tokens of `text` in the byte-level BPE tokenizer (a real BPE engine)."""
    return len(ENCODING.encode_ordinary(text))


# -- the bound -----------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(text=st.text())
def test_a_text_is_never_estimated_below_its_bytes_nor_its_bpe_tokens(text: str) -> None:
    estimate = estimate_tokens(text)
    body = estimate - REQUEST_FRAMING_TOKENS - MESSAGE_FRAMING_TOKENS

    assert body == len(text.encode())
    assert body >= bpe_tokens(text)


@settings(max_examples=200, deadline=None)
@given(text=st.text())
def test_utf8_len_is_the_utf8_byte_count(text: str) -> None:
    assert utf8_len(text) == len(text.encode())


@settings(max_examples=150, deadline=None)
@given(
    turns=st.lists(
        st.tuples(st.sampled_from(["system", "user", "assistant"]), st.text(max_size=300)),
        min_size=1,
        max_size=6,
    )
)
def test_a_conversation_is_never_estimated_below_what_a_byte_level_tokenizer_counts(
    turns: list[tuple[str, str]],
) -> None:
    kinds = {"system": SystemMessage, "user": HumanMessage, "assistant": AIMessage}
    messages = [kinds[role](content=text) for role, text in turns]
    # OpenAI's chat format: 3 tokens a message, 3 to prime the reply.
    provider_count = sum(len(text.encode()) + 3 for _, text in turns) + 3

    assert estimate_tokens(messages) >= provider_count
    assert estimate_tokens(turns) >= provider_count
    assert estimate_tokens([{"role": r, "content": t} for r, t in turns]) >= provider_count


@pytest.mark.parametrize("text", [LATIN, CJK, MIXED], ids=["latin", "cjk", "mixed"])
def test_every_script_is_bounded_by_the_bpe_count(text: str) -> None:
    prompt = text * 40

    assert estimate_tokens(prompt) >= bpe_tokens(prompt) + MESSAGE_FRAMING_TOKENS


def test_cjk_is_not_under_counted() -> None:
    prompt = (CJK * 80)[:2000]  # 2,000 characters: 1,739 cl100k / 1,304 o200k tokens (DESIGN)

    estimate = estimate_tokens(prompt)

    assert estimate >= 3 * 2000  # 3 UTF-8 bytes a character
    assert estimate >= bpe_tokens(prompt)
    assert estimate > 1_739  # the real cl100k count of such a text, measured with bpe-openai
    assert len(prompt) // OLD_GUESS + 8 < 1_739  # …which the old guess under-counted ~3×


# -- every input shape ----------------------------------------------------------------------


def _at_least(text: str) -> int:
    return utf8_len(text) + MESSAGE_FRAMING_TOKENS + REQUEST_FRAMING_TOKENS


@pytest.mark.parametrize(
    ("shape", "value"),
    [
        ("str", CJK),
        ("messages", [HumanMessage(CJK)]),
        ("tuples", [("user", CJK)]),
        ("dicts", [{"role": "user", "content": CJK}]),
        ("chat prompt value", ChatPromptValue(messages=[HumanMessage(CJK)])),
        ("string prompt value", StringPromptValue(text=CJK)),
        ("text blocks", [HumanMessage(content=[{"type": "text", "text": CJK}])]),
        ("bare string blocks", [HumanMessage(content=[CJK])]),
        ("dict with blocks", [{"role": "user", "content": [{"type": "text", "text": CJK}]}]),
        ("tuple with blocks", [("user", [{"type": "text", "text": CJK}])]),
    ],
)
def test_every_input_shape_counts_its_text_bytes(shape: str, value: Any) -> None:
    assert estimate_tokens(value) >= _at_least(CJK), shape


def test_an_image_part_counts_the_dearest_image_whatever_its_bytes() -> None:
    text_only = [HumanMessage(content=[{"type": "text", "text": CJK}])]
    with_image = [
        HumanMessage(
            content=[
                {"type": "text", "text": CJK},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0K"}},
            ]
        )
    ]
    two_images = [
        HumanMessage(
            content=[
                {"type": "image", "source_type": "url", "url": "https://x.invalid/a.png"},
                {"type": "image_url", "image_url": {"url": "https://x.invalid/b.png"}},
            ]
        )
    ]

    assert estimate_tokens(with_image) == estimate_tokens(text_only) + IMAGE_TOKENS
    assert estimate_tokens(two_images) >= 2 * IMAGE_TOKENS


def test_audio_and_file_parts_count_their_encoded_bytes() -> None:
    data = "UklGRiQAAABXQVZFZm10IBAAAAABAAEAQB8AAEAfAAABAAgAZGF0YQAAAAA=" * 50
    message = HumanMessage(
        content=[{"type": "input_audio", "input_audio": {"data": data, "format": "wav"}}]
    )

    assert estimate_tokens([message]) >= len(data)


def test_tool_calls_and_results_in_the_history_are_counted() -> None:
    args = {"city": "東京", "days": 3}
    history = [
        HumanMessage("weather?"),
        AIMessage(content="", tool_calls=[{"name": "forecast", "args": args, "id": "call_1"}]),
        ToolMessage(content=CJK, tool_call_id="call_1"),
    ]
    plain = [HumanMessage("weather?")]

    added = estimate_tokens(history) - estimate_tokens(plain)

    assert added >= utf8_len(json.dumps(args, ensure_ascii=False)) + utf8_len(CJK)


class Forecast(BaseModel):
    """Forecast the weather of a city for a number of days."""

    city: str
    days: int


def test_bound_tools_add_their_definitions_and_the_tool_use_prompt() -> None:
    definition = json.dumps(convert_to_openai_tool(Forecast), ensure_ascii=False)

    with_tools = estimate_tokens(CJK, tools=[Forecast])

    assert with_tools - estimate_tokens(CJK) == estimate_tool_tokens([Forecast])
    assert estimate_tool_tokens([Forecast]) >= utf8_len(definition) + TOOL_USE_TOKENS
    assert estimate_tool_tokens([convert_to_openai_tool(Forecast)]) == estimate_tool_tokens(
        [Forecast]
    )
    assert estimate_tool_tokens([]) == 0
