"""Helpers shared by the profile and credential tests (no tests of its own).

`store_url` gives a SQLite file or a unique PostgreSQL schema (dropped afterwards), so every
store test runs against both; `make_service` builds a `ProfileService` with an in-memory
event recorder, a controllable cache clock and an explicit master key source, and binds the
test actors: roles are granted in the store, never claimed (`root` is the first platform
admin, and grants the others).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from comptroller.config import Settings, load_settings
from comptroller.control import ModelRef
from comptroller.control.profiles import (
    Actor,
    InMemoryProfileEvents,
    ProfileService,
    ProfileSpec,
    Scope,
)

PLATFORM = Actor.platform("root")
BOUND_ACTORS = (
    Actor(name="alice", role="org_admin", org="acme"),
    Actor(name="a", role="org_admin", org="acme"),
    Actor(name="mallory", role="org_admin", org="globex"),
    Actor(name="dora", role="domain_admin", domain="acme-eu", org="acme"),
    Actor.platform("other-process"),
)
"""Actors the tests use, granted by `make_service` (PLATFORM is bound by `init`)."""
ACME = Scope.of_org("acme")
GLOBEX = Scope.of_org("globex")
ACME_EU = Scope.of_domain("acme-eu", org="acme")
GLOBAL = Scope.global_()


def ref(text: str) -> ModelRef:
    return ModelRef.parse(text)


def spec(**fields: Any) -> ProfileSpec:
    if isinstance(fields.get("model"), str):
        fields["model"] = ref(fields["model"])
    if "fallbacks" in fields:
        fields["fallbacks"] = tuple(
            ref(f) if isinstance(f, str) else f for f in fields["fallbacks"]
        )
    return ProfileSpec(**fields)


def store_urls(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Body of a parametrised `store_url` fixture: `sqlite` or `postgres` (own schema)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'profiles.sqlite'}"
        return
    base: str = request.getfixturevalue("postgres_url")
    schema = f"ct_profiles_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(base)
    with admin.begin() as con:
        con.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    url = sa.make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as con:
            con.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


STORE_PARAMS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


class ManualClock:
    """A monotonic clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Rig:
    service: ProfileService
    events: InMemoryProfileEvents
    clock: ManualClock
    settings: Settings
    environ: dict[str, str] = field(default_factory=dict)


def make_settings(data_dir: Path, **control: Any) -> Settings:
    return load_settings(None, data_dir=data_dir, control=control or None)


def make_service(
    url: str,
    data_dir: Path,
    *,
    environ: Mapping[str, str] | None = None,
    settings: Settings | None = None,
    **control: Any,
) -> Rig:
    settings = settings or make_settings(data_dir, **control)
    events = InMemoryProfileEvents()
    clock = ManualClock()
    env = dict(environ or {})
    service = ProfileService.from_settings(
        settings, url=url, events=events, environ=env, clock=clock
    )
    bind(service)
    return Rig(service=service, events=events, clock=clock, settings=settings, environ=env)


def bind(service: ProfileService, *actors: Actor) -> None:
    """Bind PLATFORM as the first platform admin (once per store) and grant `actors`."""
    if not service.admins.bindings():  # else a second service over the same store
        service.admins.init(PLATFORM.name)
    for actor in actors or BOUND_ACTORS:
        service.admins.grant(actor, by=PLATFORM)


def with_openai(rig: Rig, *scopes: Scope, secret: str = "sk-test-openai") -> None:
    """Store an OpenAI key at the global scope (and the given scopes)."""
    for scope in (GLOBAL, *scopes):
        rig.service.credentials.set(scope, "openai", secret, actor=PLATFORM)
