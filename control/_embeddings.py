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
from comptroller.control._errors import BudgetExceeded
from comptroller.errors import ComptrollerError, UsageError

if TYPE_CHECKING:
    from comptroller.control._call import Route
    from comptroller.control._call._route import Prepared

DEFAULT_BATCH_SIZE = 512
"""Texts per request: OpenAI takes up to 2,048 inputs, but a smaller request holds a smaller
reservation and, when it fails, is retried for less."""


class GuardedEmbeddings(Embeddings):
    """Embeddings for one (purpose, domain, org, context), guarded like a chat call.

    Made by `ControlPlane.embeddings(...)`. Each batch of up to `batch_size` texts is one
    request, so one guarded call: a refused batch (budget, rate limit) raises and the batches
    after it are not sent (the error's notes say which texts were already embedded). A
    profile that names a chat model for embeddings is refused before anything is sent.

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
        self._vetted: Prepared | None = None

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
        if texts:
            self._refuse_chat_models()
        size = self.batch_size
        return [texts[i : i + size] for i in range(0, len(texts), size)]

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """The vectors of `texts`, in order (no request for an empty list).

        Raises:
            BudgetExceeded, RateLimited, ExhaustedFallbacks, …: as a guarded chat call.
            UsageError: Not a list of str, or the profile's chain holds a chat model.
        """
        vectors: list[list[float]] = []
        batches = self._batches(texts)
        for batch in batches:
            try:
                vectors.extend(invoke(self._route, EMBED, batch, None))
            except ComptrollerError as exc:
                _note_progress(exc, len(vectors), sum(map(len, batches)))
                raise
        return vectors

    def embed_query(self, text: str) -> list[float]:
        """The vector of one text."""
        return self.embed_documents([text])[0]

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        """Async `embed_documents`."""
        vectors: list[list[float]] = []
        batches = self._batches(texts)
        for batch in batches:
            try:
                vectors.extend(await ainvoke(self._route, EMBED, batch, None))
            except ComptrollerError as exc:
                _note_progress(exc, len(vectors), sum(map(len, batches)))
                raise
        return vectors

    async def aembed_query(self, text: str) -> list[float]:
        """Async `embed_query`."""
        return (await self.aembed_documents([text]))[0]

    def _refuse_chat_models(self) -> None:
        """Refuse a chain holding a chat model before anything is sent.

        Some endpoints (OpenAI-compatible servers, proxies) answer `/embeddings` for any
        model name, and the vectors of a chat model are useless next to an index built by an
        embedding model: a profile that names one is a mistake to report, not to run. A chat
        model is told by its price: genai-prices charges it for output tokens, which an
        embedding request never produces. A model without a known price is let through.
        """
        route = self._route
        try:
            prep = route.prepared()
        except Exception:
            return  # the call's own resolution raises it again, where it is recorded
        if prep is self._vetted:
            return
        pricer = route.core.pricer
        at = route.core.clock.time()
        for ref in prep.chain:
            if pricer.makes_text(ref.provider, ref.model, at=at):
                scope = route.scope
                raise UsageError(
                    f"{ref.provider}:{ref.model} is a chat model (it is priced for output "
                    f"tokens), not an embedding model, yet the profile of purpose "
                    f"{prep.served_purpose!r} at (domain={scope.domain}, org={scope.org}) "
                    "names it for embeddings; give the purpose an embedding model, e.g. "
                    f"`comptroller profiles set {prep.served_purpose} --model "
                    "openai:text-embedding-3-small` (and drop chat models from its fallbacks)"
                )
        self._vetted = prep


def _note_progress(exc: ComptrollerError, done: int, total: int) -> None:
    """Say what a refused or failed batch means for the whole list: the guard's advice is
    a chat call's (`max_tokens`), and the batches already embedded are paid for."""
    if isinstance(exc, BudgetExceeded):
        exc.add_note(
            "an embedding request reserves the price of its input: fewer texts per request "
            "(a smaller batch_size) reserve less"
        )
    if done:
        exc.add_note(
            f"texts [0:{done}] of {total} were embedded (and charged) before this batch, "
            f"but no vectors are returned: embed texts[{done}:] once the cause is gone, or "
            "all of them again"
        )


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
