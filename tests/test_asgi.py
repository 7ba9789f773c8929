# SPDX-License-Identifier: Apache-2.0
from __future__ import annotations

import asyncio
import warnings
from typing import Any

import orjson
import pytest

from zerotrust import (
    STATE_KEY,
    AccessContext,
    ConfigurationError,
    DenialResponse,
    Engine,
    InsecureConfigurationWarning,
    MemorySink,
    Policy,
    Segment,
    ZeroTrustMiddleware,
)
from zerotrust.testing import allow, capture_events, deny

Message = dict[str, Any]


class RecordingApp:
    """An ASGI app that records the scopes it receives and returns 200, or accepts websockets."""

    def __init__(self) -> None:
        self.scopes: list[dict[str, Any]] = []
        self.lifespan: list[str] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                self.lifespan.append(message["type"])
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        self.scopes.append(scope)
        if scope["type"] == "websocket":
            await receive()
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.close", "code": 1000})
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def http_scope(
    path: str,
    *,
    raw_path: bytes | None = None,
    method: str = "GET",
    headers: list[tuple[bytes, bytes]] | None = None,
    root_path: str = "",
    client: tuple[str, int] | None = ("127.0.0.1", 50000),
) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": raw_path if raw_path is not None else path.encode(),
        "root_path": root_path,
        "query_string": b"",
        "headers": [(b"host", b"app.test"), *(headers or [])],
        "client": client,
        "server": ("127.0.0.1", 8000),
    }


async def call(
    app: Any, scope: dict[str, Any], incoming: list[Message] | None = None
) -> list[Message]:
    queue = list(incoming or [{"type": "http.request", "body": b"", "more_body": False}])
    sent: list[Message] = []

    async def receive() -> Message:
        if queue:
            return queue.pop(0)
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


def protect(inner: Any, *segments: Segment, **options: Any) -> ZeroTrustMiddleware:
    if not segments:
        segments = (
            Segment("health", paths=["/healthz"], public=True),
            Segment("api", paths=["/api/"], verifiers=[allow("alice", scopes=["read"])]),
            Segment("admin", paths=["/admin/"], verifiers=[allow("alice")], roles=["admin"]),
        )
    options.setdefault("events", MemorySink())
    return ZeroTrustMiddleware(inner, policy=Policy(list(segments)), **options)


def status_of(sent: list[Message]) -> int:
    return next(m["status"] for m in sent if m["type"] == "http.response.start")


def header(sent: list[Message], name: bytes) -> bytes | None:
    start = next(m for m in sent if m["type"] == "http.response.start")
    return dict(start["headers"]).get(name)


class TestHttp:
    async def test_allowed_request_reaches_app(self) -> None:
        """An allowed request reaches the app with the access context in scope state."""
        inner = RecordingApp()

        sent = await call(protect(inner), http_scope("/api/items"))

        assert 200 == status_of(sent)
        context = inner.scopes[0]["state"][STATE_KEY]
        assert isinstance(context, AccessContext)
        assert "alice" == context.subject
        assert "api" == context.decision.segment.name  # type: ignore[union-attr]

    async def test_denial_body_is_short(self) -> None:
        """A denial sends 403 with only an error name and the request id."""
        inner = RecordingApp()
        scope = http_scope("/admin/users", headers=[(b"x-request-id", b"abc-123")])

        sent = await call(protect(inner), scope)

        assert 403 == status_of(sent)
        assert {"error": "forbidden", "request_id": "abc-123"} == orjson.loads(sent[1]["body"])
        assert b"no-store" == header(sent, b"cache-control")
        assert [] == inner.scopes

    async def test_401_has_challenge(self) -> None:
        """An identity failure returns 401 with a Bearer challenge."""
        app = protect(
            RecordingApp(),
            Segment("api", paths=["/api/"], verifiers=[deny("token_expired", identity=True)]),
        )

        sent = await call(app, http_scope("/api/items"))

        assert 401 == status_of(sent)
        assert b'Bearer realm="zerotrust", error="invalid_token"' == header(
            sent, b"www-authenticate"
        )

    async def test_head_denial_has_no_body(self) -> None:
        """A denied HEAD request gets headers but no body."""
        sent = await call(protect(RecordingApp()), http_scope("/secret", method="HEAD"))

        assert 403 == status_of(sent)
        assert b"" == sent[1]["body"]
        assert header(sent, b"content-length") != b"0"

    @pytest.mark.parametrize(
        ("path", "raw_path", "reason"),
        [
            ("/api/../admin/users", b"/api/../admin/users", "path_not_normalized"),
            ("//admin/users", b"//admin/users", "path_not_normalized"),
            ("/api/../admin/users", b"/api/%2e%2e/admin/users", "path_not_normalized"),
            ("/api/items/x", b"/api%2Fitems/x", "encoded_slash"),
            ("/api/items", b"/api/%ff", "invalid_utf8_in_path"),
            ("/api/items", b"/api/other", "path_mismatch"),
        ],
    )
    async def test_path_tricks_denied(self, path: str, raw_path: bytes, reason: str) -> None:
        """Ambiguous paths are denied before they reach the app, with the reason in the event."""
        inner = RecordingApp()
        with capture_events() as events:
            sent = await call(protect(inner), http_scope(path, raw_path=raw_path))

        assert 403 == status_of(sent)
        assert [] == inner.scopes
        assert [reason] == events[0]["reasons"]

    async def test_rewrite_hands_normalised_path(self) -> None:
        """With path_normalization='rewrite', the app routes on the path the decision used."""
        inner = RecordingApp()
        app = protect(inner, path_normalization="rewrite")

        with capture_events() as events:
            sent = await call(
                app, http_scope("/api/../admin/users", raw_path=b"/api/../admin/users")
            )

        assert 403 == status_of(sent)
        assert "admin" == events[0]["segment"]
        sent = await call(app, http_scope("//api//items", raw_path=b"//api//items"))
        assert 200 == status_of(sent)
        assert "/api/items" == inner.scopes[0]["path"]
        assert b"/api/items" == inner.scopes[0]["raw_path"]

    async def test_root_path_is_stripped(self) -> None:
        """Segments match the path inside the app, after the mount's root_path."""
        inner = RecordingApp()
        scope = http_scope("/v1/api/items", raw_path=b"/api/items", root_path="/v1")

        sent = await call(protect(inner), scope)

        assert 200 == status_of(sent)

    async def test_root_path_does_not_hide_admin(self) -> None:
        """Under a root_path, an admin route is still decided as admin."""
        scope = http_scope("/v1/admin/users", raw_path=b"/v1/admin/users", root_path="/v1")
        with capture_events() as events:
            await call(protect(RecordingApp()), scope)

        assert "admin" == events[0]["segment"]

    async def test_duplicate_host_denied(self) -> None:
        """Two Host headers make the request ambiguous, so it is denied."""
        scope = http_scope("/healthz", headers=[(b"host", b"other.test")])
        with capture_events() as events:
            sent = await call(protect(RecordingApp()), scope)

        assert 403 == status_of(sent)
        assert ["duplicate_host_header"] == events[0]["reasons"]

    async def test_engine_crash_denies(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A bug inside the engine denies with engine_error instead of returning 500."""

        async def broken(self: Engine, request: object) -> None:
            raise RuntimeError("bug")

        monkeypatch.setattr(Engine, "decide", broken)
        with capture_events() as events:
            sent = await call(protect(RecordingApp()), http_scope("/healthz"))

        assert 403 == status_of(sent)
        assert ["engine_error"] == events[0]["reasons"]

    async def test_app_exception_recorded(self) -> None:
        """When the app raises, the event records status 500 and the exception propagates."""

        async def failing(scope: Any, receive: Any, send: Any) -> None:
            raise ValueError("app bug")

        with capture_events() as events, pytest.raises(ValueError, match="app bug"):
            await call(protect(failing), http_scope("/healthz"))

        assert 500 == events[0]["status"]

    async def test_monitor_mode_passes(self) -> None:
        """A monitored segment lets a denied request through and records the would-be denial."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", InsecureConfigurationWarning)
            segment = Segment(
                "api", paths=["/api/"], verifiers=[deny("geo_blocked")], mode="monitor"
            )
        inner = RecordingApp()

        with capture_events() as events:
            sent = await call(protect(inner, segment), http_scope("/api/items"))

        assert 200 == status_of(sent)
        assert "deny" == events[0]["decision"]
        assert "allow" == events[0]["action"]
        assert 200 == events[0]["status"]

    async def test_custom_denial(self) -> None:
        """on_deny can shape the response but not turn it into anything but 401 or 403."""

        def on_deny(request: Any, decision: Any) -> DenialResponse:
            return DenialResponse(403, [("content-type", "text/plain")], b"nope")

        sent = await call(protect(RecordingApp(), on_deny=on_deny), http_scope("/secret"))

        assert b"nope" == sent[1]["body"]

    async def test_custom_denial_cannot_allow(self) -> None:
        """An on_deny that returns a 200 or raises falls back to the default denial."""

        def on_deny(request: Any, decision: Any) -> DenialResponse:
            return DenialResponse(200, [], b"allowed?")

        sent = await call(protect(RecordingApp(), on_deny=on_deny), http_scope("/secret"))

        assert 403 == status_of(sent)

    def test_rejects_unknown_normalization(self) -> None:
        """Only 'reject' and 'rewrite' are valid path normalisation modes."""
        with pytest.raises(ConfigurationError, match="'fix'"):
            protect(RecordingApp(), path_normalization="fix")

    def test_accepts_segment_list(self) -> None:
        """A plain list of segments is turned into a Policy."""
        app = ZeroTrustMiddleware(
            RecordingApp(), policy=[Segment("h", paths=["/h"], public=True)], events=MemorySink()
        )

        assert 1 == len(app.policy)


class TestWebsocket:
    def scope(self, path: str, extensions: dict[str, Any] | None = None) -> dict[str, Any]:
        scope = http_scope(path)
        scope.update(type="websocket", scheme="ws", extensions=extensions or {})
        del scope["method"]
        return scope

    async def test_denied_closes_1008(self) -> None:
        """A denied handshake is closed with 1008 before it reaches the app."""
        inner = RecordingApp()
        with capture_events() as events:
            sent = await call(
                protect(inner), self.scope("/admin/ws"), [{"type": "websocket.connect"}]
            )

        assert [{"type": "websocket.close", "code": 1008}] == sent
        assert [] == inner.scopes
        assert 1008 == events[0]["close_code"]
        assert "websocket" == events[0]["protocol"]

    async def test_denied_with_http_response(self) -> None:
        """With the denial response extension, a denied handshake gets an HTTP 403."""
        scope = self.scope("/admin/ws", {"websocket.http.response": {}})

        sent = await call(protect(RecordingApp()), scope, [{"type": "websocket.connect"}])

        assert "websocket.http.response.start" == sent[0]["type"]
        assert 403 == sent[0]["status"]

    async def test_allowed_reaches_app(self) -> None:
        """An allowed handshake reaches the app, and the event records status 101."""
        inner = RecordingApp()
        with capture_events() as events:
            await call(protect(inner), self.scope("/api/ws"), [{"type": "websocket.connect"}])

        assert 1 == len(inner.scopes)
        assert 101 == events[0]["status"]


class TestLifespan:
    async def test_passes_through(self) -> None:
        """Lifespan messages reach the app and its replies reach the server unchanged."""
        inner = RecordingApp()
        incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]

        sent = await call(
            protect(inner), {"type": "lifespan", "asgi": {"version": "3.0"}}, incoming
        )

        assert ["lifespan.startup", "lifespan.shutdown"] == inner.lifespan
        expected = [{"type": "lifespan.startup.complete"}, {"type": "lifespan.shutdown.complete"}]
        assert expected == sent

    async def test_flushes_events_at_shutdown(self) -> None:
        """Events queued before shutdown reach the sink when the app stops."""
        sink = MemorySink()
        app = protect(RecordingApp(), events=sink)
        await call(app, http_scope("/healthz"))
        incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]

        await call(app, {"type": "lifespan", "asgi": {"version": "3.0"}}, incoming)

        assert 1 == len(sink.events)

    @pytest.mark.parametrize(
        "reads_first", [False, True], ids=["raises-at-once", "reads-then-raises"]
    )
    async def test_runs_lifespan_for_app_without_it(self, reads_first: bool) -> None:
        """An app without lifespan support, as Django's, still gets the flush at shutdown."""

        async def http_only(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "lifespan":
                if reads_first:
                    await receive()
                message = f"cannot handle {scope['type']} scopes"
                raise ValueError(message)
            await RecordingApp()(scope, receive, send)

        sink = MemorySink()
        app = protect(http_only, events=sink)
        await call(app, http_scope("/healthz"))
        incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]

        sent = await call(app, {"type": "lifespan", "asgi": {"version": "3.0"}}, incoming)

        expected = [{"type": "lifespan.startup.complete"}, {"type": "lifespan.shutdown.complete"}]
        assert expected == sent
        assert 1 == len(sink.events)

    async def test_app_lifespan_failure_propagates(self) -> None:
        """An app that reported startup and then fails keeps its own error."""

        async def failing(scope: Any, receive: Any, send: Any) -> None:
            await receive()
            await send({"type": "lifespan.startup.failed", "message": "database unreachable"})
            message = "database unreachable"
            raise RuntimeError(message)

        incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]

        with pytest.raises(RuntimeError, match="database unreachable"):
            await call(protect(failing), {"type": "lifespan", "asgi": {"version": "3.0"}}, incoming)


class TestMalformedScope:
    @pytest.mark.parametrize(
        "change",
        [
            {"headers": [(b"host", "not-bytes")]},
            {"headers": None},
            {"headers": [(b"host",)]},
        ],
    )
    async def test_unreadable_scope_denied(self, change: dict[str, Any]) -> None:
        """A scope the middleware cannot read is denied with malformed_request, not a 500."""
        scope = http_scope("/healthz")
        scope.update(change)
        with capture_events() as events:
            sent = await call(protect(RecordingApp()), scope)

        assert 403 == status_of(sent)
        assert ["malformed_request"] == events[0]["reasons"]


class TestMountedApp:
    async def test_decides_on_mounted_route(self) -> None:
        """Inside a Starlette Mount, segments match the path the mounted router matches."""
        import httpx
        from starlette.applications import Starlette
        from starlette.responses import PlainTextResponse
        from starlette.routing import Mount, Route

        async def handler(request: Any) -> PlainTextResponse:
            return PlainTextResponse(request.url.path)

        inner = Starlette(routes=[Route("/api/items", handler), Route("/admin/users", handler)])
        protected = protect(inner)
        outer = Starlette(routes=[Mount("/v1", app=protected)])
        transport = httpx.ASGITransport(app=outer)

        with capture_events() as events:
            async with httpx.AsyncClient(transport=transport, base_url="http://app.test") as client:
                allowed = await client.get("/v1/api/items")
                denied = await client.get("/v1/admin/users")

        assert 200 == allowed.status_code
        assert 403 == denied.status_code
        assert ["api", "admin"] == [event["segment"] for event in events]
        assert ["/api/items", "/admin/users"] == [event["path"] for event in events]
