# SPDX-License-Identifier: Apache-2.0
"""The verifier contract: one input to the trust algorithm, and the verdict it returns."""

from __future__ import annotations

import abc
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from ..exceptions import ConfigurationError, ZeroTrustError

if TYPE_CHECKING:
    from ..engine import Decision
    from ..policy import Segment
    from ..request import AccessRequest

__all__ = ["Deny", "Outcome", "Principal", "Verdict", "VerificationContext", "Verifier"]

Outcome = Literal["pass", "fail", "not_applicable"]
VerifierKind = Literal["identity", "context"]

_REASON = re.compile(r"[a-z][a-z0-9_]{0,63}")
_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Principal:
    """
    The authenticated subject of a request.

    Attributes:
        subject: The stable subject identifier, such as the ``sub`` claim.
        issuer: Who vouched for the subject, such as the ``iss`` claim.
        scopes: Granted OAuth scopes.
        roles: Granted roles or groups.
        claims: Every verified claim, for the application. Never copied into access events.
        expires_at: When the credential expires, seconds since the epoch, if known.
        credential_fingerprint: A short hash of the credential, safe to log.
        auth_time: When the user last authenticated, seconds since the epoch (OIDC ``auth_time``).
        acr: The authentication context class reference (OIDC ``acr``), such as ``phr``.
        amr: The authentication methods used (RFC 8176 ``amr``), such as ``{"pwd", "mfa"}``.
    """

    subject: str
    issuer: str | None = None
    scopes: frozenset[str] = frozenset()
    roles: frozenset[str] = frozenset()
    claims: Mapping[str, Any] = field(default_factory=lambda: _EMPTY, repr=False)
    expires_at: float | None = None
    credential_fingerprint: str | None = None
    auth_time: float | None = None
    acr: str | None = None
    amr: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Verdict:
    """
    What one verifier concluded about one request.

    Build verdicts with `Verdict.passed`, `Verdict.failed` and `Verdict.not_applicable`.

    Attributes:
        outcome: ``pass``, ``fail`` or ``not_applicable``.
        reason: A reason code such as ``token_expired`` (lower-case, ``_``-separated), set when
            the verdict is not a pass. Recorded in the access event, never sent to the client.
        detail: A longer explanation for the access event. Must not contain secrets.
        principal: The principal an identity verifier established.
        facts: Other facts the verifier established (device id, country...), recorded in the
            access event. Must not contain secrets.
        bound_subject: The subject a credential is bound to, such as the owner of a device; the
            engine denies the request if it differs from the principal's subject.
        challenge: Extra ``WWW-Authenticate`` parameters for a 401, such as ``error``.
        elevates: For a pass: the verdict stands in for the segment's standing ``roles``, as a
            just-in-time grant does. The principal needs no listed role then.
        forbidden: For a failure of an identity verifier: the caller was authenticated but is
            not allowed, so the answer is 403 rather than 401. Pass the ``principal`` too, so
            the event records who was refused.
    """

    outcome: Outcome
    reason: str | None = None
    detail: str | None = None
    principal: Principal | None = None
    facts: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    bound_subject: str | None = None
    challenge: Mapping[str, str] | None = None
    forbidden: bool = False
    elevates: bool = False

    @classmethod
    def passed(
        cls,
        *,
        principal: Principal | None = None,
        bound_subject: str | None = None,
        elevates: bool = False,
        **facts: Any,
    ) -> Verdict:
        return cls(
            "pass",
            principal=principal,
            bound_subject=bound_subject,
            facts=facts or _EMPTY,
            elevates=elevates,
        )

    @classmethod
    def failed(
        cls,
        reason: str,
        detail: str | None = None,
        *,
        challenge: Mapping[str, str] | None = None,
        forbidden: bool = False,
        principal: Principal | None = None,
        **facts: Any,
    ) -> Verdict:
        _check_reason(reason)
        return cls(
            "fail",
            reason,
            detail,
            principal=principal,
            facts=facts or _EMPTY,
            challenge=challenge,
            forbidden=forbidden,
        )

    @classmethod
    def not_applicable(cls, reason: str | None = None, **facts: Any) -> Verdict:
        if reason is not None:
            _check_reason(reason)
        return cls("not_applicable", reason, facts=facts or _EMPTY)


def shared_verdict(verdict: Verdict) -> Verdict:
    """
    Return ``verdict`` with its facts in a read-only mapping, so one object can serve many
    requests without any of them changing what the others see.
    """
    if not verdict.facts or isinstance(verdict.facts, MappingProxyType):
        return verdict
    # Positional arguments in field order: dataclasses.replace costs several times more.
    return Verdict(
        verdict.outcome,
        verdict.reason,
        verdict.detail,
        verdict.principal,
        MappingProxyType(dict(verdict.facts)),
        verdict.bound_subject,
        verdict.challenge,
        verdict.forbidden,
        verdict.elevates,
    )


def _check_reason(reason: str) -> None:
    if not isinstance(reason, str) or not _REASON.fullmatch(reason):
        message = f"reason code {reason!r} must be lower-case letters, digits and '_' (max 64)"
        raise ValueError(message)


class Deny(ZeroTrustError):
    """
    Raise inside `Verifier.verify` to fail the request with a reason code.

    Equivalent to returning ``Verdict.failed(reason, detail)``, and handy deep in helpers.
    """

    def __init__(self, reason: str, detail: str | None = None) -> None:
        _check_reason(reason)
        super().__init__(detail or reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class VerificationContext:
    """
    Information a verifier receives besides the request itself.

    Attributes:
        segment: The segment the request fell in.
    """

    segment: Segment


class Verifier(abc.ABC):
    """
    Base class of every verifier; subclass it and implement `verify`.

    The engine calls `verify` for each request in a segment that lists the verifier, at the same
    time as the segment's other verifiers, and gives up after `timeout` seconds. Raising an
    exception, returning anything but a `Verdict`, or running out of time each fail the
    request: a verifier can never allow by accident.

    A verifier keeps configuration only; it must not store per-request state on ``self``,
    because one instance serves concurrent requests.

    Args:
        name: Name in access events and policy files; defaults to the class attribute `name`.
        timeout: Seconds `verify` may take, including any I/O. Must be positive.
        required: When ``True`` (the default), ``not_applicable`` fails the request too. When
            ``False``, the verifier may abstain, but a ``fail`` still denies.

    Example::

        class OfficeHoursVerifier(Verifier):
            name = "office_hours"

            async def verify(self, request, context):
                hour = time.gmtime(request.time).tm_hour
                if 8 <= hour < 18:
                    return Verdict.passed()
                return Verdict.failed("outside_office_hours")
    """

    name: ClassVar[str] = "verifier"
    kind: ClassVar[VerifierKind] = "context"
    """``identity`` verifiers establish who is asking, so their failures return 401, not 403."""

    timeout: float
    required: bool

    def __init__(
        self, *, name: str | None = None, timeout: float = 2.0, required: bool = True
    ) -> None:
        if name is not None:
            if not isinstance(name, str) or not _NAME.fullmatch(name):
                message = f"verifier name {name!r} must be 1 to 64 letters, digits, '_', '.' or '-'"
                raise ConfigurationError(message, parameter="name", value=name)
            self.name = name  # type: ignore[misc]
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not 0 < timeout < float("inf")
        ):
            message = (
                f"verifier timeout must be a positive, finite number of seconds, not {timeout!r}"
            )
            raise ConfigurationError(message, parameter="timeout", value=timeout)

        self.timeout = float(timeout)
        self.required = bool(required)

    @abc.abstractmethod
    async def verify(self, request: AccessRequest, context: VerificationContext) -> Verdict:
        """
        Judge one request.

        Returns:
            A `Verdict`. Raise `Deny` to fail with a reason code; any other exception fails
            the request with reason ``verifier_error``.
        """

    def verify_cached(self, request: AccessRequest, context: VerificationContext) -> Verdict | None:
        """
        Return a verdict without waiting, or ``None`` to fall back to `verify`.

        Override this for verdicts that need no I/O, such as a token found in a cache. The
        engine calls it on the event loop without a timeout, so it must not block.
        """
        return None

    def after_decision(self, request: AccessRequest, decision: Decision) -> None:  # noqa: B027
        """
        React to the final decision on a request this verifier judged, such as to audit it.

        The engine calls it on the event loop, after every verifier of the segment ran and the
        requirements were applied, so it must not block. Exceptions are logged and ignored.
        """

    def __repr__(self) -> str:
        return f"<{type(self).__name__} name={self.name!r}>"
