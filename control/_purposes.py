"""Purposes: why a call is made, and who may change the model that serves it.

Every call carries a purpose; the purpose selects the profile. comptroller ships a default
taxonomy (`PurposeKey`) and a deployment declares its own purposes (Spectron-style stages such
as `extraction` or `reflection`) in configuration. Each purpose has an override class:

- `locked`: only the platform role changes it (the authoring path);
- `operator_allowed`: a scope admin may pick among platform-approved model ids;
- `open`: any supported model (and model ids genai-prices does not know yet).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Literal, TypeAlias

from comptroller.control._profile_errors import UnknownPurpose
from comptroller.control._profile_types import ModelRef

if TYPE_CHECKING:
    from comptroller.config import Settings

OverrideClass: TypeAlias = Literal["locked", "operator_allowed", "open"]
OVERRIDE_CLASSES: tuple[OverrideClass, ...] = ("locked", "operator_allowed", "open")

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


class PurposeKey(StrEnum):
    """The default purposes every deployment has (a deployment may declare more)."""

    CODE_GENERATION = "code_generation"
    APPLIES_WHEN_GENERATION = "applies_when_generation"
    DISTILLATION = "distillation"
    REASONING = "reasoning"
    SCORING = "scoring"
    DETECTION = "detection"
    AGENT_TURN = "agent_turn"
    AGENT_TOOL = "agent_tool"
    WORLD_AGENT = "world_agent"
    CUSTOMER_REPLAY = "customer_replay"
    EMBEDDING = "embedding"


@dataclass(frozen=True, kw_only=True, slots=True)
class Purpose:
    """One purpose of the taxonomy and its governance."""

    key: str
    """The purpose name carried by calls (`reasoning`, `extraction`, …)."""
    override: OverrideClass
    """Who may change the model below the platform role."""
    approved_models: frozenset[ModelRef] = frozenset()
    """Models a scope admin may pick when `override` is `operator_allowed`."""
    embedding: bool = False
    """Produces vectors: changing its model makes stored vectors incompatible."""
    description: str = ""


_DEFAULTS: tuple[Purpose, ...] = (
    Purpose(
        key=PurposeKey.CODE_GENERATION,
        override="locked",
        description="Predicate code generated from natural-language rules (highest tier).",
    ),
    Purpose(
        key=PurposeKey.APPLIES_WHEN_GENERATION,
        override="locked",
        description="The optional context-only filter generated alongside a predicate.",
    ),
    Purpose(
        key=PurposeKey.DISTILLATION,
        override="operator_allowed",
        description="Operator-driven distillation against source materials.",
    ),
    Purpose(
        key=PurposeKey.REASONING,
        override="operator_allowed",
        description="Diagnosis, coverage reflection, restatement drafting.",
    ),
    Purpose(
        key=PurposeKey.SCORING,
        override="operator_allowed",
        description="Grading and scoring of outputs.",
    ),
    Purpose(
        key=PurposeKey.DETECTION,
        override="operator_allowed",
        description="Classification and detection jobs.",
    ),
    Purpose(
        key=PurposeKey.AGENT_TURN,
        override="operator_allowed",
        description="A conversational turn of an agent.",
    ),
    Purpose(
        key=PurposeKey.AGENT_TOOL,
        override="operator_allowed",
        description="A tool-invocation call within an agent turn.",
    ),
    Purpose(
        key=PurposeKey.WORLD_AGENT,
        override="operator_allowed",
        description="Agent exploration and hypotheses.",
    ),
    Purpose(
        key=PurposeKey.CUSTOMER_REPLAY,
        override="operator_allowed",
        description="Replays of customer traffic.",
    ),
    Purpose(
        key=PurposeKey.EMBEDDING,
        override="operator_allowed",
        embedding=True,
        description="Embedding generation for vector search.",
    ),
)


def check_purpose_name(name: str) -> str:
    """Return `name` if it is a valid purpose name (lower snake case, ≤ 63 characters).

    Raises:
        UnknownPurpose: The name is malformed.
    """
    if not _NAME.fullmatch(name):
        raise UnknownPurpose(
            f"purpose name {name!r} is malformed: use lower snake case "
            "(letters, digits, '_'; starting with a letter; at most 63 characters)"
        )
    return name


class PurposeRegistry(Mapping[str, Purpose]):
    """The purposes of a deployment: the defaults plus the declared ones, immutable.

    Example:
        >>> registry = PurposeRegistry.defaults()
        >>> registry["code_generation"].override
        'locked'
    """

    def __init__(self, purposes: Iterable[Purpose]) -> None:
        table: dict[str, Purpose] = {}
        for purpose in purposes:
            key = check_purpose_name(str(purpose.key))
            # Plain strings, so that messages say 'reasoning', not PurposeKey.REASONING.
            table[key] = replace(purpose, key=key)
        self._table = table

    @classmethod
    def defaults(cls) -> PurposeRegistry:
        """The default taxonomy with its default override classes."""
        return cls(_DEFAULTS)

    @classmethod
    def from_settings(cls, settings: Settings) -> PurposeRegistry:
        """The defaults, changed and extended by `settings.control.purposes`.

        Raises:
            UnknownPurpose: A declared purpose name is malformed.
            ValueError: An approved model is not `provider:model`.
        """
        table = {str(p.key): p for p in _DEFAULTS}
        for name, conf in settings.control.purposes.items():
            key = check_purpose_name(name.lower())
            base = table.get(key) or Purpose(key=key, override="operator_allowed")
            approved = (
                frozenset(ModelRef.parse(text) for text in conf.approved_models)
                if conf.approved_models is not None
                else base.approved_models
            )
            table[key] = Purpose(
                key=key,
                override=conf.override or base.override,
                approved_models=approved,
                embedding=conf.embedding if conf.embedding is not None else base.embedding,
                description=conf.description if conf.description is not None else base.description,
            )
        return cls(table.values())

    def get_purpose(self, name: str) -> Purpose:
        """The purpose called `name`.

        Raises:
            UnknownPurpose: No such purpose, naming the known ones.
        """
        purpose = self._table.get(name)
        if purpose is None:
            known = ", ".join(sorted(self._table))
            raise UnknownPurpose(
                f"unknown purpose {name!r}: declare it under [control.purposes.{name}] "
                f"in comptroller.toml (or set COMPTROLLER_MODEL_{name.upper()}=provider:model), "
                f"or use one of: {known}"
            )
        return purpose

    def __getitem__(self, name: str) -> Purpose:
        return self._table[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._table)

    def __len__(self) -> int:
        return len(self._table)

    def __repr__(self) -> str:
        return f"PurposeRegistry({sorted(self._table)!r})"
