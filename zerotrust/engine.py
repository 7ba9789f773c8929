# SPDX-License-Identifier: Apache-2.0
"""The policy decision point: runs a segment's verifiers and applies its requirements."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any, NamedTuple

from .policy import Mode, Policy, Segment
from .request import AccessRequest
from .verifiers.base import Deny, Outcome, Principal, Verdict, VerificationContext, Verifier

__all__ = ["Decision", "Engine", "VerdictRecord"]

logger = logging.getLogger("zerotrust.engine")

_MAX_DETAIL = 300
# Clock skew tolerated between the identity provider and this server for auth_time, in seconds.
_MAX_AUTH_TIME_SKEW = 60.0


class VerdictRecord(NamedTuple):
    """
    One verifier's verdict on one request, as the access event records it.

    Attributes:
        name: The verifier's name.
        kind: ``identity`` or ``context``.
        outcome: ``pass``, ``fail`` or ``not_applicable``.
        reason: The reason code, if any.
        detail: The longer explanation, if any.
        duration: Seconds the verifier took.
        verdict: The full verdict.
    """

    name: str
    kind: str
    outcome: Outcome
    reason: str | None
    detail: str | None
    duration: float
    verdict: Verdict


# Builds a VerdictRecord from a tuple of its fields without the Python-level __new__ of a
# NamedTuple, which costs more than the tuple itself on the request path.
_new_record = functools.partial(tuple.__new__, VerdictRecord)


@dataclass(frozen=True, slots=True)
class Decision:
    """
    The engine's decision on one request.

    Attributes:
        allowed: Whether the policy allows the request. In monitor mode a request that is not
            allowed still goes through; see `lets_through`.
        status: 200 when allowed, otherwise 401 (identity) or 403 (everything else).
        reasons: Reason codes of every failed check, in verifier order; empty when allowed.
        segment: The matched segment, or ``None`` when the request matched none or was malformed.
        mode: The segment's mode; ``enforce`` when there is no segment.
        principal: The authenticated principal, if any.
        verdicts: One record per verifier that ran.
        challenge: ``WWW-Authenticate`` parameters for a 401 or an ``insufficient_scope`` 403.
        facts: The facts of every passed verdict, merged in verifier order.
        missing_scopes: Required scopes the principal lacks, sorted.
    """

    allowed: bool
    status: int
    reasons: tuple[str, ...]
    segment: Segment | None
    mode: Mode
    principal: Principal | None = None
    verdicts: tuple[VerdictRecord, ...] = ()
    challenge: Mapping[str, str] | None = None
    facts: Mapping[str, Any] = field(default_factory=dict)
    missing_scopes: tuple[str, ...] = ()

    @property
    def lets_through(self) -> bool:
        """Whether the enforcement point passes the request to the app."""
        return self.allowed or self.mode == "monitor"

    @property
    def reason(self) -> str | None:
        """The first reason code, or ``None`` when allowed."""
        return self.reasons[0] if self.reasons else None


def deny(reason: str, status: int = 403, segment: Segment | None = None) -> Decision:
    """Build a denial that ran no verifier, such as for a malformed request."""
    mode: Mode = segment.mode if segment is not None else "enforce"
    return Decision(False, status, (reason,), segment, mode)


class Engine:
    """
    Decide requests against a `Policy`.

    The engine does not depend on ASGI or WSGI: both enforcement points build an
    `AccessRequest` and call `decide`.
    """

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self._contexts = {segment: VerificationContext(segment) for segment in policy.segments}
        # Only verifiers that override after_decision are called, so the others cost nothing.
        self._observers = {
            segment: tuple(
                verifier
                for verifier in segment.verifiers
                if type(verifier).after_decision is not Verifier.after_decision
            )
            for segment in policy.segments
        }

    async def decide(self, request: AccessRequest) -> Decision:
        """Decide one request; verifier exceptions and timeouts become failed verdicts."""
        if request.problem is not None:
            return deny(request.problem)

        segment = self.policy.match(request.path, method=request.method, host=request.host)
        if segment is None:
            return deny("no_segment")

        records = await self._run_verifiers(segment, request)

        return self._conclude(segment, request, records)

    def decide_cached(self, request: AccessRequest) -> Decision | None:
        """
        Decide one request without awaiting, or return ``None`` when a verifier must await.

        Every verifier of the matched segment must return a verdict from
        `Verifier.verify_cached`. A caller outside an event loop, such as the WSGI enforcement
        point, tries this first and awaits `decide` only on ``None``, which then calls each
        verifier's `Verifier.verify_cached` again.
        """
        if request.problem is not None:
            return deny(request.problem)

        segment = self.policy.match(request.path, method=request.method, host=request.host)
        if segment is None:
            return deny("no_segment")

        records, pending = self._cached_records(segment, request)
        if pending:
            return None

        return self._conclude(segment, request, tuple(records))  # type: ignore[arg-type]

    def _conclude(
        self, segment: Segment, request: AccessRequest, records: tuple[VerdictRecord, ...]
    ) -> Decision:
        decision = _evaluate(segment, request, records)
        for verifier in self._observers[segment]:
            try:
                verifier.after_decision(request, decision)
            except Exception:
                logger.exception(
                    "after_decision of verifier %r failed for request %s",
                    verifier.name,
                    request.request_id,
                )

        return decision

    async def _run_verifiers(
        self, segment: Segment, request: AccessRequest
    ) -> tuple[VerdictRecord, ...]:
        verifiers = segment.verifiers
        if not verifiers:
            return ()

        records, pending = self._cached_records(segment, request)
        if not pending:
            return tuple(records)  # type: ignore[arg-type]

        context = self._contexts[segment]
        if len(pending) == 1:
            index = pending[0]
            records[index] = await _run_one(verifiers[index], request, context)
        elif pending:
            done = await asyncio.gather(
                *(_run_one(verifiers[index], request, context) for index in pending)
            )
            for index, record in zip(pending, done, strict=True):
                records[index] = record

        return tuple(record for record in records if record is not None)

    def _cached_records(
        self, segment: Segment, request: AccessRequest
    ) -> tuple[list[VerdictRecord | None], list[int]]:
        """Ask each verifier for a cached verdict; return the records and the indexes still open."""
        context = self._contexts[segment]
        records: list[VerdictRecord | None] = []
        pending: list[int] = []
        # One clock reading per verifier: each verdict's end is the next verifier's start.
        started = perf_counter()
        for index, verifier in enumerate(segment.verifiers):
            try:
                verdict = verifier.verify_cached(request, context)
            except Deny as error:
                verdict = Verdict.failed(error.reason, error.detail)
            except Exception as error:  # noqa: BLE001 -- a crashing verifier denies, never allows
                verdict = _error_verdict(verifier, request, error)
            ended = perf_counter()
            if verdict is None:
                records.append(None)
                pending.append(index)
                started = ended
                continue
            if type(verdict) is not Verdict and not isinstance(verdict, Verdict):
                detail = f"verify_cached() returned {type(verdict).__name__}, not a Verdict"
                verdict = Verdict.failed("verifier_error", detail)
            records.append(
                _new_record(
                    (
                        verifier.name,
                        verifier.kind,
                        verdict.outcome,
                        verdict.reason,
                        verdict.detail,
                        ended - started,
                        verdict,
                    )
                )
            )
            started = ended

        return records, pending


async def _run_one(
    verifier: Verifier, request: AccessRequest, context: VerificationContext
) -> VerdictRecord:
    started = perf_counter()
    deadline = asyncio.timeout(verifier.timeout)
    try:
        async with deadline:
            verdict: object = await verifier.verify(request, context)
    except TimeoutError as error:
        if deadline.expired():
            detail = f"no verdict within {verifier.timeout:g} s"
            verdict = Verdict.failed("verifier_timeout", detail)
        else:
            verdict = _error_verdict(verifier, request, error)
    except Deny as error:
        verdict = Verdict.failed(error.reason, error.detail)
    except Exception as error:  # noqa: BLE001 -- a crashing verifier denies, never allows
        verdict = _error_verdict(verifier, request, error)

    if not isinstance(verdict, Verdict):
        detail = f"verify() returned {type(verdict).__name__}, not a Verdict"
        verdict = Verdict.failed("verifier_error", detail)

    return _record(verifier, verdict, perf_counter() - started)


def _error_verdict(verifier: Verifier, request: AccessRequest, error: BaseException) -> Verdict:
    logger.warning(
        "verifier %r raised %s; denying request %s",
        verifier.name,
        type(error).__name__,
        request.request_id,
        exc_info=error,
        extra={"verifier": verifier.name, "request_id": request.request_id},
    )
    detail = f"{type(error).__name__}: {error}"[:_MAX_DETAIL]

    return Verdict.failed("verifier_error", detail)


def _record(verifier: Verifier, verdict: Verdict, duration: float) -> VerdictRecord:
    return VerdictRecord(
        verifier.name,
        verifier.kind,
        verdict.outcome,
        verdict.reason,
        verdict.detail,
        duration,
        verdict,
    )


def _step_up(segment: Segment, request: AccessRequest, principal: Principal) -> list[str]:
    """Return the reasons a fresher or stronger authentication is needed (RFC 9470)."""
    reasons = []
    if segment.max_auth_age is not None:
        auth_time = principal.auth_time
        if auth_time is None or request.time - auth_time > segment.max_auth_age:
            reasons.append("authentication_too_old")
        elif auth_time - request.time > _MAX_AUTH_TIME_SKEW:
            # A login in the future is no proof of a fresh one: the claim is wrong or forged.
            reasons.append("auth_time_in_future")
    if segment.acr_values and principal.acr not in segment.acr_values:
        reasons.append("acr_not_satisfied")
    if segment.amr and not segment.amr <= principal.amr:
        reasons.append("amr_not_satisfied")
    return reasons


def _step_up_challenge(segment: Segment) -> dict[str, str]:
    challenge = {"error": "insufficient_user_authentication"}
    if segment.acr_values:
        challenge["acr_values"] = " ".join(sorted(segment.acr_values))
    if segment.max_auth_age is not None:
        challenge["max_age"] = str(int(segment.max_auth_age))
    return challenge


def _check_bindings(
    records: tuple[VerdictRecord, ...], principal: Principal, reasons: list[str]
) -> tuple[VerdictRecord, ...]:
    """Fail every passed verdict bound to another subject, so the event shows which and why."""
    checked = list(records)
    for index, record in enumerate(records):
        bound = record.verdict.bound_subject
        if record.outcome != "pass" or bound is None or bound == principal.subject:
            continue
        reasons.append("subject_binding_mismatch")
        detail = f"bound to subject {bound[:100]!r}, not to {principal.subject[:100]!r}"
        checked[index] = record._replace(
            outcome="fail", reason="subject_binding_mismatch", detail=detail
        )

    return tuple(checked)


def _evaluate(
    segment: Segment, request: AccessRequest, records: tuple[VerdictRecord, ...]
) -> Decision:
    """Combine the verdicts with the segment's requirements into a decision."""
    reasons: list[str] = []
    identity_failed = False
    challenge: Mapping[str, str] | None = None
    principal: Principal | None = None
    facts: dict[str, Any] = {}

    authenticated = False
    elevated = False
    for record, verifier in zip(records, segment.verifiers, strict=True):
        verdict = record.verdict
        if record.outcome == "fail":
            reasons.append(record.reason or "verifier_failed")
            if verdict.forbidden:
                # Authenticated but not allowed: keep the principal for the event and return 403.
                authenticated = True
                if principal is None:
                    principal = verdict.principal
                continue
            if verifier.kind == "identity":
                identity_failed = True
                if challenge is None:
                    challenge = verdict.challenge
                    if challenge is None:
                        challenge = {"error": "invalid_token"}
            continue
        if record.outcome == "not_applicable":
            if verifier.required:
                reasons.append(f"{record.reason or 'not_applicable'}")
                identity_failed = identity_failed or verifier.kind == "identity"
            continue

        if verdict.facts:
            facts.update(verdict.facts)
        if verdict.elevates:
            elevated = True
        if verdict.principal is None:
            continue
        if principal is None:
            principal = verdict.principal
        elif principal.subject != verdict.principal.subject:
            reasons.append("conflicting_principals")

    if not identity_failed and principal is not None:
        records = _check_bindings(records, principal, reasons)
    if not segment.public and principal is None and not identity_failed and not authenticated:
        reasons.append("identity_missing")
        identity_failed = True

    if principal is not None and not identity_failed:
        step_up = _step_up(segment, request, principal)
        if step_up:
            reasons.extend(step_up)
            identity_failed = True
            challenge = _step_up_challenge(segment)

    missing: frozenset[str] = frozenset()
    required_scopes = segment.required_scopes(request.method)
    if required_scopes is None:
        reasons.append("method_not_permitted")
    elif principal is not None:
        missing = required_scopes - principal.scopes
        if missing:
            reasons.append("insufficient_scope")
            if not identity_failed:
                challenge = {"error": "insufficient_scope", "scope": " ".join(sorted(missing))}
        if segment.roles and not segment.roles & principal.roles and not elevated:
            reasons.append("insufficient_role")

    if not reasons:
        return Decision(True, 200, (), segment, segment.mode, principal, records, None, facts)

    status = 401 if identity_failed else 403
    if status == 403 and challenge is not None and challenge.get("error") != "insufficient_scope":
        challenge = None

    return Decision(
        False,
        status,
        tuple(reasons),
        segment,
        segment.mode,
        principal,
        records,
        challenge,
        facts,
        tuple(sorted(missing)),
    )
