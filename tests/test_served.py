# SPDX-License-Identifier: Apache-2.0
"""End-to-end tests of the ASGI middleware before a Starlette app that uvicorn serves locally."""

from __future__ import annotations

import json
import re
import socket
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import websockets.exceptions
import websockets.sync.client
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from zerotrust import (
    EventEmitter,
    JsonLinesSink,
    JWTVerifier,
    MemorySink,
    Segment,
    ZeroTrustMiddleware,
    get_access,
)
from zerotrust.testing import TokenIssuer, capture_events, serve

pytestmark = pytest.mark.served

_GENERATED_ID = re.compile(r"[0-9a-f]{32}")
_EVENT_WAIT = 5.0


@dataclass
class Recorder:
    """What the protected app saw: request paths, websocket sessions and lifespan events."""

    paths: list[str] = field(default_factory=list)
    websocket_paths: list[str] = field(default_factory=list)
    websocket_accepted: int = 0
    started: bool = False
    stopped: bool = False


def build_app(recorder: Recorder) -> Starlette:
    """Build a Starlette app that echoes the path and subject of every request it receives."""

    async def echo(request: Request) -> JSONResponse:
        recorder.paths.append(request.scope["path"])
        access = get_access(request)
        subject = access.subject if access is not None else None
        query = request.scope["query_string"].decode("latin-1")
        return JSONResponse({"path": request.scope["path"], "query": query, "subject": subject})

    async def websocket_echo(websocket: WebSocket) -> None:
        recorder.websocket_paths.append(websocket.scope["path"])
        await websocket.accept()
        recorder.websocket_accepted += 1
        access = get_access(websocket)
        subject = access.subject if access is not None else None
        await websocket.send_text(f"hello {subject}")
        await websocket.close()

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        recorder.started = True
        yield
        recorder.stopped = True

    return Starlette(
        routes=[
            WebSocketRoute("/ws/echo", websocket_echo),
            Route("/{rest:path}", echo, methods=["GET", "POST"]),
        ],
        lifespan=lifespan,
    )


def build_middleware(
    app: Starlette, issuer: TokenIssuer, jwks_url: str, events: EventEmitter, **options: Any
) -> ZeroTrustMiddleware:
    """Protect ``app`` with a JWT verifier that fetches the issuer's keys from ``jwks_url``."""
    jwt = JWTVerifier(
        issuer=issuer.issuer,
        audience="api",
        algorithms=sorted(issuer.private_keys),
        jwks_url=jwks_url,
    )
    policy = [
        Segment("public", paths=["/healthz"], public=True),
        Segment("api", paths=["/api/"], verifiers=[jwt], scopes=["read"]),
        Segment("admin", paths=["/admin/"], verifiers=[jwt], scopes=["admin"]),
        Segment("ws", paths=["/ws/"], verifiers=[jwt]),
    ]
    return ZeroTrustMiddleware(app, policy=policy, events=events, **options)


@dataclass
class Served:
    """One protected app running under uvicorn."""

    base_url: str
    recorder: Recorder
    middleware: ZeroTrustMiddleware

    @property
    def port(self) -> int:
        return int(self.base_url.rsplit(":", 1)[1])

    def client(self, user_agent: str) -> httpx.Client:
        # trust_env=False keeps proxy variables of the environment away from loopback requests.
        return httpx.Client(
            base_url=self.base_url,
            headers={"user-agent": user_agent},
            trust_env=False,
            timeout=5.0,
        )


@pytest.fixture(name="served", scope="module")
def fixture_served(issuer: TokenIssuer, jwks_url: str) -> Iterator[Served]:
    """The protected app with the default settings: reject unnormalised paths, no trusted proxy."""
    recorder = Recorder()
    middleware = build_middleware(
        build_app(recorder), issuer, jwks_url, EventEmitter([MemorySink(maxlen=100)])
    )
    with serve(middleware, lifespan="on", proxy_headers=False) as base_url:
        yield Served(base_url, recorder, middleware)


@pytest.fixture(name="served_rewrite", scope="module")
def fixture_served_rewrite(issuer: TokenIssuer, jwks_url: str) -> Iterator[Served]:
    """The protected app that rewrites paths to normal form and trusts 127.0.0.1 as a proxy."""
    recorder = Recorder()
    middleware = build_middleware(
        build_app(recorder),
        issuer,
        jwks_url,
        EventEmitter([MemorySink(maxlen=100)]),
        path_normalization="rewrite",
        trusted_proxies=["127.0.0.1"],
    )
    with serve(middleware, lifespan="on", proxy_headers=False) as base_url:
        yield Served(base_url, recorder, middleware)


@pytest.fixture(name="all_scopes_token", scope="module")
def fixture_all_scopes_token(issuer: TokenIssuer) -> str:
    return issuer.token("alice", scopes=["read", "admin"])


@pytest.fixture(name="read_token", scope="module")
def fixture_read_token(issuer: TokenIssuer) -> str:
    return issuer.token("alice", scopes=["read"])


@pytest.fixture(name="user_agent")
def fixture_user_agent() -> str:
    """A User-Agent unique to one test, to tell its events from late events of earlier tests."""
    return f"zerotrust-test/{uuid.uuid4().hex}"


def wait_for_events(
    events: list[dict[str, Any]], user_agent: str, count: int
) -> list[dict[str, Any]]:
    """
    Wait until ``count`` events of requests sent with ``user_agent`` were captured; return them.

    The middleware emits an event after the last byte of the response, so the client may
    read the response before the server thread captured the event.
    """
    deadline = time.monotonic() + _EVENT_WAIT
    while time.monotonic() < deadline:
        if len([event for event in events if event["user_agent"] == user_agent]) >= count:
            break
        time.sleep(0.01)
    # A short grace period exposes a second, unexpected event for the same request.
    time.sleep(0.05)

    return [event for event in events if event["user_agent"] == user_agent]


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes


def raw_request(
    port: int, target: bytes, user_agent: str, headers: dict[str, str] | None = None
) -> RawResponse:
    """Send one GET with ``target`` exactly as given, bypassing any client-side URL cleaning."""
    lines = [b"GET " + target + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close"]
    lines.append(b"User-Agent: " + user_agent.encode())
    lines += [f"{name}: {value}".encode("latin-1") for name, value in (headers or {}).items()]
    with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
        connection.sendall(b"\r\n".join(lines) + b"\r\n\r\n")
        data = b""
        while chunk := connection.recv(65536):
            data += chunk

    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        parsed[name.strip().lower()] = value.strip()

    return RawResponse(int(status_line.split()[1]), parsed, body)


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


class TestHttp:
    def test_allow(self, user_agent: str, served: Served, read_token: str) -> None:
        """A token with the required scope reaches the app, which receives the principal."""
        with capture_events() as events, served.client(user_agent) as client:
            response = client.get("/api/items", headers=bearer(read_token))
            captured = wait_for_events(events, user_agent, 1)

        assert 200 == response.status_code
        assert {"path": "/api/items", "query": "", "subject": "alice"} == response.json()
        assert 1 == len(captured)
        assert "allow" == captured[0]["decision"]
        assert "api" == captured[0]["segment"]
        assert 200 == captured[0]["status"]

    def test_public_without_token(self, user_agent: str, served: Served) -> None:
        """The public segment needs no token."""
        with served.client(user_agent) as client:
            response = client.get("/healthz")

        assert 200 == response.status_code
        assert response.json()["subject"] is None

    def test_missing_token(self, user_agent: str, served: Served) -> None:
        """A request without a token gets 401 with a Bearer challenge and a minimal body."""
        with capture_events() as events, served.client(user_agent) as client:
            response = client.get("/api/items")
            captured = wait_for_events(events, user_agent, 1)

        assert 401 == response.status_code
        challenge = response.headers["www-authenticate"]
        assert challenge.startswith("Bearer ")
        assert 'realm="zerotrust"' in challenge
        assert {"error", "request_id"} == set(response.json())
        assert "unauthorized" == response.json()["error"]
        assert 1 == len(captured)
        assert ["token_missing"] == captured[0]["reasons"]

    def test_invalid_token(self, user_agent: str, served: Served, read_token: str) -> None:
        """A token with a broken signature gets 401 with ``error="invalid_token"``."""
        tampered = read_token[:-6] + ("AAAAAA" if not read_token.endswith("AAAAAA") else "BBBBBB")
        seen_before = len(served.recorder.paths)
        with capture_events() as events, served.client(user_agent) as client:
            response = client.get("/api/items", headers=bearer(tampered))
            captured = wait_for_events(events, user_agent, 1)

        assert 401 == response.status_code
        assert 'error="invalid_token"' in response.headers["www-authenticate"]
        assert {"error", "request_id"} == set(response.json())
        assert seen_before == len(served.recorder.paths)
        assert tampered not in json.dumps(captured)

    def test_insufficient_scope(self, user_agent: str, served: Served, read_token: str) -> None:
        """A valid token without the segment's scope gets 403 naming the missing scope."""
        with capture_events() as events, served.client(user_agent) as client:
            response = client.get("/admin/users", headers=bearer(read_token))
            captured = wait_for_events(events, user_agent, 1)

        assert 403 == response.status_code
        challenge = response.headers["www-authenticate"]
        assert 'error="insufficient_scope"' in challenge
        assert 'scope="admin"' in challenge
        assert {"error", "request_id"} == set(response.json())
        assert "forbidden" == response.json()["error"]
        assert ["admin"] == captured[0]["missing_scopes"]

    def test_event_never_contains_token(
        self, user_agent: str, served: Served, read_token: str
    ) -> None:
        """Neither an allowed nor a denied request puts the token into its access event."""
        with capture_events() as events, served.client(user_agent) as client:
            client.get("/api/items", headers=bearer(read_token))
            client.get("/admin/users", headers=bearer(read_token))
            captured = wait_for_events(events, user_agent, 2)

        assert 2 == len(captured)
        assert read_token not in orjson.dumps(captured, default=str).decode()


class TestRequestId:
    def test_well_formed_echoed(self, user_agent: str, served: Served) -> None:
        """A well-formed incoming X-Request-ID is the id of the denial and of its event."""
        with capture_events() as events, served.client(user_agent) as client:
            response = client.get("/api/items", headers={"x-request-id": "trace-42.a:b"})
            captured = wait_for_events(events, user_agent, 1)

        assert "trace-42.a:b" == response.json()["request_id"]
        assert "trace-42.a:b" == response.headers["x-request-id"]
        assert "trace-42.a:b" == captured[0]["request_id"]

    @pytest.mark.parametrize(
        "value",
        [
            pytest.param("r" * 129, id="overlong"),
            pytest.param("a b", id="space"),
            pytest.param("<script>", id="markup"),
            pytest.param("-leading-dash", id="leading-dash"),
        ],
    )
    def test_malformed_replaced(self, user_agent: str, served: Served, value: str) -> None:
        """A malformed incoming X-Request-ID is replaced by a generated one."""
        with served.client(user_agent) as client:
            response = client.get("/api/items", headers={"x-request-id": value})

        request_id = response.json()["request_id"]
        assert _GENERATED_ID.fullmatch(request_id)
        assert request_id == response.headers["x-request-id"]

    def test_bare_carriage_return_rejected_by_server(self, user_agent: str, served: Served) -> None:
        """uvicorn responds with 400 to a CR inside a header value, before the middleware runs."""
        with capture_events() as events:
            response = raw_request(
                served.port, b"/api/items", user_agent, {"x-request-id": "abc\rdef"}
            )
            captured = wait_for_events(events, user_agent, 1)

        assert 400 == response.status
        assert [] == captured

    async def test_crlf_replaced(self, served: Served) -> None:
        """A request id with CR/LF that reaches the middleware is replaced, not echoed."""
        sent: list[dict[str, Any]] = []
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": "/api/items",
            "raw_path": b"/api/items",
            "query_string": b"",
            "root_path": "",
            "headers": [(b"host", b"127.0.0.1"), (b"x-request-id", b"abc\r\nx-injected: 1")],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", served.port),
        }

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await served.middleware(scope, receive, send)

        headers = dict(sent[0]["headers"])
        request_id = orjson.loads(sent[1]["body"])["request_id"]
        assert 401 == sent[0]["status"]
        assert _GENERATED_ID.fullmatch(request_id)
        assert request_id.encode() == headers[b"x-request-id"]
        assert b"x-injected" not in headers


# Raw request targets that a router might resolve into another zone, with the reason code
# the middleware records.
PATH_TRICKS = [
    pytest.param(b"/api/../admin/x", "path_not_normalized", id="dot-dot"),
    pytest.param(b"//admin/x", "path_not_normalized", id="double-slash"),
    pytest.param(b"/api/./items", "path_not_normalized", id="dot"),
    pytest.param(b"/api/%2e%2e/admin/x", "path_not_normalized", id="encoded-dot-dot"),
    pytest.param(b"/api/%2E%2e/admin/x", "path_not_normalized", id="encoded-dot-dot-mixed-case"),
    pytest.param(b"/api%2fx", "encoded_slash", id="encoded-slash"),
    pytest.param(b"/api/x%5c..%5cadmin", "encoded_backslash", id="encoded-backslash"),
    pytest.param(b"/api/x%00", "control_character_in_path", id="encoded-nul"),
    pytest.param(b"/api/%ff", "invalid_utf8_in_path", id="invalid-utf8"),
    pytest.param(b"/api/%252e%252e/admin", "double_encoding", id="double-encoding"),
    pytest.param(b"/api/x%", "malformed_percent_encoding", id="stray-percent"),
]


class TestPathTricks:
    @pytest.mark.parametrize(("target", "reason"), PATH_TRICKS)
    def test_denied_before_app(
        self, user_agent: str, served: Served, all_scopes_token: str, target: bytes, reason: str
    ) -> None:
        """An ambiguous path is denied with 403 despite a valid token and never reaches the app."""
        seen_before = len(served.recorder.paths)
        with capture_events() as events:
            response = raw_request(served.port, target, user_agent, bearer(all_scopes_token))
            captured = wait_for_events(events, user_agent, 1)

        assert 403 == response.status
        assert seen_before == len(served.recorder.paths)
        assert 1 == len(captured)
        assert [reason] == captured[0]["reasons"]
        assert captured[0]["segment"] is None

    def test_non_ascii_target_rejected_by_server(
        self, user_agent: str, served: Served, all_scopes_token: str
    ) -> None:
        """uvicorn responds with 400 to raw non-ASCII bytes in the request target."""
        seen_before = len(served.recorder.paths)
        response = raw_request(served.port, b"/api/\xff", user_agent, bearer(all_scopes_token))

        assert 400 == response.status
        assert seen_before == len(served.recorder.paths)


class TestRewrite:
    @pytest.mark.parametrize(
        ("target", "expected"),
        [
            pytest.param(b"/api/./items", "/api/items", id="dot"),
            pytest.param(b"//api//items", "/api/items", id="double-slash"),
            pytest.param(b"/admin/../api/items", "/api/items", id="dot-dot"),
            pytest.param(b"/admin/%2e%2e/api/items", "/api/items", id="encoded-dot-dot"),
        ],
    )
    def test_app_sees_normalised_path(
        self,
        user_agent: str,
        served_rewrite: Served,
        read_token: str,
        target: bytes,
        expected: str,
    ) -> None:
        """With ``rewrite`` the app receives the normalised path, the one the decision used."""
        with capture_events() as events:
            response = raw_request(served_rewrite.port, target, user_agent, bearer(read_token))
            captured = wait_for_events(events, user_agent, 1)

        assert 200 == response.status
        assert expected == json.loads(response.body)["path"]
        assert expected == served_rewrite.recorder.paths[-1]
        assert expected == captured[0]["path"]

    def test_decides_on_normalised_path(
        self, user_agent: str, served_rewrite: Served, read_token: str
    ) -> None:
        """A path that climbs from the api zone into admin is decided in admin."""
        seen_before = len(served_rewrite.recorder.paths)
        with capture_events() as events:
            response = raw_request(
                served_rewrite.port, b"/api/../admin/x", user_agent, bearer(read_token)
            )
            captured = wait_for_events(events, user_agent, 1)

        assert 403 == response.status
        assert "admin" == captured[0]["segment"]
        assert ["insufficient_scope"] == captured[0]["reasons"]
        assert seen_before == len(served_rewrite.recorder.paths)

    def test_encoded_slash_still_denied(
        self, user_agent: str, served_rewrite: Served, all_scopes_token: str
    ) -> None:
        """Rewriting does not make an encoded slash acceptable."""
        response = raw_request(
            served_rewrite.port, b"/api%2f..%2fadmin/x", user_agent, bearer(all_scopes_token)
        )

        assert 403 == response.status


class TestForwardedFor:
    def test_untrusted_peer_ignored(self, user_agent: str, served: Served, read_token: str) -> None:
        """Without trusted proxies, X-Forwarded-For cannot change the client address."""
        headers = {**bearer(read_token), "x-forwarded-for": "203.0.113.7"}
        with capture_events() as events, served.client(user_agent) as client:
            client.get("/api/items", headers=headers)
            captured = wait_for_events(events, user_agent, 1)

        assert "127.0.0.1" == captured[0]["client_ip"]
        assert "127.0.0.1" == captured[0]["peer_ip"]

    def test_trusted_peer_honoured(
        self, user_agent: str, served_rewrite: Served, read_token: str
    ) -> None:
        """With 127.0.0.1 as a trusted proxy, the forwarded client address is recorded."""
        headers = {**bearer(read_token), "x-forwarded-for": "198.51.100.1, 203.0.113.7"}
        with capture_events() as events, served_rewrite.client(user_agent) as client:
            client.get("/api/items", headers=headers)
            captured = wait_for_events(events, user_agent, 1)

        assert "203.0.113.7" == captured[0]["client_ip"]
        assert "127.0.0.1" == captured[0]["peer_ip"]

    def test_trusted_peer_malformed_header(
        self, user_agent: str, served_rewrite: Served, read_token: str
    ) -> None:
        """A trusted proxy that forwards garbage gets the request denied."""
        headers = {**bearer(read_token), "x-forwarded-for": "not-an-address"}
        with capture_events() as events, served_rewrite.client(user_agent) as client:
            response = client.get("/api/items", headers=headers)
            captured = wait_for_events(events, user_agent, 1)

        assert 403 == response.status_code
        assert ["malformed_forwarded_header"] == captured[0]["reasons"]


class TestWebSocket:
    def websocket_url(self, served: Served) -> str:
        return served.base_url.replace("http://", "ws://", 1) + "/ws/echo"

    def test_denied_without_token(self, user_agent: str, served: Served) -> None:
        """A handshake without a token fails, and the app never accepts the connection."""
        accepted_before = served.recorder.websocket_accepted
        entered_before = len(served.recorder.websocket_paths)
        with capture_events() as events:
            with pytest.raises(websockets.exceptions.InvalidStatus) as failure:
                websockets.sync.client.connect(
                    self.websocket_url(served), user_agent_header=user_agent, open_timeout=5
                )
            captured = wait_for_events(events, user_agent, 1)

        # uvicorn offers the websocket.http.response extension, so the denial is a plain 401.
        assert 401 == failure.value.response.status_code
        assert accepted_before == served.recorder.websocket_accepted
        assert entered_before == len(served.recorder.websocket_paths)
        assert "websocket" == captured[0]["protocol"]
        assert "deny" == captured[0]["decision"]

    def test_allowed_with_token(self, user_agent: str, served: Served, read_token: str) -> None:
        """A handshake with a valid token reaches the app, which receives the principal."""
        with capture_events() as events:
            with websockets.sync.client.connect(
                self.websocket_url(served),
                additional_headers=bearer(read_token),
                user_agent_header=user_agent,
                open_timeout=5,
            ) as connection:
                message = connection.recv(timeout=5)
            captured = wait_for_events(events, user_agent, 1)

        assert "hello alice" == message
        assert "allow" == captured[0]["decision"]
        assert 101 == captured[0]["status"]


class TestLifespan:
    def test_startup_shutdown_and_flush(
        self, issuer: TokenIssuer, jwks_url: str, read_token: str, tmp_path: Path
    ) -> None:
        """Lifespan handlers run through the middleware, and events reach the file by shutdown."""
        recorder = Recorder()
        log_file = tmp_path / "events.jsonl"
        middleware = build_middleware(
            build_app(recorder), issuer, jwks_url, EventEmitter([JsonLinesSink(log_file)])
        )

        with serve(middleware, lifespan="on", proxy_headers=False) as base_url:
            assert recorder.started
            assert not recorder.stopped
            with httpx.Client(base_url=base_url, trust_env=False, timeout=5.0) as client:
                client.get("/api/items", headers=bearer(read_token))
                client.get("/api/items")
                client.get("/nowhere")

        assert recorder.stopped
        lines = log_file.read_text().splitlines()
        assert 3 == len(lines)
        events = [json.loads(line) for line in lines]
        assert ["allow", "deny", "deny"] == [event["decision"] for event in events]
        assert read_token not in log_file.read_text()
        middleware.events.close()


def test_query_string_kept(served: Served, user_agent: str, read_token: str) -> None:
    """The query string takes no part in path checks and reaches the app unchanged."""
    query = urllib.parse.urlencode({"next": "/admin/../x", "q": "a b"})
    response = raw_request(
        served.port, f"/api/items?{query}".encode(), user_agent, bearer(read_token)
    )

    assert 200 == response.status
    assert "/api/items" == json.loads(response.body)["path"]
    assert query == json.loads(response.body)["query"]
