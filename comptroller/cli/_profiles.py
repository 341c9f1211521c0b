from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from comptroller.cli._app import AppContext, pass_app
from comptroller.errors import UsageError

if TYPE_CHECKING:
    from comptroller.config import Settings
    from comptroller.control import ControlPlane, ResolvedProfile
    from comptroller.control.profiles import (
        Actor,
        ProfileService,
        ProfileSpec,
        ProfileVersion,
        Scope,
    )

F = TypeVar("F", bound=Callable[..., Any])

ENV_ADMIN_TOKEN = "COMPTROLLER_ADMIN_TOKEN"
"""An admin token (`comptroller admin token mint`) proving who acts, instead of the OS user."""


def scope_options(func: F) -> F:
    """--global / --org / --domain, shared by the profile and credential commands."""
    func = click.option(
        "--domain",
        "--workspace",
        "domain",
        metavar="ID",
        help="A domain (workspace) scope; give its org with --org.",
    )(func)
    func = click.option("--org", metavar="ID", help="An org scope (or the org of --domain).")(func)
    func = click.option("--global", "is_global", is_flag=True, help="The global scope.")(func)
    return func


def token_env_option(func: F) -> F:
    """`--token-env VAR`: prove who acts with an admin token instead of the OS user."""
    return click.option(
        "--token-env",
        metavar="VAR",
        help=f"Prove who acts with the admin token in VAR [default: ${ENV_ADMIN_TOKEN}].",
    )(func)


def actor_options(func: F) -> F:
    """Which of the caller's granted roles a change is made in.

    Who the caller is never comes from an option: it is the OS user running the command, or
    the identity an admin token proves (`$COMPTROLLER_ADMIN_TOKEN` or --token-env VAR).
    """
    func = token_env_option(func)
    func = click.option(
        "--actor-domain", metavar="ID", help="The domain a domain_admin administers."
    )(func)
    func = click.option("--actor-org", metavar="ID", help="The org an org_admin administers.")(func)
    func = click.option(
        "--role",
        type=click.Choice(["platform", "org_admin", "domain_admin"]),
        default=None,
        help="Which of your granted roles to act in [default: your only (or platform) grant].",
    )(func)
    func = click.option(
        "--actor",
        metavar="NAME",
        hidden=True,
        help="Ignored: the actor is the OS user or the admin token's identity.",
    )(func)
    return func


def json_option(func: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(func)


def make_scope(is_global: bool, org: str | None, domain: str | None, *, required: bool) -> Scope:
    from comptroller.control.profiles import Scope

    if is_global and (org or domain):
        raise click.UsageError("--global cannot be combined with --org or --domain")
    if domain:
        return Scope.of_domain(domain, org=org)
    if org:
        return Scope.of_org(org)
    if required and not is_global:
        raise click.UsageError("name the scope: --global, --org ID or --domain ID [--org ID]")
    return Scope.global_()


def prove_actor(
    service: ProfileService,
    *,
    claimed: str | None,
    role: str | None,
    actor_org: str | None,
    actor_domain: str | None,
    token_env: str | None,
) -> Actor:
    """The actor of a change: the caller's proven identity, in one of its granted roles.

    The identity is the OS user of the process (its real uid) or the identity of a verified
    admin token. `--role/--actor-org/--actor-domain` only pick among that identity's grants;
    a role it does not hold is passed on as asked, so that the service refuses it and audits
    the refusal under the proven name.
    """
    from comptroller.control._os_identity import os_identity

    identity = os_identity()
    if claimed is not None and claimed != identity:
        click.echo(
            f"comptroller: warning: --actor {claimed} is ignored; changes are made and "
            f"audited as the proven identity: {identity}, the OS user running this command "
            "(or an admin token's identity; see docs/SECURITY.md)",
            err=True,
        )
    token = os.environ.get(token_env or ENV_ADMIN_TOKEN, "")
    if token_env and not token:
        raise UsageError(f"environment variable {token_env} is not set or empty")
    if token:
        return service.admins.verify_token(token, presented_by=identity)
    try:
        return service.admins.act_as(
            identity,
            role=role,  # type: ignore[arg-type]
            org=actor_org,
            domain=actor_domain,
        )
    except ValueError as exc:
        raise click.UsageError(f"{exc} (use --actor-org / --actor-domain)") from None


@contextmanager
def open_service(app: AppContext, *, events: bool = False) -> Iterator[ProfileService]:
    """The profile service of the settings; with `events`, its events are recorded (for the
    warnings a change prints, see `change_warnings`) and sent down the telemetry pipeline
    (embedded DuckDB sink or OTLP, as configured) so that changes reach `profile_events`."""
    from comptroller.control.profiles import InMemoryProfileEvents, ProfileService

    settings = app.settings()
    if settings.control.profile_store_url is None:
        settings.ensure_data_dir()
    plane = _event_plane(settings) if events else None
    recorder = InMemoryProfileEvents(forward=plane.events if plane else None) if events else None
    service = ProfileService.from_settings(settings, events=recorder)
    try:
        yield service
    finally:
        service.close()
        if plane is not None:
            try:
                plane.shutdown()  # flushes the events
            except Exception as exc:
                _warn_events(exc)


def _event_plane(settings: Settings) -> ControlPlane | None:
    # The CLI is an operator's main way to change profiles: its changes must show in the
    # profile history like an application's, through the same telemetry pipeline (a control
    # plane's). Telemetry trouble never blocks the change.
    if settings.telemetry == "none":
        return None
    try:
        from comptroller.control import ControlPlane, MemoryGuard, StaticProfiles

        return ControlPlane(settings, resolver=StaticProfiles(), guard=MemoryGuard())
    except Exception as exc:
        _warn_events(exc)
        return None


def _warn_events(exc: Exception) -> None:
    click.echo(
        f"comptroller: warning: profile events not recorded ({type(exc).__name__}: {exc}); "
        "the change itself is saved",
        err=True,
    )


def change_warnings(service: ProfileService) -> list[dict[str, Any]]:
    """The embedding-model warnings of the changes made through `service` (opened with
    `events=True`), as their event details, oldest first."""
    from comptroller import semconv
    from comptroller.control.profiles import InMemoryProfileEvents

    recorder = service.events
    if not isinstance(recorder, InMemoryProfileEvents):
        return []
    found: list[dict[str, Any]] = []
    for event in recorder.named(semconv.EVENT_PROFILE_WARNING):
        if event.attributes.get(semconv.PROFILE_WARNING) == semconv.WARNING_EMBEDDING_MODEL_CHANGED:
            found.append(json.loads(str(event.attributes[semconv.PROFILE_DETAIL])))
    return found


def _echo_warnings(warnings: list[dict[str, Any]]) -> None:
    # On stderr also with --json: a script piping the JSON still shows the operator.
    for warning in warnings:
        click.echo(f"comptroller: warning: {warning['message']}", err=True)


def version_json(version: ProfileVersion) -> dict[str, Any]:
    return {
        "profile_id": version.profile_id,
        "scope": str(version.scope),
        "purpose": version.purpose,
        "version": version.version,
        "active": version.active,
        "spec": version.spec.to_json(),
        "created_by": version.created_by,
        "created_at": version.created_at.isoformat(),
        "activated_at": version.activated_at.isoformat(),
        "deactivated_at": version.deactivated_at.isoformat() if version.deactivated_at else None,
        "reason": version.reason,
        "rollback_of": version.rollback_of,
    }


def profile_json(profile: ResolvedProfile) -> dict[str, Any]:
    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            if set(value) == {"provider", "model", "base_url"}:
                text = f"{value['provider']}:{value['model']}"
                return f"{text}@{value['base_url']}" if value["base_url"] else text
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [clean(v) for v in value]
        if isinstance(value, Decimal):
            return str(value)
        return value

    return {k: clean(v) for k, v in asdict(profile).items()}


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False))


def _spec_text(spec: ProfileSpec) -> str:
    data = spec.to_json()
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in data.items()) or "(inherits everything)"


@click.group(name="profiles")
def profiles() -> None:
    """Show, set, diff and roll back model profiles per purpose and scope.

    Scopes: --global, --org ID, --domain ID --org ID (most specific wins when resolving).
    """


@profiles.command(name="set")
@click.argument("purpose")
@scope_options
@click.option(
    "--model",
    metavar="PROVIDER:MODEL[@URL]",
    help="The model serving the purpose; @URL calls it at its own http(s) endpoint.",
)
@click.option(
    "--fallback",
    "fallbacks",
    multiple=True,
    metavar="PROVIDER:MODEL[@URL]",
    help="A fallback, tried in order (repeat); @URL calls it at its own http(s) endpoint.",
)
@click.option(
    "--cross-provider/--same-provider",
    "cross_provider",
    default=None,
    help="Whether fallbacks may leave the model's provider.",
)
@click.option("--requests", type=click.IntRange(min=1), help="Requests per interval.")
@click.option("--tokens", type=click.IntRange(min=1), help="Tokens per interval.")
@click.option("--interval", type=click.FloatRange(min=0, min_open=True), help="Seconds [60].")
@click.option("--burst", type=click.IntRange(min=1), help="Bucket capacity in requests.")
@click.option("--daily-budget", metavar="USD", help="Daily spend cap in USD.")
@click.option("--temperature", type=float)
@click.option("--max-tokens", type=click.IntRange(min=1))
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), help="Seconds.")
@click.option(
    "--credential-source",
    type=click.Choice(["managed", "byo"]),
    help="Whose credential a call uses: managed (default), the provider's at the global "
    "scope; byo, the call's domain's, else its org's.",
)
@click.option("--credential-ref", metavar="REF", help="A stored credential's ref.")
@click.option(
    "--base-url",
    metavar="URL",
    help="Endpoint of the model and of fallbacks of its provider (an OpenAI-compatible "
    "server, a proxy); a fallback of another provider takes its own as PROVIDER:MODEL@URL.",
)
@click.option("--degrade-after", type=click.IntRange(min=1), help="Failures that upgrade.")
@click.option("--degrade-window", type=click.FloatRange(min=0, min_open=True), help="Seconds.")
@click.option("--degrade-to", metavar="PURPOSE", help="The purpose upgraded to.")
@click.option("--variant", help="A/B routing variant (reserved).")
@click.option("--unset", "unset", multiple=True, metavar="FIELD", help="Inherit FIELD again.")
@click.option("--replace", is_flag=True, help="Start from an empty profile, not the active one.")
@click.option("--reason", default="", help="Why (written to the audit log).")
@actor_options
@json_option
@pass_app
def set_(
    app: AppContext,
    purpose: str,
    is_global: bool,
    org: str | None,
    domain: str | None,
    model: str | None,
    fallbacks: tuple[str, ...],
    cross_provider: bool | None,
    requests: int | None,
    tokens: int | None,
    interval: float | None,
    burst: int | None,
    daily_budget: str | None,
    temperature: float | None,
    max_tokens: int | None,
    timeout: float | None,
    credential_source: str | None,
    credential_ref: str | None,
    base_url: str | None,
    degrade_after: int | None,
    degrade_window: float | None,
    degrade_to: str | None,
    variant: str | None,
    unset: tuple[str, ...],
    replace: bool,
    reason: str,
    actor: str | None,
    role: str | None,
    actor_org: str | None,
    actor_domain: str | None,
    token_env: str | None,
    as_json: bool,
) -> None:
    """Activate a new version of PURPOSE's profile at a scope (fields not given are kept).

    Providers are named as OpenTelemetry names them (`openai`, `anthropic`, `gcp.gemini`);
    `google:` is written as `gcp.gemini:`. A fallback of another provider needs
    --cross-provider; one at its own endpoint is written PROVIDER:MODEL@URL, e.g.

    \b
      comptroller profiles set reasoning --global \\
        --model openai:gpt-4.1 --cross-provider \\
        --fallback anthropic:claude-sonnet-4-6@https://llm-proxy.example.com

    Changing the model of an embedding purpose prints a warning: vectors made by the old
    model are incompatible with the new one's.
    """
    from comptroller.control import BudgetSpec, DegradationPolicy, ModelRef, RateLimitSpec
    from comptroller.control._profile_types import check_endpoint
    from comptroller.control.profiles import ProfileSpec

    scope = make_scope(is_global, org, domain, required=True)
    fields: dict[str, Any] = {}
    try:
        if model:
            fields["model"] = ModelRef.parse(model)
        if fallbacks:
            fields["fallbacks"] = tuple(ModelRef.parse(f) for f in fallbacks)
        if base_url is not None:
            check_endpoint(base_url, of=f"the profile of {purpose}")
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if cross_provider is not None:
        fields["allow_cross_provider"] = cross_provider
    if any(v is not None for v in (requests, tokens, interval, burst)):
        fields["rate_limit"] = RateLimitSpec(
            requests_per_interval=requests,
            tokens_per_interval=tokens,
            interval_s=interval if interval is not None else 60.0,
            burst=burst,
        )
    if daily_budget is not None:
        try:
            amount = Decimal(daily_budget)
        except InvalidOperation:
            raise click.BadParameter(
                f"--daily-budget must be a number of USD, got {daily_budget!r}"
            ) from None
        if not amount.is_finite() or amount < 0:
            raise click.BadParameter(f"--daily-budget must be ≥ 0 USD, got {daily_budget}")
        fields["budget"] = BudgetSpec(daily_usd=amount)
    degrade = (degrade_after, degrade_window, degrade_to)
    if any(v is not None for v in degrade):
        if degrade_after is None or degrade_window is None or degrade_to is None:
            raise click.UsageError("--degrade-after, --degrade-window and --degrade-to go together")
        fields["degradation"] = DegradationPolicy(
            failures=degrade_after, window_s=degrade_window, upgrade_to=degrade_to
        )
    for name, value in (
        ("temperature", temperature),
        ("max_tokens", max_tokens),
        ("timeout_s", timeout),
        ("credential_source", credential_source),
        ("credential_ref", credential_ref),
        ("base_url", base_url),
        ("variant", variant),
    ):
        if value is not None:
            fields[name] = value
    if not fields and not unset and not replace:
        raise click.UsageError("nothing to set: give at least one field (e.g. --model) or --unset")
    spec = ProfileSpec(**fields)
    with open_service(app, events=True) as service:
        who = prove_actor(
            service,
            claimed=actor,
            role=role,
            actor_org=actor_org,
            actor_domain=actor_domain,
            token_env=token_env,
        )
        try:
            version = service.set_profile(
                scope, purpose, spec, actor=who, reason=reason, unset=unset, replace=replace
            )
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        warnings = change_warnings(service)
    _echo_warnings(warnings)
    if as_json:
        _echo_json({**version_json(version), "warnings": warnings})
        return
    click.echo(
        f"activated {version.profile_id} version {version.version}: {_spec_text(version.spec)}"
    )


@profiles.command(name="show")
@scope_options
@click.option("--purpose", help="Only this purpose.")
@json_option
@pass_app
def show(
    app: AppContext,
    is_global: bool,
    org: str | None,
    domain: str | None,
    purpose: str | None,
    as_json: bool,
) -> None:
    """The active profiles set at exactly one scope (default: global)."""
    scope = make_scope(is_global, org, domain, required=False)
    with open_service(app) as service:
        active = service.active(scope, purpose)
    if as_json:
        _echo_json([version_json(v) for v in active])
        return
    if not active:
        click.echo(f"{scope}: no profiles set (everything inherits)")
        return
    for version in active:
        click.echo(f"{version.purpose}\tv{version.version}\t{_spec_text(version.spec)}")


@profiles.command(name="resolve")
@click.argument("purpose")
@click.option("--domain", "--workspace", "domain", metavar="ID", help="The call's domain.")
@click.option("--org", metavar="ID", help="The call's org.")
@json_option
@pass_app
def resolve(
    app: AppContext, purpose: str, domain: str | None, org: str | None, as_json: bool
) -> None:
    """The effective profile of a call, field by field, and which scope supplied each."""
    with open_service(app) as service:
        resolution = service.explain(purpose, domain=domain, org=org)
    data = profile_json(resolution.profile)
    if as_json:
        _echo_json({"profile": data, "sources": dict(resolution.sources)})
        return
    sources = resolution.sources
    click.echo(f"purpose {purpose} at domain={domain or '-'} org={org or '-'}")
    keys = {"temperature": "defaults", "max_tokens": "defaults", "timeout_s": "defaults"}
    for name, source in sources.items():
        value = data.get(name) if name not in keys else data["defaults"][name]
        click.echo(f"  {name:<21} {json.dumps(value):<40} {source}")


@profiles.command(name="history")
@click.argument("purpose")
@scope_options
@json_option
@pass_app
def history(
    app: AppContext,
    purpose: str,
    is_global: bool,
    org: str | None,
    domain: str | None,
    as_json: bool,
) -> None:
    """Every version of PURPOSE's profile at a scope, oldest first, then refused changes."""
    scope = make_scope(is_global, org, domain, required=False)
    with open_service(app) as service:
        versions = service.history(scope, purpose)
        refused = [e for e in service.audit(scope=scope, purpose=purpose) if e.action == "refused"]
    if as_json:
        _echo_json([version_json(v) for v in versions])
        return
    if not versions:
        click.echo(f"{scope}/{purpose}: no versions")
    for v in versions:
        mark = "*" if v.active else " "
        extra = f" (rollback to v{v.rollback_of})" if v.rollback_of is not None else ""
        click.echo(
            f"{mark} v{v.version}\t{v.activated_at.isoformat(timespec='seconds')}\t{v.created_by}"
            f"\t{_spec_text(v.spec)}{extra}\t{v.reason}"
        )
    for e in refused:
        attempted = (e.after or {}).get("attempted", "change")
        click.echo(
            f"! refused\t{e.at.isoformat(timespec='seconds')}\t{e.actor} ({e.role})"
            f"\t{attempted}\t{e.reason}"
        )


@profiles.command(name="diff")
@click.argument("purpose")
@scope_options
@click.option("--from", "a", type=click.IntRange(min=0), help="Version [the one before --to].")
@click.option("--to", "b", type=click.IntRange(min=1), help="Version [the active one].")
@json_option
@pass_app
def diff(
    app: AppContext,
    purpose: str,
    is_global: bool,
    org: str | None,
    domain: str | None,
    a: int | None,
    b: int | None,
    as_json: bool,
) -> None:
    """The fields that differ between two versions."""
    scope = make_scope(is_global, org, domain, required=False)
    with open_service(app) as service:
        changes = service.diff(scope, purpose, a=a, b=b)
    if as_json:
        _echo_json([{"field": c.field, "before": c.before, "after": c.after} for c in changes])
        return
    if not changes:
        click.echo("no differences")
    for change in changes:
        click.echo(f"{change.field}: {json.dumps(change.before)} -> {json.dumps(change.after)}")


@profiles.command(name="rollback")
@click.argument("purpose")
@scope_options
@click.option("--to", "to_version", type=click.IntRange(min=1), help="Version [the previous].")
@click.option("--reason", default="", help="Why (written to the audit log).")
@actor_options
@json_option
@pass_app
def rollback(
    app: AppContext,
    purpose: str,
    is_global: bool,
    org: str | None,
    domain: str | None,
    to_version: int | None,
    reason: str,
    actor: str | None,
    role: str | None,
    actor_org: str | None,
    actor_domain: str | None,
    token_env: str | None,
    as_json: bool,
) -> None:
    """Re-activate a prior version of PURPOSE's profile, as a new version."""
    scope = make_scope(is_global, org, domain, required=True)
    with open_service(app, events=True) as service:
        who = prove_actor(
            service,
            claimed=actor,
            role=role,
            actor_org=actor_org,
            actor_domain=actor_domain,
            token_env=token_env,
        )
        version = service.rollback(scope, purpose, to_version=to_version, actor=who, reason=reason)
        warnings = change_warnings(service)
    _echo_warnings(warnings)
    if as_json:
        _echo_json({**version_json(version), "warnings": warnings})
        return
    click.echo(
        f"rolled back {version.profile_id} to version {version.rollback_of} "
        f"(now version {version.version}): {_spec_text(version.spec)}"
    )


SEEDS_FILE = "seeds.toml"
"""The seeds' default chains, shipped in `comptroller.control.profiles` (`import --seeds`)."""


@profiles.command(name="import")
@click.argument(
    "file", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option(
    "--seeds",
    is_flag=True,
    help="The shipped default chains: Claude Opus → Sonnet → Haiku for reasoning and agents, "
    "Gemini 2.5 Flash → 3.1 Flash-Lite for scoring and detection, OpenAI embeddings.",
)
@scope_options
@click.option(
    "--replace", is_flag=True, help="Each profile is its entry alone, not the active one updated."
)
@click.option("--reason", default="", help="Why (written to the audit log) [default: import …].")
@actor_options
@json_option
@pass_app
def import_(
    app: AppContext,
    file: Path | None,
    seeds: bool,
    is_global: bool,
    org: str | None,
    domain: str | None,
    replace: bool,
    reason: str,
    actor: str | None,
    role: str | None,
    actor_org: str | None,
    actor_domain: str | None,
    token_env: str | None,
    as_json: bool,
) -> None:
    """Activate the profiles of FILE (or --seeds) at a scope, each purpose audited like `set`.

    FILE is TOML, a `[profiles.PURPOSE]` table per purpose, or JSON (a name ending in .json)
    holding `{"profiles": {"PURPOSE": {…}}}`; the fields are those of `profiles show --json`
    (`model`, `fallbacks`, `allow_cross_provider`, `budget`, …). Every purpose is checked
    before anything is written; a purpose whose profile would not change is left alone, so
    an import can be run again.

    \b
      comptroller profiles import --seeds --global
    """
    from importlib import resources

    from comptroller.control._profile_checks import _check_models_known
    from comptroller.control._profiles import read_profile_set
    from comptroller.control.profiles import ProfileSpec

    if (file is None) == (not seeds):
        raise click.UsageError("give a FILE or --seeds (one of them)")
    scope = make_scope(is_global, org, domain, required=True)
    if file is not None:
        source, text = str(file), file.read_text(encoding="utf-8")
    else:
        source = "seeds"
        text = resources.files("comptroller.control.profiles").joinpath(SEEDS_FILE).read_text()
    try:
        specs = read_profile_set(text, json_format=file is not None and file.suffix == ".json")
    except ValueError as exc:
        raise UsageError(f"{source}: {exc}") from None
    reason = reason or f"import {source}"
    activated: list[ProfileVersion] = []
    unchanged: list[str] = []
    with open_service(app, events=True) as service:
        for purpose, spec in specs.items():
            # All of the file is checked before the first write.
            _check_models_known(
                service.catalog, service.purposes.get_purpose(purpose), spec.models()
            )
        who = prove_actor(
            service,
            claimed=actor,
            role=role,
            actor_org=actor_org,
            actor_domain=actor_domain,
            token_env=token_env,
        )
        for purpose, spec in specs.items():
            current = next(iter(service.active(scope, purpose)), None)
            base = ProfileSpec() if replace or current is None else current.spec
            if current is not None and base.updated(spec) == current.spec:
                unchanged.append(purpose)
                continue
            try:
                activated.append(
                    service.set_profile(
                        scope, purpose, spec, actor=who, reason=reason, replace=replace
                    )
                )
            except Exception:
                done = [v.purpose for v in activated] + unchanged
                left = [p for p in specs if p not in done]
                _echo_warnings(change_warnings(service))  # of the purposes activated so far
                click.echo(
                    f"comptroller: import stopped at {purpose}: active at {scope}: "
                    f"{', '.join(done) or 'none'}; not imported: {', '.join(left)}. Fix the "
                    "cause below and run the import again (what is already active is left "
                    "as it is).",
                    err=True,
                )
                raise
        warnings = change_warnings(service)
    _echo_warnings(warnings)
    if as_json:
        _echo_json(
            {
                "scope": str(scope),
                "activated": [version_json(v) for v in activated],
                "unchanged": unchanged,
                "warnings": warnings,
            }
        )
        return
    by_purpose = {version.purpose: version for version in activated}
    for purpose in specs:
        version = by_purpose.get(purpose)
        if version is None:
            click.echo(f"unchanged {scope}/{purpose}")
        else:
            click.echo(
                f"activated {version.profile_id} version {version.version}: "
                f"{_spec_text(version.spec)}"
            )


@profiles.command(name="audit")
@scope_options
@click.option("--purpose", help="Only this purpose.")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many entries.")
@json_option
@pass_app
def audit(
    app: AppContext,
    is_global: bool,
    org: str | None,
    domain: str | None,
    purpose: str | None,
    limit: int | None,
    as_json: bool,
) -> None:
    """The audit log: who changed what, when, from what to what, and why."""
    scope = (
        make_scope(is_global, org, domain, required=False) if (is_global or org or domain) else None
    )
    with open_service(app) as service:
        entries = service.audit(scope=scope, purpose=purpose, limit=limit)
    rows = [
        {
            "id": e.id,
            "at": e.at.isoformat(),
            "actor": e.actor,
            "role": e.role,
            "action": e.action,
            "scope": str(e.scope),
            "purpose": e.purpose,
            "version": e.version,
            "before": e.before,
            "after": e.after,
            "reason": e.reason,
        }
        for e in entries
    ]
    if as_json:
        _echo_json(rows)
        return
    for row in rows:
        click.echo(
            f"{row['at']}\t{row['actor']} ({row['role']})\t{row['action']}\t{row['scope']}"
            f"\t{row['purpose'] or '-'}"
            f"\t{'v' + str(row['version']) if row['version'] else '-'}\t{row['reason']}"
        )
