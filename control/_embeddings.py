"""`GuardedEmbeddings`: a LangChain `Embeddings` whose every request is a guarded call.

The requests run the one call flow (`_call/`) on an embeddings route: the profile of the
purpose picks the model and its fallbacks, the guard admits the request (request and token
buckets, a budget reservation sized from the input), the provider's failures are retried and
fall back, the answer is priced from the provider-reported usage, and each attempt leaves a
GenAI span (`gen_ai.operation.name = embeddings`) and a usage row.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from langchain_core.embeddings import Embeddings

from comptroller.control._call import EMBED, ainvoke, invoke
from comptroller.errors import UsageError

if TYPE_CHECKING:
    from comptroller.control._call import Route

DEFAULT_BATCH_SIZE = 512
"""Texts per request: OpenAI takes up to 2,048 inputs, but a smaller request holds a smaller
reservation and, when it fails, is retried for less."""


class GuardedEmbeddings(Embeddings):
    """Embeddings for one (purpose, domain, org, context), guarded like a chat call.

    Made by `ControlPlane.embeddings(...)`. Each batch of up to `batch_size` texts is one
    request, so one guarded call: a refused batch (budget, rate limit) raises and the batches
    after it are not sent.

    Example:
        >>> emb = plane.embeddings("embedding", org="acme", domain="acme-eu")  # doctest: +SKIP
        >>> vectors = emb.embed_documents(["refund policy", "shipping times"])  # doctest: +SKIP
    """

    def __init__(
        self,
        route: Route,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        if batch_size < 1:
            raise UsageError(f"batch_size must be ≥ 1, got {batch_size}")
        self._route = route
        self.batch_size = batch_size

    @property
    def purpose(self) -> str:
        return self._route.scope.purpose

    @property
    def domain(self) -> str | None:
        return self._route.scope.domain

    @property
    def org(self) -> str | None:
        return self._route.scope.org

    @property
    def context(self) -> str | None:
        return self._route.scope.context

    def __repr__(self) -> str:
        scope = self._route.scope
        return (
            f"GuardedEmbeddings(purpose={scope.purpose!r}, domain={scope.domain!r}, "
            f"org={scope.org!r}, context={scope.context!r})"
        )

    def _batches(self, texts: list[str]) -> list[list[str]]:
        texts = _checked(texts)
        size = self.batch_size
        return [texts[i : i + size] for i in range(0, len(texts), size)]

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """The vectors of `texts`, in order (no request for an empty list).

        Raises:
            BudgetExceeded, RateLimited, ExhaustedFallbacks, …: as a guarded chat call.
        """
        vectors: list[list[float]] = []
        for batch in self._batches(texts):
            vectors.extend(invoke(self._route, EMBED, batch, None))
        return vectors

    def embed_query(self, text: str) -> list[float]:
        """The vector of one text."""
        return self.embed_documents([text])[0]

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        """Async `embed_documents`."""
        vectors: list[list[float]] = []
        for batch in self._batches(texts):
            vectors.extend(await ainvoke(self._route, EMBED, batch, None))
        return vectors

    async def aembed_query(self, text: str) -> list[float]:
        """Async `embed_query`."""
        return (await self.aembed_documents([text]))[0]


def _checked(texts: object) -> list[str]:
    if isinstance(texts, str):
        raise UsageError("embed_documents takes a list of texts; use embed_query for one text")
    if not isinstance(texts, list | tuple):
        raise UsageError(f"texts to embed must be a list of str, got {type(texts).__name__}")
    out: list[str] = list(texts)
    for index, text in enumerate(out):
        if not isinstance(text, str):
            raise UsageError(
                f"text {index} to embed is a {type(text).__name__}, not a str; pass strings"
            )
    return out
