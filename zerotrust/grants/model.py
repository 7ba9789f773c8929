# SPDX-License-Identifier: Apache-2.0
"""The grant: a just-in-time, short-lived, scoped and revocable permission for one subject."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["Grant", "GrantStatus"]

GrantStatus = Literal["pending", "scheduled", "active", "expired", "revoked"]


@dataclass(frozen=True, slots=True)
class Grant:
    """
    One just-in-time grant, as the grant store records it.

    The signed grant token carries the same fields, so a verifier can check the token offline
    and consult the store only for revocation.

    Attributes:
        grant_id: Unique id, also the token's ``jti``.
        subject: The only subject the grant is for.
        segment: The segment the grant applies to.
        methods: Upper-case HTTP methods the grant allows.
        paths: Path rules inside the segment, in the syntax of `zerotrust.policy.PathPattern`.
        not_before: Start, seconds since the epoch.
        expires_at: Expiry, seconds since the epoch.
        reason: Why the grant was requested; required.
        requested_by: Who requested it.
        approved_by: Who approved it, when approval is required.
        created_at: When it was requested.
        revoked_at: When it was revoked, if it was.
        revoked_by: Who revoked it.
        pending: Whether the grant still waits for approval; no token exists for it yet.
        issued_at: When its token was signed, or ``None`` while pending.
        revocation_reason: Why it was revoked, if a reason was given.
        reaped_at: When `GrantBroker.reap` reported its expiry, or ``None``.

    .. versionadded:: 0.1.0
    """

    grant_id: str
    subject: str
    segment: str
    methods: tuple[str, ...]
    paths: tuple[str, ...]
    not_before: float
    expires_at: float
    reason: str
    requested_by: str
    approved_by: str | None = None
    created_at: float = 0.0
    revoked_at: float | None = None
    revoked_by: str | None = None
    pending: bool = False
    issued_at: float | None = None
    revocation_reason: str | None = None
    reaped_at: float | None = None

    def status(self, now: float) -> GrantStatus:
        """Return the state of the grant at ``now``."""
        if self.revoked_at is not None and self.revoked_at <= now:
            return "revoked"
        if now >= self.expires_at:
            return "expired"
        if self.pending:
            return "pending"
        if now < self.not_before:
            return "scheduled"
        return "active"
