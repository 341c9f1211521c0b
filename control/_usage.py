"""The provider-reported usage of a LangChain AI message."""

from __future__ import annotations

from typing import Any

from comptroller.control._pricing import Usage


def usage_of(message: Any) -> Usage | None:
    """The provider-reported usage of an AI message (inclusive counts), or None."""
    meta = getattr(message, "usage_metadata", None)
    if not meta:
        return None
    in_details = meta.get("input_token_details") or {}
    out_details = meta.get("output_token_details") or {}
    return Usage(
        input_tokens=int(meta.get("input_tokens") or 0),
        output_tokens=int(meta.get("output_tokens") or 0),
        cache_read_tokens=int(in_details.get("cache_read") or 0),
        cache_write_tokens=int(in_details.get("cache_creation") or 0),
        reasoning_tokens=int(out_details.get("reasoning") or 0),
    )
