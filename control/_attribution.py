"""Who and what a call is for beyond (tenant, context, purpose): end user, session, feature
and tags.

A call's attribution comes from two places, the more specific winning field by field:

1. `attribution(...)`, a context manager around the code that makes the calls (a request
   handler, a job): everything guarded inside it carries what it names. Nested blocks add to
   the outer one (a tag of the inner block replaces the same tag of the outer).
2. The LangChain config of the call: `config["metadata"]` keys `user_id` (or `user`),
   `session_id` (or `thread_id`, `conversation_id`), `feature`, and `tags`, a mapping of
   tag names to values (or a list of `"name=value"` strings).

It is recorded on the call's spans (`user.id`, `session.id`, `comptroller.feature`,
`comptroller.tags` as a JSON object) and usage rows (columns `user_id`, `session_id`,
`feature`, `tags`), and budgets by attribution (`[[control.attribution_budgets]]`) count it.

Cardinality is bounded where it is cheap to bound: at most `MAX_TAGS` tags a call, tag names
of `[a-z][a-z0-9_.-]*` up to 32 characters, every value at most `MAX_VALUE` characters.
Values themselves are not bounded (an end user id is as many as there are users): they are
columns of the usage rows, not dimensions of the daily rollups, and a budget by attribution
keeps one guard key per value seen that day.
"""

from __future__ import annotations

import contextvars
import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import orjson

from comptroller import semconv
from comptroller.errors import ComptrollerError

if TYPE_CHECKING:
    from comptroller.config import AttributionBudget
    from comptroller.control._guard import GuardKey
    from comptroller.control._profile_types import BudgetSpec

__all__ = [
    "MAX_TAGS",
    "MAX_VALUE",
    "Attribution",
    "AttributionBudgetRules",
    "InvalidAttribution",
    "attribution",
    "current_attribution",
]

MAX_TAGS: Final = 8
"""Tags one call may carry."""
MAX_VALUE: Final = 128
"""Longest user, session, feature or tag value (characters)."""
_TAG_NAME: Final = re.compile(r"[a-z][a-z0-9_.\-]{0,31}")
_USER_KEYS: Final = ("user_id", "user")
_SESSION_KEYS: Final = ("session_id", "thread_id", "conversation_id")


class InvalidAttribution(ComptrollerError, ValueError):
    """An attribution value is not allowed (too long, a bad tag name, too many tags)."""


@dataclass(frozen=True, slots=True)
class Attribution:
    """What a call is for beyond (tenant, context, purpose).

    Example:
        >>> Attribution(user="u-42", tags=(("team", "search"),)).value("tag.team")
        'search'
    """

    user: str | None = None
    session: str | None = None
    feature: str | None = None
    tags: tuple[tuple[str, str], ...] = ()
    """(name, value) pairs sorted by name, names unique."""

    def value(self, dimension: str) -> str | None:
        """The value of `user`, `session`, `feature` or `tag.<name>`, if the call has one."""
        if dimension == "user":
            return self.user
        if dimension == "session":
            return self.session
        if dimension == "feature":
            return self.feature
        if dimension.startswith("tag."):
            name = dimension[4:]
            for tag, value in self.tags:
                if tag == name:
                    return value
        return None

    def tags_json(self) -> str | None:
        """The tags as a JSON object (sorted keys), or None without tags."""
        if not self.tags:
            return None
        return orjson.dumps(dict(self.tags), option=orjson.OPT_SORT_KEYS).decode()

    def merged(self, over: Attribution) -> Attribution:
        """This attribution with what `over` names laid on top (its tags replace same-named)."""
        tags = dict(self.tags)
        tags.update(over.tags)
        return _make(
            over.user if over.user is not None else self.user,
            over.session if over.session is not None else self.session,
            over.feature if over.feature is not None else self.feature,
            tags,
        )


def _text(field: str, value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InvalidAttribution(
            f"attribution {field} must be a string (or an integer id), got {type(value).__name__}"
        )
    text = str(value)
    if not text:
        return None
    if len(text) > MAX_VALUE:
        raise InvalidAttribution(
            f"attribution {field} is {len(text)} characters long; the limit is {MAX_VALUE} "
            "(pass an id, not a description)"
        )
    return text


def _make(user: Any, session: Any, feature: Any, tags: Mapping[str, Any] | None) -> Attribution:
    pairs: list[tuple[str, str]] = []
    for name, raw in (tags or {}).items():
        if not isinstance(name, str) or not _TAG_NAME.fullmatch(name):
            raise InvalidAttribution(
                f"tag name {name!r} is not allowed: use 1–32 characters of a-z, 0-9, '_', "
                "'.', '-', starting with a letter"
            )
        value = _text(f"tag {name!r}", raw)
        if value is not None:
            pairs.append((name, value))
    if len(pairs) > MAX_TAGS:
        raise InvalidAttribution(
            f"a call may carry at most {MAX_TAGS} tags, got {len(pairs)} "
            f"({', '.join(sorted(n for n, _ in pairs))}); tags are for a few bounded "
            "dimensions (team, feature, tier), not for free-form data"
        )
    return Attribution(
        _text("user", user), _text("session", session), _text("feature", feature),
        tuple(sorted(pairs)),
    )  # fmt: skip


_CURRENT: contextvars.ContextVar[Attribution | None] = contextvars.ContextVar(
    "comptroller_attribution", default=None
)


def current_attribution() -> Attribution | None:
    """The attribution of the innermost `attribution(...)` block running here, if any."""
    return _CURRENT.get()


@contextmanager
def attribution(
    *,
    user: str | int | None = None,
    session: str | int | None = None,
    feature: str | None = None,
    tags: Mapping[str, str] | None = None,
    **more_tags: str,
) -> Iterator[Attribution]:
    """Attribute every guarded call made inside the block to an end user, session, feature
    or tags (threads and asyncio tasks started inside inherit it, as context variables do).

    Args:
        user: The end user the calls are made for.
        session: The session or conversation.
        feature: The product feature making the calls.
        tags: Other dimensions, name → value (e.g. `{"team": "search"}`).
        **more_tags: Tags as keywords (`team="search"`).

    Raises:
        InvalidAttribution: A value is too long, a tag name is not allowed, or there are more
            than `MAX_TAGS` tags (on entry, before any call is made).

    Example:
        >>> from comptroller.control import attribution
        >>> with attribution(user="u-42", feature="search", team="growth"):  # doctest: +SKIP
        ...     model.invoke("…")
    """
    inner = _make(user, session, feature, {**(tags or {}), **more_tags})
    outer = _CURRENT.get()
    value = inner if outer is None else outer.merged(inner)
    token = _CURRENT.set(value)
    try:
        yield value
    finally:
        _CURRENT.reset(token)


def of_call(config: Mapping[str, Any] | None) -> Attribution | None:
    """The attribution of one call: the current block's, overlaid with its config's metadata.

    Raises:
        InvalidAttribution: The metadata names a value that is not allowed.
    """
    outer = _CURRENT.get()
    metadata = config.get("metadata") if config else None
    if not metadata:
        return outer
    found = _from_metadata(metadata)
    if found is None:
        return outer
    return found if outer is None else outer.merged(found)


def _from_metadata(metadata: Mapping[str, Any]) -> Attribution | None:
    user = next((metadata[k] for k in _USER_KEYS if metadata.get(k) is not None), None)
    session = next((metadata[k] for k in _SESSION_KEYS if metadata.get(k) is not None), None)
    feature = metadata.get("feature")
    raw_tags = metadata.get("tags")
    if user is None and session is None and feature is None and not raw_tags:
        return None
    tags: dict[str, Any] = {}
    if isinstance(raw_tags, Mapping):
        tags.update(raw_tags)
    elif isinstance(raw_tags, list | tuple):
        for item in raw_tags:
            name, sep, value = str(item).partition("=")
            if not sep:
                raise InvalidAttribution(
                    f"metadata tag {item!r} is not 'name=value' (or pass tags as a mapping)"
                )
            tags[name] = value
    elif raw_tags:
        raise InvalidAttribution(
            f"metadata 'tags' must map tag names to values, got {type(raw_tags).__name__}"
        )
    return _make(user, session, feature, tags)


class AttributionBudgetRules:
    """The budgets by attribution of `[[control.attribution_budgets]]`, as guard keys.

    Example:
        >>> from comptroller.config import AttributionBudget
        >>> rules = AttributionBudgetRules([AttributionBudget(by="user", daily_usd=2)])
        >>> scope = CallScope("reasoning", domain="acme-eu")  # doctest: +SKIP
        >>> rules.keys(scope, Attribution(user="u-42"))  # doctest: +SKIP
        ((GuardKey(tenant='acme-eu', context='*', purpose='*', attribute='user=u-42'), …),)
    """

    __slots__ = ("_rules",)

    def __init__(self, rules: Iterable[AttributionBudget] = ()) -> None:
        from comptroller.control._profile_types import BudgetSpec

        self._rules = tuple((rule, BudgetSpec(daily_usd=rule.daily_usd)) for rule in rules)

    def __bool__(self) -> bool:
        return bool(self._rules)

    def keys(
        self, scope: Any, attribution: Attribution | None
    ) -> tuple[tuple[GuardKey, BudgetSpec], ...]:
        """The budget keys (and caps) a call of `scope` with `attribution` counts against."""
        if not self._rules or attribution is None:
            return ()
        from comptroller.control._guard import GuardKey

        found: list[tuple[GuardKey, BudgetSpec]] = []
        for rule, spec in self._rules:
            value = attribution.value(rule.by)
            if value is None or (rule.value is not None and rule.value != value):
                continue
            if not rule.matches(scope.domain, scope.org, scope.context, scope.purpose):
                continue
            key = GuardKey(
                scope.domain or "", rule.key_context, rule.key_purpose, f"{rule.by}={value}"
            )
            found.append((key, spec))
        return tuple(found)


def attribution_attributes(attribution: Attribution, *, span: bool = False) -> dict[str, str]:
    """The span and usage-record attributes of an attribution (only the parts it has); a
    span also names the session as the GenAI conventions' conversation."""
    out: dict[str, str] = {}
    if attribution.user is not None:
        out[semconv.USER_ID] = attribution.user
    if attribution.session is not None:
        out[semconv.SESSION_ID] = attribution.session
        if span:
            # What GenAI tools group a conversation's calls by (session, thread).
            out[semconv.GEN_AI_CONVERSATION_ID] = attribution.session
    if attribution.feature is not None:
        out[semconv.FEATURE] = attribution.feature
    tags = attribution.tags_json()
    if tags is not None:
        out[semconv.TAGS] = tags
    return out
