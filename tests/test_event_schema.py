# SPDX-License-Identifier: Apache-2.0
"""Every access event the middleware emits validates against the published JSON Schema."""

from __future__ import annotations

import datetime
import json
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from jsonschema import Draft202012Validator, FormatChecker
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from zerotrust import (
    EventEmitter,
    InsecureConfigurationWarning,
    JsonLinesSink,
    JWTVerifier,
    MemorySink,
    Segment,
    ZeroTrustMiddleware,
)
from zerotrust.events import access_event_schema
from zerotrust.testing import StaticVerifier, TokenIssuer, capture_events

ALGORITHMS = ["RS256", "ES256", "EdDSA"]
MiddlewareFactory = Callable[[EventEmitter], ZeroTrustMiddleware]


@pytest.fixture(name="validator", scope="module")
def fixture_validator() -> Draft202012Validator:
    """A validator for the access event schema that also checks formats."""
    return Draft202012Validator(access_event_schema(), format_checker=FormatChecker())


async def list_items(_request: Request) -> JSONResponse:
    return JSONResponse({"items": ["a", "b"]})


async def create_item(_request: Request) -> JSONResponse:
    return JSONResponse({"created": True}, status_code=201)


async def fail(_request: Request) -> JSONResponse:
    raise RuntimeError("the application failed")


async def health(_request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def report(_request: Request) -> JSONResponse:
    return JSONResponse({"report": []})


async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_text("hello")
    await websocket.close()


def build_app() -> Starlette:
    return Starlette(
        routes=[
            Route("/api/items", list_items, methods=["GET"]),
            Route("/api/items", create_item, methods=["POST"]),
            Route("/api/boom", fail),
            Route("/healthz", health),
            Route("/shadow/report", report),
            WebSocketRoute("/ws", echo),
        ]
    )


@pytest.fixture(name="make_middleware")
def fixture_make_middleware(issuer: TokenIssuer, jwks_url: str) -> Iterator[MiddlewareFactory]:
    """Build the protected app around an emitter, and close every emitter after the test."""
    emitters: list[EventEmitter] = []

    def make(events: EventEmitter) -> ZeroTrustMiddleware:
        emitters.append(events)
        jwt_verifier = JWTVerifier(
            issuer=issuer.issuer, audience="api", algorithms=ALGORITHMS, jwks_url=jwks_url
        )
        device = StaticVerifier(
            "pass",
            facts={"device_id": "laptop-7", "posture": ["managed", "encrypted"]},
            name="device",
        )
        with pytest.warns(InsecureConfigurationWarning, match="monitor mode"):
            shadow = Segment(
                "shadow",
                paths=["/shadow/"],
                verifiers=[jwt_verifier],
                roles=["auditor"],
                mode="monitor",
            )
        segments = [
            Segment("health", paths=["/healthz"], public=True),
            Segment(
                "api",
                paths=["/api/"],
                verifiers=[jwt_verifier, device],
                scopes={"GET": ["items:read"], "POST": ["items:write"]},
            ),
            shadow,
            Segment("live", paths=["/ws"], verifiers=[jwt_verifier]),
        ]
        return ZeroTrustMiddleware(build_app(), policy=segments, events=events)

    yield make

    for emitter in emitters:
        emitter.close()


def client_for(app: Any, client_ip: str = "127.0.0.1") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(client_ip, 50000))
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def assert_valid(validator: Draft202012Validator, event: dict[str, Any]) -> None:
    errors = [
        f"{list(error.absolute_path)}: {error.message}" for error in validator.iter_errors(event)
    ]
    assert [] == errors, json.dumps(event, indent=2)
    # NOTE: jsonschema checks "date-time" only with the optional rfc3339-validator installed,
    # so the timestamp is also parsed here.
    parsed = datetime.datetime.fromisoformat(event["timestamp"])
    assert datetime.UTC == parsed.tzinfo


def assert_no_token(tokens: list[str], event: dict[str, Any]) -> None:
    text = orjson.dumps(event).decode()
    for token in tokens:
        assert token not in text
        for part in token.split("."):
            assert part not in text


class TestSchema:
    def test_schema_is_valid(self) -> None:
        """The schema is itself a valid draft 2020-12 schema."""
        Draft202012Validator.check_schema(access_event_schema())

    def test_schema_metadata(self) -> None:
        """The schema names its dialect, its id and the event it describes."""
        schema = access_event_schema()

        assert "https://json-schema.org/draft/2020-12/schema" == schema["$schema"]
        assert "urn:zerotrust:schema:access-event:1" == schema["$id"]
        assert "access" == schema["properties"]["event"]["const"]
        assert False is schema["additionalProperties"]

    def test_every_field_described(self) -> None:
        """Every top-level and verifier field carries a description for readers of the events."""
        schema = access_event_schema()
        fields = {**schema["properties"], **schema["$defs"]["verifier"]["properties"]}

        undocumented = [name for name, field in fields.items() if not field.get("description")]

        assert [] == undocumented

    def test_optional_keys(self) -> None:
        """Only missing_scopes, facts, close_code, raw_path and reverified may be left out."""
        schema = access_event_schema()

        optional = set(schema["properties"]) - set(schema["required"])

        assert {"missing_scopes", "facts", "close_code", "raw_path", "reverified"} == optional

    def test_rejects_unknown_key(self, validator: Draft202012Validator) -> None:
        """An event with a key the schema does not list is invalid."""
        event = _sample_event()
        event["level"] = "info"

        assert not validator.is_valid(event)

    def test_rejects_allow_with_reasons(self, validator: Draft202012Validator) -> None:
        """An allowed event that lists reasons is invalid."""
        event = _sample_event()
        event["reasons"] = ["token_missing"]

        assert not validator.is_valid(event)

    def test_rejects_enforced_deny_let_through(self, validator: Draft202012Validator) -> None:
        """In enforce mode a denied request must have the action deny."""
        event = _sample_event()
        event["decision"] = "deny"
        event["reasons"] = ["token_missing"]

        assert not validator.is_valid(event)

    def test_accepts_monitored_deny_let_through(self, validator: Draft202012Validator) -> None:
        """In monitor mode a denied request may have the action allow."""
        event = _sample_event()
        event["decision"] = "deny"
        event["reasons"] = ["insufficient_role"]
        event["mode"] = "monitor"

        assert validator.is_valid(event)

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("timestamp", "2026-03-01T12:00:00.123456+00:00"),
            ("event_id", "not-a-uuid"),
            ("client_ip", "300.1.1.1"),
            ("peer_ip", "localhost"),
            ("decision", "maybe"),
            ("protocol", "grpc"),
            ("status", 700),
            ("schema_version", "2"),
        ],
    )
    def test_rejects_bad_value(
        self, validator: Draft202012Validator, field: str, value: Any
    ) -> None:
        """A value outside the documented form is invalid."""
        event = _sample_event()
        event[field] = value

        assert not validator.is_valid(event)


def _sample_event() -> dict[str, Any]:
    return {
        "event": "access",
        "schema_version": "1",
        "timestamp": "2026-03-01T12:00:00.123456Z",
        "event_id": "01900000-0000-7000-8000-000000000000",
        "request_id": "req-1",
        "decision": "allow",
        "action": "allow",
        "mode": "enforce",
        "status": 200,
        "reasons": [],
        "segment": "api",
        "subject": "alice",
        "issuer": "https://issuer.test",
        "credential_fingerprint": "3f1a9c0b7d2e4a61",
        "client_ip": "192.0.2.10",
        "peer_ip": "192.0.2.10",
        "method": "GET",
        "scheme": "https",
        "protocol": "http",
        "host": "api.example.com",
        "path": "/api/items",
        "user_agent": "curl/8.5.0",
        "latency_ms": 1.5,
        "decision_ms": 0.4,
        "verifiers": [],
    }


class TestCapturedEvents:
    async def test_allow(
        self,
        validator: Draft202012Validator,
        make_middleware: MiddlewareFactory,
        issuer: TokenIssuer,
    ) -> None:
        """An allowed request yields a valid allow event with the principal and the facts."""
        app = make_middleware(EventEmitter([MemorySink()]))
        token = issuer.token("alice", scopes=["items:read"])

        with capture_events() as events:
            async with client_for(app) as client:
                response = await client.get("/api/items", headers=bearer(token))

        assert 200 == response.status_code
        assert 1 == len(events)
        event = events[0]
        assert_valid(validator, event)
        assert_no_token([token], event)
        assert ("allow", "allow", 200) == (event["decision"], event["action"], event["status"])
        assert "alice" == event["subject"]
        assert "api" == event["segment"]
        assert {"device_id": "laptop-7", "posture": ["managed", "encrypted"]} == event["facts"]
        assert ["pass", "pass"] == [verifier["result"] for verifier in event["verifiers"]]
        assert "missing_scopes" not in event

    @pytest.mark.parametrize(
        ("method", "path", "scopes", "status", "reasons"),
        [
            # Identity failures return 401.
            ("GET", "/api/items", None, 401, ["token_missing"]),
            ("GET", "/api/items", "expired", 401, ["token_expired"]),
            # Requirement failures return 403.
            ("POST", "/api/items", ["items:read"], 403, ["insufficient_scope"]),
            ("GET", "/elsewhere", ["items:read"], 403, ["no_segment"]),
            ("GET", "/api/a%2Fb", ["items:read"], 403, ["encoded_slash"]),
            ("GET", "/api//items", ["items:read"], 403, ["path_not_normalized"]),
        ],
    )
    async def test_deny(
        self,
        validator: Draft202012Validator,
        make_middleware: MiddlewareFactory,
        issuer: TokenIssuer,
        method: str,
        path: str,
        scopes: list[str] | str | None,
        status: int,
        reasons: list[str],
    ) -> None:
        """Each kind of denial yields a valid deny event with its reason code and status."""
        app = make_middleware(EventEmitter([MemorySink()]))
        headers: dict[str, str] = {}
        tokens: list[str] = []
        if scopes == "expired":
            tokens.append(issuer.token("bob", lifetime=-600))
        elif scopes is not None:
            tokens.append(issuer.token("bob", scopes=scopes))
        if tokens:
            headers = bearer(tokens[0])

        with capture_events() as events:
            async with client_for(app) as client:
                response = await client.request(method, path, headers=headers)

        assert status == response.status_code
        assert 1 == len(events)
        event = events[0]
        assert_valid(validator, event)
        assert_no_token(tokens, event)
        assert ("deny", "deny", status) == (event["decision"], event["action"], event["status"])
        assert reasons == event["reasons"]

    async def test_missing_scope_listed(
        self,
        validator: Draft202012Validator,
        make_middleware: MiddlewareFactory,
        issuer: TokenIssuer,
    ) -> None:
        """A 403 for a missing scope names the missing scope in the event."""
        app = make_middleware(EventEmitter([MemorySink()]))
        token = issuer.token("carol", scopes=["items:read"])

        with capture_events() as events:
            async with client_for(app) as client:
                await client.post("/api/items", headers=bearer(token))

        assert_valid(validator, events[0])
        assert ["items:write"] == events[0]["missing_scopes"]
        assert "carol" == events[0]["subject"]

    async def test_rejected_token_fingerprint(
        self,
        validator: Draft202012Validator,
        make_middleware: MiddlewareFactory,
        issuer: TokenIssuer,
    ) -> None:
        """A rejected token is identified by its fingerprint, never by the token itself."""
        app = make_middleware(EventEmitter([MemorySink()]))
        token = issuer.token("dave", lifetime=-600)

        with capture_events() as events:
            async with client_for(app) as client:
                await client.get("/api/items", headers=bearer(token))

        event = events[0]
        assert_valid(validator, event)
        assert_no_token([token], event)
        assert isinstance(event["credential_fingerprint"], str)
        assert 16 == len(event["credential_fingerprint"])
        assert None is event["subject"]

    async def test_no_segment(
        self, validator: Draft202012Validator, make_middleware: MiddlewareFactory
    ) -> None:
        """A request outside every segment is denied with a null segment and no verifiers."""
        app = make_middleware(EventEmitter([MemorySink()]))

        with capture_events() as events:
            async with client_for(app) as client:
                await client.get("/elsewhere")

        event = events[0]
        assert_valid(validator, event)
        assert None is event["segment"]
        assert [] == event["verifiers"]
        assert "enforce" == event["mode"]

    async def test_public_segment(
        self, validator: Draft202012Validator, make_middleware: MiddlewareFactory
    ) -> None:
        """A public segment allows without a subject."""
        app = make_middleware(EventEmitter([MemorySink()]))

        with capture_events() as events:
            async with client_for(app) as client:
                await client.get("/healthz")

        event = events[0]
        assert_valid(validator, event)
        assert ("allow", None) == (event["decision"], event["subject"])

    async def test_monitor_mode(
        self,
        validator: Draft202012Validator,
        make_middleware: MiddlewareFactory,
        issuer: TokenIssuer,
    ) -> None:
        """Monitor mode records the deny decision but lets the request through."""
        app = make_middleware(EventEmitter([MemorySink()]))
        token = issuer.token("erin")

        with capture_events() as events:
            async with client_for(app) as client:
                response = await client.get("/shadow/report", headers=bearer(token))

        assert 200 == response.status_code
        event = events[0]
        assert_valid(validator, event)
        assert ("deny", "allow", "monitor") == (event["decision"], event["action"], event["mode"])
        assert ["insufficient_role"] == event["reasons"]
        assert 200 == event["status"]

    async def test_application_error(
        self,
        validator: Draft202012Validator,
        make_middleware: MiddlewareFactory,
        issuer: TokenIssuer,
    ) -> None:
        """An application that raises before responding is recorded with status 500."""
        app = make_middleware(EventEmitter([MemorySink()]))
        token = issuer.token("frank", scopes=["items:read"])

        with capture_events() as events:
            async with client_for(app) as client:
                with pytest.raises(RuntimeError, match="the application failed"):
                    await client.get("/api/boom", headers=bearer(token))

        event = events[0]
        assert_valid(validator, event)
        assert 500 == event["status"]

    async def test_ipv6_client(
        self, validator: Draft202012Validator, make_middleware: MiddlewareFactory
    ) -> None:
        """An IPv6 client address validates as ipv6."""
        app = make_middleware(EventEmitter([MemorySink()]))

        with capture_events() as events:
            async with client_for(app, client_ip="2001:db8::7") as client:
                await client.get("/healthz")

        assert_valid(validator, events[0])
        assert "2001:db8::7" == events[0]["client_ip"]

    async def test_token_in_request_redacted(
        self,
        validator: Draft202012Validator,
        make_middleware: MiddlewareFactory,
        issuer: TokenIssuer,
    ) -> None:
        """A token copied into the path, the user agent or the request id is redacted."""
        app = make_middleware(EventEmitter([MemorySink()]))
        token = issuer.token("grace", scopes=["items:read"], alg="ES256")
        # Short enough to pass the request id check (128 characters), and shaped like a JWT.
        token_like_id = "eyJhbGci.eyJzdWIi.c2lnbmF0dXJl"
        headers = {
            **bearer(token),
            "user-agent": f"probe/1.0 Bearer {token}",
            "x-request-id": token_like_id,
        }

        with capture_events() as events:
            async with client_for(app) as client:
                await client.get(f"/api/items/{token}", headers=headers)

        event = events[0]
        assert_valid(validator, event)
        assert_no_token([token, token_like_id], event)
        # A JWT-shaped request id is replaced by a generated one, so events and responses agree.
        assert 32 == len(event["request_id"])
        # The marker of a redacted JWT is its credential fingerprint, so the two correlate.
        # ES256 keeps the token short enough that the user agent is not cut at 512 characters.
        marker = f"[redacted sha256:{event['credential_fingerprint']}]"
        assert f"/api/items/{marker}" == event["path"]
        assert f"probe/1.0 Bearer {marker}" == event["user_agent"]


class TestWebsocketEvents:
    @pytest.mark.parametrize(
        ("extensions", "status", "close_code"),
        [
            ({}, 403, 1008),
            ({"websocket.http.response": {}}, 401, None),
        ],
    )
    async def test_denied_handshake(
        self,
        validator: Draft202012Validator,
        make_middleware: MiddlewareFactory,
        extensions: dict[str, Any],
        status: int,
        close_code: int | None,
    ) -> None:
        """A denied websocket handshake yields a valid event, with any close code sent."""
        app = make_middleware(EventEmitter([MemorySink()]))

        with capture_events() as events:
            await _websocket(app, extensions)

        event = events[0]
        assert_valid(validator, event)
        assert ("websocket", "deny") == (event["protocol"], event["action"])
        assert ["token_missing"] == event["reasons"]
        assert status == event["status"]
        assert close_code == event.get("close_code")

    async def test_allowed_handshake(
        self,
        validator: Draft202012Validator,
        make_middleware: MiddlewareFactory,
        issuer: TokenIssuer,
    ) -> None:
        """An accepted websocket is recorded with status 101."""
        app = make_middleware(EventEmitter([MemorySink()]))
        token = issuer.token("heidi")

        with capture_events() as events:
            sent = await _websocket(app, {}, [(b"authorization", f"Bearer {token}".encode())])

        assert "websocket.accept" == sent[0]["type"]
        event = events[0]
        assert_valid(validator, event)
        assert_no_token([token], event)
        assert (101, "allow") == (event["status"], event["action"])


async def _websocket(
    app: ZeroTrustMiddleware,
    extensions: dict[str, Any],
    headers: list[tuple[bytes, bytes]] | None = None,
) -> list[dict[str, Any]]:
    """Run one websocket handshake through the app in-process and return the messages it sent."""
    incoming: list[dict[str, Any]] = [
        {"type": "websocket.connect"},
        {"type": "websocket.disconnect", "code": 1000},
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0) if incoming else {"type": "websocket.disconnect", "code": 1000}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "scheme": "ws",
        "path": "/ws",
        "raw_path": b"/ws",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"testserver"), *(headers or [])],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
        "subprotocols": [],
        "extensions": extensions,
    }
    call: Callable[..., Awaitable[None]] = app
    await call(scope, receive, send)

    return sent


class TestJsonLinesEvents:
    async def test_lines_validate(
        self,
        validator: Draft202012Validator,
        make_middleware: MiddlewareFactory,
        issuer: TokenIssuer,
        tmp_path: Path,
    ) -> None:
        """Every line a JsonLinesSink writes is one valid event, with no token in it."""
        path = tmp_path / "events.jsonl"
        app = make_middleware(EventEmitter([JsonLinesSink(path)]))
        good = issuer.token("ivan", scopes=["items:read"])
        expired = issuer.token("ivan", lifetime=-600)
        tokens = [good, expired]
        requests = [
            ("GET", "/api/items", bearer(good)),
            ("GET", "/api/items", bearer(expired)),
            ("GET", "/api/items", {}),
            ("POST", "/api/items", bearer(good)),
            ("GET", "/elsewhere", {}),
            ("GET", "/healthz", {"user-agent": f"probe Bearer {good}"}),
            ("GET", "/shadow/report", bearer(good)),
        ]

        async with client_for(app) as client:
            for method, url, headers in requests:
                await client.request(method, url, headers=headers)
        assert app.events.flush()

        lines = path.read_bytes().splitlines()
        assert len(requests) == len(lines)
        for line in lines:
            event = orjson.loads(line)
            assert_valid(validator, event)
            assert_no_token(tokens, event)
        decisions = [orjson.loads(line)["decision"] for line in lines]
        assert ["allow", "deny", "deny", "deny", "deny", "allow", "deny"] == decisions
        assert 0 == app.events.dropped
