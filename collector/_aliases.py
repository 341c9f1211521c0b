"""The ONE versioned alias table: which attribute of which instrumentation fills which column.

GenAI semantic conventions are still moving, and the instrumentations people already run send
different (and older) names for the same thing. Every name we read lives here, with its
priority: when a span carries a token kind under two names (a current and a deprecated one),
the better-ranked name wins and the other is ignored, so no kind is ever counted twice.

Bump `ALIAS_TABLE_VERSION` whenever a mapping changes: spans keep their raw attributes (JSON),
so old data can be re-normalised with a newer table.

Dialects (who sent the span):

    comptroller   our own control plane (scope `comptroller.*`, `comptroller.*` attributes)
    openai_v2     opentelemetry-instrumentation-openai-v2 (and the other contrib GenAI ones)
    openllmetry   OpenLLMetry / Traceloop (`llm.request.type`, `llm.usage.*`, `traceloop.*`)
    openlit       OpenLIT (`gen_ai.system`, `gen_ai.usage.cost`, resource `telemetry.sdk.name=openlit`)
    logfire       Pydantic Logfire and pydantic-ai (`logfire.*`, scope `logfire*` / `pydantic-ai`)
    openinference Arize OpenInference (`openinference.span.kind`, `llm.token_count.*`)
    genai         any other span using the GenAI semantic conventions
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, Literal, TypeAlias

ALIAS_TABLE_VERSION: Final = "2026.11.1"

Dialect: TypeAlias = Literal[
    "comptroller", "openai_v2", "openllmetry", "openlit", "logfire", "openinference", "genai"
]

# --- canonical fields ------------------------------------------------------------------------
STR_FIELDS: Final = (
    "operation",
    "provider",
    "request_model",
    "response_model",
    "response_id",
    "error_type",
    "server_address",
    "purpose",
    "tenant",
    "org",
    "context",
    "profile_id",
    "outcome",
    "semconv_version",
)
INT_FIELDS: Final = (
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "profile_version",
    "attempt",
    "fallback_depth",
)
TOKEN_FIELDS: Final = (
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
)

# attribute name -> ((field, priority), ...); lower priority wins.
ALIASES: Final[dict[str, tuple[tuple[str, int], ...]]] = {
    # operation
    "gen_ai.operation.name": (("operation", 0),),
    "llm.request.type": (("operation", 1),),  # OpenLLMetry
    "openinference.span.kind": (("operation", 2),),  # OpenInference
    "traceloop.span.kind": (("operation", 3),),  # OpenLLMetry workflow/task/agent/tool
    # provider
    "gen_ai.provider.name": (("provider", 0),),
    "gen_ai.system": (
        ("provider", 1),
    ),  # deprecated; openai-v2 < 2.2, OpenLLMetry, OpenLIT, Logfire
    "llm.provider": (("provider", 2),),  # OpenInference
    "llm.system": (("provider", 3),),  # OpenInference
    # models
    "gen_ai.request.model": (("request_model", 0),),
    "llm.request.model_name": (("request_model", 1),),  # OpenInference (2025+)
    "llm.model_name": (("request_model", 2), ("response_model", 2)),  # OpenInference
    "embedding.model_name": (("request_model", 3), ("response_model", 3)),  # OpenInference
    "gen_ai.response.model": (("response_model", 0),),
    "llm.response.model_name": (("response_model", 1),),
    "gen_ai.response.id": (("response_id", 0),),
    # input tokens (inclusive of cached input)
    "gen_ai.usage.input_tokens": (("input_tokens", 0),),
    "gen_ai.usage.prompt_tokens": (("input_tokens", 1),),  # deprecated; OpenLLMetry
    "llm.usage.prompt_tokens": (("input_tokens", 2),),
    "llm.token_count.prompt": (("input_tokens", 3),),  # OpenInference
    # output tokens (inclusive of reasoning)
    "gen_ai.usage.output_tokens": (("output_tokens", 0),),
    "gen_ai.usage.completion_tokens": (("output_tokens", 1),),
    "llm.usage.completion_tokens": (("output_tokens", 2),),
    "llm.token_count.completion": (("output_tokens", 3),),
    # cache reads
    "gen_ai.usage.cache_read.input_tokens": (("cache_read_tokens", 0),),
    "gen_ai.usage.cache_read_input_tokens": (("cache_read_tokens", 1),),  # OpenLLMetry
    "llm.token_count.prompt_details.cache_read": (("cache_read_tokens", 2),),
    "gen_ai.usage.details.cache_read_tokens": (("cache_read_tokens", 3),),  # pydantic-ai
    "llm.usage.cache_read_input_tokens": (("cache_read_tokens", 4),),
    # cache writes (the conventions renamed cache_creation to cache_write in 2026)
    "gen_ai.usage.cache_write.input_tokens": (("cache_write_tokens", 0),),
    "gen_ai.usage.cache_creation.input_tokens": (("cache_write_tokens", 1),),
    "gen_ai.usage.cache_creation_input_tokens": (("cache_write_tokens", 2),),  # OpenLLMetry
    "llm.token_count.prompt_details.cache_write": (("cache_write_tokens", 3),),
    "gen_ai.usage.details.cache_write_tokens": (("cache_write_tokens", 4),),  # pydantic-ai
    "llm.usage.cache_creation_input_tokens": (("cache_write_tokens", 5),),
    # reasoning (a part of output)
    "gen_ai.usage.reasoning.output_tokens": (("reasoning_tokens", 0),),
    "gen_ai.usage.reasoning_tokens": (("reasoning_tokens", 1),),  # OpenLIT
    "llm.token_count.completion_details.reasoning": (("reasoning_tokens", 2),),
    "gen_ai.usage.details.reasoning_tokens": (("reasoning_tokens", 3),),  # pydantic-ai
    # the rest
    "error.type": (("error_type", 0),),
    "server.address": (("server_address", 0),),
    "gen_ai.openai.api_base": (("server_address", 1),),  # OpenLLMetry (a URL)
    # comptroller's own
    "comptroller.purpose": (("purpose", 0),),
    "comptroller.tenant": (("tenant", 0),),
    "comptroller.org": (("org", 0),),
    "comptroller.context": (("context", 0),),
    "comptroller.profile.id": (("profile_id", 0),),
    "comptroller.profile.version": (("profile_version", 0),),
    "comptroller.attempt": (("attempt", 0),),
    "comptroller.fallback.depth": (("fallback_depth", 0),),
    "comptroller.outcome": (("outcome", 0),),
    "comptroller.semconv.version": (("semconv_version", 0),),
}
"""Every attribute name the normaliser reads, mapped onto canonical fields."""

FINISH_REASON_KEYS: Final = (
    "gen_ai.response.finish_reasons",
    "llm.response.finish_reason",  # OpenLLMetry
    "llm.finish_reason",  # OpenInference
)
COST_KEYS: Final = ("comptroller.cost.usd", "gen_ai.usage.cost")
"""Attributes of a span's reported cost in USD, in order of preference: comptroller's own,
then the name GenAI instrumentations are converging on (the first that holds a value)."""

# --- operation values --------------------------------------------------------------------------
LEAF_OPERATIONS: Final = frozenset({"chat", "text_completion", "generate_content", "embeddings"})
"""Inference operations: the only spans whose tokens are usage. Agent, workflow, chain and tool
spans aggregate their children and are never counted."""

OPERATION_ALIASES: Final[dict[str, str]] = {
    # OpenLLMetry llm.request.type
    "completion": "text_completion",
    "embedding": "embeddings",
    # OpenInference span kinds
    "LLM": "chat",
    "EMBEDDING": "embeddings",
    "AGENT": "invoke_agent",
    "CHAIN": "chain",
    "TOOL": "execute_tool",
    "RETRIEVER": "retrieval",
    "RERANKER": "rerank",
    "GUARDRAIL": "guardrail",
    "EVALUATOR": "evaluator",
    # traceloop.span.kind and OpenLIT
    "agent": "invoke_agent",
    "tool": "execute_tool",
    "task": "task",
    "workflow": "workflow",
    "framework": "framework",
}

AGENT_MARKERS: Final = frozenset(
    {"gen_ai.agent.name", "agent_name", "gen_ai.agent.id", "logfire.agent_name"}
)
"""Attributes of agent runs: a span with usage but no operation is an agent, not a leaf."""

# --- providers -----------------------------------------------------------------------------------
PROVIDER_ALIASES: Final[dict[str, str]] = {
    # older or vendor-specific spellings -> the OpenTelemetry provider name
    "az.ai.openai": "azure.ai.openai",
    "azure": "azure.ai.openai",
    "az.ai.inference": "azure.ai.inference",
    "xai": "x_ai",
    "mistral": "mistral_ai",
    "mistralai": "mistral_ai",
    "vertex_ai": "gcp.vertex_ai",
    "vertexai": "gcp.vertex_ai",
    "gemini": "gcp.gemini",
    "google": "gcp.gen_ai",
    "google.ai.studio": "gcp.gemini",
    "aws": "aws.bedrock",
    "bedrock": "aws.bedrock",
    "ibm.watson.ai": "ibm.watsonx.ai",
    "watsonx": "ibm.watsonx.ai",
}

"""`ibm.watsonx.ai` has no genai-prices provider: its rows stay unpriced (cost NULL)."""

# --- token semantics ---------------------------------------------------------------------------
EXCLUSIVE_INPUT: Final[frozenset[tuple[str, str]]] = frozenset(
    {
        # OpenLIT's Anthropic instrumentation copies Anthropic's `usage.input_tokens`, which
        # excludes cache reads and writes (read as inclusive, a cached call cost 37.7 % less).
        ("openlit", "anthropic"),
        # Not ("logfire", "anthropic"): pydantic-ai (the Logfire dialect) reports the input
        # inclusive of cache reads and writes, as the GenAI conventions define it; converting
        # it priced its cached calls 37.7 % too high. OpenLLMetry, openai-v2 and
        # OpenInference report inclusive counts too.
    }
)
"""(dialect, provider) pairs whose input count excludes cached tokens; converted on landing.
Independently of this table, input smaller than cache_read + cache_write can only be an
exclusive count and is converted too (genai-prices rejects cache_read > input).

Keyed by dialect (which the scope name, or OpenLIT's resource, decides) because the native
decoder applies the same table in C; it does not read the scope version, so a rule that
depends on an instrumentation's version needs that added there first."""

# --- dialect detection ---------------------------------------------------------------------------
SCOPE_DIALECTS: Final[tuple[tuple[str, Dialect], ...]] = (
    ("comptroller", "comptroller"),
    ("opentelemetry.instrumentation.openai_v2", "openai_v2"),
    ("opentelemetry.instrumentation.google_genai", "openai_v2"),
    ("opentelemetry.instrumentation.vertexai", "openai_v2"),
    ("openinference.instrumentation", "openinference"),
    ("openlit", "openlit"),
    ("logfire", "logfire"),
    ("pydantic-ai", "logfire"),
    ("pydantic_ai", "logfire"),
    ("traceloop", "openllmetry"),
)
"""Instrumentation-scope name prefix -> dialect; the first match wins."""

ATTRIBUTE_DIALECT_MARKERS: Final[tuple[tuple[str, Dialect], ...]] = (
    ("comptroller.", "comptroller"),
    ("llm.token_count.", "openinference"),
    ("openinference.", "openinference"),
    ("llm.request.type", "openllmetry"),
    ("llm.usage.", "openllmetry"),
    ("traceloop.", "openllmetry"),
    ("gen_ai.usage.cost", "openlit"),
    ("gen_ai.application_name", "openlit"),
    ("logfire.", "logfire"),
)
"""Attribute-name prefix -> dialect, for spans whose scope name says nothing."""


def scope_dialect(scope_name: str) -> Dialect | None:
    """The dialect an instrumentation scope name belongs to, if it tells."""
    for prefix, dialect in SCOPE_DIALECTS:
        if scope_name.startswith(prefix):
            return dialect
    return None


_MARKER_PREFIXES: Final = tuple(prefix for prefix, _ in ATTRIBUTE_DIALECT_MARKERS)


def attribute_dialect(keys: Iterable[str]) -> Dialect:
    """The dialect told by a span's attribute names (`genai` when none tells).

    When names of several dialects appear, the marker listed first wins.
    """
    best = len(ATTRIBUTE_DIALECT_MARKERS)
    for name in keys:
        if name.startswith(_MARKER_PREFIXES):
            for rank, (prefix, _) in enumerate(ATTRIBUTE_DIALECT_MARKERS[:best]):
                if name.startswith(prefix):
                    best = rank
                    break
    if best == len(ATTRIBUTE_DIALECT_MARKERS):
        return "genai"
    return ATTRIBUTE_DIALECT_MARKERS[best][1]


def canonical_provider(name: str | None) -> str | None:
    """The OpenTelemetry provider name for any spelling an instrumentation uses."""
    if not name:
        return None
    lowered = name.strip().lower()
    return PROVIDER_ALIASES.get(lowered, lowered)


def canonical_operation(value: str | None) -> str | None:
    """The GenAI operation name for an operation value of any dialect."""
    if not value:
        return None
    return OPERATION_ALIASES.get(value, value)
