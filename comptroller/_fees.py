"""Non-token fees a response reports: web searches and file searches a provider ran itself.

Providers charge server-side tools per request on top of the tokens: OpenAI's Responses API
per `web_search_call` and `file_search_call` output item, Anthropic per web search
(`usage.server_tool_use.web_search_requests`). `reported_fees` reads them from the LangChain
message a chat model returns (duck-typed: nothing here imports LangChain), as counts named
by `comptroller.pricing.FEE_KINDS`, for `Pricer.price_fees`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

__all__ = ["reported_fees"]

# The server-side tool of an output item or content block → the fee it is charged as.
_OPENAI_ITEMS: Final = {"web_search_call": "web_searches", "file_search_call": "storage_searches"}
# LangChain's standard (`output_version="v1"`) blocks and Anthropic's own blocks name the tool.
_TOOL_NAMES: Final = {"web_search": "web_searches", "file_search": "storage_searches"}
_SERVER_TOOL_BLOCKS: Final = ("server_tool_call", "server_tool_use")


def reported_fees(message: Any) -> dict[str, int]:
    """The fees a chat model's answer reports, e.g. `{"web_searches": 2}`; {} for none.

    Args:
        message: A LangChain `AIMessage` (or chunk): its `response_metadata` usage, content
            blocks and `additional_kwargs["tool_outputs"]` are read.

    Returns:
        Count per fee kind (`comptroller.pricing.FEE_KINDS`), only the kinds seen.
    """
    metadata: Mapping[str, Any] = getattr(message, "response_metadata", None) or {}
    if not isinstance(getattr(message, "content", None), list) and "usage" not in metadata:
        extra = getattr(message, "additional_kwargs", None)
        if not extra or "tool_outputs" not in extra:
            return {}  # a plain text answer (most calls): nothing to look through
    fees: dict[str, int] = {}
    blocks = _blocks(message)
    for block in blocks:
        kind = _OPENAI_ITEMS.get(str(block.get("type")))
        if kind is None and block.get("type") in _SERVER_TOOL_BLOCKS:
            kind = _TOOL_NAMES.get(str(block.get("name")))
        # A call the provider reports failed is still charged (OpenAI bills the call).
        if kind is not None:
            fees[kind] = fees.get(kind, 0) + 1
    # Anthropic's usage counts the searches it bills: it wins over the blocks, which a
    # stream may deliver only in part.
    usage = metadata.get("usage")
    if isinstance(usage, Mapping):
        server = usage.get("server_tool_use")
        if isinstance(server, Mapping) and isinstance(server.get("web_search_requests"), int):
            searches = int(server["web_search_requests"])
            if searches:
                fees["web_searches"] = searches
            else:
                fees.pop("web_searches", None)
    return fees


def _blocks(message: Any) -> list[Mapping[str, Any]]:
    content = getattr(message, "content", None)
    found: list[Mapping[str, Any]] = []
    seen: set[str] = set()

    def add(items: Iterable[Any]) -> None:
        for item in items:
            if not isinstance(item, Mapping):
                continue
            # An item may appear both in the content and in `tool_outputs`: counted once.
            ident = item.get("id")
            if isinstance(ident, str):
                if ident in seen:
                    continue
                seen.add(ident)
            found.append(item)

    if isinstance(content, list):
        add(content)
    extra = getattr(message, "additional_kwargs", None) or {}
    outputs = extra.get("tool_outputs") if isinstance(extra, Mapping) else None
    if isinstance(outputs, list):
        add(outputs)
    return found
