"""Embedding models as the guarded call flow runs them: one request in, vectors and usage out.

LangChain's `Embeddings` interface returns vectors only; the usage a provider reports is
dropped. The flow needs it to price and settle an attempt, so each provider's embeddings are
built as an `Embedder`: `invoke(texts)` sends ONE request (the guarded call's attempt) and
returns an `EmbeddingResult` holding the vectors, the provider-reported usage in the shape of
a LangChain message's `usage_metadata` (so `usage_of` reads it like a chat answer) and the
model that answered.

- `openai` (and any OpenAI-compatible `base_url`) uses `langchain_openai.OpenAIEmbeddings`'s
  configured client (SDK retries off), with no client-side tokenising (the API counts), and
  reads `usage.prompt_tokens` from the response.
- Any other LangChain `Embeddings` is wrapped as `LangChainEmbedder`: it reports no usage, so
  the input is counted with the byte bound of `_tokens` (never fewer than the provider counts)
  and the row is flagged estimated.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

from comptroller.control._tokens import utf8_len

if TYPE_CHECKING:
    from langchain_core.embeddings import Embeddings

    from comptroller.control._providers import ModelSpec


class EmbeddingResult:
    """What one embedding request returned: vectors, usage and the model that answered.

    Shaped like a LangChain AI message where the call flow reads one (`usage_metadata`,
    `response_metadata`, `type`, `content`), so pricing, settling and records are the chat
    path's, not a copy of them.
    """

    __slots__ = ("response_metadata", "usage_estimated", "usage_metadata", "vectors")

    type = "embeddings"

    def __init__(
        self,
        vectors: list[list[float]],
        *,
        input_tokens: int,
        model: str | None = None,
        estimated: bool = False,
    ) -> None:
        self.vectors = vectors
        self.usage_metadata = {
            "input_tokens": input_tokens,
            "output_tokens": 0,
            "total_tokens": input_tokens,
        }
        self.response_metadata: dict[str, Any] = {"model_name": model} if model else {}
        self.usage_estimated = estimated
        """The provider reported no usage: `input_tokens` is comptroller's upper bound."""

    @property
    def content(self) -> str:
        """What content recording shows of the answer (never the vectors themselves)."""
        width = len(self.vectors[0]) if self.vectors else 0
        return f"{len(self.vectors)} vectors of {width} dimensions"


class Embedder:
    """One provider's embeddings, one request per `invoke` (the flow's attempt)."""

    def embed(self, texts: list[str]) -> EmbeddingResult:
        raise NotImplementedError

    async def aembed(self, texts: list[str]) -> EmbeddingResult:
        return self.embed(texts)

    # The call flow's steps invoke what the route built, as they invoke a chat model.
    def invoke(self, input: list[str], config: Any = None, **kwargs: Any) -> EmbeddingResult:
        return self.embed(input)

    async def ainvoke(self, input: list[str], config: Any = None, **kwargs: Any) -> EmbeddingResult:
        return await self.aembed(input)


EmbeddingsFactory: TypeAlias = "Callable[[ModelSpec], Embedder | Embeddings]"
"""Builds the embeddings of one model: an `Embedder`, or any LangChain `Embeddings`."""


def upper_bound_tokens(texts: Sequence[str]) -> int:
    """Input tokens an embedding request of `texts` is counted at most (one byte or more a
    token for byte-level tokenizers; embeddings add no message framing)."""
    return sum(utf8_len(text) for text in texts)


class LangChainEmbedder(Embedder):
    """Any LangChain `Embeddings` as an `Embedder`; its usage is estimated (see module)."""

    def __init__(self, embeddings: Embeddings, model: str | None = None) -> None:
        self.embeddings = embeddings
        self.model = model

    def embed(self, texts: list[str]) -> EmbeddingResult:
        vectors = self.embeddings.embed_documents(texts)
        return EmbeddingResult(
            vectors, input_tokens=upper_bound_tokens(texts), model=self.model, estimated=True
        )

    async def aembed(self, texts: list[str]) -> EmbeddingResult:
        vectors = await self.embeddings.aembed_documents(texts)
        return EmbeddingResult(
            vectors, input_tokens=upper_bound_tokens(texts), model=self.model, estimated=True
        )


class OpenAIEmbedder(Embedder):
    """OpenAI's embeddings endpoint through `OpenAIEmbeddings`' client, usage as reported."""

    def __init__(self, embeddings: Any) -> None:
        self.embeddings = embeddings
        self._params: dict[str, Any] = dict(embeddings._invocation_params)

    def embed(self, texts: list[str]) -> EmbeddingResult:
        return _openai_result(texts, self.embeddings.client.create(input=texts, **self._params))

    async def aembed(self, texts: list[str]) -> EmbeddingResult:
        response = await self.embeddings.async_client.create(input=texts, **self._params)
        return _openai_result(texts, response)


def _openai_result(texts: list[str], response: Any) -> EmbeddingResult:
    data = sorted(response.data, key=lambda item: item.index)
    usage = getattr(response, "usage", None)
    tokens = getattr(usage, "prompt_tokens", None)
    return EmbeddingResult(
        [list(item.embedding) for item in data],
        # No usage in the answer (some OpenAI-compatible servers): counted at the bound, and
        # the row says so (priced at nothing would be wrong).
        input_tokens=int(tokens) if tokens is not None else upper_bound_tokens(texts),
        model=getattr(response, "model", None),
        estimated=tokens is None,
    )


def openai_embedder(spec: ModelSpec) -> Embedder:
    """`OpenAIEmbeddings` for OpenAI or an OpenAI-compatible endpoint, SDK retries off.

    Raises:
        UsageError: No credential for the public OpenAI endpoint.
    """
    from langchain_openai import OpenAIEmbeddings
    from pydantic import SecretStr

    from comptroller.control._providers import openai_api_key

    api_key = openai_api_key(spec)
    if api_key is None:
        # `openai_api_key` leaves the public endpoint's key to the SDK: `ChatOpenAI` passes
        # None on, but `OpenAIEmbeddings` given None builds no sync client at all.
        api_key = os.environ.get("OPENAI_API_KEY")
    embeddings = OpenAIEmbeddings(
        model=spec.model,
        openai_api_base=spec.base_url,
        openai_api_key=SecretStr(api_key) if api_key is not None else None,
        max_retries=0,
        # The API counts the tokens; tiktoken here would fetch its tables from the network.
        check_embedding_ctx_length=False,
        request_timeout=spec.timeout_s,
    )
    return OpenAIEmbedder(embeddings)


def as_embedder(built: Embedder | Embeddings, model: str) -> Embedder:
    """What a factory built, as the flow invokes it."""
    if isinstance(built, Embedder):
        return built
    return LangChainEmbedder(built, model)
