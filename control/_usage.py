"""The provider-reported usage of a LangChain AI message, every token kind and the tier.

What the LangChain integrations put in `usage_metadata` (counts inclusive: input includes
cached and audio tokens, output reasoning and audio tokens):

- langchain-openai (`_create_usage_metadata`, and `_create_usage_metadata_responses` for the
  Responses API): `input_token_details` `audio`, `cache_read`, `cache_creation`;
  `output_token_details` `audio`, `reasoning`. On the `flex` and `priority` service tiers the
  cache and reasoning keys are prefixed with the tier (`flex_cache_read`,
  `priority_reasoning`, …) and a key named after the tier holds the tokens not cached (input)
  or not reasoning (output): those are shares, not extra tokens. The tier itself is in
  `response_metadata["service_tier"]` (a buffered call's `llm_output`, a stream's finishing
  chunk), as the response reports it.
- langchain-anthropic: `cache_read`, `cache_creation` and, when the API splits the writes by
  lifetime, `ephemeral_5m_input_tokens` / `ephemeral_1h_input_tokens` beside them (newer
  releases then set `cache_creation` to 0 so as not to count the writes twice).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from comptroller.control._pricing import Usage

_CACHE_READ = "cache_read"
_CACHE_WRITE = "cache_creation"
_REASONING = "reasoning"
_PLAIN_IN = frozenset((_CACHE_READ, _CACHE_WRITE, "audio"))
_PLAIN_OUT = frozenset((_REASONING, "audio"))


def usage_of(message: Any) -> Usage | None:
    """The provider-reported usage of an AI message (inclusive counts), or None.

    Args:
        message: An `AIMessage` (or the merged chunks of a stream).

    Returns:
        Every token kind the message reports (cache reads and writes, 1-hour and 5-minute
        writes, audio in and out, reasoning) and the service tier the call ran in; None when
        the message carries no usage.
    """
    meta = getattr(message, "usage_metadata", None)
    if not meta:
        return None
    in_details: Mapping[str, Any] = meta.get("input_token_details") or {}
    out_details: Mapping[str, Any] = meta.get("output_token_details") or {}
    response_meta: Mapping[str, Any] = getattr(message, "response_metadata", None) or {}
    tier = response_meta.get("service_tier")
    if (
        not tier
        and in_details.keys() <= _PLAIN_IN
        and out_details.keys() <= _PLAIN_OUT
        and not in_details.get("audio")
        and not out_details.get("audio")
    ):
        # The common answer (no tier, no audio, no split cache writes): one pass, no parsing
        # of detail names.
        return Usage(
            input_tokens=int(meta.get("input_tokens") or 0),
            output_tokens=int(meta.get("output_tokens") or 0),
            cache_read_tokens=int(in_details.get(_CACHE_READ) or 0),
            cache_write_tokens=int(in_details.get(_CACHE_WRITE) or 0),
            reasoning_tokens=int(out_details.get(_REASONING) or 0),
        )
    cache_read = cache_write = reasoning = 0
    for key, value in in_details.items():
        name, prefix = _split(key, (_CACHE_READ, _CACHE_WRITE))
        if name == _CACHE_READ:
            cache_read += _count(value)
        elif name == _CACHE_WRITE:
            cache_write += _count(value)
        else:
            continue
        tier = tier or prefix
    for key, value in out_details.items():
        name, prefix = _split(key, (_REASONING,))
        if name == _REASONING:
            reasoning += _count(value)
            tier = tier or prefix
    write_5m = _count(in_details.get("ephemeral_5m_input_tokens"))
    write_1h = _count(in_details.get("ephemeral_1h_input_tokens"))
    # Older langchain-anthropic keeps the total in `cache_creation` beside the split, newer
    # sets it to 0: the writes are whichever is larger, never the sum of both.
    cache_write = max(cache_write, write_5m + write_1h)
    input_tokens = _count(meta.get("input_tokens"))
    input_audio = _count(in_details.get("audio"))
    # OpenAI does not say how many cached tokens are audio; when cache reads, writes and
    # audio add up to more than the input, the excess can only be cached audio (the least
    # overlap the counts allow).
    cache_audio_read = max(
        0, min(cache_read, input_audio, cache_read + cache_write + input_audio - input_tokens)
    )
    return Usage(
        input_tokens=input_tokens,
        output_tokens=_count(meta.get("output_tokens")),
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
        reasoning_tokens=reasoning,
        input_audio_tokens=input_audio,
        cache_audio_read_tokens=cache_audio_read,
        output_audio_tokens=_count(out_details.get("audio")),
        cache_write_1h_tokens=write_1h,
        cache_write_5m_tokens=write_5m,
        service_tier=str(tier) if tier else None,
    )


def _split(key: str, names: tuple[str, ...]) -> tuple[str | None, str | None]:
    """(`cache_read`, None) for `cache_read`, (`cache_read`, `flex`) for `flex_cache_read`."""
    for name in names:
        if key == name:
            return name, None
        if key.endswith("_" + name):
            return name, key[: -len(name) - 1]
    return None, None


def _count(value: Any) -> int:
    # Details may be None or absent. A negative count is kept: the pricer refuses the usage
    # as inconsistent (unpriced, never 0) rather than guess.
    return int(value or 0)
