# SPDX-License-Identifier: Apache-2.0
"""The policy enforcement point for ASGI applications."""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from time import perf_counter
from typing import Any, Literal

import orjson
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .engine import Decision, Engine, deny
from .events import EventEmitter, Sink
from .exceptions import ConfigurationError
from .policy import Policy, Segment
from .request import (
    AccessRequest,
    ForwardedHeader,
    PathProblem,
    TrustedProxies,
    accept_request_id,
    check_raw_path,
    new_request_id,
    normalize_path,
    parse_host,
    parse_peer,
)
from .verifiers.base import Principal
from .verifiers.jwks import RemoteKeySet

__all__ = [
    "STATE_KEY",
    "AccessContext",
    "DenialResponse",
    "PathNormalization",
    "ZeroTrustMiddleware",
]

logger = logging.getLogger("zerotrust.asgi")

STATE_KEY = "zerotrust"
"""Key of the `AccessContext` in ``scope["state"]``; ``request.state.zerotrust`` in Starlette."""

PathNormalization = Literal["reject", "rewrite"]

_WEBSOCKET_POLICY_VIOLATION = 1008
_ERROR_NAMES = {401: "unauthorized", 403: "forbidden"}


@dataclass(frozen=True, slots=True)
class AccessContext:
    """
    The access details of an allowed request, for the application.

    Attributes:
        principal: The authenticated principal, or ``None`` in a public segment.
        decision: The full decision, including the segment and every verdict.
        request: The access request the decision was made on.
    """

    principal: Principal | None
    decision: Decision
    request: AccessRequest

    @property
    def subject(self) -> str | None:
        return self.principal.subject if self.principal is not None else None

    @property
    def request_id(self) -> str:
        return self.request.request_id


@dataclass(frozen=True, slots=True)
class DenialResponse:
    """The HTTP response sent for a denied request."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes


DenyHandler = Callable[[AccessRequest, Decision], DenialResponse]


def default_denial(
    request: AccessRequest, decision: Decision, realm: str = "zerotrust"
) -> DenialResponse:
    """
    Build the default denial: a short JSON body with the request id and no internal detail.

    A 401 carries ``WWW-Authenticate: Bearer`` (RFC 6750) with ``error="invalid_token"``
    when a token was presented; a 403 for a missing scope carries ``insufficient_scope``.
    """
    status = decision.status if decision.status in _ERROR_NAMES else 403
    body = orjson.dumps({"error": _ERROR_NAMES[status], "request_id": request.request_id})
    headers = [
        ("content-type", "application/json"),
        ("cache-control", "no-store"),
        ("x-request-id", request.request_id),
    ]
    if status == 401 or decision.challenge:
        parameters = {"realm": realm, **(decision.challenge or {})}
        challenge = ", ".join(f'{key}="{_quote(value)}"' for key, value in parameters.items())
        headers.append(("www-authenticate", f"Bearer {challenge}"))

    return DenialResponse(status, headers, body)


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


class ZeroTrustMiddleware:
    """
    Verify every HTTP and websocket request against a policy before it reaches the app.

    Lifespan messages pass through unchanged. The middleware only watches them, to fetch JWKS
    keys when the app has started and to flush events when it stops.

    Args:
        app: The ASGI application to protect.
        policy: A `Policy`, or a list of `Segment` objects to build one from.
        trusted_proxies: Addresses or CIDR networks of reverse proxies whose forwarding header
            names the client. Empty by default: the socket peer is the client.
        forwarded_header: ``x-forwarded-for`` or ``forwarded``; the header the proxies set.
        events: An `EventEmitter`, or sinks to build one from; JSON lines on standard error by
            default.
        path_normalization: What to do with a path that has ``.``/``..`` segments or repeated
            slashes: ``reject`` (deny, the default) or ``rewrite`` (decide on the normalised
            path and hand that same path to the app).
        on_deny: Builds the response for a denied HTTP request; defaults to `default_denial`.
        realm: The ``realm`` in ``WWW-Authenticate`` challenges.

    .. warning::
       Only list proxies you operate in ``trusted_proxies``: any peer in that list can claim
       any client address.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        policy: Policy | Sequence[Segment],
        trusted_proxies: Iterable[str] | TrustedProxies = (),
        forwarded_header: ForwardedHeader = "x-forwarded-for",
        events: EventEmitter | Sink | Sequence[Sink] | None = None,
        path_normalization: PathNormalization = "reject",
        on_deny: DenyHandler | None = None,
        realm: str = "zerotrust",
    ) -> None:
        if not isinstance(policy, Policy):
            policy = Policy(policy)
        if path_normalization not in ("reject", "rewrite"):
            message = (
                f"path_normalization must be 'reject' or 'rewrite', not {path_normalization!r}"
            )
            raise ConfigurationError(
                message, parameter="path_normalization", value=path_normalization
            )
        if not isinstance(trusted_proxies, TrustedProxies):
            trusted_proxies = TrustedProxies(trusted_proxies, header=forwarded_header)
        if isinstance(events, Sink):
            events = [events]
        if not isinstance(events, EventEmitter):
            events = EventEmitter(events)

        self.app = app
        self.policy = policy
        self.engine = Engine(policy)
        self.trusted_proxies = trusted_proxies
        self.events = events
        self.path_normalization = path_normalization
        self.on_deny = on_deny
        self.realm = realm
        self._key_sets = _remote_key_sets(policy)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope_type = scope["type"]
        if scope_type != "http" and scope_type != "websocket":
            if scope_type == "lifespan":
                await self.app(scope, receive, self._watch_lifespan(send))
            else:
                await self.app(scope, receive, send)
            return

        started = perf_counter()
        try:
            request, scope = self._access_request(scope)
        except Exception:
            logger.exception("reading the request failed; denying it")
            request = _unreadable_request(scope)
        try:
            decision = await self.engine.decide(request)
        except Exception:
            logger.exception("deciding request %s failed; denying it", request.request_id)
            decision = deny("engine_error")
        decided = perf_counter()

        if not decision.lets_through:
            status, close_code = await self._deny(scope, receive, send, request, decision)
            self.events.emit_access(
                request,
                decision,
                status=status,
                latency=perf_counter() - started,
                decision_time=decided - started,
                close_code=close_code,
            )
            return

        scope.setdefault("state", {})[STATE_KEY] = AccessContext(
            decision.principal, decision, request
        )
        response_status: int | None = None

        async def send_watching_status(message: Message) -> None:
            nonlocal response_status
            message_type = message["type"]
            if (
                message_type == "http.response.start"
                or message_type == "websocket.http.response.start"
            ):
                response_status = message["status"]
            elif message_type == "websocket.accept":
                response_status = 101
            elif message_type == "websocket.close" and response_status is None:
                response_status = 403
            await send(message)

        try:
            await self.app(scope, receive, send_watching_status)
        except BaseException:
            if response_status is None:
                response_status = 500
            raise
        finally:
            self.events.emit_access(
                request,
                decision,
                status=response_status,
                latency=perf_counter() - started,
                decision_time=decided - started,
            )

    def _access_request(self, scope: Scope) -> tuple[AccessRequest, Scope]:
        """Build the access request, and the scope the app will see (rewritten if configured)."""
        headers = Headers(scope=scope)
        problem: str | None = None
        path: str = scope.get("path", "") or ""
        root_path: str = scope.get("root_path", "") or ""
        raw = scope.get("raw_path")
        raw_path = raw if isinstance(raw, bytes) else path.encode("utf-8", "surrogateescape")
        raw_path = raw_path.split(b"?", 1)[0]

        try:
            decoded = check_raw_path(raw_path)
        except PathProblem as error:
            problem = error.reason
        else:
            if isinstance(raw, bytes) and path != decoded and path != root_path + decoded:
                problem = "path_mismatch"

        route_path = _route_path(path, root_path)
        normalised = normalize_path(route_path or "/")
        if problem is None and normalised != route_path and route_path:
            if self.path_normalization == "reject":
                problem = "path_not_normalized"
            else:
                scope = dict(scope)
                scope["path"] = root_path + normalised
                scope["raw_path"] = urllib.parse.quote(scope["path"]).encode()

        host_values: list[str] = []
        request_ids: list[str] = []
        for name, value in scope["headers"]:
            if name == b"host":
                host_values.append(value.decode("latin-1"))
            elif name == b"x-request-id":
                request_ids.append(value.decode("latin-1"))
        host, host_problem = parse_host(host_values)
        peer = parse_peer(scope.get("client"))
        client_ip, forwarded_problem = self.trusted_proxies.resolve_client(peer, headers)
        is_websocket = scope["type"] == "websocket"
        tls = (scope.get("extensions") or {}).get("tls") or {}
        chain = tls.get("client_cert_chain") or ()
        request = AccessRequest(
            method="GET" if is_websocket else scope.get("method", "GET"),
            path=normalised,
            raw_path=raw_path.decode("latin-1"),
            host=host,
            headers=headers,
            client_ip=client_ip,
            peer_ip=peer,
            request_id=accept_request_id(request_ids[0] if len(request_ids) == 1 else None),
            time=time.time(),
            scheme=scope.get("scheme", "ws" if is_websocket else "http"),
            protocol="websocket" if is_websocket else "http",
            root_path=root_path,
            problem=problem or host_problem or forwarded_problem,
            tls_client_chain=tuple(chain),
            from_trusted_proxy=peer in self.trusted_proxies,
        )

        return request, scope

    async def _deny(
        self, scope: Scope, receive: Receive, send: Send, request: AccessRequest, decision: Decision
    ) -> tuple[int | None, int | None]:
        """Send the denial; return the HTTP status and websocket close code actually sent."""
        response = self._denial(request, decision)
        if scope["type"] == "websocket":
            message = await receive()
            if message["type"] != "websocket.connect":
                return None, None
            if "websocket.http.response" in scope.get("extensions", {}):
                await send(
                    {
                        "type": "websocket.http.response.start",
                        "status": response.status,
                        "headers": _encode(response.headers, response.body),
                    }
                )
                await send({"type": "websocket.http.response.body", "body": response.body})
                return response.status, None
            await send({"type": "websocket.close", "code": _WEBSOCKET_POLICY_VIOLATION})
            return 403, _WEBSOCKET_POLICY_VIOLATION

        await send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": _encode(response.headers, response.body),
            }
        )
        body = b"" if request.method == "HEAD" else response.body
        await send({"type": "http.response.body", "body": body})
        return response.status, None

    def _denial(self, request: AccessRequest, decision: Decision) -> DenialResponse:
        if self.on_deny is not None:
            try:
                response = self.on_deny(request, decision)
                if isinstance(response, DenialResponse) and response.status in (401, 403):
                    return response
                logger.error("on_deny returned %r, not a 401 or 403 DenialResponse", response)
            except Exception:
                logger.exception("on_deny failed for request %s", request.request_id)
        return default_denial(request, decision, self.realm)

    def _watch_lifespan(self, send: Send) -> Callable[[Message], Awaitable[None]]:
        async def send_watching_lifespan(message: Message) -> None:
            message_type = message["type"]
            if message_type == "lifespan.startup.complete":
                await self.warm_up()
            elif message_type in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                await asyncio.to_thread(self.events.flush)
            await send(message)

        return send_watching_lifespan

    async def warm_up(self) -> None:
        """Fetch every remote key set once, so the first requests need not wait. Never raises."""
        if self._key_sets:
            await asyncio.gather(*(key_set.refresh() for key_set in self._key_sets))


def _unreadable_request(scope: Scope) -> AccessRequest:
    """Build a minimal access request, marked as malformed, for a scope that could not be read."""
    return AccessRequest(
        method=str(scope.get("method", "GET"))[:16],
        path="",
        raw_path="",
        host="",
        headers=Headers(raw=[]),
        client_ip=None,
        peer_ip=None,
        request_id=new_request_id(),
        time=time.time(),
        protocol="websocket" if scope.get("type") == "websocket" else "http",
        problem="malformed_request",
    )


def _route_path(path: str, root_path: str) -> str:
    """Return the path the app's router matches: ``path`` without the mount prefix."""
    if not root_path or not path.startswith(root_path):
        return path
    if path == root_path:
        return ""
    if path[len(root_path)] == "/":
        return path[len(root_path) :]
    return path


def _encode(headers: list[tuple[str, str]], body: bytes) -> list[tuple[bytes, bytes]]:
    encoded = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers]
    encoded.append((b"content-length", str(len(body)).encode()))
    return encoded


def _remote_key_sets(policy: Policy) -> list[RemoteKeySet]:
    found: dict[int, RemoteKeySet] = {}
    for segment in policy.segments:
        for verifier in segment.verifiers:
            key_set = getattr(verifier, "key_set", None)
            if isinstance(key_set, RemoteKeySet):
                found[id(key_set)] = key_set
    return list(found.values())


def get_access(scope_or_request: Any) -> AccessContext | None:
    """Return the `AccessContext` of an ASGI scope or a Starlette/FastAPI request, if any."""
    scope = getattr(scope_or_request, "scope", scope_or_request)
    state = scope.get("state") if isinstance(scope, dict) else None
    if not isinstance(state, dict):
        return None
    context = state.get(STATE_KEY)
    return context if isinstance(context, AccessContext) else None
