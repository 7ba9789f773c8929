# SPDX-License-Identifier: Apache-2.0
"""The demo's grant steps: minting and revoking a just-in-time grant between scripted requests."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, get_args

from ..grants import Grant, GrantBroker, GrantError, IssuedGrant
from ..grants.events import GrantEventKind
from .script import GrantStep, MintGrant, Probe

__all__ = [
    "GRANT_EVENT_KINDS",
    "GrantEventCheck",
    "GrantSteps",
    "StepOutcome",
    "check_grant_events",
    "expected_grant_events",
]

GRANT_EVENT_KINDS: tuple[str, ...] = get_args(GrantEventKind)


@dataclass(frozen=True, slots=True)
class StepOutcome:
    """
    The result of one grant step.

    Attributes:
        step: The scripted step.
        after_request: How many scripted requests were sent before the step ran.
        grant: The grant as the broker returned it, or ``None`` when the step failed.
        error: Why the step failed, when it did.
    """

    step: GrantStep
    after_request: int
    grant: Grant | None
    error: str | None = None

    @property
    def matched(self) -> bool:
        return self.error is None


@dataclass(frozen=True, slots=True)
class GrantEventCheck:
    """
    The comparison of the grant events in the events file with the ones the run should cause.

    Attributes:
        passed: Whether every expected event kind was written as often as expected, and every
            grant event names a grant the run minted.
        detail: What differs, or a summary when nothing does.
        counts: How many events of each kind were written.
    """

    passed: bool
    detail: str
    counts: dict[str, int] = dataclasses.field(default_factory=dict)


class GrantSteps:
    """
    Run the script's grant steps through a broker, and give requests the grant to send.

    Only the most recently minted grant is sent or revoked, so a script mints before it uses.
    """

    def __init__(self, broker: GrantBroker) -> None:
        self.broker = broker
        self.issued: list[IssuedGrant] = []

    @property
    def tokens(self) -> tuple[str, ...]:
        """Every grant token minted so far, for the leak checks."""
        return tuple(issued.token for issued in self.issued)

    def run(self, step: GrantStep, after_request: int) -> StepOutcome:
        """Mint or revoke a grant; a `GrantError` becomes the outcome's error."""
        try:
            if isinstance(step, MintGrant):
                grant = self._mint(step)
            else:
                grant = self._revoke(step.revoked_by, step.reason)
        except GrantError as error:
            return StepOutcome(step, after_request, None, f"{error.reason}: {error}")

        return StepOutcome(step, after_request, grant)

    def prepare(self, probe: Probe) -> Probe:
        """
        Return the probe with the current grant's token and its expected ``grant_id`` fact.

        Probes that send no grant are returned unchanged.

        Raises:
            LookupError: if the probe sends a grant but no grant was minted.
        """
        if not probe.sends_grant:
            return probe
        if not self.issued:
            message = "no grant to send, because no grant was minted before this request"
            raise LookupError(message)

        current = self.issued[-1]
        facts = {**probe.expected_facts, "grant_id": current.grant.grant_id}
        return dataclasses.replace(probe, grant_token=current.token, expected_facts=facts)

    def _mint(self, step: MintGrant) -> Grant:
        issued = self.broker.mint(
            subject=step.subject,
            segment=step.segment,
            methods=step.methods,
            paths=step.paths,
            reason=step.reason,
            requested_by=step.requested_by,
            approver=step.approver,
            duration=step.duration,
        )
        self.issued.append(issued)
        return issued.grant

    def _revoke(self, revoked_by: str, reason: str) -> Grant:
        if not self.issued:
            message = "no grant to revoke, because no grant was minted before this step"
            raise GrantError("grant_not_found", message)
        grant_id = self.issued[-1].grant.grant_id
        return self.broker.revoke(grant_id, revoked_by=revoked_by, reason=reason)


def expected_grant_events(steps: Iterable[StepOutcome]) -> Counter[str]:
    """
    Count the broker's grant events a run should write, by kind.

    Each successful mint writes ``grant_requested``, ``grant_approved`` and ``grant_minted``,
    and each successful revocation writes ``grant_revoked``. The verifier's ``grant_used``
    events depend on the requests, so `check_grant_events` checks them separately.
    """
    expected: Counter[str] = Counter()
    for outcome in steps:
        if not outcome.matched:
            continue
        if isinstance(outcome.step, MintGrant):
            expected.update(["grant_requested", "grant_approved", "grant_minted"])
        else:
            expected["grant_revoked"] += 1

    return expected


def check_grant_events(
    events: Sequence[dict[str, Any]],
    steps: Sequence[StepOutcome],
    *,
    allowed_request_ids: Collection[str],
    grant_request_ids: Collection[str],
) -> GrantEventCheck:
    """
    Compare the grant events written with the ones the steps and requests should cause.

    Args:
        events: The grant events written.
        steps: The outcomes of the grant steps.
        allowed_request_ids: Requests that sent a grant and were allowed; each needs a
            ``grant_used`` event, because the demo's verifier audits every use, and no other
            request may have one.
        grant_request_ids: Every request that sent a grant, allowed or denied.
    """
    counts = Counter(str(event.get("event")) for event in events)
    ordered = {kind: counts[kind] for kind in GRANT_EVENT_KINDS if counts[kind]}
    expected = expected_grant_events(steps)
    problems = [
        f"{kind}: expected {expected[kind]}, got {counts[kind]}"
        for kind in GRANT_EVENT_KINDS
        if kind != "grant_used" and expected[kind] != counts[kind]
    ]

    # The verifier records a use only for a request that went through, so the grant_used
    # events must name exactly the requests allowed with the grant.
    used_ids = {event.get("request_id") for event in events if event.get("event") == "grant_used"}
    unused = sorted(set(allowed_request_ids) - used_ids)
    if unused:
        problems.append(f"no grant_used event for requests {', '.join(unused)}")
    unexpected = sorted(str(request_id) for request_id in used_ids - set(allowed_request_ids))
    if unexpected:
        listed = ", ".join(unexpected)
        problems.append(f"grant_used events for requests that were not allowed: {listed}")

    minted = {outcome.grant.grant_id for outcome in steps if outcome.grant is not None}
    foreign = sum(event.get("grant_id") not in minted for event in events)
    if foreign:
        problems.append(f"{foreign} grant events name a grant_id that this run did not mint")

    if problems:
        return GrantEventCheck(False, "; ".join(problems), ordered)
    return GrantEventCheck(True, f"{len(events)} grant events as expected", ordered)
