from __future__ import annotations

import json
import re
from datetime import timedelta
from typing import TYPE_CHECKING

import click

from comptroller.cli._app import AppContext, pass_app
from comptroller.cli._profiles import (
    json_option,
    open_service,
    prove_actor,
    token_env_option,
)
from comptroller.errors import UsageError

if TYPE_CHECKING:
    from comptroller.control.profiles import Actor, ProfileService

_TTL = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def _parse_ttl(text: str) -> timedelta:
    match = _TTL.match(text.strip())
    if match is None:
        raise click.BadParameter(f"expected a duration like 30m, 8h or 7d, got {text!r}")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def _target(identity: str, role: str, org: str | None, domain: str | None) -> Actor:
    from comptroller.control.profiles import Actor

    try:
        return Actor(name=identity, role=role, org=org, domain=domain)  # type: ignore[arg-type]
    except ValueError as exc:
        raise click.UsageError(f"{exc} (use --org / --domain)") from None


def _me(service: ProfileService, token_env: str | None) -> Actor:
    # Grants and tokens are the platform's business: act in the caller's platform grant.
    return prove_actor(
        service,
        claimed=None,
        role="platform",
        actor_org=None,
        actor_domain=None,
        token_env=token_env,
    )


def platform_options(func: click.decorators.FC) -> click.decorators.FC:
    """How the acting platform admin is proven: the OS user, or an admin token."""
    return token_env_option(func)


def target_options(func: click.decorators.FC) -> click.decorators.FC:
    func = click.option("--domain", metavar="ID", help="The domain a domain_admin administers.")(
        func
    )
    func = click.option("--org", metavar="ID", help="The org an org_admin administers.")(func)
    func = click.option(
        "--role",
        "target_role",
        type=click.Choice(["platform", "org_admin", "domain_admin"]),
        required=True,
        help="The role granted.",
    )(func)
    return func


@click.group(name="admin")
def admin() -> None:
    """Who may change profiles and credentials: grants, admin tokens, the first admin.

    Roles are granted, never claimed: a change is made as the OS user running the command
    (or the identity of an admin token) in a role that a platform admin granted it.
    """


@admin.command(name="init")
@pass_app
def init(app: AppContext) -> None:
    """Make you, the OS user who owns the data directory, the first platform admin."""
    from comptroller.control import PermissionDenied
    from comptroller.control._os_identity import os_identity, owns_data_dir
    from comptroller.control.profiles import Actor, Scope

    settings = app.settings()
    settings.ensure_data_dir()
    identity = os_identity()
    with open_service(app) as service:
        if not owns_data_dir(settings.data_dir):
            refusal = PermissionDenied(
                f"only the OS user who owns the data directory {settings.data_dir} binds the "
                f"first platform admin; you are {identity}. Run this as that user, or ask a "
                f"platform admin to run `comptroller admin grant {identity} --role platform`"
            )
            service.admins.record_refusal(
                Actor.platform(identity),
                attempted="admin_init",
                scope=Scope.global_(),
                purpose=None,
                reason=str(refusal),
            )
            raise refusal
        service.admins.init(identity)
    click.echo(f"{identity} is now a platform admin of this profile store")


@admin.command(name="whoami")
@json_option
@pass_app
def whoami(app: AppContext, as_json: bool) -> None:
    """Your OS identity and the roles granted to it."""
    from comptroller.control._os_identity import os_identity

    identity = os_identity()
    with open_service(app) as service:
        bindings = service.admins.bindings_of(identity)
    if as_json:
        click.echo(json.dumps({"identity": identity, "grants": [b.to_json() for b in bindings]}))
        return
    click.echo(identity)
    for binding in bindings:
        click.echo(f"  {binding.actor().describe()}")
    if not bindings:
        click.echo("  no grants: you may read, not change, profiles and credentials")


@admin.command(name="list")
@json_option
@pass_app
def list_(app: AppContext, as_json: bool) -> None:
    """Every grant: who holds which role, granted by whom and when."""
    with open_service(app) as service:
        bindings = service.admins.bindings()
    if as_json:
        click.echo(json.dumps([b.to_json() for b in bindings], indent=2))
        return
    if not bindings:
        click.echo("no admins: the owner of the data directory runs `comptroller admin init`")
    for b in bindings:
        click.echo(
            f"{b.actor().describe()}\tgranted by {b.granted_by} "
            f"{b.granted_at.isoformat(timespec='seconds')}"
        )


@admin.command(name="grant")
@click.argument("identity")
@target_options
@click.option("--reason", default="", help="Why (written to the audit log).")
@platform_options
@pass_app
def grant(
    app: AppContext,
    identity: str,
    target_role: str,
    org: str | None,
    domain: str | None,
    reason: str,
    token_env: str | None,
) -> None:
    """Grant IDENTITY (an OS user name, or a name for tokens) a role. Platform admins only."""
    target = _target(identity, target_role, org, domain)
    with open_service(app) as service:
        by = _me(service, token_env)
        service.admins.grant(target, by=by, reason=reason)
    click.echo(f"granted: {target.describe()}")


@admin.command(name="revoke")
@click.argument("identity")
@target_options
@click.option("--reason", default="", help="Why (written to the audit log).")
@platform_options
@pass_app
def revoke(
    app: AppContext,
    identity: str,
    target_role: str,
    org: str | None,
    domain: str | None,
    reason: str,
    token_env: str | None,
) -> None:
    """Revoke a grant (tokens minted for it stop working). Platform admins only."""
    target = _target(identity, target_role, org, domain)
    with open_service(app) as service:
        by = _me(service, token_env)
        service.admins.revoke(target, by=by, reason=reason)
    click.echo(f"revoked: {target.describe()}")


@admin.group(name="token")
def token() -> None:
    """Admin tokens: prove a granted identity without its OS account (CI, automation)."""


@token.command(name="mint")
@click.argument("identity")
@target_options
@click.option("--ttl", default="8h", show_default=True, help="Lifetime: 30m, 8h, 7d (≤ 90d).")
@platform_options
@pass_app
def mint(
    app: AppContext,
    identity: str,
    target_role: str,
    org: str | None,
    domain: str | None,
    ttl: str,
    token_env: str | None,
) -> None:
    """Mint a token proving IDENTITY in a granted role; printed once. Platform admins only.

    Give it to the automation in COMPTROLLER_ADMIN_TOKEN (never on a command line).
    """
    target = _target(identity, target_role, org, domain)
    lifetime = _parse_ttl(ttl)
    with open_service(app) as service:
        by = _me(service, token_env)
        try:
            text = service.admins.mint_token(target, by=by, ttl=lifetime)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    click.echo(text)


@token.command(name="revoke")
@click.argument("token_id")
@platform_options
@pass_app
def revoke_token(
    app: AppContext,
    token_id: str,
    token_env: str | None,
) -> None:
    """Revoke the token with TOKEN_ID (the part after `cta_`). Platform admins only."""
    with open_service(app) as service:
        by = _me(service, token_env)
        service.admins.revoke_token(token_id, by=by)
    click.echo(f"revoked admin token {token_id}")
