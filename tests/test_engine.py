# SPDX-License-Identifier: Apache-2.0
from __future__ import annotations

import asyncio
import time
import warnings

import pytest
from starlette.datastructures import Headers

from zerotrust import (
    AccessRequest,
    Deny,
    Engine,
    InsecureConfigurationWarning,
    Policy,
    Principal,
    Segment,
    Verdict,
    VerificationContext,
    Verifier,
)
from zerotrust.testing import StaticVerifier, abstain, allow, deny


def request(
    path: str = "/api/items", method: str = "GET", problem: str | None = None
) -> AccessRequest:
    return AccessRequest(
        method=method,
        path=path,
        raw_path=path,
        host="api.test",
        headers=Headers(raw=[]),
        client_ip=None,
        peer_ip=None,
        request_id="req-1",
        time=time.time(),
        problem=problem,
    )


def decide(*verifiers: Verifier, req: AccessRequest | None = None, **options: object):  # type: ignore[no-untyped-def]
    segment = Segment("api", paths=["/api/"], verifiers=verifiers, **options)  # type: ignore[arg-type]
    engine = Engine(Policy([segment, Segment("health", paths=["/healthz"], public=True)]))
    return asyncio.run(engine.decide(req or request()))


class Crashing(Verifier):
    name = "crashing"

    async def verify(self, request: AccessRequest, context: VerificationContext) -> Verdict:
        raise RuntimeError("database on fire")


class CrashingFast(Verifier):
    name = "crashing_fast"

    def verify_cached(self, request: AccessRequest, context: VerificationContext) -> Verdict | None:
        raise KeyError("boom")

    async def verify(self, request: AccessRequest, context: VerificationContext) -> Verdict:
        return Verdict.passed()


class Sleeping(Verifier):
    name = "sleeping"

    def __init__(self, seconds: float, **options: object) -> None:
        super().__init__(**options)  # type: ignore[arg-type]
        self.seconds = seconds

    async def verify(self, request: AccessRequest, context: VerificationContext) -> Verdict:
        await asyncio.sleep(self.seconds)
        return Verdict.passed()


class Raising(Verifier):
    name = "raising"

    async def verify(self, request: AccessRequest, context: VerificationContext) -> Verdict:
        raise Deny("device_unknown", "no such device")


class WrongType(Verifier):
    name = "wrong_type"

    async def verify(self, request: AccessRequest, context: VerificationContext) -> Verdict:
        return True  # type: ignore[return-value]


class InnerTimeout(Verifier):
    name = "inner_timeout"

    async def verify(self, request: AccessRequest, context: VerificationContext) -> Verdict:
        raise TimeoutError("upstream timed out")


class Bound(Verifier):
    name = "bound"

    def __init__(self, owner: str) -> None:
        super().__init__()
        self.owner = owner

    async def verify(self, request: AccessRequest, context: VerificationContext) -> Verdict:
        return Verdict.passed(bound_subject=self.owner, device_id="laptop-7")


class TestVerdicts:
    def test_all_pass(self) -> None:
        """An authenticated request with every check passed is allowed with status 200."""
        decision = decide(allow("alice"))

        assert decision.allowed
        assert 200 == decision.status
        assert () == decision.reasons
        assert "alice" == decision.principal.subject  # type: ignore[union-attr]

    def test_exception_denies(self) -> None:
        """A verifier that raises denies with verifier_error, recording the exception type."""
        decision = decide(allow("alice"), Crashing())

        assert not decision.allowed
        assert ("verifier_error",) == decision.reasons
        assert "RuntimeError: database on fire" == decision.verdicts[1].detail

    def test_exception_in_fast_path_denies(self) -> None:
        """An exception from verify_cached also denies."""
        decision = decide(allow("alice"), CrashingFast())

        assert ("verifier_error",) == decision.reasons

    def test_timeout_denies(self) -> None:
        """A verifier slower than its timeout denies with verifier_timeout, on time."""
        started = time.perf_counter()

        decision = decide(allow("alice"), Sleeping(5, timeout=0.05))

        assert ("verifier_timeout",) == decision.reasons
        assert time.perf_counter() - started < 1

    def test_inner_timeout_is_an_error(self) -> None:
        """A TimeoutError raised by the verifier itself is an error, not the engine's timeout."""
        decision = decide(allow("alice"), InnerTimeout())

        assert ("verifier_error",) == decision.reasons

    def test_deny_exception(self) -> None:
        """Raising Deny fails with its reason code and detail."""
        decision = decide(allow("alice"), Raising())

        assert ("device_unknown",) == decision.reasons
        assert "no such device" == decision.verdicts[1].detail

    def test_non_verdict_denies(self) -> None:
        """Returning anything but a Verdict is a verifier_error."""
        decision = decide(allow("alice"), WrongType())

        assert ("verifier_error",) == decision.reasons

    def test_verifiers_run_concurrently(self) -> None:
        """Two slow verifiers take about as long as one, not the sum."""
        started = time.perf_counter()

        decision = decide(allow("alice"), Sleeping(0.3, name="one"), Sleeping(0.3, name="two"))

        assert decision.allowed
        assert time.perf_counter() - started < 0.55

    def test_required_abstention_denies(self) -> None:
        """A required verifier that is not applicable fails the request."""
        decision = decide(allow("alice"), abstain(required=True))

        assert not decision.allowed
        assert ("not_applicable",) == decision.reasons

    def test_optional_abstention_allows(self) -> None:
        """An optional verifier may abstain."""
        decision = decide(allow("alice"), abstain(required=False))

        assert decision.allowed

    def test_optional_failure_denies(self) -> None:
        """An optional verifier that fails still denies."""
        failing = StaticVerifier("fail", reason="geo_blocked", required=False)

        decision = decide(allow("alice"), failing)

        assert ("geo_blocked",) == decision.reasons

    def test_records_every_verifier(self) -> None:
        """The decision keeps one record per verifier, in order, with durations."""
        decision = decide(allow("alice"), Sleeping(0.01))

        assert ["allow", "sleeping"] == [record.name for record in decision.verdicts]
        assert all(record.duration >= 0 for record in decision.verdicts)


class TestStatus:
    def test_identity_failure_is_401(self) -> None:
        """A failed identity verifier returns 401 with an invalid_token challenge."""
        decision = decide(deny("token_expired", identity=True))

        assert 401 == decision.status
        assert {"error": "invalid_token"} == dict(decision.challenge or {})

    def test_context_failure_is_403(self) -> None:
        """A failed context verifier returns 403 without a challenge."""
        decision = decide(allow("alice"), deny("geo_blocked"))

        assert 403 == decision.status
        assert decision.challenge is None

    def test_no_identity_is_401(self) -> None:
        """A protected segment where no verifier established a principal returns 401."""
        decision = decide(StaticVerifier("pass"))

        assert 401 == decision.status
        assert ("identity_missing",) == decision.reasons

    def test_insufficient_scope(self) -> None:
        """Missing scopes answer 403 with an insufficient_scope challenge naming them."""
        decision = decide(allow("alice", scopes=["read"]), scopes={"GET": ["read", "write"]})

        assert 403 == decision.status
        assert ("insufficient_scope",) == decision.reasons
        assert ("write",) == decision.missing_scopes
        assert {"error": "insufficient_scope", "scope": "write"} == dict(decision.challenge or {})

    def test_method_not_permitted(self) -> None:
        """A method missing from a per-method scope map is denied."""
        decision = decide(allow("alice"), scopes={"GET": []}, req=request(method="DELETE"))

        assert ("method_not_permitted",) == decision.reasons

    def test_roles_any_of(self) -> None:
        """One of the listed roles is enough."""
        decision = decide(allow("alice", roles=["auditor"]), roles=["admin", "auditor"])

        assert decision.allowed

    def test_insufficient_role(self) -> None:
        """A principal with none of the roles is denied with 403."""
        decision = decide(allow("alice", roles=["reader"]), roles=["admin"])

        assert 403 == decision.status
        assert ("insufficient_role",) == decision.reasons


class TestPrincipals:
    def test_binding_match(self) -> None:
        """A credential bound to the principal's subject passes and its facts are merged."""
        decision = decide(allow("alice"), Bound("alice"))

        assert decision.allowed
        assert "laptop-7" == decision.facts["device_id"]

    def test_binding_mismatch(self) -> None:
        """A credential bound to another subject denies."""
        decision = decide(allow("alice"), Bound("mallory"))

        assert ("subject_binding_mismatch",) == decision.reasons

    def test_conflicting_principals(self) -> None:
        """Two identity verifiers naming different subjects deny."""
        decision = decide(allow("alice", name="one"), allow("bob", name="two"))

        assert "conflicting_principals" in decision.reasons


class TestRouting:
    def test_no_segment(self) -> None:
        """A request no segment matches is denied with no_segment."""
        engine = Engine(Policy([Segment("health", paths=["/healthz"], public=True)]))

        decision = asyncio.run(engine.decide(request("/admin")))

        assert ("no_segment",) == decision.reasons
        assert decision.segment is None

    def test_problem_denies_before_matching(self) -> None:
        """A malformed request is denied with its problem, and no verifier runs."""
        decision = decide(allow("alice"), req=request(problem="encoded_slash"))

        assert ("encoded_slash",) == decision.reasons
        assert () == decision.verdicts

    def test_public_segment(self) -> None:
        """A public segment allows without a principal."""
        engine = Engine(Policy([Segment("health", paths=["/healthz"], public=True)]))

        decision = asyncio.run(engine.decide(request("/healthz")))

        assert decision.allowed
        assert decision.principal is None

    def test_monitor_lets_through(self) -> None:
        """In monitor mode a denial is recorded but the request goes through."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", InsecureConfigurationWarning)
            decision = decide(deny("geo_blocked", identity=False), allow("alice"), mode="monitor")

        assert not decision.allowed
        assert decision.lets_through
        assert "monitor" == decision.mode


class TestVerdictBuilders:
    @pytest.mark.parametrize("reason", ["", "Has-Caps", "with space", "x" * 65, "1abc"])
    def test_reason_codes_checked(self, reason: str) -> None:
        """Reason codes are short snake_case identifiers."""
        with pytest.raises(ValueError, match="reason code"):
            Verdict.failed(reason)

    def test_passed_carries_facts(self) -> None:
        """Keyword arguments become facts."""
        verdict = Verdict.passed(principal=Principal("alice"), country="DE")

        assert "pass" == verdict.outcome
        assert {"country": "DE"} == dict(verdict.facts)

    @pytest.mark.parametrize("timeout", [0, -1, "1", True, float("nan"), float("inf")])
    def test_timeout_validated(self, timeout: object) -> None:
        """A verifier timeout must be a positive number."""
        with pytest.raises(ValueError, match="timeout"):
            Sleeping(1, timeout=timeout)


class Elevating(Verifier):
    name = "grant"

    def __init__(self, owner: str) -> None:
        super().__init__()
        self.owner = owner

    async def verify(self, request: AccessRequest, context: VerificationContext) -> Verdict:
        return Verdict.passed(bound_subject=self.owner, elevates=True, grant_id="g-1")


class TestElevation:
    def test_elevating_verdict_replaces_roles(self) -> None:
        """A passed verdict that elevates replaces the segment's role requirement."""
        decision = decide(allow("alice", roles=["reader"]), Elevating("alice"), roles=["admin"])

        assert decision.allowed
        assert "g-1" == decision.facts["grant_id"]

    def test_elevation_bound_to_subject(self) -> None:
        """An elevation bound to another subject denies."""
        decision = decide(allow("alice"), Elevating("mallory"), roles=["admin"])

        assert ("subject_binding_mismatch",) == decision.reasons

    def test_elevation_keeps_scopes(self) -> None:
        """Elevation replaces roles only: required scopes still apply."""
        decision = decide(
            allow("alice", scopes=[]), Elevating("alice"), roles=["admin"], scopes=["read"]
        )

        assert ("insufficient_scope",) == decision.reasons


class TestBindingRecord:
    def test_mismatch_names_both_subjects(self) -> None:
        """The bound verifier's record turns into a failure that names both subjects."""
        decision = decide(allow("alice"), Bound("mallory"))
        record = decision.verdicts[1]

        assert "fail" == record.outcome
        assert "subject_binding_mismatch" == record.reason
        assert "bound to subject 'mallory', not to 'alice'" == record.detail
