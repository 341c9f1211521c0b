"""The demo's profiles: in the default profile store, and the changes its story makes.

The demo writes to the store that `comptroller profiles …` reads with no option, so that a
newcomer can look at what it did right after. It owns that store only when the demo created
it (its first platform admin is the demo's) or when the store is empty: each run then starts
it afresh, and the history shows one run's story. A store anybody else set up is refused.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING

from comptroller._demo_workload import (
    CLAUDE_CHAIN,
    EMBEDDING_CHAIN,
    EMBEDDING_UPGRADE,
    PURPOSES,
    TENANTS,
)
from comptroller.errors import ConfigError

if TYPE_CHECKING:
    from comptroller.control.profiles import Actor, ProfileService

DEMO_ADMIN = "comptroller-demo"
"""The platform admin the demo binds first in its store: how a later run recognises it."""
ORG_ADMINS = {"acme": "acme-admin", "initech": "initech-admin"}
"""The org admins the demo acts as (granted by its platform admin)."""
TIGHT_BUDGET = ("initech-lab", "scoring", Decimal("0.001"))
"""(domain, purpose, daily USD cap): a tenant that runs out of budget every day. A call on
gemini-2.5-flash reserves about $0.00065 (256 output tokens): the cap lets one call in flight
at a time, so the lab's afternoon batch is mostly refused."""
STORY_ORG = "acme"
"""The org whose admin moves `reasoning` off the failing model and rolls the change back."""
APPROVED = {
    "agent_turn": CLAUDE_CHAIN[1:],
    "reasoning": CLAUDE_CHAIN,
    "embedding": (*EMBEDDING_CHAIN, EMBEDDING_UPGRADE),
}
"""Models the platform lets an org admin pick, per purpose (demo settings)."""


def sqlite_file(url: str) -> Path:
    """The file of a SQLite store URL.

    Raises:
        ConfigError: The store is not a SQLite file.
    """
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        raise ConfigError(
            "the demo keeps its profiles in the data directory's SQLite store, and the "
            f"profile store in force is {parsed.render_as_string(hide_password=True)}; unset "
            "COMPTROLLER_CONTROL_PROFILE_STORE_URL (or [control] profile_store_url) to run it"
        )
    return Path(str(parsed.database))


def check_store(url: str) -> None:
    """Refuse a store the demo may not start afresh.

    Raises:
        ConfigError: The store is not a SQLite file, or holds profiles or admins that the
            demo did not create.
    """
    path = sqlite_file(url)
    if not path.exists():
        return
    owner = _first_admin(path)
    if owner not in (None, DEMO_ADMIN):
        raise ConfigError(
            f"{path} holds the profiles of platform admin {owner!r}, not the demo's; run the "
            "demo with a data directory of its own: `uv run comptroller --data-dir DIR demo`"
        )


def reset_store(url: str) -> bool:
    """Start the store afresh (after `check_store`); True when it held a previous demo's."""
    path = sqlite_file(url)
    if not path.exists():
        return False
    previous = _first_admin(path) == DEMO_ADMIN
    for leftover in (path, *(path.with_name(path.name + s) for s in ("-wal", "-shm", "-journal"))):
        leftover.unlink(missing_ok=True)
    return previous


def _first_admin(path: Path) -> str | None:
    """The store's first platform admin; None for an empty store.

    Raises:
        ConfigError: The file is not a profile store, or a store with profiles and no admin.
    """
    try:
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise ConfigError(f"{path}: cannot open the profile store ({exc})") from exc
    try:
        tables = {row[0] for row in con.execute("select name from sqlite_master")}
        if not tables:
            return None
        if "comptroller_admins" not in tables or "comptroller_profile_versions" not in tables:
            raise ConfigError(
                f"{path} is not a comptroller profile store; move it away or run the demo "
                "with a data directory of its own: `uv run comptroller --data-dir DIR demo`"
            )
        first = con.execute(
            "select identity from comptroller_admins where role = 'platform' order by id limit 1"
        ).fetchone()
        if first is not None:
            return str(first[0])
        (versions,) = con.execute("select count(*) from comptroller_profile_versions").fetchone()
    except sqlite3.Error as exc:
        raise ConfigError(f"{path}: cannot read the profile store ({exc})") from exc
    finally:
        con.close()
    if versions:
        raise ConfigError(
            f"{path} holds {versions} profile versions that are not from the demo; run the "
            "demo with a data directory of its own: `uv run comptroller --data-dir DIR demo`"
        )
    return None


def configure(service: ProfileService, base_urls: Mapping[str, str]) -> None:
    """The platform's defaults, a tight budget, and acme's own reasoning budget (version 1).

    Args:
        service: The demo's profile store.
        base_urls: Provider -> the endpoint of its local server (each chain is of one
            provider, so its profile's `base_url` serves the whole chain).
    """
    from comptroller.control import BudgetSpec, ModelRef, RateLimitSpec
    from comptroller.control.profiles import Actor, ProfileSpec, Scope

    platform = service.admins.init(DEMO_ADMIN)
    for org, name in ORG_ADMINS.items():
        service.admins.grant(Actor(name=name, role="org_admin", org=org), by=platform)
    # The person who ran the demo may try a rollback in the TUI or the CLI on this store.
    you = service.admins.os_principal(role="platform")
    if you.name != DEMO_ADMIN:
        service.admins.grant(you, by=platform, reason="ran the demo")
    for provider in base_urls:
        service.credentials.set(
            Scope.global_(), provider, "demo-not-a-real-key", actor=platform, reason="demo"
        )
    for purpose, (chain, _) in PURPOSES.items():
        model, *fallbacks = (ModelRef.parse(ref) for ref in chain)
        service.set_profile(
            Scope.global_(),
            purpose,
            ProfileSpec(
                model=model,
                fallbacks=tuple(fallbacks),
                base_url=base_urls[model.provider],
                max_tokens=256,
                rate_limit=RateLimitSpec(requests_per_interval=600, interval_s=60.0),
                budget=BudgetSpec(daily_usd=Decimal("5")),
            ),
            actor=platform,
            reason="demo platform defaults",
        )
    domain, purpose, cap = TIGHT_BUDGET
    org = next(o for o, d in TENANTS if d == domain)
    service.set_profile(
        Scope.of_domain(domain, org=org),
        purpose,
        ProfileSpec(budget=BudgetSpec(daily_usd=cap)),
        actor=_org_admin(org),
        reason="lab experiments get a small daily budget",
    )
    service.set_profile(
        Scope.of_org(STORY_ORG),
        "reasoning",
        ProfileSpec(budget=BudgetSpec(daily_usd=Decimal("2"))),
        actor=_org_admin(STORY_ORG),
        reason="acme caps reasoning at $2 a day per subsystem",
    )


def move_reasoning_off(service: ProfileService, model: str) -> None:
    """acme's admin answers the open circuit: reasoning moves down its chain, to the next
    Claude model (version 2)."""
    from comptroller.control import ModelRef
    from comptroller.control.profiles import ProfileSpec, Scope

    stand_in, fallback = (ModelRef.parse(ref) for ref in CLAUDE_CHAIN[1:])
    service.set_profile(
        Scope.of_org(STORY_ORG),
        "reasoning",
        ProfileSpec(model=stand_in, fallbacks=(fallback,)),
        actor=_org_admin(STORY_ORG),
        reason=f"{model} is failing: serve reasoning from {stand_in.model} until it recovers",
    )


def roll_back_reasoning(service: ProfileService, model: str) -> None:
    """The circuit closed: acme's admin rolls back to version 1 (as version 3)."""
    from comptroller.control.profiles import Scope

    service.rollback(
        Scope.of_org(STORY_ORG),
        "reasoning",
        actor=_org_admin(STORY_ORG),
        reason=f"{model} recovered: back to the platform's model",
    )


def cheaper_agent_turns(service: ProfileService) -> None:
    """acme's admin moves agent turns to a cheaper model (a step in the spend trend)."""
    from comptroller.control import ModelRef
    from comptroller.control.profiles import ProfileSpec, Scope

    cheaper = ModelRef.parse(CLAUDE_CHAIN[-1])
    service.set_profile(
        Scope.of_org(STORY_ORG),
        "agent_turn",
        # The bottom of the chain: nothing cheaper to fall back to.
        ProfileSpec(model=cheaper, fallbacks=()),
        actor=_org_admin(STORY_ORG),
        reason=f"agent turns are cheaper on {cheaper.model}",
    )


def larger_embeddings(service: ProfileService) -> None:
    """acme's admin moves its embeddings to a larger model: the profile store warns that the
    vectors made before are incompatible (the TUI's profile history shows it)."""
    from comptroller.control import ModelRef
    from comptroller.control.profiles import ProfileSpec, Scope

    service.set_profile(
        Scope.of_org(STORY_ORG),
        "embedding",
        ProfileSpec(model=ModelRef.parse(EMBEDDING_UPGRADE)),
        actor=_org_admin(STORY_ORG),
        reason="search quality: larger embeddings (documents to be re-embedded)",
    )


def _org_admin(org: str) -> Actor:
    from comptroller.control.profiles import Actor

    return Actor(name=ORG_ADMINS[org], role="org_admin", org=org)
