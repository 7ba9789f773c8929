# SPDX-License-Identifier: Apache-2.0
"""Table tests of a policy: requests with expected decisions, run through the real engine."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .engine import Decision
from .exceptions import ConfigurationError
from .policy import Policy, Segment

if TYPE_CHECKING:
    from .asgi import ZeroTrustMiddleware
    from .testing import TokenIssuer

__all__ = [
    "CaseResult",
    "Expectation",
    "PolicyCase",
    "assert_decisions",
    "check_policy",
    "check_policy_async",
]

Expectation = Literal["allow", "deny", 401, 403]

_EXPECTATIONS = ("allow", "deny", 401, 403)
_CLAIM_ARGUMENTS = {"sub": "subject", "aud": "audience"}


@dataclass(frozen=True, slots=True)
class PolicyCase:
    """
    One row of a policy table test: a request and the decision it should get.

    Args:
        method: The HTTP method.
        path: The request target as a client sends it, percent-encoding and query included.
        expect: ``allow``; ``deny`` (any denial); or ``401`` or ``403`` (a denial with that
            status).
        reason: A reason code the decision must include, such as ``insufficient_scope``.
        claims: Claims of a bearer token to mint and send, such as ``{"sub": "alice",
            "scope": "orders:read"}``; ``None`` sends no token. ``sub`` defaults to
            ``alice`` and ``aud`` to the ``audience`` given to `check_policy`. A claim set to
            ``None`` is left out.
        token: A token to send as is, such as a tampered one; instead of ``claims``.
        headers: Further request headers.
        client_ip: The address the request comes from.
        host: The ``Host`` header.
        name: A name for reports and pytest ids; by default ``METHOD path -> expect``.
    """

    method: str = "GET"
    path: str = "/"
    expect: Expectation = "allow"
    reason: str | None = None
    claims: Mapping[str, Any] | None = None
    token: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    client_ip: str = "192.0.2.10"
    host: str = "app.test"
    name: str | None = None

    def __post_init__(self) -> None:
        if self.expect not in _EXPECTATIONS:
            message = f"expect must be 'allow', 'deny', 401 or 403, not {self.expect!r}"
            raise ConfigurationError(message, parameter="expect", value=self.expect)
        if self.expect == "allow" and self.reason is not None:
            message = f"a case that expects allow has no reason code, but reason={self.reason!r}"
            raise ConfigurationError(message, parameter="reason", value=self.reason)
        if self.claims is not None and self.token is not None:
            message = "give a case claims to mint a token, or a token, not both"
            raise ConfigurationError(message, parameter="token")
        if not self.path.startswith("/"):
            message = (
                f"path must be an absolute request target starting with '/', not {self.path!r}"
            )
            raise ConfigurationError(message, parameter="path", value=self.path)

    def __str__(self) -> str:
        return self.name or f"{self.method} {self.path} -> {self.expect}"


@dataclass(frozen=True, slots=True)
class CaseResult:
    """
    The decision the engine made for one `PolicyCase`.

    Attributes:
        case: The case.
        decision: The engine's decision.
        problems: Why the decision does not match the case; empty when it matches.
    """

    case: PolicyCase
    decision: Decision
    problems: tuple[str, ...]

    @property
    def matched(self) -> bool:
        """Whether the decision is the expected one."""
        return not self.problems

    def trace(self) -> str:
        """Describe the decision: segment, mode, status, reasons and every verdict."""
        decision = self.decision
        segment = decision.segment
        outcome = "allow" if decision.allowed else "deny"
        lines = [
            f"decision: {outcome} ({decision.status}), reasons: "
            f"{', '.join(decision.reasons) or '-'}",
            f"segment: {segment.name if segment is not None else '-'} ({decision.mode})",
        ]
        principal = decision.principal
        if principal is not None:
            lines.append(
                f"principal: {principal.subject}, scopes: {sorted(principal.scopes)}, "
                f"roles: {sorted(principal.roles)}"
            )
        if decision.missing_scopes:
            lines.append(f"missing scopes: {', '.join(decision.missing_scopes)}")
        for record in decision.verdicts:
            detail = f": {record.detail}" if record.detail else ""
            reason = f" {record.reason}" if record.reason else ""
            lines.append(f"  {record.name} ({record.kind}): {record.outcome}{reason}{detail}")
        return "\n".join(lines)

    def report(self) -> str:
        """Describe the case, what went wrong and the decision trace."""
        header = f"{self.case}: " + "; ".join(self.problems or ("as expected",))
        trace = "\n".join(f"    {line}" for line in self.trace().splitlines())
        return f"{header}\n{trace}"


async def check_policy_async(
    policy: Any,
    cases: Iterable[PolicyCase],
    *,
    issuer: TokenIssuer | None = None,
    audience: str | Sequence[str] = "api",
    environ: Mapping[str, str] | None = None,
) -> list[CaseResult]:
    """
    Decide every case with the real engine and return one result per case, in order.

    The coroutine form of `check_policy`, for tests that already run on an event loop.
    """
    middleware = _middleware_for(policy, environ)
    results = []
    for case in cases:
        scope = _scope_for(case, issuer, audience)
        request, _ = middleware._access_request(scope)
        decision = await middleware.engine.decide(request)
        results.append(CaseResult(case, decision, _compare(case, decision)))
    return results


def check_policy(
    policy: Any,
    cases: Iterable[PolicyCase],
    *,
    issuer: TokenIssuer | None = None,
    audience: str | Sequence[str] = "api",
    environ: Mapping[str, str] | None = None,
) -> list[CaseResult]:
    """
    Decide every case with the real engine, without a server, and return the results.

    Each case becomes the ASGI scope a server would build, then goes through the middleware's
    own request parsing (path checks, host, trusted proxies) and the engine's decision. The
    app is never called, so no handler runs and no access event is emitted.

    Args:
        policy: A `Policy`, a list of segments, a configured `ZeroTrustMiddleware` (to test
            with its trusted proxies and path settings), or a policy file (its path, or the
            `zerotrust.config.LoadedPolicy`), whose middleware settings apply too.
        cases: The cases to decide.
        issuer: Mints the tokens of cases with ``claims``; the policy must trust its keys.
        audience: The ``aud`` of minted tokens unless a case sets its own.
        environ: Where the ``{ env = "NAME" }`` references of a policy file given by its path
            are looked up; `os.environ` by default. Only for a path.

    Raises:
        ConfigurationError: for a ``policy`` of another type, or ``environ`` without a path.
        PolicyFileError: when the policy file is invalid.

    Works inside a running event loop too, by deciding on a worker thread's own loop.
    """
    cases = list(cases)
    coroutine = check_policy_async(policy, cases, issuer=issuer, audience=audience, environ=environ)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="zerotrust-cases") as pool:
        return pool.submit(asyncio.run, coroutine).result()


def assert_decisions(
    policy: Any,
    cases: Iterable[PolicyCase],
    *,
    issuer: TokenIssuer | None = None,
    audience: str | Sequence[str] = "api",
    environ: Mapping[str, str] | None = None,
) -> list[CaseResult]:
    """
    Decide every case like `check_policy`, then fail with every mismatch at once.

    Raises:
        AssertionError: listing each case whose decision differs, with its decision trace.
    """
    results = check_policy(policy, cases, issuer=issuer, audience=audience, environ=environ)
    failed = [result for result in results if not result.matched]
    if failed:
        reports = "\n".join(result.report() for result in failed)
        message = f"{len(failed)} of {len(results)} policy cases failed:\n{reports}"
        raise AssertionError(message)
    return results


def _middleware_for(policy: Any, environ: Mapping[str, str] | None) -> ZeroTrustMiddleware:
    from .asgi import ZeroTrustMiddleware
    from .events import EventEmitter

    is_path = isinstance(policy, str | os.PathLike)
    if environ is not None and not is_path:
        message = (
            "environ is only read when loading a policy file: pass the file's path, or give "
            "environ to zerotrust.config.load_policy yourself"
        )
        raise ConfigurationError(message, parameter="environ")
    if isinstance(policy, ZeroTrustMiddleware):
        return policy
    if is_path:
        from .config import load_policy

        # Sinks are checked but not opened: table tests emit no events.
        policy = load_policy(Path(policy), environ=environ, build_sinks=False)
    options = getattr(policy, "middleware_options", None)
    if callable(options):
        # A loaded policy file: decide with its trusted proxies and path settings too.
        settings = {**options(), "policy": policy, "events": EventEmitter([])}
        return ZeroTrustMiddleware(_never_called, **settings)
    if isinstance(policy, Policy):
        pass
    elif isinstance(policy, Sequence) and all(isinstance(item, Segment) for item in policy):
        policy = Policy(policy)
    elif isinstance(getattr(policy, "policy", None), Policy):
        policy = policy.policy
    else:
        message = (
            "policy must be a Policy, a list of segments, a ZeroTrustMiddleware or a policy "
            f"file path, not {type(policy).__name__}"
        )
        raise ConfigurationError(message, parameter="policy", value=type(policy).__name__)

    return ZeroTrustMiddleware(_never_called, policy=policy, events=EventEmitter([]))


async def _never_called(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("policy table tests never call the app")


def _scope_for(
    case: PolicyCase, issuer: TokenIssuer | None, audience: str | Sequence[str]
) -> dict[str, Any]:
    """Build the ASGI scope uvicorn would for the case's request."""
    target = case.path.encode("utf-8")
    raw_path, _, query = target.partition(b"?")
    headers: list[tuple[bytes, bytes]] = [(b"host", case.host.encode("latin-1"))]
    token = case.token
    if case.claims is not None:
        token = _mint(case, issuer, audience)
    if token is not None:
        headers.append((b"authorization", f"Bearer {token}".encode("latin-1")))
    for name, value in case.headers.items():
        headers.append((name.lower().encode("latin-1"), value.encode("latin-1")))

    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": case.method.upper(),
        "scheme": "http",
        "path": urllib.parse.unquote(raw_path.decode("latin-1")),
        "raw_path": raw_path,
        "query_string": query,
        "root_path": "",
        "headers": headers,
        "client": (case.client_ip, 50000),
        "server": (case.host, 80),
    }


def _mint(case: PolicyCase, issuer: TokenIssuer | None, audience: str | Sequence[str]) -> str:
    if issuer is None:
        message = (
            f"case {str(case)!r} has token claims but no issuer was given: pass "
            "issuer=TokenIssuer(...) whose keys the policy trusts"
        )
        raise ConfigurationError(message, parameter="issuer")
    claims = dict(case.claims or {})
    arguments: dict[str, Any] = {"subject": "alice", "audience": _audience(audience)}
    for claim, argument in _CLAIM_ARGUMENTS.items():
        if claim in claims:
            arguments[argument] = claims.pop(claim)
    return issuer.token(**arguments, **claims)


def _audience(audience: str | Sequence[str]) -> str | list[str]:
    return audience if isinstance(audience, str) else list(audience)


def _compare(case: PolicyCase, decision: Decision) -> tuple[str, ...]:
    problems = []
    if case.expect == "allow":
        if not decision.allowed:
            problems.append(f"expected allow, got deny ({decision.status})")
    elif decision.allowed:
        problems.append(f"expected {case.expect}, got allow")
    elif case.expect != "deny" and decision.status != case.expect:
        problems.append(f"expected {case.expect}, got {decision.status}")
    if case.reason is not None and case.reason not in decision.reasons:
        found = ", ".join(decision.reasons) or "none"
        problems.append(f"expected reason {case.reason}, got {found}")
    return tuple(problems)
