"""Test doubles for code that calls LLMs through comptroller — product, not test helpers.

- `FakeChatModel`: canned replies keyed by purpose and content class (a value, a sequence
  or a callable), and scripted failures (`Fail.rate_limited(retry_after_s=…)`,
  `Fail.server_error()`, `Fail.timeout()`, `Fail.refusal()`, `Fail.invalid_json()`,
  `Fail.truncated_stream()`) raised as the real provider SDK raises them.
- `FakeClock`: time that moves only when told; sleeping advances it at once.
- `InMemorySink`: a telemetry sink keeping spans, usage rows and events in memory.
- `FakeOpenAIServer`: a real OpenAI-compatible HTTP server on an ephemeral local port, with
  streaming usage, cached tokens, latency and injected 429/5xx/truncated streams.
- `FakeAnthropicServer`: the same for Anthropic's Messages API (streamed events with usage,
  cache reads and 5-minute / 1-hour cache writes, 429 with retry-after, 5xx, 529 overloaded).
- `FakeGeminiServer`: the same for the Gemini API (`generateContent` and
  `streamGenerateContent` with usage metadata: cached-content and thinking tokens; 429 with
  retry-after, 5xx, 529).

- `cassette(path, mode=…)`: record a test's provider traffic once (vcrpy, keys and account
  headers filtered), replay it in CI with no provider and no credential; a request the
  cassette does not hold fails with `CassetteMiss` (docs/TESTING.md)::

    with cassette("tests/cassettes/summarise.yaml"):
        model.invoke("Summarise the ticket")

Example:
    >>> from comptroller.control.testing import FakeChatModel, FakeClock, InMemorySink
    >>> fake = FakeChatModel(responses={"reasoning": "42"})
"""

from comptroller.control.testing._anthropic_server import (
    AnthropicBehaviour,
    AnthropicReply,
    FakeAnthropicServer,
)
from comptroller.control.testing._cassettes import Cassette, CassetteMiss, cassette
from comptroller.control.testing._clock import FakeClock
from comptroller.control.testing._fake_model import Fail, FakeChatModel, FakeUsage
from comptroller.control.testing._gemini_server import (
    FakeGeminiServer,
    GeminiBehaviour,
    GeminiReply,
)
from comptroller.control.testing._server import FakeOpenAIServer, ModelBehaviour, ServerReply
from comptroller.control.testing._sink import InMemorySink
from comptroller.control.testing._token_server import FakeTokenServer

__all__ = [
    "AnthropicBehaviour",
    "AnthropicReply",
    "Cassette",
    "CassetteMiss",
    "Fail",
    "FakeAnthropicServer",
    "FakeChatModel",
    "FakeClock",
    "FakeGeminiServer",
    "FakeOpenAIServer",
    "FakeTokenServer",
    "FakeUsage",
    "GeminiBehaviour",
    "GeminiReply",
    "InMemorySink",
    "ModelBehaviour",
    "ServerReply",
    "cassette",
]
