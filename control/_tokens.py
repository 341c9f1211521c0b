"""Input-token estimates made before a call, for the budget reservation."""

from __future__ import annotations

from typing import Any


def estimate_tokens(value: Any) -> int:
    """A cheap upper-leaning estimate of input tokens (4 characters a token, plus framing)."""
    if isinstance(value, str):
        return len(value) // 4 + 8
    if isinstance(value, list | tuple):
        return sum(estimate_tokens(item) for item in value) + 4
    content = getattr(value, "content", None)
    if content is not None:
        return estimate_tokens(content) + 4
    if isinstance(value, dict):
        return sum(estimate_tokens(item) for item in value.values())
    to_messages = getattr(value, "to_messages", None)
    if to_messages is not None:
        return estimate_tokens(to_messages())
    return len(str(value)) // 4 + 8
