# SPDX-License-Identifier: Apache-2.0
"""The grant broker: requests, approves, mints, lists, revokes and reaps just-in-time grants."""

from __future__ import annotations

import builtins
import dataclasses
import math
import re
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..events import EventEmitter
from ..exceptions import ConfigurationError
from ..policy import PathPattern
from .errors import GrantError
from .events import GrantEventKind, build_grant_event
from .keys import SigningKey, algorithm_for, load_signing_key, public_jwk
from .model import Grant
from .store import GrantStore
from .tokens import encode_grant_token

__all__ = ["GrantBroker", "GrantError", "GrantLimits", "IssuedGrant"]

_SEGMENT_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
# An HTTP method is a token (RFC 9110 5.6.2); grants list them in upper case, as ASGI does.
_METHOD = re.compile(r"[A-Z][A-Z0-9!#$%&'*+.^_`|~\-]{0,31}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MAX_REASON = 500
_MAX_NAME = 256
_MAX_METHODS = 16
_MAX_PATHS = 32
_MAX_PATH_CHARS = 512


@dataclass(frozen=True, slots=True)
class GrantLimits:
    """
    How long grants for a segment may last.

    Attributes:
        default: Seconds a grant lasts when the request names no duration.
        maximum: Longest duration in seconds; a longer request is rejected, never shortened.
        max_start_delay: How far in the future, in seconds, a grant may start.

    .. versionadded:: 0.1.0
    """

    default: float = 900.0
    maximum: float = 3600.0
    max_start_delay: float = 86400.0

    def __post_init__(self) -> None:
        for name in ("default", "maximum", "max_start_delay"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                message = f"GrantLimits.{name} must be a number of seconds, not {value!r}"
                raise ConfigurationError(message, parameter=name, value=value)
            if not 0 < value < math.inf:
                message = f"GrantLimits.{name} must be positive and finite, not {value!r}"
                raise ConfigurationError(message, parameter=name, value=value)
        if self.default > self.maximum:
            message = (
                f"GrantLimits.default ({self.default:g} s) must not exceed "
                f"maximum ({self.maximum:g} s)"
            )
            raise ConfigurationError(message, parameter="default", value=self.default)


@dataclass(frozen=True, slots=True)
class IssuedGrant:
    """
    A grant with its signed token.

    Attributes:
        grant: The grant as stored.
        token: The signed grant token. Show it once to the subject; it is never stored or logged.

    .. versionadded:: 0.1.0
    """

    grant: Grant
    token: str = dataclasses.field(repr=False)

    @property
    def grant_id(self) -> str:
        """The id of the grant, to list or revoke it."""
        return self.grant.grant_id


class GrantBroker:
    """
    Mint just-in-time grants, record them in a store and emit an audit event for every action.

    Args:
        signing_key: An Ed25519 or EC P-256 private key, or its PEM text. Ed25519 keys sign
            with ``EdDSA``, P-256 keys with ``ES256``.
        store: Where grants are recorded; the grant verifier checks revocations there.
        issuer: The ``iss`` claim of grant tokens; the verifier must expect the same value.
        events: Where the grant events go; without an emitter, no events are sent.
        limits: Duration limits per segment name.
        default_limits: Duration limits for segments not in ``limits``.
        require_approval: Whether every grant needs an approver other than the requester and
            the subject (the two-person rule).
        clock: The wall clock, seconds since the epoch.

    .. versionadded:: 0.1.0
    """

    def __init__(
        self,
        *,
        signing_key: SigningKey | bytes | str,
        store: GrantStore,
        issuer: str = "zerotrust-grants",
        events: EventEmitter | None = None,
        limits: Mapping[str, GrantLimits] | None = None,
        default_limits: GrantLimits = GrantLimits(),
        require_approval: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if isinstance(signing_key, str | bytes):
            signing_key = load_signing_key(signing_key)
        self.algorithm = algorithm_for(signing_key)
        if not isinstance(store, GrantStore):
            message = f"store must be a GrantStore, not {type(store).__name__}"
            raise ConfigurationError(message, parameter="store", value=type(store).__name__)
        if not isinstance(issuer, str) or not issuer:
            message = f"issuer must be a non-empty string, not {issuer!r}"
            raise ConfigurationError(message, parameter="issuer", value=issuer)
        limit_map = dict(limits or {})
        for segment, segment_limits in limit_map.items():
            if not isinstance(segment_limits, GrantLimits):
                message = f"limits[{segment!r}] must be a GrantLimits, not {segment_limits!r}"
                raise ConfigurationError(message, parameter="limits", value=segment_limits)

        self.store = store
        self.issuer = issuer
        self.events = events
        self.limits = limit_map
        self.default_limits = default_limits
        self.require_approval = bool(require_approval)
        self._signing_key = signing_key
        self._jwk = public_jwk(signing_key)
        self._clock = clock

    def limits_for(self, segment: str) -> GrantLimits:
        """Return the duration limits that apply to ``segment``."""
        return self.limits.get(segment, self.default_limits)

    def request(
        self,
        *,
        subject: str,
        segment: str,
        methods: Sequence[str],
        paths: Sequence[str],
        reason: str,
        requested_by: str,
        duration: float | None = None,
        start: float | None = None,
    ) -> Grant:
        """
        Record a grant request that waits for approval, and emit ``grant_requested``.

        Raises:
            GrantError: if an argument is invalid or the duration exceeds the segment's maximum.
        """
        now = self._clock()
        grant = self._build(
            subject=subject,
            segment=segment,
            methods=methods,
            paths=paths,
            reason=reason,
            requested_by=requested_by,
            duration=duration,
            start=start,
            now=now,
        )
        self.store.save(grant)
        self._emit("grant_requested", grant, now)

        return grant

    def approve(self, grant_id: str, *, approver: str) -> IssuedGrant:
        """
        Approve a pending grant, sign its token and emit ``grant_approved`` and ``grant_minted``.

        Raises:
            GrantError: if the grant is unknown, not pending, revoked or expired, or the
                approver is its requester or its subject.
        """
        now = self._clock()
        grant = self.store.get(grant_id)
        if grant is None:
            message = f"grant {grant_id!r} not found; list grants to find its id"
            raise GrantError("grant_not_found", message, grant_id=grant_id)
        _check_name(approver, "approver")
        self._check_approver(grant, approver)
        status = grant.status(now)
        if status != "pending":
            message = f"grant {grant_id!r} is {status}, so it cannot be approved"
            raise GrantError(f"grant_{status}", message, grant_id=grant_id)

        # NOTE: two concurrent approvals of one grant may both succeed; the tokens they return
        # carry the same grant id, so revoking the grant stops both.
        return self._issue(dataclasses.replace(grant, approved_by=approver), now)

    def mint(
        self,
        *,
        subject: str,
        segment: str,
        methods: Sequence[str],
        paths: Sequence[str],
        reason: str,
        requested_by: str,
        duration: float | None = None,
        start: float | None = None,
        approver: str | None = None,
    ) -> IssuedGrant:
        """
        Request a grant and issue its token at once, approved by ``approver`` if given.

        Emits ``grant_requested``, ``grant_approved`` when there is an approver, and
        ``grant_minted``.

        Raises:
            GrantError: if an argument is invalid, approval is required and ``approver`` is
                missing, or the approver is the requester or the subject.
        """
        if approver is None and self.require_approval:
            message = (
                "this broker requires approval: pass an approver other than the requester "
                "and the subject, or use request() and approve()"
            )
            raise GrantError("approval_required", message)
        now = self._clock()
        grant = self._build(
            subject=subject,
            segment=segment,
            methods=methods,
            paths=paths,
            reason=reason,
            requested_by=requested_by,
            duration=duration,
            start=start,
            now=now,
        )
        if approver is not None:
            _check_name(approver, "approver")
            self._check_approver(grant, approver)

        self.store.save(grant)
        self._emit("grant_requested", grant, now)

        return self._issue(dataclasses.replace(grant, approved_by=approver), now)

    def revoke(self, grant_id: str, *, revoked_by: str, reason: str | None = None) -> Grant:
        """
        Revoke a grant, pending or issued, and emit ``grant_revoked``.

        Every verifier request that starts after this returns is denied.

        Raises:
            GrantError: if the grant is unknown or already revoked.
        """
        _check_name(revoked_by, "revoked_by")
        if reason is not None:
            reason = _check_reason(reason)
        now = self._clock()
        grant = self.store.get(grant_id)
        if grant is None:
            message = f"grant {grant_id!r} not found; list grants to find its id"
            raise GrantError("grant_not_found", message, grant_id=grant_id)
        if grant.revoked_at is not None:
            message = f"grant {grant_id!r} was already revoked by {grant.revoked_by!r}"
            raise GrantError("grant_already_revoked", message, grant_id=grant_id)

        revoked = self.store.revoke(grant_id, now, revoked_by, reason)
        if revoked is None or revoked.revoked_by != revoked_by or revoked.revoked_at != now:
            # Another revocation committed between the lookup and ours.
            message = f"grant {grant_id!r} was already revoked"
            raise GrantError("grant_already_revoked", message, grant_id=grant_id)
        self._emit("grant_revoked", revoked, now)

        return revoked

    def get(self, grant_id: str) -> Grant | None:
        """Return the grant with this id, or ``None``."""
        return self.store.get(grant_id)

    def list(self, *, include_inactive: bool = False) -> list[Grant]:
        """Return pending, scheduled and active grants; with ``include_inactive``, all of them."""
        return self.store.list(include_inactive=include_inactive, now=self._clock())

    def reap(self) -> builtins.list[Grant]:
        """
        Find grants that expired since the last reap, and emit one ``grant_expired`` each.

        A revoked grant is not reported, because its revocation was. Several brokers may reap
        the same store: the store's `GrantStore.mark_reaped` lets exactly one report each grant.
        """
        now = self._clock()
        reaped: builtins.list[Grant] = []
        for grant in self.store.list(include_inactive=True, now=now):
            if grant.reaped_at is not None or grant.revoked_at is not None:
                continue
            if grant.expires_at > now:
                continue
            if not self.store.mark_reaped(grant.grant_id, now):
                continue
            expired = dataclasses.replace(grant, reaped_at=now)
            self._emit("grant_expired", expired, now, was_pending=grant.pending)
            reaped.append(expired)

        return reaped

    def public_jwks(self) -> dict[str, Any]:
        """Return the public signing key as a JWKS, for ``GrantVerifier(keys=...)``."""
        return {"keys": [dict(self._jwk)]}

    @property
    def key_id(self) -> str:
        """The ``kid`` of the signing key, its RFC 7638 thumbprint."""
        return str(self._jwk["kid"])

    def _build(
        self,
        *,
        subject: str,
        segment: str,
        methods: Sequence[str],
        paths: Sequence[str],
        reason: str,
        requested_by: str,
        duration: float | None,
        start: float | None,
        now: float,
    ) -> Grant:
        _check_name(subject, "subject")
        _check_name(requested_by, "requested_by")
        if not isinstance(segment, str) or not _SEGMENT_NAME.fullmatch(segment):
            message = f"segment {segment!r} must be 1 to 64 letters, digits, '_', '.' or '-'"
            raise GrantError("invalid_segment", message)
        method_tuple = _check_methods(methods)
        path_tuple = _check_paths(paths)
        reason = _check_reason(reason)
        limits = self.limits_for(segment)
        not_before, expires_at = _window(limits, segment, duration, start, now)

        return Grant(
            grant_id=secrets.token_hex(16),
            subject=subject,
            segment=segment,
            methods=method_tuple,
            paths=path_tuple,
            not_before=not_before,
            expires_at=expires_at,
            reason=reason,
            requested_by=requested_by,
            created_at=now,
            pending=True,
        )

    def _check_approver(self, grant: Grant, approver: str) -> None:
        # Names compare without case, so "ALICE" cannot approve alice's grant.
        if approver.casefold() == grant.requested_by.casefold():
            message = f"approver {approver!r} requested the grant; another person must approve it"
            raise GrantError("self_approval", message, grant_id=grant.grant_id)
        if approver.casefold() == grant.subject.casefold():
            message = (
                f"approver {approver!r} is the grant's subject; another person must approve it"
            )
            raise GrantError("self_approval", message, grant_id=grant.grant_id)

    def _issue(self, grant: Grant, now: float) -> IssuedGrant:
        if now >= grant.expires_at:
            message = f"grant {grant.grant_id!r} expired before it was approved; request it again"
            raise GrantError("grant_expired", message, grant_id=grant.grant_id)
        issued = dataclasses.replace(grant, pending=False, issued_at=now)
        self.store.save(issued)
        # A revocation that committed first survives the save; the token must not leave then.
        stored = self.store.get(grant.grant_id)
        if stored is None or stored.revoked_at is not None:
            message = f"grant {grant.grant_id!r} was revoked while it was being approved"
            raise GrantError("grant_revoked", message, grant_id=grant.grant_id)

        if stored.approved_by is not None:
            self._emit("grant_approved", stored, now)
        token = encode_grant_token(
            stored,
            key=self._signing_key,
            algorithm=self.algorithm,
            kid=self.key_id,
            issuer=self.issuer,
            issued_at=now,
        )
        self._emit("grant_minted", stored, now, issuer=self.issuer)

        return IssuedGrant(stored, token)

    def _emit(self, kind: GrantEventKind, grant: Grant, now: float, **extra: Any) -> None:
        if self.events is not None:
            self.events.emit(build_grant_event(kind, grant, now, **extra))


def _check_name(value: object, parameter: str) -> None:
    if not isinstance(value, str) or not value.strip() or len(value) > _MAX_NAME:
        message = (
            f"{parameter} must be a non-empty string of at most {_MAX_NAME} characters, "
            f"not {value!r}"
        )
        raise GrantError(f"invalid_{parameter}", message)
    if _CONTROL.search(value) or value != value.strip():
        message = (
            f"{parameter} {value!r} must not contain control characters "
            "or leading or trailing whitespace"
        )
        raise GrantError(f"invalid_{parameter}", message)


def _check_reason(reason: object) -> str:
    if not isinstance(reason, str) or not reason.strip():
        message = "a reason is required: say why the grant is needed, such as a ticket or incident"
        raise GrantError("reason_required", message)
    reason = reason.strip()
    if len(reason) > _MAX_REASON:
        message = f"the reason has {len(reason)} characters; shorten it to at most {_MAX_REASON}"
        raise GrantError("reason_too_long", message)
    if _CONTROL.search(reason):
        message = "the reason must not contain control characters such as line breaks"
        raise GrantError("invalid_reason", message)

    return reason


def _check_methods(methods: Sequence[str]) -> tuple[str, ...]:
    if isinstance(methods, str):
        methods = [methods]
    result = tuple(dict.fromkeys(methods))
    if not result or len(result) > _MAX_METHODS:
        message = f"a grant needs 1 to {_MAX_METHODS} methods, not {len(result)}"
        raise GrantError("invalid_methods", message)
    for method in result:
        if not isinstance(method, str) or not _METHOD.fullmatch(method):
            hint = (
                f"; use {method.upper()!r}" if isinstance(method, str) and method.isalpha() else ""
            )
            message = f"method {method!r} must be an upper-case HTTP method such as 'GET'{hint}"
            raise GrantError("invalid_methods", message)

    return result


def _check_paths(paths: Sequence[str]) -> tuple[str, ...]:
    if isinstance(paths, str):
        paths = [paths]
    result = tuple(dict.fromkeys(paths))
    if not result or len(result) > _MAX_PATHS:
        message = f"a grant needs 1 to {_MAX_PATHS} paths, not {len(result)}"
        raise GrantError("invalid_paths", message)
    for path in result:
        if isinstance(path, str) and len(path) > _MAX_PATH_CHARS:
            message = f"path {path[:40]!r}... is longer than {_MAX_PATH_CHARS} characters"
            raise GrantError("invalid_paths", message)
        try:
            PathPattern(path)
        except ConfigurationError as error:
            raise GrantError("invalid_paths", str(error)) from None

    return result


def _window(
    limits: GrantLimits, segment: str, duration: float | None, start: float | None, now: float
) -> tuple[float, float]:
    """Return the grant's start and expiry in whole seconds, within the segment's limits."""
    if duration is None:
        duration = limits.default
    if isinstance(duration, bool) or not isinstance(duration, int | float):
        message = f"duration must be a number of seconds, not {duration!r}"
        raise GrantError("invalid_duration", message)
    if not 1 <= duration < math.inf:
        message = f"duration must be at least 1 second and finite, not {duration!r}"
        raise GrantError("invalid_duration", message)
    if duration > limits.maximum:
        message = (
            f"duration {duration:g} s exceeds the maximum of {limits.maximum:g} s for segment "
            f"{segment!r}; request {limits.maximum:g} s or less"
        )
        raise GrantError("duration_too_long", message)

    begin = now if start is None else start
    if isinstance(begin, bool) or not isinstance(begin, int | float) or not math.isfinite(begin):
        message = f"start must be seconds since the epoch, not {start!r}"
        raise GrantError("invalid_start", message)
    if start is not None and start < now - 1:
        message = f"start {start:.0f} is in the past (now is {now:.0f}); omit it to start now"
        raise GrantError("invalid_start", message)
    if begin - now > limits.max_start_delay:
        message = (
            f"start is {begin - now:.0f} s away, more than the {limits.max_start_delay:g} s "
            f"allowed for segment {segment!r}"
        )
        raise GrantError("invalid_start", message)

    # Tokens carry whole seconds. Rounding the start down and the expiry down keeps the stored
    # window equal to the token's and never longer than the duration requested.
    not_before = float(math.floor(begin))
    expires_at = float(math.floor(not_before + duration))

    return not_before, expires_at
