# SPDX-License-Identifier: Apache-2.0
"""The policy enforcement point for ASGI applications."""

from __future__ import annotations

import asyncio
import logging
import os
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Sequence
from time import perf_counter
from typing import TYPE_CHECKING, Any

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ._enforcement import (
    STATE_KEY,
    AccessContext,
    DenialResponse,
    DenyHandler,
    PathNormalization,
    build_denial,
    check_path,
    check_path_normalization,
    default_denial,
    get_access,
    unreadable_request,
)
from ._reload import AsyncPolicyReload, split_policy
from ._streams import StreamGuard, check_interval
from .coverage import RouteCheck
from .engine import Decision, deny
from .events import EventEmitter, Sink
from .exceptions import ConfigurationError
from .policy import Policy, Segment
from .request import (
    AccessRequest,
    ForwardedHeader,
    TrustedProxies,
    accept_request_id,
    parse_host,
    parse_peer,
)

if TYPE_CHECKING:
    from .config import LoadedPolicy

__all__ = [
    "STATE_KEY",
    "AccessContext",
    "DenialResponse",
    "DenyHandler",
    "PathNormalization",
    "ZeroTrustMiddleware",
    "default_denial",
    "get_access",
]

logger = logging.getLogger("zerotrust.asgi")

_WEBSOCKET_POLICY_VIOLATION = 1008


class ZeroTrustMiddleware(AsyncPolicyReload):
    """
    Verify every HTTP and websocket request against a policy before it reaches the app.

    Lifespan messages pass through unchanged. The middleware only watches them, to fetch JWKS
    keys when the app has started and to flush events when it stops.

    Args:
        app: The ASGI application to protect.
        policy: A `Policy`, a list of `Segment` objects to build one from, or the
            `zerotrust.config.LoadedPolicy` of a policy file, which `reload` reads again.
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
        reverify_every: Seconds between decisions on an open websocket or streaming response,
            from 0.1 to 86400. ``None``, the default, decides each request only once. A deny
            closes the websocket with code 1008 or ends the response (docs/websockets.md).
            Each open connection then has at most two background tasks.
        check_routes: At lifespan startup, check that every route of the app falls in a
            segment (see `zerotrust.coverage.check_routes`), and make the server fail to start
            when one does not. Needs a Starlette, FastAPI, Litestar, Quart or Falcon app.
        public_routes: Path rules for the routes meant to be public, read by ``check_routes``.
            A route in a public segment that no rule matches fails the check.
        reload_on_sighup: Read the policy file again when the process receives SIGHUP, as
            `reload` does. Only for a middleware built from a policy file, in the main thread.
            A SIGHUP handler installed before is still called.

    .. warning::
       Only list proxies you operate in ``trusted_proxies``: any peer in that list can claim
       any client address.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        policy: Policy | Sequence[Segment] | LoadedPolicy,
        trusted_proxies: Iterable[str] | TrustedProxies = (),
        forwarded_header: ForwardedHeader = "x-forwarded-for",
        events: EventEmitter | Sink | Sequence[Sink] | None = None,
        path_normalization: PathNormalization = "reject",
        on_deny: DenyHandler | None = None,
        realm: str = "zerotrust",
        reverify_every: float | None = None,
        reload_on_sighup: bool = False,
        check_routes: bool = False,
        public_routes: Iterable[str] = (),
    ) -> None:
        interval = check_interval(reverify_every)
        policy, loaded = split_policy(policy)
        check_path_normalization(path_normalization)
        if not isinstance(trusted_proxies, TrustedProxies):
            trusted_proxies = TrustedProxies(trusted_proxies, header=forwarded_header)
        if isinstance(events, Sink):
            events = [events]
        if not isinstance(events, EventEmitter):
            events = EventEmitter(events)

        self.app = app
        self._init_policy(policy, events, loaded=loaded, reload_on_sighup=reload_on_sighup)
        self.trusted_proxies = trusted_proxies
        self.events = events
        self.path_normalization = path_normalization
        self.on_deny = on_deny
        self.realm = realm
        self._route_check = _route_check(app, check_routes, public_routes)
        self._stream_guard = (
            StreamGuard(interval, lambda request: self.engine.decide(request), events)
            if interval is not None
            else None
        )

    @classmethod
    def from_policy_file(
        cls, app: ASGIApp, path: str | os.PathLike[str], **overrides: Any
    ) -> ZeroTrustMiddleware:
        """
        Protect ``app`` with the policy and settings of a TOML policy file (docs/policy-files.md).

        Keyword ``overrides`` replace the file's settings, such as ``on_deny=``.

        Raises:
            PolicyFileError: listing every problem of the file.

        .. versionadded:: 0.3.0
        """
        from .config import middleware_from_policy_file

        return middleware_from_policy_file(cls, app, path, **overrides)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope_type = scope["type"]
        if scope_type != "http" and scope_type != "websocket":
            if scope_type == "lifespan":
                await self._lifespan(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return

        started = perf_counter()
        try:
            request, scope = self._access_request(scope)
        except Exception:
            logger.exception("reading the request failed; denying it")
            request = unreadable_request(
                scope.get("method", "GET"), websocket=scope.get("type") == "websocket"
            )
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
            if self._stream_guard is None:
                await self.app(scope, receive, send_watching_status)
            else:
                await self._stream_guard.run(
                    self.app, scope, receive, send_watching_status, request, decision
                )
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
        path: str = scope.get("path", "") or ""
        root_path: str = scope.get("root_path", "") or ""
        raw = scope.get("raw_path")
        raw_path = raw if isinstance(raw, bytes) else path.encode("utf-8", "surrogateescape")
        raw_path = raw_path.split(b"?", 1)[0]

        problem, normalised, rewrite = check_path(
            raw_path,
            path,
            root_path,
            raw_from_server=isinstance(raw, bytes),
            normalization=self.path_normalization,
        )
        if rewrite:
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
            # Django and Werkzeug upper-case the method before routing, so "post" reaches a POST
            # handler. The decision reads it as POST too, as the WSGI adapter does.
            method="GET" if is_websocket else str(scope.get("method", "GET")).upper(),
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
        return build_denial(self.on_deny, self.realm, request, decision, logger)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        """
        Pass the lifespan to the app, or run it here when the app does not support it.

        An app without lifespan support, such as Django's ASGI handler, raises at once. The
        server would then skip the lifespan, and with it the key warm-up and the event flush at
        shutdown: uvicorn ends on the re-raised SIGTERM, so exit handlers never run.
        """
        watched = self._watch_lifespan(send)
        received: list[Message] = []
        app_sent = False

        async def receive_recording() -> Message:
            message = await receive()
            received.append(message)
            return message

        async def send_recording(message: Message) -> None:
            nonlocal app_sent
            app_sent = True
            await watched(message)

        try:
            await self.app(scope, receive_recording, send_recording)
            return
        except Exception:
            if app_sent:
                raise
            logger.debug("the app does not support the lifespan protocol; running it here")

        pending = [message for message in received if message["type"] == "lifespan.startup"]
        while True:
            message = pending.pop() if pending else await receive()
            if message["type"] == "lifespan.startup":
                await watched({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await watched({"type": "lifespan.shutdown.complete"})
                return

    def _watch_lifespan(self, send: Send) -> Callable[[Message], Awaitable[None]]:
        route_check_failed = False

        async def send_watching_lifespan(message: Message) -> None:
            nonlocal route_check_failed
            message_type = message["type"]
            if message_type == "lifespan.startup.complete":
                if self._route_check is not None:
                    try:
                        self._route_check.run(self.app, self.policy)
                    except ConfigurationError as error:
                        # Tell the server before raising: with lifespan "auto", uvicorn takes an
                        # unreported exception for missing lifespan support and starts serving.
                        route_check_failed = True
                        await send({"type": "lifespan.startup.failed", "message": str(error)})
                        raise
                await self.warm_up()
            elif route_check_failed and message_type == "lifespan.startup.failed":
                return
            elif message_type in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                await asyncio.to_thread(self.events.flush)
                await self._close_state()
            await send(message)

        return send_watching_lifespan

    async def _close_state(self) -> None:
        """Close the connections of a policy file's ``[state]`` store on this loop."""
        state = getattr(self._reloader.active.loaded, "state", None)
        close = getattr(state, "aclose", None)
        if close is None:
            return
        try:
            await close()
        except Exception:
            logger.exception("closing the shared state store at shutdown failed")

    async def warm_up(self) -> None:
        """Fetch every remote key set once, so the first requests need not wait. Never raises."""
        self._reloader.bind_loop(asyncio.get_running_loop())
        key_sets = self._reloader.active.key_sets
        if key_sets:
            await asyncio.gather(*(key_set.refresh() for key_set in key_sets))


def _route_check(app: ASGIApp, enabled: bool, public_routes: Iterable[str]) -> RouteCheck | None:
    if enabled:
        return RouteCheck(app, public_routes)
    if public_routes:
        message = "public_routes is only read by the route check: pass check_routes=True as well"
        raise ConfigurationError(message, parameter="public_routes", value=public_routes)
    return None


def _encode(headers: list[tuple[str, str]], body: bytes) -> list[tuple[bytes, bytes]]:
    encoded = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers]
    encoded.append((b"content-length", str(len(body)).encode()))
    return encoded
