# SPDX-License-Identifier: Apache-2.0
"""Grant audit events: one dict per request, approval, mint, use, expiry and revocation."""

from __future__ import annotations

from typing import Any, Literal

from ..events.access import format_timestamp, new_event_id
from .model import Grant

__all__ = ["GrantEventKind", "build_grant_event"]

GrantEventKind = Literal[
    "grant_requested",
    "grant_approved",
    "grant_minted",
    "grant_used",
    "grant_expired",
    "grant_revoked",
]


def build_grant_event(
    kind: GrantEventKind, grant: Grant, now: float, **extra: Any
) -> dict[str, Any]:
    """
    Build the event of one grant action for `EventEmitter.emit`.

    Times are RFC 3339 UTC strings. The event never contains the grant token.
    """
    event: dict[str, Any] = {
        "event": kind,
        "timestamp": format_timestamp(now),
        "event_id": new_event_id(now),
        "grant_id": grant.grant_id,
        "subject": grant.subject,
        "segment": grant.segment,
        "methods": list(grant.methods),
        "paths": list(grant.paths),
        "not_before": format_timestamp(grant.not_before),
        "expires_at": format_timestamp(grant.expires_at),
        "reason": grant.reason,
        "requested_by": grant.requested_by,
        "approved_by": grant.approved_by,
    }
    if grant.revoked_at is not None:
        event["revoked_at"] = format_timestamp(grant.revoked_at)
        event["revoked_by"] = grant.revoked_by
        event["revocation_reason"] = grant.revocation_reason
    event.update(extra)

    return event
