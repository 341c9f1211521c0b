"""What a committed profile change leaves behind: its audit entry and its events."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from opentelemetry.util.types import AttributeValue
from sqlalchemy.engine import Connection

from comptroller import semconv
from comptroller.control._governance import Actor
from comptroller.control._profile_events import ProfileEventEmitter
from comptroller.control._profile_store import ProfileStore
from comptroller.control._profiles import AuditAction, ProfileVersion, diff_specs
from comptroller.control._purposes import PurposeRegistry
from comptroller.control._resolution import Resolution

_log = logging.getLogger("comptroller.control.profiles")


@dataclass(frozen=True, kw_only=True, slots=True)
class _Change:
    version: ProfileVersion
    previous: ProfileVersion | None
    before: Resolution | None
    after: Resolution | None


def _audit_change(
    store: ProfileStore,
    connection: Connection,
    actor: Actor,
    action: AuditAction,
    version: ProfileVersion,
    previous: ProfileVersion | None,
    reason: str,
) -> None:
    """Append the audit entry of an activation or rollback, in its write transaction."""
    before = {"version": previous.version, "spec": previous.spec.to_json()} if previous else None
    after: dict[str, Any] = {"version": version.version, "spec": version.spec.to_json()}
    if version.rollback_of is not None:
        after["rollback_of"] = version.rollback_of
    store.add_audit(
        connection,
        actor=actor.name,
        role=actor.role,
        action=action,
        scope=version.scope,
        purpose=version.purpose,
        version=version.version,
        before=before,
        after=after,
        reason=reason,
    )


def _emit_change(
    events: ProfileEventEmitter | None,
    purposes: PurposeRegistry,
    name: str,
    change: _Change,
    actor: Actor,
    reason: str,
) -> None:
    """Emit the event of a committed change, and a warning when an embedding model changed."""
    version = change.version
    changes = diff_specs(change.previous.spec if change.previous else None, version.spec)
    detail: dict[str, Any] = {
        "changes": {c.field: {"before": c.before, "after": c.after} for c in changes}
    }
    if version.rollback_of is not None:
        detail["rollback_of"] = version.rollback_of
    attributes: dict[str, AttributeValue] = {
        semconv.PURPOSE: version.purpose,
        semconv.SCOPE_KIND: version.scope.kind,
        semconv.SCOPE_ID: version.scope.id,
        semconv.PROFILE_ID: version.profile_id,
        semconv.PROFILE_VERSION: version.version,
        semconv.ACTOR: actor.name,
        semconv.REASON: reason,
        semconv.PROFILE_DETAIL: json.dumps(detail, sort_keys=True),
    }
    if change.previous is not None:
        attributes[semconv.PROFILE_PREVIOUS_VERSION] = change.previous.version
    if change.after is not None:
        attributes[semconv.PROFILE_MODEL] = str(change.after.profile.model)
    _emit(events, name, attributes)
    definition = purposes.get_purpose(version.purpose)
    old = change.before.profile.model if change.before else None
    new = change.after.profile.model if change.after else None
    # Compared as `provider:model`: the same model at another endpoint makes the same vectors.
    if definition.embedding and old is not None and new is not None and str(old) != str(new):
        warning = dict(attributes)
        warning[semconv.PROFILE_WARNING] = semconv.WARNING_EMBEDDING_MODEL_CHANGED
        warning[semconv.PROFILE_PREVIOUS_MODEL] = str(old)
        warning[semconv.PROFILE_MODEL] = str(new)
        warning[semconv.PROFILE_DETAIL] = json.dumps(
            embedding_warning(str(version.scope), version.purpose, str(old), str(new)),
            sort_keys=True,
        )
        _emit(events, semconv.EVENT_PROFILE_WARNING, warning)


def embedding_warning(scope: str, purpose: str, before: str, after: str) -> dict[str, str]:
    """The detail of an `embedding_model_changed` warning (also what the CLI prints)."""
    return {
        "warning": semconv.WARNING_EMBEDDING_MODEL_CHANGED,
        "scope": scope,
        "purpose": purpose,
        "before": before,
        "after": after,
        "message": (
            f"the embedding model of {scope} (purpose {purpose}) changed from {before} to "
            f"{after}: vectors made by the old model are incompatible with the new one's; "
            "re-embed them"
        ),
    }


def _emit(
    events: ProfileEventEmitter | None, name: str, attributes: Mapping[str, AttributeValue]
) -> None:
    if events is None:
        return
    try:
        events.emit(name, attributes)
    except Exception as exc:
        # The change is committed; telemetry trouble must not turn it into an error.
        _log.warning("profile event %s was not emitted (%s)", name, type(exc).__name__)
