"""The spend in the FinOps Open Cost and Usage Specification (FOCUS 1.2) column set.

One FOCUS row per charge period (a local day of the rollup's time zone, or a UTC hour),
tenant, org, context, purpose, provider and model, with the ledger's priced and unpriced
calls in separate rows: an unpriced row has NULL costs and `x_Unpriced = true`, never 0.
Costs are the ledger's `cost_usd` summed, so `SUM(BilledCost)` over an export equals
`SELECT sum(cost_usd) FROM llm_usage` over the same window. The column mapping is in
docs/FOCUS.md.
"""

from __future__ import annotations

import datetime as dt
import io
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from zoneinfo import ZoneInfo

from comptroller.analytics._reader import truncated_at
from comptroller.errors import UsageError

if TYPE_CHECKING:
    import pyarrow as pa

    from comptroller.analytics._reader import Reader

FOCUS_VERSION = "1.2"
"""The FOCUS version whose columns the export writes."""

Granularity = Literal["day", "hour"]

# provider as the ledger names it (OpenTelemetry gen_ai.provider.name) -> (ProviderName,
# ServiceName). Others keep their own name for both.
_PROVIDERS: dict[str, tuple[str, str]] = {
    "openai": ("OpenAI", "OpenAI API"),
    "anthropic": ("Anthropic", "Anthropic API"),
    "gcp.gemini": ("Google", "Gemini API"),
    "google": ("Google", "Gemini API"),
    "gcp.vertex_ai": ("Google Cloud", "Vertex AI"),
    "gcp.gen_ai": ("Google", "Gemini API"),
    "aws.bedrock": ("AWS", "Amazon Bedrock"),
    "azure.ai.openai": ("Microsoft", "Azure OpenAI"),
    "azure.ai.inference": ("Microsoft", "Azure AI Inference"),
    "mistral_ai": ("Mistral AI", "Mistral API"),
    "deepseek": ("DeepSeek", "DeepSeek API"),
    "groq": ("Groq", "GroqCloud"),
    "x_ai": ("xAI", "xAI API"),
}


def _case(index: int) -> str:
    arms = " ".join(
        f"WHEN '{key}' THEN '{names[index]}'" for key, names in sorted(_PROVIDERS.items())
    )
    return f"CASE provider {arms} ELSE provider END"


_SQL = f"""
WITH calls AS (
    SELECT *,
           coalesce(response_model, request_model, '') AS model,
           cost_usd IS NULL AS unpriced,
           CASE WHEN $hourly THEN date_trunc('hour', timezone('UTC', ts))
                ELSE date_trunc('day', timezone($tz, ts)) END AS local_start
    FROM llm_usage
    WHERE ($since IS NULL OR ts >= $since::TIMESTAMPTZ)
      AND ($until IS NULL OR ts < $until::TIMESTAMPTZ)
),
charges AS (
    SELECT local_start, coalesce(tenant, '') AS tenant, coalesce(org, '') AS org,
           coalesce(context, '') AS context, coalesce(purpose, '') AS purpose,
           coalesce(provider, '') AS provider, model, unpriced,
           sum(cost_usd)::DECIMAL(38, 10) AS cost,
           count(*)::BIGINT AS calls,
           count(*) FILTER (WHERE outcome <> 'ok')::BIGINT AS errors,
           count(*) FILTER (WHERE estimated)::BIGINT AS estimated_calls,
           sum(input_tokens)::BIGINT AS input_tokens,
           sum(output_tokens)::BIGINT AS output_tokens,
           sum(cache_read_tokens)::BIGINT AS cache_read_tokens,
           sum(cache_write_tokens)::BIGINT AS cache_write_tokens,
           sum(reasoning_tokens)::BIGINT AS reasoning_tokens,
           string_agg(DISTINCT price_source, ',' ORDER BY price_source) AS price_sources
    FROM calls
    GROUP BY ALL
),
periods AS (
    SELECT *,
           CASE WHEN $hourly THEN 'UTC' ELSE $tz END AS zone,
           local_start + CASE WHEN $hourly THEN INTERVAL 1 HOUR ELSE INTERVAL 1 DAY END
               AS local_end
    FROM charges
)
SELECT
    cost AS BilledCost,
    cost AS EffectiveCost,
    cost AS ListCost,
    cost AS ContractedCost,
    'USD' AS BillingCurrency,
    timezone(zone, date_trunc('month', local_start)) AS BillingPeriodStart,
    timezone(zone, date_trunc('month', local_start) + INTERVAL 1 MONTH) AS BillingPeriodEnd,
    timezone(zone, local_start) AS ChargePeriodStart,
    timezone(zone, local_end) AS ChargePeriodEnd,
    'Usage' AS ChargeCategory,
    NULL::VARCHAR AS ChargeClass,
    'Usage-Based' AS ChargeFrequency,
    'LLM tokens of ' || provider || ':' || model || ' for purpose ' || purpose
        || (CASE WHEN unpriced THEN ' (unpriced: cost unknown)' ELSE '' END)
        AS ChargeDescription,
    'AI and Machine Learning' AS ServiceCategory,
    'Generative AI' AS ServiceSubcategory,
    {_case(1)} AS ServiceName,
    {_case(0)} AS ProviderName,
    {_case(0)} AS PublisherName,
    {_case(0)} AS InvoiceIssuerName,
    NULL::VARCHAR AS InvoiceId,
    nullif(org, '') AS BillingAccountId,
    nullif(org, '') AS BillingAccountName,
    nullif(tenant, '') AS SubAccountId,
    nullif(tenant, '') AS SubAccountName,
    provider || ':' || model AS SkuId,
    NULL::VARCHAR AS SkuPriceId,
    'Standard' AS PricingCategory,
    (input_tokens + output_tokens)::DECIMAL(38, 0) AS PricingQuantity,
    'Tokens' AS PricingUnit,
    NULL::DECIMAL(38, 10) AS ListUnitPrice,
    NULL::DECIMAL(38, 10) AS ContractedUnitPrice,
    (input_tokens + output_tokens)::DECIMAL(38, 0) AS ConsumedQuantity,
    'Tokens' AS ConsumedUnit,
    'comptroller/' || tenant || '/' || context || '/' || purpose AS ResourceId,
    purpose AS ResourceName,
    'LLM purpose' AS ResourceType,
    NULL::VARCHAR AS RegionId,
    NULL::VARCHAR AS RegionName,
    NULL::VARCHAR AS AvailabilityZone,
    NULL::VARCHAR AS CommitmentDiscountId,
    NULL::VARCHAR AS CommitmentDiscountType,
    NULL::VARCHAR AS CommitmentDiscountCategory,
    NULL::VARCHAR AS CommitmentDiscountStatus,
    json_object('tenant', tenant, 'org', org, 'context', context, 'purpose', purpose)::VARCHAR
        AS Tags,
    unpriced AS x_Unpriced,
    calls AS x_Calls,
    errors AS x_Errors,
    estimated_calls AS x_EstimatedCalls,
    input_tokens AS x_InputTokens,
    output_tokens AS x_OutputTokens,
    cache_read_tokens AS x_CacheReadTokens,
    cache_write_tokens AS x_CacheWriteTokens,
    reasoning_tokens AS x_ReasoningTokens,
    price_sources AS x_PriceSources,
    tenant AS x_Tenant,
    org AS x_Org,
    context AS x_Context,
    purpose AS x_Purpose,
    provider AS x_Provider,
    model AS x_Model
FROM periods
ORDER BY ChargePeriodStart, x_Tenant, x_Org, x_Context, x_Purpose, x_Provider, x_Model,
         x_Unpriced
"""

_TIMESTAMPS = ("BillingPeriodStart", "BillingPeriodEnd", "ChargePeriodStart", "ChargePeriodEnd")


def focus_table(
    reader: Reader,
    *,
    since: dt.date | None = None,
    until: dt.date | None = None,
    timezone: str = "UTC",
    granularity: Granularity = "day",
) -> pa.Table:
    """The ledger's spend as FOCUS rows (Arrow), one per period and charge key.

    Args:
        reader: Where the ledger is.
        since: First local day.
        until: Last local day, inclusive.
        timezone: The zone days are cut in (the rollup's); FOCUS instants are UTC.
        granularity: `day` (local days) or `hour` (UTC hours).

    Raises:
        UsageError: An unknown granularity, or the reader cut the result at its row cap.
    """
    import pyarrow as pa

    if granularity not in ("day", "hour"):
        raise UsageError(f"granularity must be day or hour, not {granularity!r}")
    zone = ZoneInfo(timezone)
    table = reader.query(
        _SQL,
        {
            "since": None if since is None else _midnight(since, zone),
            "until": None if until is None else _midnight(until + dt.timedelta(days=1), zone),
            "tz": timezone,
            "hourly": granularity == "hour",
        },
    )
    cap = truncated_at(table)
    if cap is not None:
        raise UsageError(
            f"the reader returned at most {cap} FOCUS rows: export a shorter range "
            "(--since/--until) or read the database file with --db"
        )
    # FOCUS instants are UTC: say so in the type, whatever the session's zone was.
    for name in _TIMESTAMPS:
        index = table.schema.get_field_index(name)
        table = table.set_column(index, name, table.column(name).cast(pa.timestamp("us", tz="UTC")))
    return table.replace_schema_metadata({b"focus_version": FOCUS_VERSION.encode()})


def write_focus(table: pa.Table, path: Path) -> None:
    """Write FOCUS rows to `path`: Parquet for `.parquet`, CSV (RFC 4180) for `.csv`.

    In CSV the instants are ISO 8601 UTC (`2026-11-21T00:00:00Z`), as FOCUS writes them.

    Raises:
        UsageError: Another file extension.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    from comptroller.analytics._output import write_result

    suffix = path.suffix.lower()
    if suffix == ".parquet":
        write_result(table, "parquet", text=io.StringIO(), output=path)
        return
    if suffix != ".csv":
        raise UsageError(
            f"{path}: the FOCUS export writes .parquet or .csv files, not {suffix or 'no extension'!r}"
        )
    for name in _TIMESTAMPS:
        index = table.schema.get_field_index(name)
        # Whole seconds first: strftime's %S writes the microseconds of a `us` timestamp.
        seconds = table.column(name).cast(pa.timestamp("s", tz="UTC"), safe=False)
        text = pc.strftime(seconds, format="%Y-%m-%dT%H:%M:%SZ")
        table = table.set_column(index, pa.field(name, pa.string()), text)
    write_result(table, "csv", text=io.StringIO(), output=path)


def _midnight(day: dt.date, zone: ZoneInfo) -> str:
    return dt.datetime.combine(day, dt.time(), tzinfo=zone).isoformat()
