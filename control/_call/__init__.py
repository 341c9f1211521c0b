"""The guarded call: one decision sequence (`_flow`), performed by thin drivers (`_drivers`).

Modules: `_flow` the decisions, `_steps` what the flow asks for, `_drivers` the ways of calling,
`_route` the compiled profile and model cache, `_policy` retry and degradation, `_binders`
tools and structured output, `_attempt` an attempt and a stream's chunks, `_record` the spans
and usage rows, `_context` the attempt visible to code running inside it.
"""

from comptroller.control._call._binders import (
    EMBED,
    IDENTITY,
    Binder,
    EmbedBinder,
    StructuredBinder,
    ToolsBinder,
)
from comptroller.control._call._context import CallInfo, current_call
from comptroller.control._call._drivers import ainvoke, astream, invoke, stream
from comptroller.control._call._flow import CallFlow
from comptroller.control._call._policy import DegradationTracker, RetryBudget, RetryPolicy
from comptroller.control._call._route import CallCore, CallScope, CredentialResolver, Route

__all__ = [
    "EMBED",
    "IDENTITY",
    "Binder",
    "CallCore",
    "CallFlow",
    "CallInfo",
    "CallScope",
    "CredentialResolver",
    "DegradationTracker",
    "EmbedBinder",
    "RetryBudget",
    "RetryPolicy",
    "Route",
    "StructuredBinder",
    "ToolsBinder",
    "ainvoke",
    "astream",
    "current_call",
    "invoke",
    "stream",
]
