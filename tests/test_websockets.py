# SPDX-License-Identifier: Apache-2.0
"""Websockets and streaming responses served by uvicorn and hypercorn, checked and re-checked."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import hypercorn.asyncio
import hypercorn.config
import pytest
import websockets.exceptions
from jsonschema import Draft202012Validator, FormatChecker
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.asyncio.client import ClientConnection, connect

from zerotrust import (
    ConfigurationError,
    ConnectionEndedError,
    JWTVerifier,
    MemorySink,
    Policy,
    Segment,
    ZeroTrustMiddleware,
)
from zerotrust._streams import MAX_INTERVAL, MIN_INTERVAL, StreamGuard
from zerotrust.engine import Engine
from zerotrust.events import access_event_schema
from zerotrust.grants import GrantBroker, GrantVerifier, MemoryGrantStore, generate_signing_key
from zerotrust.monitor import RiskSignal, RiskSignals, RiskVerifier
from zerotrust.request import AccessRequest
from zerotrust.testing import TokenIssuer, allow, capture_events, serve
from zerotrust.verifiers.base import Verifier

pytestmark = pytest.mark.served

INTERVAL = 0.25
# Time a served test allows beyond the interval, for thread switches on a loaded machine.
SLACK = 1.5
EVENT_WAIT = 3.0
TICK = 0.05
# Every handler and generator stops after this many ticks, so no test can stream forever.
MAX_TICKS = 400

Server = Callable[[ASGIApp], contextlib.AbstractContextManager[str]]


@contextlib.contextmanager
def serve_hypercorn(app: ASGIApp) -> Iterator[str]:
    """Serve ``app`` with hypercorn on a free port of 127.0.0.1 in a thread; yield the base URL."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    config = hypercorn.config.Config()
    # hypercorn takes over the bound socket, so no other process can take the port meanwhile.
    config.bind = [f"fd://{listener.detach()}"]
    config.graceful_timeout = 1.0
    config.accesslog = None
    config.loglevel = "WARNING"

    loop_ready = threading.Event()
    control: dict[str, Any] = {}

    async def run() -> None:
        control["loop"] = asyncio.get_running_loop()
        control["stop"] = asyncio.Event()
        loop_ready.set()
        await hypercorn.asyncio.serve(app, config, shutdown_trigger=control["stop"].wait)  # type: ignore[arg-type]

    thread = threading.Thread(target=asyncio.run, args=(run(),), name="hypercorn", daemon=True)
    thread.start()
    loop_ready.wait(10)
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("hypercorn did not start within 10 seconds") from None
            time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        control["loop"].call_soon_threadsafe(control["stop"].set)
        thread.join(10)


SERVERS: dict[str, Server] = {"uvicorn": serve, "hypercorn": serve_hypercorn}


@pytest.fixture(name="server", params=sorted(SERVERS))
def fixture_server(request: pytest.FixtureRequest) -> Server:
    """A function that serves an ASGI app on 127.0.0.1 with one of the tested servers."""
    return SERVERS[request.param]


@pytest.fixture(name="validator", scope="module")
def fixture_validator() -> Draft202012Validator:
    """A validator for the access event schema that also checks formats."""
    return Draft202012Validator(access_event_schema(), format_checker=FormatChecker())


@dataclass
class Handlers:
    """What the app's handlers did; they run in the server's thread."""

    started: list[str] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)
    disconnect_codes: list[int] = field(default_factory=list)
    ticks: list[int] = field(default_factory=list)


def build_app(handlers: Handlers) -> Starlette:
    """Build an app with an echo websocket, a send-only websocket and server-sent events."""

    async def echo(websocket: WebSocket) -> None:
        handlers.started.append("echo")
        try:
            await websocket.accept()
            for _ in range(MAX_TICKS):
                text = await websocket.receive_text()
                await websocket.send_text(f"echo {text}")
        except WebSocketDisconnect as error:
            handlers.disconnect_codes.append(error.code)
        finally:
            handlers.finished.append("echo")

    async def feed(websocket: WebSocket) -> None:
        handlers.started.append("feed")
        try:
            await websocket.accept()
            for tick in range(MAX_TICKS):
                await websocket.send_text(f"tick {tick}")
                await asyncio.sleep(TICK)
        except WebSocketDisconnect as error:
            handlers.disconnect_codes.append(error.code)
        finally:
            handlers.finished.append("feed")

    async def ticks(count: int) -> AsyncIterator[str]:
        for tick in range(count):
            handlers.ticks.append(tick)
            yield f"data: tick {tick}\n\n"
            await asyncio.sleep(TICK)

    async def events(request: Request) -> StreamingResponse:
        handlers.started.append("events")
        count = int(request.query_params.get("count", MAX_TICKS))
        return StreamingResponse(ticks(min(count, MAX_TICKS)), media_type="text/event-stream")

    async def chunks() -> AsyncIterator[bytes]:
        for tick in range(MAX_TICKS):
            handlers.ticks.append(tick)
            yield b"x" * 1000
            await asyncio.sleep(TICK)

    async def download(_request: Request) -> StreamingResponse:
        handlers.started.append("download")
        length = str(1000 * MAX_TICKS)
        return StreamingResponse(chunks(), headers={"content-length": length})

    async def tasks(_request: Request) -> JSONResponse:
        names = [task.get_name() for task in asyncio.all_tasks()]
        return JSONResponse({"zerotrust": sorted(n for n in names if n.startswith("zerotrust-"))})

    return Starlette(
        routes=[
            WebSocketRoute("/live/echo", echo),
            WebSocketRoute("/live/feed", feed),
            Route("/live/events", events),
            Route("/live/download", download),
            Route("/probe/tasks", tasks),
        ]
    )


def protect(
    app: ASGIApp,
    verifiers: Sequence[Verifier],
    *,
    reverify_every: float | None = INTERVAL,
    mode: str = "enforce",
) -> ZeroTrustMiddleware:
    segments = [
        Segment("live", paths=["/live/"], verifiers=verifiers, mode=mode),  # type: ignore[arg-type]
        Segment("probe", paths=["/probe/"], public=True),
    ]
    return ZeroTrustMiddleware(
        app, policy=segments, events=MemorySink(), reverify_every=reverify_every
    )


def jwt_verifier(issuer: TokenIssuer) -> JWTVerifier:
    # No leeway, so a token is rejected from its exp on and the tests need not wait 30 s more.
    return JWTVerifier(
        issuer=issuer.issuer,
        audience="api",
        algorithms=["ES256"],
        keys=issuer.jwks(),
        leeway=0,
    )


def short_lived_token(issuer: TokenIssuer) -> tuple[str, float]:
    """Mint a token that expires one to two seconds from now; return it and its exp."""
    # exp is a whole second, rounded down from now + lifetime.
    now = time.time()
    token = issuer.token("alice", alg="ES256", lifetime=2, now=now)

    return token, float(int(now + 2))


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def ws_url(base_url: str, path: str) -> str:
    return "ws" + base_url.removeprefix("http") + path


def open_websocket(base_url: str, path: str, headers: dict[str, str]) -> connect:
    return connect(
        ws_url(base_url, path),
        additional_headers=headers,
        proxy=None,
        open_timeout=5,
        close_timeout=2,
    )


async def wait_for_close(websocket: ClientConnection, limit: float) -> tuple[int, int]:
    """Read messages until the server closes; return the close code and the messages read."""
    received = 0
    async with asyncio.timeout(limit):
        try:
            for _ in range(MAX_TICKS * 2):
                await websocket.recv()
                received += 1
        except websockets.exceptions.ConnectionClosed as error:
            closed = error
        else:
            raise AssertionError("the server sent every message without closing")
    assert closed.rcvd is not None, "the server closed without a close frame"

    return closed.rcvd.code, received


async def wait_for(
    find: Callable[[], Any], within: float = EVENT_WAIT, message: str = "nothing found"
) -> Any:
    """Poll ``find`` until it returns something truthy, for at most ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        found = find()
        if found:
            return found
        await asyncio.sleep(0.02)
    raise AssertionError(message)


def reverified(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [event for event in events if event.get("reverified")]


async def wait_for_reverified(events: list[dict[str, Any]]) -> dict[str, Any]:
    found = await wait_for(lambda: reverified(events), message="no re-verification event")
    return found[0]  # type: ignore[no-any-return]


async def read_stream(
    client: httpx.AsyncClient, url: str, headers: dict[str, str], limit: float
) -> tuple[int, list[str]]:
    """Read a server-sent event stream to its end; return the status and the data lines."""
    lines: list[str] = []
    async with asyncio.timeout(limit), client.stream("GET", url, headers=headers) as response:
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                lines.append(line)
    return response.status_code, lines


async def drain(stream: AsyncIterator[bytes], limit: float) -> None:
    async with asyncio.timeout(limit):
        async for _chunk in stream:
            pass


@contextlib.asynccontextmanager
async def http_client() -> AsyncIterator[httpx.AsyncClient]:
    # trust_env=False keeps proxy settings of the environment away from loopback requests.
    async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
        yield client


class TestHandshake:
    async def test_no_credentials_refused(self, server: Server, issuer: TokenIssuer) -> None:
        """A handshake without a token gets 401 and never reaches the websocket handler."""
        handlers = Handlers()
        app = protect(build_app(handlers), [jwt_verifier(issuer)], reverify_every=None)

        with capture_events() as events, server(app) as base_url:
            with pytest.raises(websockets.exceptions.InvalidStatus) as rejected:
                async with open_websocket(base_url, "/live/echo", {}):
                    pass
            event = await wait_for(lambda: events, message="no access event")

        assert 401 == rejected.value.response.status_code
        assert [] == handlers.started
        assert ("websocket", "deny", 401) == (
            event[0]["protocol"],
            event[0]["action"],
            event[0]["status"],
        )
        assert ["token_missing"] == event[0]["reasons"]
        assert "close_code" not in event[0]

    async def test_without_denial_extension(self, server: Server, issuer: TokenIssuer) -> None:
        """Without the denial response extension the handshake is closed with 1008 instead."""
        handlers = Handlers()
        protected = protect(build_app(handlers), [jwt_verifier(issuer)], reverify_every=None)

        async def without_extension(scope: Scope, receive: Receive, send: Send) -> None:
            extensions = dict(scope.get("extensions") or {})
            extensions.pop("websocket.http.response", None)
            await protected({**scope, "extensions": extensions}, receive, send)

        with capture_events() as events, server(without_extension) as base_url:
            with pytest.raises(websockets.exceptions.InvalidStatus) as rejected:
                async with open_websocket(base_url, "/live/echo", {}):
                    pass
            event = await wait_for(lambda: events, message="no access event")

        # Both servers reject the upgrade with HTTP 403 when the app closes before accepting.
        assert 403 == rejected.value.response.status_code
        assert [] == handlers.started
        assert 1008 == event[0]["close_code"]
        assert 403 == event[0]["status"]

    async def test_valid_token_accepted(
        self, server: Server, issuer: TokenIssuer, validator: Draft202012Validator
    ) -> None:
        """A handshake with a valid token reaches the handler and is recorded as 101."""
        handlers = Handlers()
        app = protect(build_app(handlers), [jwt_verifier(issuer)], reverify_every=None)
        token = issuer.token("alice", alg="ES256")

        with capture_events() as events, server(app) as base_url:
            async with open_websocket(base_url, "/live/echo", bearer(token)) as websocket:
                await websocket.send("hi")
                reply = await websocket.recv()
            event = await wait_for(lambda: events, message="no access event")

        assert "echo hi" == reply
        assert ["echo"] == handlers.started
        assert ("allow", 101, "alice") == (
            event[0]["decision"],
            event[0]["status"],
            event[0]["subject"],
        )
        validator.validate(event[0])


class TestWebsocketReverification:
    async def test_closed_after_token_expiry(
        self, server: Server, issuer: TokenIssuer, validator: Draft202012Validator
    ) -> None:
        """A websocket whose token expires is closed with 1008 within the interval after exp."""
        handlers = Handlers()
        app = protect(build_app(handlers), [jwt_verifier(issuer)])

        with capture_events() as events, server(app) as base_url:
            token, expires_at = short_lived_token(issuer)
            async with open_websocket(base_url, "/live/feed", bearer(token)) as websocket:
                code, received = await wait_for_close(websocket, limit=5)
                closed_at = time.time()
            event = await wait_for_reverified(events)
            await wait_for(lambda: handlers.finished, message="the handler did not finish")

        assert 1008 == code
        assert received > 0
        assert closed_at >= expires_at
        assert closed_at <= expires_at + INTERVAL + SLACK
        assert ["token_expired"] == event["reasons"]
        assert ("deny", "deny", 101, 1008) == (
            event["decision"],
            event["action"],
            event["status"],
            event["close_code"],
        )
        assert event["subject"] is None
        validator.validate(event)

    async def test_closed_after_grant_revoked(
        self, server: Server, issuer: TokenIssuer, validator: Draft202012Validator
    ) -> None:
        """A websocket whose grant is revoked is closed with 1008 within the interval."""
        store = MemoryGrantStore()
        broker = GrantBroker(signing_key=generate_signing_key(), store=store)
        grants = GrantVerifier(keys=broker.public_jwks(), store=store, mode="required")
        issued = broker.mint(
            subject="alice",
            segment="live",
            methods=["GET"],
            paths=["/live/"],
            reason="on-call shift",
            requested_by="alice",
        )
        handlers = Handlers()
        app = protect(build_app(handlers), [jwt_verifier(issuer), grants])
        headers = {**bearer(issuer.token("alice", alg="ES256")), "x-zerotrust-grant": issued.token}

        with capture_events() as events, server(app) as base_url:
            async with open_websocket(base_url, "/live/echo", headers) as websocket:
                await websocket.send("before")
                assert "echo before" == await websocket.recv()
                broker.revoke(issued.grant_id, revoked_by="carol", reason="shift over")
                revoked_at = time.monotonic()
                code, _ = await wait_for_close(websocket, limit=INTERVAL + SLACK + 1)
                elapsed = time.monotonic() - revoked_at
            event = await wait_for_reverified(events)
            await wait_for(lambda: handlers.finished, message="the handler did not finish")

        assert 1008 == code
        assert elapsed <= INTERVAL + SLACK
        assert ["grant_revoked"] == event["reasons"]
        assert "alice" == event["subject"]
        assert 1008 == event["close_code"]
        # The echo handler waits in receive, which returns the disconnect with the policy code.
        assert [1008] == handlers.disconnect_codes
        validator.validate(event)

    async def test_closed_after_subject_flagged(
        self, server: Server, issuer: TokenIssuer, validator: Draft202012Validator
    ) -> None:
        """A websocket whose subject is flagged by a detector is closed with 1008."""
        signals = RiskSignals()
        risk = RiskVerifier(signals, kinds=["subject"])
        handlers = Handlers()
        app = protect(build_app(handlers), [jwt_verifier(issuer), risk])
        token = issuer.token("alice", alg="ES256")

        with capture_events() as events, server(app) as base_url:
            async with open_websocket(base_url, "/live/feed", bearer(token)) as websocket:
                await websocket.recv()
                now = time.time()
                signals.raise_signal(
                    RiskSignal(
                        kind="subject",
                        key="alice",
                        detector="denied_burst",
                        reason="denied_burst",
                        raised_at=now,
                        expires_at=now + 60,
                        source_ips=frozenset({"127.0.0.1"}),
                    )
                )
                flagged_at = time.monotonic()
                code, _ = await wait_for_close(websocket, limit=INTERVAL + SLACK + 1)
                elapsed = time.monotonic() - flagged_at
            event = await wait_for_reverified(events)
            await wait_for(lambda: handlers.finished, message="the handler did not finish")

        assert 1008 == code
        assert elapsed <= INTERVAL + SLACK
        assert ["risk_flagged_subject"] == event["reasons"]
        assert 403 != event["status"]
        assert ["denied_burst"] == event["facts"]["risk_detectors"]
        validator.validate(event)

    async def test_valid_connection_stays_open(self, server: Server, issuer: TokenIssuer) -> None:
        """A websocket that stays allowed is re-verified without being closed or recorded."""
        handlers = Handlers()
        app = protect(build_app(handlers), [jwt_verifier(issuer)])
        token = issuer.token("alice", alg="ES256")

        with capture_events() as events, server(app) as base_url:
            async with open_websocket(base_url, "/live/echo", bearer(token)) as websocket:
                replies = []
                for index in range(5):
                    await websocket.send(str(index))
                    replies.append(await websocket.recv())
                    await asyncio.sleep(INTERVAL)
                await websocket.close()
            await wait_for(lambda: handlers.finished, message="the handler did not finish")

        assert [f"echo {index}" for index in range(5)] == replies
        assert [] == reverified(events)
        # uvicorn reports the client's 1000, hypercorn 1006; either way not the policy's 1008.
        assert 1 == len(handlers.disconnect_codes)
        assert 1008 not in handlers.disconnect_codes

    async def test_monitor_mode_stays_open(self, server: Server, issuer: TokenIssuer) -> None:
        """In monitor mode a deny on re-verification is recorded once and the socket stays open."""
        store = MemoryGrantStore()
        broker = GrantBroker(signing_key=generate_signing_key(), store=store)
        grants = GrantVerifier(keys=broker.public_jwks(), store=store, mode="required")
        issued = broker.mint(
            subject="alice",
            segment="live",
            methods=["GET"],
            paths=["/live/"],
            reason="on-call shift",
            requested_by="alice",
        )
        handlers = Handlers()
        with pytest.warns(UserWarning, match="monitor"):
            app = protect(build_app(handlers), [jwt_verifier(issuer), grants], mode="monitor")
        headers = {**bearer(issuer.token("alice", alg="ES256")), "x-zerotrust-grant": issued.token}

        with capture_events() as events, server(app) as base_url:
            async with open_websocket(base_url, "/live/echo", headers) as websocket:
                broker.revoke(issued.grant_id, revoked_by="carol", reason="shift over")
                await asyncio.sleep(4 * INTERVAL)
                await websocket.send("still here")
                reply = await websocket.recv()
            await wait_for(lambda: handlers.finished, message="the handler did not finish")

        assert "echo still here" == reply
        found = reverified(events)
        assert 1 == len(found)
        assert ("deny", "allow") == (found[0]["decision"], found[0]["action"])
        assert "close_code" not in found[0]


class TestStreamReverification:
    async def test_ended_after_token_expiry(
        self, server: Server, issuer: TokenIssuer, validator: Draft202012Validator
    ) -> None:
        """A server-sent event stream ends within the interval after its token expires."""
        handlers = Handlers()
        app = protect(build_app(handlers), [jwt_verifier(issuer)])

        with capture_events() as events, server(app) as base_url:
            token, expires_at = short_lived_token(issuer)
            async with http_client() as client:
                status, lines = await read_stream(
                    client, f"{base_url}/live/events", bearer(token), limit=5
                )
                ended_at = time.time()
            event = await wait_for_reverified(events)
            ticks_at_end = len(handlers.ticks)
            await asyncio.sleep(4 * TICK)

        assert 200 == status
        assert len(lines) > 0
        assert ended_at >= expires_at
        assert ended_at <= expires_at + INTERVAL + SLACK
        # The generator stops with the stream, instead of producing into nowhere.
        assert len(handlers.ticks) <= ticks_at_end + 1
        assert ["token_expired"] == event["reasons"]
        assert ("http", 200) == (event["protocol"], event["status"])
        assert "close_code" not in event
        validator.validate(event)

    async def test_ended_after_grant_revoked(self, server: Server, issuer: TokenIssuer) -> None:
        """A server-sent event stream ends within the interval after its grant is revoked."""
        store = MemoryGrantStore()
        broker = GrantBroker(signing_key=generate_signing_key(), store=store)
        grants = GrantVerifier(keys=broker.public_jwks(), store=store, mode="required")
        issued = broker.mint(
            subject="alice",
            segment="live",
            methods=["GET"],
            paths=["/live/"],
            reason="on-call shift",
            requested_by="alice",
        )
        handlers = Handlers()
        app = protect(build_app(handlers), [jwt_verifier(issuer), grants])
        headers = {**bearer(issuer.token("alice", alg="ES256")), "x-zerotrust-grant": issued.token}

        async def revoke_soon() -> float:
            await asyncio.sleep(0.3)
            await asyncio.to_thread(
                broker.revoke, issued.grant_id, revoked_by="carol", reason="shift over"
            )
            return time.monotonic()

        with capture_events() as events, server(app) as base_url:
            async with http_client() as client:
                revoking = asyncio.create_task(revoke_soon())
                status, lines = await read_stream(
                    client, f"{base_url}/live/events", headers, limit=INTERVAL + SLACK + 2
                )
                elapsed = time.monotonic() - await revoking
            event = await wait_for_reverified(events)

        assert 200 == status
        assert len(lines) > 0
        assert elapsed <= INTERVAL + SLACK
        assert ["grant_revoked"] == event["reasons"]

    async def test_sized_response_cut_off(self, server: Server, issuer: TokenIssuer) -> None:
        """A streaming response with a Content-Length cannot finish early, so it is cut off."""
        signals = RiskSignals()
        risk = RiskVerifier(signals, kinds=["client_ip"])
        handlers = Handlers()
        app = protect(build_app(handlers), [jwt_verifier(issuer), risk])
        token = issuer.token("alice", alg="ES256")

        with capture_events() as events, server(app) as base_url:
            async with (
                http_client() as client,
                client.stream(
                    "GET", f"{base_url}/live/download", headers=bearer(token)
                ) as response,
            ):
                stream = response.aiter_bytes()
                await anext(stream)
                now = time.time()
                signals.raise_signal(
                    RiskSignal(
                        kind="client_ip",
                        key="127.0.0.1",
                        detector="scanner",
                        reason="path_scan",
                        raised_at=now,
                        expires_at=now + 60,
                    )
                )
                flagged_at = time.monotonic()
                with pytest.raises(httpx.RemoteProtocolError):
                    await drain(stream, INTERVAL + SLACK + 2)
                elapsed = time.monotonic() - flagged_at
            event = await wait_for_reverified(events)

        assert elapsed <= INTERVAL + SLACK
        assert ["risk_flagged_client_ip"] == event["reasons"]
        assert 200 == event["status"]

    async def test_valid_stream_completes(self, server: Server, issuer: TokenIssuer) -> None:
        """A stream that stays allowed runs to its own end while being re-verified."""
        handlers = Handlers()
        app = protect(build_app(handlers), [jwt_verifier(issuer)])
        token = issuer.token("alice", alg="ES256")

        with capture_events() as events, server(app) as base_url:
            async with http_client() as client:
                status, lines = await read_stream(
                    client, f"{base_url}/live/events?count=20", bearer(token), limit=5
                )

        assert 200 == status
        assert [f"data: tick {tick}" for tick in range(20)] == lines
        assert [] == reverified(events)


class TestTaskBounds:
    async def test_no_leaked_tasks(self, server: Server, issuer: TokenIssuer) -> None:
        """Each open connection has two tasks, and none remains after many short connections."""
        handlers = Handlers()
        app = protect(build_app(handlers), [jwt_verifier(issuer)])
        headers = bearer(issuer.token("alice", alg="ES256"))

        with server(app) as base_url:
            async with http_client() as client:

                async def running_tasks() -> list[str]:
                    response = await client.get(f"{base_url}/probe/tasks")
                    return response.json()["zerotrust"]  # type: ignore[no-any-return]

                async with contextlib.AsyncExitStack() as stack:
                    sockets = [
                        await stack.enter_async_context(
                            open_websocket(base_url, "/live/echo", headers)
                        )
                        for _ in range(3)
                    ]
                    for websocket in sockets:
                        await websocket.send("x")
                        await websocket.recv()
                    while_open = await running_tasks()

                for _ in range(30):
                    async with open_websocket(base_url, "/live/echo", headers) as websocket:
                        await websocket.send("x")
                        await websocket.recv()
                for _ in range(30):
                    await read_stream(client, f"{base_url}/live/events?count=2", headers, limit=5)
                for _ in range(10):
                    # The client leaves in the middle of the stream.
                    async with client.stream(
                        "GET", f"{base_url}/live/events", headers=headers
                    ) as response:
                        async for _line in response.aiter_lines():
                            break

                deadline = time.monotonic() + EVENT_WAIT
                remaining = await running_tasks()
                while remaining and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                    remaining = await running_tasks()

        # Each echo handler waits in receive: one receive task and one re-verify task apiece.
        assert ["zerotrust-receive"] * 3 + ["zerotrust-reverify"] * 3 == while_open
        assert [] == remaining


class TestConfiguration:
    @pytest.mark.parametrize(
        "value",
        [0, -1, 0.05, MAX_INTERVAL * 2, float("nan"), float("inf"), True, "5", [5]],
    )
    def test_invalid_interval_rejected(self, value: Any) -> None:
        """An interval that is not a number of seconds in range is a configuration error."""
        with pytest.raises(ConfigurationError, match="reverify_every") as raised:
            protect(Starlette(), [allow()], reverify_every=value)

        assert "reverify_every" == raised.value.parameter

    @pytest.mark.parametrize("value", [MIN_INTERVAL, 1, 30.0, MAX_INTERVAL])
    def test_valid_interval_accepted(self, value: float) -> None:
        """Intervals within the bounds are accepted, as floats."""
        middleware = protect(Starlette(), [allow()], reverify_every=value)

        guard = middleware._stream_guard
        assert isinstance(guard, StreamGuard)
        assert float(value) == guard.interval

    def test_off_by_default(self) -> None:
        """Without reverify_every the middleware re-verifies nothing."""
        middleware = protect(Starlette(), [allow()], reverify_every=None)

        assert middleware._stream_guard is None


class TestConnectionEnded:
    def test_is_os_error(self) -> None:
        """A send after the end raises an OSError, as ASGI servers do for a closed connection.

        Frameworks therefore treat it as a client that left.
        """
        assert issubclass(ConnectionEndedError, OSError)


class TestTokenCacheExpiry:
    async def test_cached_token_denied_after_exp(self, issuer: TokenIssuer) -> None:
        """A re-decision after exp denies, although the token was cached for a longer ttl."""
        verifier = jwt_verifier(issuer)
        engine = Engine(Policy([Segment("live", paths=["/live/"], verifiers=[verifier])]))
        token = issuer.token("alice", alg="ES256", lifetime=1)
        request = AccessRequest(
            method="GET",
            path="/live/feed",
            raw_path="/live/feed",
            host="127.0.0.1",
            headers=Headers(raw=[(b"authorization", f"Bearer {token}".encode())]),
            client_ip=None,
            peer_ip=None,
            request_id="stream-1",
            time=time.time(),
            protocol="websocket",
        )

        first = await engine.decide(request)
        assert verifier.cache is not None
        cached = len(verifier.cache)
        again = await engine.decide(dataclasses.replace(request, time=time.time()))
        expires_at = first.principal.expires_at if first.principal is not None else 0.0
        await asyncio.sleep(max(0.0, expires_at - time.time()) + 0.05)
        after_exp = await engine.decide(dataclasses.replace(request, time=time.time()))

        assert first.allowed
        assert 1 == cached
        assert again.allowed
        assert ("token_expired",) == after_exp.reasons
