from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, cast

import click

from comptroller.cli._app import AppContext, pass_app
from comptroller.cli._profiles import (
    actor_options,
    json_option,
    make_scope,
    open_service,
    prove_actor,
    scope_options,
)
from comptroller.errors import UsageError

if TYPE_CHECKING:
    from comptroller.control.profiles import CredentialKind


def _read_secret(from_env: str | None, what: str, from_file: str | None = None) -> str:
    # Secrets never come from argv (shell history, `ps`): an environment variable, a file or
    # stdin.
    if from_env and from_file:
        raise UsageError("give the secret by --from-env or --from-file, not both")
    if from_file:
        try:
            with open(from_file, encoding="utf-8") as handle:
                return handle.read().strip()
        except OSError as exc:
            raise UsageError(f"cannot read --from-file {from_file}: {exc.strerror}") from None
    if from_env:
        value = os.environ.get(from_env)
        if not value:
            raise UsageError(f"environment variable {from_env} is not set or empty")
        return value
    if sys.stdin.isatty():
        value = click.prompt(what, hide_input=True, err=True)
        return str(value)
    return sys.stdin.read().rstrip("\r\n")


@click.group(name="credentials")
def credentials() -> None:
    """Set, list, delete and rotate provider credentials (write-only: never shown back).

    Secrets are read from stdin or from an environment variable (--from-env), never from
    the command line.
    """


@credentials.command(name="set")
@click.option("--provider", required=True, help="Provider id, e.g. openai, anthropic.")
@scope_options
@click.option("--name", default="default", show_default=True, help="Several keys per provider.")
@click.option(
    "--kind",
    type=click.Choice(["api_key", "oauth"]),
    default="api_key",
    show_default=True,
    help=(
        "A static API key, or an OAuth bundle: JSON with access_token, refresh_token, "
        "expires_at (epoch seconds), token_url, client_id, optional client_secret and scope; "
        "renewed at its token_url before it expires (needs control.allow_oauth_credentials)."
    ),
)
@click.option("--from-env", metavar="VAR", help="Read the secret from this environment variable.")
@click.option(
    "--from-file",
    metavar="FILE",
    help="Read the secret from this file (e.g. an OAuth bundle; keep it private, delete it).",
)
@click.option("--reason", default="", help="Why (written to the audit log).")
@click.argument("stray", nargs=-1, required=False, metavar="")
@actor_options
@json_option
@pass_app
def set_(
    app: AppContext,
    stray: tuple[str, ...],
    provider: str,
    is_global: bool,
    org: str | None,
    domain: str | None,
    name: str,
    kind: str,
    from_env: str | None,
    from_file: str | None,
    reason: str,
    actor: str | None,
    role: str | None,
    actor_org: str | None,
    actor_domain: str | None,
    token_env: str | None,
    as_json: bool,
) -> None:
    """Store (or overwrite) the secret of PROVIDER at a scope, read from stdin, --from-env or
    --from-file.

    A credential at an org or domain serves profiles with --credential-source byo (or
    --credential-ref); the default (managed) uses the global one.
    """
    if stray:
        # Click would echo the stray argument in its error: it may well be the secret.
        raise UsageError(
            f"'credentials set' takes no arguments ({len(stray)} given, not shown): the secret "
            "is read from stdin or --from-env VAR, never from the command line"
        )
    scope = make_scope(is_global, org, domain, required=True)
    secret = _read_secret(from_env, f"secret for {provider} at {scope}", from_file)
    with open_service(app) as service:
        who = prove_actor(
            service,
            claimed=actor,
            role=role,
            actor_org=actor_org,
            actor_domain=actor_domain,
            token_env=token_env,
        )
        try:
            info = service.credentials.set(
                scope,
                provider,
                secret,
                actor=who,
                name=name,
                kind=cast("CredentialKind", kind),
                reason=reason,
            )
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    if as_json:
        click.echo(json.dumps(info.to_json(), indent=2))
        return
    click.echo(f"stored {info.kind} for {info.provider} at {info.scope} (ref {info.ref})")


@credentials.command(name="list")
@scope_options
@json_option
@pass_app
def list_(
    app: AppContext, is_global: bool, org: str | None, domain: str | None, as_json: bool
) -> None:
    """Which providers have a credential (every scope, or one): never the secrets."""
    scope = (
        make_scope(is_global, org, domain, required=False) if (is_global or org or domain) else None
    )
    with open_service(app) as service:
        infos = service.credentials.list(scope)
        # Of a bundle only its expiry is shown (None when it does not open here).
        expiries = {
            info.ref: service.credentials.oauth_expiry(info.ref)
            for info in infos
            if info.kind == "oauth"
        }
    if as_json:
        rows = []
        for info in infos:
            row = info.to_json()
            if info.kind == "oauth":
                expiry = expiries.get(info.ref)
                row["expires_at"] = expiry.isoformat() if expiry is not None else None
            rows.append(row)
        click.echo(json.dumps(rows, indent=2))
        return
    if not infos:
        click.echo("no credentials configured")
    for info in infos:
        expiry = expiries.get(info.ref)
        expires = ""
        if expiry is not None:
            # Past: renewed on first use (or refused, if its refresh token is gone too).
            word = "expired" if expiry <= datetime.now(UTC) else "expires"
            expires = f"\t{word} {expiry.isoformat(timespec='seconds')}"
        click.echo(
            f"{info.scope}\t{info.provider}\t{info.name}\t{info.kind}\t{info.ref}"
            f"\tupdated {info.updated_at.isoformat(timespec='seconds')} by {info.updated_by}"
            f"{expires}"
        )


@credentials.command(name="delete")
@click.option("--provider", required=True, help="Provider id.")
@scope_options
@click.option("--name", default="default", show_default=True)
@click.option("--reason", default="", help="Why (written to the audit log).")
@actor_options
@json_option
@pass_app
def delete(
    app: AppContext,
    provider: str,
    is_global: bool,
    org: str | None,
    domain: str | None,
    name: str,
    reason: str,
    actor: str | None,
    role: str | None,
    actor_org: str | None,
    actor_domain: str | None,
    token_env: str | None,
    as_json: bool,
) -> None:
    """Delete the credential of PROVIDER at a scope."""
    scope = make_scope(is_global, org, domain, required=True)
    with open_service(app) as service:
        who = prove_actor(
            service,
            claimed=actor,
            role=role,
            actor_org=actor_org,
            actor_domain=actor_domain,
            token_env=token_env,
        )
        info = service.credentials.delete(scope, provider, actor=who, name=name, reason=reason)
    if as_json:
        click.echo(json.dumps({"deleted": info.to_json()}, indent=2))
        return
    click.echo(f"deleted {info.provider} ({info.name}) at {info.scope}")


@credentials.command(name="rotate-master-key")
@click.option(
    "--new-key-env",
    metavar="VAR",
    help="Take the new key from this variable (required when COMPTROLLER_MASTER_KEY is used).",
)
@actor_options
@json_option
@pass_app
def rotate_master_key(
    app: AppContext,
    new_key_env: str | None,
    actor: str | None,
    role: str | None,
    actor_org: str | None,
    actor_domain: str | None,
    token_env: str | None,
    as_json: bool,
) -> None:
    """Re-encrypt every credential under a new master key (the key file is replaced)."""
    new_key = None
    if new_key_env:
        new_key = os.environ.get(new_key_env)
        if not new_key:
            raise UsageError(f"environment variable {new_key_env} is not set or empty")
    with open_service(app) as service:
        who = prove_actor(
            service,
            claimed=actor,
            role=role,
            actor_org=actor_org,
            actor_domain=actor_domain,
            token_env=token_env,
        )
        count = service.credentials.rotate_master_key(actor=who, new_key=new_key)
        key_ids = sorted({info.key_id for info in service.credentials.list()})
    if as_json:
        click.echo(json.dumps({"reencrypted": count, "key_ids": key_ids}))
        return
    click.echo(
        f"re-encrypted {count} credential(s) under master key id {', '.join(key_ids) or '-'}"
    )
    if new_key_env:
        click.echo(f"now set COMPTROLLER_MASTER_KEY to the value of {new_key_env}", err=True)
