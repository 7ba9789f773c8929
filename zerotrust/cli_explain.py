# SPDX-License-Identifier: Apache-2.0
"""The ``zerotrust explain`` command: trace the decision on one request without sending it."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import ipaddress
import json
import sys
import urllib.parse
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .cli import muted_logger
from .exceptions import MissingExtraError

if TYPE_CHECKING:
    from rich.console import Console

    from .config import LoadedPolicy
    from .engine import Decision
    from .policy import Segment
    from .request import AccessRequest

_PIPE_WIDTH = 160

__all__ = ["DESCRIPTION", "SUMMARY", "add_arguments", "explain", "run"]

SUMMARY = "trace the decision on one request without sending it"
DESCRIPTION = """\
Decide one request against the TOML policy file POLICY with the real engine and print the
trace: the segment chosen and the rule that matched, the other candidates, each verifier's
verdict with its reason and facts, the requirements checked, and the outcome and status.

Nothing is sent to the app. A JWKS the policy names is fetched, with the verifier's timeout;
when it cannot be fetched, an error is printed and the identity check fails. Tokens and other
credentials are printed only as fingerprints (16 hex digits of their SHA-256).

A token given with --token is visible to other users in the process list: prefer
--token-file FILE, or --token - to read it from standard input.

Exit status: 0 when the request would reach the app, 1 when it would be denied or the policy
file is invalid, 2 on a usage error."""

EXIT_ALLOWED = 0
EXIT_DENIED = 1
EXIT_USAGE = 2
# Request headers whose values are credentials: printed as fingerprints only.
_CREDENTIAL_HEADERS = frozenset(
    {"authorization", "cookie", "proxy-authorization", "x-device-assertion", "x-zerotrust-grant"}
)
_WARM_UP_TIMEOUT = 30.0
# The --token value that means "read the token from standard input".
_STDIN = "-"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of ``zerotrust explain``."""
    parser.add_argument("policy", metavar="POLICY", help="the TOML policy file")
    parser.add_argument("--method", default="GET", help="the HTTP method (default: GET)")
    parser.add_argument(
        "--path", required=True, help="the request path as a client sends it, such as /admin/x"
    )
    parser.add_argument("--host", default="", help="the Host header (default: none)")
    parser.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="a request header; repeat for more",
    )
    token = parser.add_mutually_exclusive_group()
    token.add_argument(
        "--token",
        metavar="TOKEN",
        help="a bearer token, sent as 'Authorization: Bearer TOKEN'; '-' reads it from "
        "standard input. Other users can see a token given here in the process list",
    )
    token.add_argument(
        "--token-file", metavar="FILE", help="read the bearer token from FILE (preferred)"
    )
    parser.add_argument(
        "--client-ip",
        metavar="IP",
        help="the address of the socket peer (default: unknown, as for a server that gives none)",
    )
    parser.add_argument("--json", action="store_true", help="print the trace as one JSON object")


def run(args: argparse.Namespace) -> int:
    """Trace the request and print it; return the exit status."""
    from .config import PolicyFileError, load_policy

    try:
        headers = _request_headers(args)
        if args.client_ip is not None:
            ipaddress.ip_address(args.client_ip)
    except (ValueError, OSError) as error:
        print(f"zerotrust explain: error: {error}", file=sys.stderr)
        return EXIT_USAGE

    try:
        with warnings.catch_warnings():
            # Risky settings are the business of 'zerotrust check'; a trace stays readable.
            warnings.simplefilter("ignore")
            loaded = load_policy(args.policy, build_sinks=False)
    except PolicyFileError as error:
        print(f"zerotrust explain: error: {error}", file=sys.stderr)
        return EXIT_DENIED

    # The trace reports a failed JWKS fetch itself, so the key set's own log line would
    # print the same error a second time.
    with muted_logger("zerotrust.jwks"):
        trace = asyncio.run(
            explain(loaded, args.method.upper(), args.path, args.host, headers, args.client_ip)
        )
    for message in trace["errors"]:
        print(f"zerotrust explain: error: {message}", file=sys.stderr)
    if args.json:
        print(json.dumps(trace, indent=2, default=str))
    else:
        if importlib.util.find_spec("rich") is None:
            raise MissingExtraError("zerotrust explain", "cli")
        _print_trace(_console(), trace)

    return EXIT_ALLOWED if trace["outcome"]["reaches_app"] else EXIT_DENIED


def _request_headers(args: argparse.Namespace) -> list[tuple[str, str]]:
    headers: list[tuple[str, str]] = []
    for header in args.header:
        name, separator, value = header.partition(":")
        if not separator or not name.strip() or name != name.strip():
            message = f"--header {header!r} must look like 'Name: value'"
            raise ValueError(message)
        headers.append((name.lower(), value.strip()))

    bearer: str | None = None
    if args.token == _STDIN:
        bearer = sys.stdin.readline().strip()
    elif args.token is not None:
        bearer = args.token.strip()
    elif args.token_file is not None:
        with open(args.token_file, encoding="utf-8") as stream:
            bearer = stream.read().strip()
    if bearer is not None:
        if not bearer:
            message = "the token is empty"
            raise ValueError(message)
        if any(name == "authorization" for name, _ in headers):
            message = "give the token either with --token/--token-file or as a header, not both"
            raise ValueError(message)
        headers.append(("authorization", f"Bearer {bearer}"))

    return headers


async def explain(
    loaded: LoadedPolicy,
    method: str,
    path: str,
    host: str,
    headers: list[tuple[str, str]],
    client_ip: str | None,
) -> dict[str, Any]:
    """
    Decide one request against ``loaded`` and return the trace as a JSON-ready dict.

    The request goes through the same path checks and client address resolution as a
    served one, then through the real engine. Credentials appear only as fingerprints.
    """
    from .asgi import ZeroTrustMiddleware
    from .events import EventEmitter

    async def unused_app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("explain never calls the app")

    options = loaded.middleware_options()
    options["events"] = EventEmitter([])
    middleware = ZeroTrustMiddleware(unused_app, **options)
    errors = await _fetch_key_sets(loaded)

    scope = _scope(method, path, host, headers, client_ip)
    # NOTE: uses the middleware's own request builder, so the trace applies the same path
    # and proxy rules as a served request.
    request, _ = middleware._access_request(scope)
    decision = await middleware.engine.decide(request)

    return {
        "policy": str(loaded.path),
        "policy_sha256": loaded.sha256,
        "request": _describe_request(request, headers),
        "segment": _describe_segments(loaded, request, decision),
        "verdicts": [_describe_verdict(record) for record in decision.verdicts],
        "requirements": _describe_requirements(decision, request),
        "outcome": {
            "allowed": decision.allowed,
            "reaches_app": decision.lets_through,
            "mode": decision.mode,
            "status": 200 if decision.lets_through else decision.status,
            "reasons": list(decision.reasons),
            "challenge": dict(decision.challenge or {}),
        },
        "errors": errors,
    }


async def _fetch_key_sets(loaded: LoadedPolicy) -> list[str]:
    """Fetch every JWKS of the policy; return an error line for each that failed."""
    from .verifiers import RemoteKeySet

    key_sets: dict[int, RemoteKeySet] = {}
    for segment in loaded.policy.segments:
        for verifier in segment.verifiers:
            key_set = getattr(verifier, "key_set", None)
            if isinstance(key_set, RemoteKeySet):
                key_sets[id(key_set)] = key_set
    if not key_sets:
        return []

    # Each fetch has its own timeout; this bound only guards against a stuck event loop.
    async with asyncio.timeout(_WARM_UP_TIMEOUT):
        await asyncio.gather(*(key_set.refresh() for key_set in key_sets.values()))

    return [
        f"fetching the JWKS from {key_set.url} failed: {key_set.last_error}; the identity "
        "check fails with jwks_unavailable"
        for key_set in key_sets.values()
        if key_set.last_error is not None
    ]


def _scope(
    method: str, path: str, host: str, headers: list[tuple[str, str]], client_ip: str | None
) -> dict[str, Any]:
    raw_path, _, query = path.partition("?")
    raw_headers = [(b"host", host.encode("latin-1"))] if host else []
    raw_headers += [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers]
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "https",
        # Servers put the percent-decoded path in "path" and the bytes as sent in "raw_path".
        "path": urllib.parse.unquote(raw_path, errors="surrogateescape"),
        "raw_path": raw_path.encode("latin-1", "replace"),
        "root_path": "",
        "query_string": query.encode("latin-1", "replace"),
        "headers": raw_headers,
        "client": (client_ip, 50000) if client_ip else None,
        "server": ("127.0.0.1", 443),
    }


def _fingerprint(value: str) -> str:
    from .verifiers import token_fingerprint

    return f"sha256:{token_fingerprint(value)}"


def _describe_request(request: AccessRequest, headers: list[tuple[str, str]]) -> dict[str, Any]:
    shown = []
    for name, value in headers:
        if name in _CREDENTIAL_HEADERS:
            scheme, _, credential = value.partition(" ")
            value = (
                f"{scheme} {_fingerprint(credential)}"
                if credential and name.endswith("authorization")
                else _fingerprint(value)
            )
        shown.append(f"{name}: {value}")
    return {
        "method": request.method,
        "path": request.path,
        "raw_path": request.raw_path,
        "host": request.host,
        "client_ip": str(request.client_ip) if request.client_ip is not None else None,
        "headers": shown,
        "problem": request.problem,
    }


def _describe_segments(
    loaded: LoadedPolicy, request: AccessRequest, decision: Decision
) -> dict[str, Any]:
    chosen = decision.segment
    candidates = []
    for segment in loaded.policy.segments:
        for rule, why_not in _rule_matches(segment, request):
            candidates.append(
                {
                    "segment": segment.name,
                    "rule": rule.pattern,
                    "kind": rule.kind,
                    "matches": why_not is None,
                    "why_not": why_not,
                    "specificity": [
                        *rule.specificity,
                        segment.hosts is not None,
                        segment.methods is not None,
                    ],
                }
            )
    candidates.sort(
        key=lambda candidate: (not candidate["matches"], [-x for x in candidate["specificity"]])
    )
    rule = next(
        (
            candidate
            for candidate in candidates
            if chosen is not None and candidate["segment"] == chosen.name and candidate["matches"]
        ),
        None,
    )
    if request.problem is not None:
        why = f"the request is malformed ({request.problem}), so no segment is matched"
    elif chosen is None:
        why = "no segment matches the path, method and host: denied with no_segment"
    else:
        others = sorted(
            {c["segment"] for c in candidates if c["matches"] and c["segment"] != chosen.name}
        )
        why = f"rule {rule['rule']!r} ({rule['kind']}) is the most specific match" if rule else ""
        if others:
            why += f"; it is more specific than the rules of {', '.join(others)}"

    return {
        "chosen": chosen.name if chosen is not None else None,
        "public": chosen.public if chosen is not None else None,
        "mode": chosen.mode if chosen is not None else None,
        "why": why,
        "candidates": [c for c in candidates if c["matches"] or c["why_not"] != "path"],
    }


def _rule_matches(segment: Segment, request: AccessRequest) -> Iterator[tuple[Any, str | None]]:
    """Yield each path rule of ``segment`` with why it does not apply, or ``None`` if it does."""
    from .policy import _host_matches

    for rule in segment.paths:
        if not rule.matches(request.path):
            yield rule, "path"
        elif segment.methods is not None and request.method not in segment.methods:
            allowed = ", ".join(sorted(segment.methods))
            yield rule, f"method {request.method} is not in {allowed}"
        elif segment.hosts is not None and not _host_matches(segment.hosts, request.host):
            allowed = ", ".join(sorted(segment.hosts))
            yield rule, f"host {request.host or '(none)'!r} is not in {allowed}"
        else:
            yield rule, None


def _describe_verdict(record: Any) -> dict[str, Any]:
    from .events import redact_secrets

    verdict = record.verdict
    facts = redact_secrets(
        None, "explain", json.loads(json.dumps(dict(verdict.facts or {}), default=str))
    )
    principal = verdict.principal
    return {
        "verifier": record.name,
        "kind": record.kind,
        "outcome": record.outcome,
        "reason": record.reason,
        "detail": record.detail,
        "facts": dict(facts),
        "principal": _describe_principal(principal),
        "milliseconds": round(record.duration * 1000, 3),
    }


def _describe_principal(principal: Any) -> dict[str, Any] | None:
    if principal is None:
        return None
    return {
        "subject": principal.subject,
        "scopes": sorted(principal.scopes),
        "roles": sorted(principal.roles),
    }


def _describe_requirements(decision: Decision, request: AccessRequest) -> dict[str, Any]:
    segment = decision.segment
    if segment is None:
        return {}
    required = segment.required_scopes(request.method)
    principal = decision.principal
    return {
        "public": segment.public,
        "identity": "not needed (public segment)" if segment.public else "a principal",
        "scopes": sorted(required) if required is not None else None,
        "method_permitted": required is not None,
        "missing_scopes": list(decision.missing_scopes),
        "roles_any_of": sorted(segment.roles),
        "principal": _describe_principal(principal),
        "max_auth_age": segment.max_auth_age,
        "acr_values": sorted(segment.acr_values),
        "amr": sorted(segment.amr),
    }


def _console() -> Console:
    from rich.console import Console

    console = Console(highlight=False, soft_wrap=True)
    if not console.is_terminal:
        # Rich assumes 80 columns for a pipe or file; a wider table keeps names on one line.
        console.width = _PIPE_WIDTH
    return console


def _print_trace(console: Console, trace: dict[str, Any]) -> None:
    from rich.markup import escape
    from rich.table import Table

    request = trace["request"]
    console.print(f"[bold]Request[/bold] {escape(request['method'])} {escape(request['raw_path'])}")
    console.print(f"  host: {escape(request['host'] or '(none)')}")
    console.print(f"  client: {escape(request['client_ip'] or 'unknown')}")
    for header in request["headers"]:
        console.print(f"  header {escape(header)}")
    if request["problem"]:
        console.print(f"  [red]malformed: {escape(request['problem'])}[/red]")

    segment = trace["segment"]
    console.print(f"\n[bold]Segment[/bold] {escape(str(segment['chosen']))}")
    console.print(f"  {escape(segment['why'])}")
    if segment["mode"] == "monitor":
        console.print("  [yellow]monitor mode: a denial is recorded but not enforced[/yellow]")
    for candidate in segment["candidates"]:
        state = "matches" if candidate["matches"] else f"does not match: {candidate['why_not']}"
        console.print(
            f"  candidate {escape(candidate['segment'])} rule {escape(candidate['rule'])} "
            f"({candidate['kind']}): {escape(state)}"
        )

    if trace["verdicts"]:
        table = Table(title="Verifiers", title_justify="left")
        for column in ("verifier", "kind", "outcome", "reason", "facts"):
            table.add_column(column, overflow="fold")
        for verdict in trace["verdicts"]:
            facts = ", ".join(f"{key}={value}" for key, value in sorted(verdict["facts"].items()))
            reason = verdict["reason"] or ""
            if verdict["detail"]:
                reason += f" ({verdict['detail']})"
            table.add_row(
                escape(verdict["verifier"]),
                verdict["kind"],
                verdict["outcome"],
                escape(reason),
                escape(facts),
            )
        console.print(table)

    requirements = trace["requirements"]
    if requirements:
        console.print("[bold]Requirements[/bold]")
        scopes = requirements["scopes"]
        if scopes is None:
            console.print(f"  method {escape(request['method'])} is not permitted here")
        elif scopes:
            console.print(f"  scopes (all): {escape(' '.join(scopes))}")
        if requirements["missing_scopes"]:
            console.print(f"  missing scopes: {escape(' '.join(requirements['missing_scopes']))}")
        if requirements["roles_any_of"]:
            console.print(f"  roles (any): {escape(', '.join(requirements['roles_any_of']))}")
        principal = requirements["principal"]
        if principal is not None:
            console.print(
                f"  principal: {escape(principal['subject'])}, scopes "
                f"{escape(' '.join(principal['scopes']) or '-')}, roles "
                f"{escape(', '.join(principal['roles']) or '-')}"
            )

    outcome = trace["outcome"]
    verdict = "allow" if outcome["allowed"] else "deny"
    if not outcome["allowed"] and outcome["reaches_app"]:
        verdict = "deny (not enforced: monitor mode)"
    reasons = ", ".join(outcome["reasons"]) or "-"
    console.print(
        f"\n[bold]Outcome[/bold] {verdict}, status {outcome['status']}, reasons: {escape(reasons)}"
    )
