"""`usage_of` reads every token kind and the service tier the LangChain integrations report.

The messages are shaped exactly as langchain-openai (`_create_usage_metadata`, Chat
Completions and Responses) and langchain-anthropic (`_create_usage_metadata`, older and newer
releases) build them.
"""

from __future__ import annotations

from typing import Any

from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_openai.chat_models.base import (
    _create_usage_metadata,
    _create_usage_metadata_responses,
)

from comptroller.control._usage import usage_of
from comptroller.pricing import Usage


def message(usage: Any, **response_metadata: Any) -> AIMessage:
    return AIMessage(content="ok", usage_metadata=usage, response_metadata=response_metadata)


OPENAI_USAGE = {
    "prompt_tokens": 1_000,
    "completion_tokens": 300,
    "total_tokens": 1_300,
    "prompt_tokens_details": {"cached_tokens": 600, "audio_tokens": 200},
    "completion_tokens_details": {"reasoning_tokens": 100, "audio_tokens": 50},
}


def test_openai_default_tier_reads_cache_reasoning_and_audio() -> None:
    usage = usage_of(message(_create_usage_metadata(OPENAI_USAGE)))

    assert usage == Usage(
        input_tokens=1_000,
        output_tokens=300,
        cache_read_tokens=600,
        reasoning_tokens=100,
        input_audio_tokens=200,
        output_audio_tokens=50,
    )


def test_openai_flex_and_priority_keys_are_the_same_tokens_in_that_tier() -> None:
    for tier in ("flex", "priority"):
        meta = _create_usage_metadata(OPENAI_USAGE, tier)
        assert f"{tier}_cache_read" in meta["input_token_details"]  # the renamed keys

        from_keys = usage_of(message(meta))
        from_metadata = usage_of(message(meta, service_tier=tier))

        expected = Usage(
            input_tokens=1_000,
            output_tokens=300,
            cache_read_tokens=600,
            reasoning_tokens=100,
            input_audio_tokens=200,
            output_audio_tokens=50,
            service_tier=tier,
        )
        assert from_keys == from_metadata == expected


def test_the_reported_tier_is_kept_even_without_renamed_keys() -> None:
    usage = usage_of(
        message(_create_usage_metadata(OPENAI_USAGE, "default"), service_tier="default")
    )

    assert usage is not None
    assert usage.service_tier == "default"


def test_openai_responses_api_with_cache_writes_and_a_tier() -> None:
    meta = _create_usage_metadata_responses(
        {
            "input_tokens": 2_000,
            "output_tokens": 500,
            "total_tokens": 2_500,
            "input_tokens_details": {"cached_tokens": 1_000, "cache_write_tokens": 400},
            "output_tokens_details": {"reasoning_tokens": 300},
        },
        "priority",
    )

    assert usage_of(message(meta)) == Usage(
        input_tokens=2_000,
        output_tokens=500,
        cache_read_tokens=1_000,
        cache_write_tokens=400,
        reasoning_tokens=300,
        service_tier="priority",
    )


def test_a_stream_merged_into_one_chunk_keeps_the_tier_of_its_finishing_chunk() -> None:
    first = AIMessageChunk(content="o")
    last = AIMessageChunk(
        content="k",
        usage_metadata=_create_usage_metadata(OPENAI_USAGE, "flex"),
        response_metadata={"service_tier": "flex", "finish_reason": "stop"},
    )

    usage = usage_of(first + last)

    assert usage is not None
    assert usage.service_tier == "flex"
    assert usage.cache_read_tokens == 600


def anthropic_meta(details: dict[str, int]) -> dict[str, Any]:
    return {
        "input_tokens": 10 + 2_000 + 5_000,
        "output_tokens": 80,
        "total_tokens": 7_090,
        "input_token_details": details,
    }


def test_anthropic_one_hour_and_five_minute_writes_newer_release() -> None:
    # Newer langchain-anthropic: the split, and `cache_creation` 0 so as not to count twice.
    meta = anthropic_meta(
        {
            "cache_read": 2_000,
            "cache_creation": 0,
            "ephemeral_5m_input_tokens": 1_000,
            "ephemeral_1h_input_tokens": 4_000,
        }
    )

    assert usage_of(message(meta)) == Usage(
        input_tokens=7_010,
        output_tokens=80,
        cache_read_tokens=2_000,
        cache_write_tokens=5_000,
        cache_write_1h_tokens=4_000,
        cache_write_5m_tokens=1_000,
    )


def test_anthropic_one_hour_writes_older_release_are_not_counted_twice() -> None:
    # Older langchain-anthropic: the total in `cache_creation` beside the split.
    meta = anthropic_meta(
        {
            "cache_read": 2_000,
            "cache_creation": 5_000,
            "ephemeral_5m_input_tokens": 1_000,
            "ephemeral_1h_input_tokens": 4_000,
        }
    )

    usage = usage_of(message(meta))

    assert usage is not None
    assert usage.cache_write_tokens == 5_000
    assert usage.cache_write_1h_tokens == 4_000
    assert usage.consistent


def test_cached_audio_is_the_overlap_the_counts_require() -> None:
    # 100 input tokens, all audio, 80 of them cached: the cached ones can only be audio.
    meta = {
        "input_tokens": 100,
        "output_tokens": 1,
        "total_tokens": 101,
        "input_token_details": {"audio": 100, "cache_read": 80},
    }

    usage = usage_of(message(meta))

    assert usage is not None
    assert usage.cache_audio_read_tokens == 80
    assert usage.consistent


def test_no_usage_is_none() -> None:
    assert usage_of(AIMessage(content="ok")) is None
    assert usage_of(object()) is None
