# SPDX-License-Identifier: Apache-2.0
"""The WSGI enforcement point, called in-process as a WSGI server would call it."""

from __future__ import annotations

import asyncio
import threading
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
import pytest

from zerotrust import (
    STATE_KEY,
    AccessContext,
    ConfigurationError,
    DenialResponse,
    InsecureConfigurationWarning,
    JWTVerifier,
    Principal,
    Segment,
    Verdict,
    Verifier,
    ZeroTrustMiddleware,
    ZeroTrustWSGIMiddleware,
    get_access,
)
from zerotrust.testing import StaticVerifier, TokenIssuer, allow, capture_events, deny

Environ = dict[str, Any]


class Response:
    """What a WSGI server would send: status line, headers and the joined body."""

    def __init__(self, status: str, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = status
        self.status_code = int(status[:3])
        self.headers = {name.lower(): value for name, value in headers}
        self.body = body

    def json(self) -> Any:
        return orjson.loads(self.body)


def environ_for(
    raw_uri: str | None = "/",
    *,
    path_info: str | None = None,
    script_name: str = "",
    method: str = "GET",
    headers: dict[str, str] | None = None,
    remote_addr: str = "127.0.0.1",
    raw_key: str = "RAW_URI",
) -> Environ:
    """Build the environ that gunicorn builds for a request target, decoding it as it does."""
    target = raw_uri if raw_uri is not None else "/"
    path, _, query = target.partition("?")
    if path_info is None:
        decoded = urllib.parse.unquote_to_bytes(path).decode("latin-1")
        path_info = decoded[len(script_name) :] if script_name else decoded
    environ: Environ = {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": script_name,
        "PATH_INFO": path_info,
        "QUERY_STRING": query,
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": remote_addr,
        "HTTP_HOST": "app.test",
        "wsgi.url_scheme": "http",
        "wsgi.input": None,
        "wsgi.errors": None,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        "wsgi.version": (1, 0),
    }
    if raw_uri is not None:
        environ[raw_key] = raw_uri
    for name, value in (headers or {}).items():
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    return environ


def call(app: Callable[..., Iterable[bytes]], environ: Environ) -> Response:
    """Call a WSGI app as a server does: start_response, iterate, then close."""
    started: list[tuple[str, list[tuple[str, str]]]] = []

    def start_response(
        status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], None]:
        started.append((status, headers))
        return lambda data: None

    body = app(environ, start_response)
    try:
        content = b"".join(body)
    finally:
        close = getattr(body, "close", None)
        if close is not None:
            close()
    status, headers = started[-1]
    return Response(status, headers, content)


class RecordingApp:
    """A WSGI app that records the environ it receives and responds with ``status``."""

    def __init__(self, status: str = "200 OK") -> None:
        self.status = status
        self.environs: list[Environ] = []
        self.closed = 0

    def __call__(self, environ: Environ, start_response: Any) -> Iterable[bytes]:
        self.environs.append(dict(environ))
        start_response(self.status, [("content-type", "text/plain")])
        return ClosingBody([b"o", b"k"], self)


class ClosingBody:
    """A response body with a ``close`` method, as PEP 3333 lets apps return."""

    def __init__(self, chunks: list[bytes], app: RecordingApp) -> None:
        self.chunks = chunks
        self.app = app

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.chunks)

    def close(self) -> None:
        self.app.closed += 1


class AwaitingVerifier(Verifier):
    """A verifier without a cached verdict, which records the event loop it ran on."""

    name = "awaiting"

    def __init__(self, *, delay: float = 0.0, timeout: float = 2.0) -> None:
        super().__init__(timeout=timeout)
        self.delay = delay
        self.loops: list[int] = []
        self.threads: list[str] = []

    async def verify(self, request: Any, context: Any) -> Verdict:
        self.loops.append(id(asyncio.get_running_loop()))
        self.threads.append(threading.current_thread().name)
        await asyncio.sleep(self.delay)
        return Verdict.passed(principal=Principal("alice"))


def middleware(
    app: Any = None, segments: list[Segment] | None = None, **options: Any
) -> ZeroTrustWSGIMiddleware:
    if segments is None:
        segments = [
            Segment("health", paths=["/healthz"], public=True),
            Segment("api", paths=["/api/"], verifiers=[allow("alice", scopes=["read"])]),
        ]
    return ZeroTrustWSGIMiddleware(app or RecordingApp(), policy=segments, **options)


@pytest.fixture(name="reader", scope="module")
def fixture_reader(issuer: TokenIssuer) -> JWTVerifier:
    """A JWT verifier with the issuer's static keys, so every decision can be cached."""
    return JWTVerifier(
        issuer=issuer.issuer, audience="api", algorithms=["RS256"], keys=issuer.jwks()
    )


class TestDecisions:
    def test_public_allowed(self) -> None:
        """A request in a public segment reaches the app."""
        app = RecordingApp()

        response = call(middleware(app), environ_for("/healthz"))

        assert 200 == response.status_code
        assert b"ok" == response.body
        assert 1 == len(app.environs)

    def test_context_in_environ(self) -> None:
        """The app finds the access context under the zerotrust key of the environ."""
        app = RecordingApp()

        call(middleware(app), environ_for("/api/items"))

        context = app.environs[0][STATE_KEY]
        assert isinstance(context, AccessContext)
        assert "alice" == context.subject
        assert context is get_access(app.environs[0])

    def test_valid_token_allowed(self, issuer: TokenIssuer, reader: JWTVerifier) -> None:
        """A signed token with the scope the segment needs is let through."""
        app = RecordingApp()
        segments = [Segment("api", paths=["/api/"], verifiers=[reader], scopes=["items:read"])]
        token = issuer.token("bob", audience="api", scopes=["items:read"], alg="RS256")

        response = call(
            middleware(app, segments),
            environ_for("/api/items", headers={"authorization": f"Bearer {token}"}),
        )

        assert 200 == response.status_code
        assert "bob" == get_access(app.environs[0]).subject  # type: ignore[union-attr]

    def test_missing_token_401(self, reader: JWTVerifier) -> None:
        """A request without a token gets 401, a Bearer challenge and the short JSON body."""
        app = RecordingApp()
        segments = [Segment("api", paths=["/api/"], verifiers=[reader])]

        response = call(middleware(app, segments), environ_for("/api/items"))

        assert "401 Unauthorized" == response.status
        assert 'Bearer realm="zerotrust"' == response.headers["www-authenticate"]
        assert "unauthorized" == response.json()["error"]
        assert response.headers["x-request-id"] == response.json()["request_id"]
        assert str(len(response.body)) == response.headers["content-length"]
        assert "no-store" == response.headers["cache-control"]
        assert [] == app.environs

    def test_missing_scope_403(self, issuer: TokenIssuer, reader: JWTVerifier) -> None:
        """A token without the segment's scope answers 403 insufficient_scope."""
        segments = [Segment("api", paths=["/api/"], verifiers=[reader], scopes=["items:write"])]
        token = issuer.token("bob", audience="api", scopes=["items:read"], alg="RS256")

        response = call(
            middleware(RecordingApp(), segments),
            environ_for("/api/items", headers={"authorization": f"Bearer {token}"}),
        )

        assert "403 Forbidden" == response.status
        assert "forbidden" == response.json()["error"]
        assert 'error="insufficient_scope"' in response.headers["www-authenticate"]
        assert 'scope="items:write"' in response.headers["www-authenticate"]

    def test_unmatched_path_403(self) -> None:
        """A path outside every segment is denied."""
        response = call(middleware(), environ_for("/admin"))

        assert 403 == response.status_code

    def test_head_denial_has_no_body(self) -> None:
        """A denied HEAD request gets the headers of the denial and an empty body."""
        response = call(middleware(), environ_for("/admin", method="HEAD"))

        assert 403 == response.status_code
        assert b"" == response.body
        assert int(response.headers["content-length"]) > 0

    def test_same_denial_as_asgi(self) -> None:
        """The WSGI denial has the ASGI denial's status, headers and body shape."""
        segments = [Segment("api", paths=["/api/"], verifiers=[deny("nope", identity=True)])]
        wsgi = call(middleware(RecordingApp(), segments), environ_for("/api/x"))
        asgi = ZeroTrustMiddleware(RecordingApp(), policy=segments)
        request = asgi._access_request(  # the ASGI side builds its denial from the same request
            {
                "type": "http",
                "method": "GET",
                "path": "/api/x",
                "raw_path": b"/api/x",
                "headers": [(b"host", b"app.test")],
                "client": ("127.0.0.1", 1),
            }
        )[0]
        decision = asyncio.run(asgi.engine.decide(request))
        expected = asgi._denial(request, decision)

        assert expected.status == wsgi.status_code
        assert dict(expected.headers)["www-authenticate"] == wsgi.headers["www-authenticate"]
        assert sorted(orjson.loads(expected.body)) == sorted(wsgi.json())

    def test_on_deny(self) -> None:
        """A custom denial replaces the default one."""

        def on_deny(request: Any, decision: Any) -> DenialResponse:
            return DenialResponse(403, [("content-type", "text/plain")], b"go away")

        response = call(middleware(on_deny=on_deny), environ_for("/admin"))

        assert (403, b"go away") == (response.status_code, response.body)

    def test_broken_on_deny_falls_back(self) -> None:
        """An on_deny that returns a 200 is ignored and the default denial is sent."""

        def on_deny(request: Any, decision: Any) -> DenialResponse:
            return DenialResponse(200, [], b"welcome")

        response = call(middleware(on_deny=on_deny), environ_for("/admin"))

        assert 403 == response.status_code
        assert "forbidden" == response.json()["error"]

    def test_monitor_mode_lets_through(self) -> None:
        """A denial in a monitor-mode segment still reaches the app and is recorded."""
        app = RecordingApp()
        with pytest.warns(InsecureConfigurationWarning):
            segments = [Segment("api", paths=["/api/"], verifiers=[deny()], mode="monitor")]

        with capture_events() as events:
            response = call(middleware(app, segments), environ_for("/api/x"))

        assert 200 == response.status_code
        assert "deny" == events[0]["decision"]
        assert 200 == events[0]["status"]

    def test_request_id_kept(self) -> None:
        """A well-formed X-Request-ID from the client becomes the request id."""
        with capture_events() as events:
            response = call(middleware(), environ_for("/admin", headers={"x-request-id": "r-1"}))

        assert "r-1" == response.json()["request_id"]
        assert "r-1" == events[0]["request_id"]


class TestConfiguration:
    @pytest.mark.parametrize("value", [0, -1, float("inf"), float("nan"), True, "2"])
    def test_bad_decision_timeout(self, value: Any) -> None:
        """A decision timeout that is not a positive number is rejected at construction."""
        with pytest.raises(ConfigurationError, match="decision_timeout"):
            middleware(decision_timeout=value)

    def test_bad_path_normalization(self) -> None:
        """An unknown path_normalization is rejected at construction."""
        with pytest.raises(ConfigurationError, match="path_normalization"):
            middleware(path_normalization="collapse")

    def test_default_decision_timeout(self) -> None:
        """The default timeout is the slowest verifier's timeout plus one second."""
        segments = [
            Segment("a", paths=["/a"], verifiers=[AwaitingVerifier(timeout=3.5)]),
            Segment("b", paths=["/b"], public=True),
        ]

        assert 4.5 == middleware(segments=segments).decision_timeout


# Each raw request target, as gunicorn puts it in RAW_URI, and the reason the middleware denies it.
PATH_TRICKS = [
    ("/api/%2e%2e/admin", "path_not_normalized"),
    ("/api/../admin", "path_not_normalized"),
    ("/api//items", "path_not_normalized"),
    ("/api/./items", "path_not_normalized"),
    ("/api/..%2fadmin", "encoded_slash"),
    ("/api/%5c..%5cadmin", "encoded_backslash"),
    ("/api/a\\b", "backslash_in_path"),
    ("/api/%00", "control_character_in_path"),
    ("/api/%252e%252e/admin", "double_encoding"),
    ("/api/%ff", "invalid_utf8_in_path"),
    ("/api/%zz", "malformed_percent_encoding"),
    ("api/items", "path_not_absolute"),
    ("/api/" + "a" * 9000, "path_too_long"),
]


class TestPaths:
    @pytest.mark.parametrize(("raw_uri", "reason"), PATH_TRICKS)
    def test_trick_rejected(self, raw_uri: str, reason: str) -> None:
        """An ambiguous path is denied with the same reason code as on the ASGI side."""
        app = RecordingApp()

        with capture_events() as events:
            response = call(middleware(app), environ_for(raw_uri))

        assert 403 == response.status_code
        assert [reason] == events[0]["reasons"]
        assert [] == app.environs

    @pytest.mark.parametrize(("raw_uri", "reason"), PATH_TRICKS)
    def test_trick_same_as_asgi(self, raw_uri: str, reason: str) -> None:
        """The ASGI middleware reads the same target the same way."""
        asgi = ZeroTrustMiddleware(RecordingApp(), policy=[Segment("a", paths=["/"], public=True)])
        raw = raw_uri.encode("latin-1")
        scope = {
            "type": "http",
            "method": "GET",
            "path": urllib.parse.unquote(raw_uri, errors="surrogateescape"),
            "raw_path": raw,
            "root_path": "",
            "headers": [(b"host", b"app.test")],
            "client": ("127.0.0.1", 1),
        }

        request, _ = asgi._access_request(scope)

        assert reason == request.problem

    @pytest.mark.parametrize(("raw_uri", "path_info"), [("/api/%ff", None), (None, "/api/\xff")])
    def test_invalid_utf8_event_is_text(self, raw_uri: str | None, path_info: str | None) -> None:
        """A path that is not UTF-8 is recorded with U+FFFD, so sinks can write the event."""
        with capture_events() as events:
            call(middleware(), environ_for(raw_uri, path_info=path_info))

        assert ["invalid_utf8_in_path"] == events[0]["reasons"]
        assert b"/api/\xef\xbf\xbd" == orjson.loads(orjson.dumps(events[0]))["path"].encode()

    def test_path_info_mismatch(self) -> None:
        """A PATH_INFO that is not the decoded raw target is denied."""
        with capture_events() as events:
            response = call(middleware(), environ_for("/api/items", path_info="/admin"))

        assert 403 == response.status_code
        assert ["path_mismatch"] == events[0]["reasons"]

    @pytest.mark.parametrize("raw_key", ["REQUEST_URI", "RAW_URI"])
    def test_either_raw_key(self, raw_key: str) -> None:
        """Both REQUEST_URI and RAW_URI are read as the raw target."""
        with capture_events() as events:
            call(middleware(), environ_for("/api/%2e%2e/admin", raw_key=raw_key))

        assert ["path_not_normalized"] == events[0]["reasons"]

    def test_without_raw_uri(self) -> None:
        """Without a raw target, the decoded PATH_INFO is checked on its own."""
        with capture_events() as events:
            response = call(middleware(), environ_for(None, path_info="/api/../admin"))

        assert 403 == response.status_code
        assert ["path_not_normalized"] == events[0]["reasons"]

    def test_without_raw_uri_nul(self) -> None:
        """A NUL byte in PATH_INFO is denied without a raw target too."""
        with capture_events() as events:
            call(middleware(), environ_for(None, path_info="/api/a\x00b"))

        assert ["control_character_in_path"] == events[0]["reasons"]

    def test_utf8_path_allowed(self) -> None:
        """A percent-encoded UTF-8 path is decoded once and allowed."""
        app = RecordingApp()

        response = call(middleware(app), environ_for("/api/caf%C3%A9"))

        assert 200 == response.status_code
        assert "/api/café" == get_access(app.environs[0]).request.path  # type: ignore[union-attr]

    def test_query_ignored(self) -> None:
        """The query string is not part of the path."""
        response = call(middleware(), environ_for("/api/items?next=/../admin"))

        assert 200 == response.status_code

    def test_absolute_form_target(self) -> None:
        """An absolute-form target, as a proxy may send, is read by its path."""
        environ = environ_for("http://app.test/api/items", path_info="/api/items")

        response = call(middleware(), environ)

        assert 200 == response.status_code

    def test_script_name_is_root_path(self) -> None:
        """Segments match PATH_INFO inside the SCRIPT_NAME mount."""
        app = RecordingApp()

        response = call(middleware(app), environ_for("/shop/api/items", script_name="/shop"))

        assert 200 == response.status_code
        context = get_access(app.environs[0])
        assert context is not None
        assert ("/api/items", "/shop") == (context.request.path, context.request.root_path)

    def test_prefix_stripped_by_proxy(self) -> None:
        """A SCRIPT_NAME set from a proxy header while the raw target lacks it is accepted."""
        environ = environ_for("/api/items", script_name="/shop", path_info="/api/items")

        response = call(middleware(), environ)

        assert 200 == response.status_code

    def test_rewrite_mode(self) -> None:
        """With rewrite, the app is handed the normalised path it was decided on."""
        app = RecordingApp()

        response = call(
            middleware(app, path_normalization="rewrite"), environ_for("/api/./a//b?x=1")
        )

        assert 200 == response.status_code
        assert "/api/a/b" == app.environs[0]["PATH_INFO"]
        assert "/api/a/b?x=1" == app.environs[0]["RAW_URI"]

    def test_rewrite_cannot_escape(self) -> None:
        """A rewritten path is decided after normalisation, so dot segments cannot climb out."""
        app = RecordingApp()

        response = call(middleware(app, path_normalization="rewrite"), environ_for("/api/../x"))

        assert 403 == response.status_code
        assert [] == app.environs


class TestHeaders:
    @pytest.mark.parametrize(
        ("host", "reason"),
        [("app.test,evil.test", "malformed_host_header"), ("bad host", "malformed_host_header")],
    )
    def test_bad_host(self, host: str, reason: str) -> None:
        """A repeated Host header, which gunicorn joins with a comma, is denied."""
        with capture_events() as events:
            response = call(middleware(), environ_for("/healthz", headers={"host": host}))

        assert 403 == response.status_code
        assert [reason] == events[0]["reasons"]

    def test_content_type_header(self) -> None:
        """CONTENT_TYPE reaches verifiers as the content-type header."""
        app = RecordingApp()
        environ = environ_for("/healthz")
        environ["CONTENT_TYPE"] = "application/json"

        call(middleware(app), environ)

        headers = get_access(app.environs[0]).request.headers  # type: ignore[union-attr]
        assert "application/json" == headers["content-type"]

    def test_non_latin1_environ_denied(self) -> None:
        """An environ value that is not a WSGI string is a malformed request, denied."""
        with capture_events() as events:
            response = call(middleware(), environ_for("/healthz", headers={"x-name": "\u2603"}))

        assert 403 == response.status_code
        assert ["malformed_request"] == events[0]["reasons"]


class TestProxies:
    def test_trusted_proxy_names_client(self) -> None:
        """A trusted proxy's X-Forwarded-For names the client."""
        app = RecordingApp()
        environ = environ_for("/healthz", headers={"x-forwarded-for": "203.0.113.7, 10.0.0.2"})

        call(middleware(app, trusted_proxies=["127.0.0.1", "10.0.0.0/8"]), environ)

        request = get_access(app.environs[0]).request  # type: ignore[union-attr]
        assert "203.0.113.7" == str(request.client_ip)
        assert "127.0.0.1" == str(request.peer_ip)

    def test_untrusted_peer_ignored(self) -> None:
        """X-Forwarded-For from a peer that is not a trusted proxy is ignored."""
        app = RecordingApp()
        environ = environ_for(
            "/healthz", headers={"x-forwarded-for": "203.0.113.7"}, remote_addr="198.51.100.1"
        )

        call(middleware(app, trusted_proxies=["127.0.0.1"]), environ)

        assert "198.51.100.1" == str(get_access(app.environs[0]).request.client_ip)  # type: ignore[union-attr]

    def test_forwarded_header(self) -> None:
        """With forwarded_header='forwarded', the RFC 7239 header names the client."""
        app = RecordingApp()
        environ = environ_for("/healthz", headers={"forwarded": 'for="[2001:db8::1]:443"'})

        call(middleware(app, trusted_proxies=["127.0.0.1"], forwarded_header="forwarded"), environ)

        assert "2001:db8::1" == str(get_access(app.environs[0]).request.client_ip)  # type: ignore[union-attr]

    def test_malformed_forwarded_denied(self) -> None:
        """A trusted proxy's unparsable X-Forwarded-For is denied."""
        with capture_events() as events:
            response = call(
                middleware(trusted_proxies=["127.0.0.1"]),
                environ_for("/healthz", headers={"x-forwarded-for": "not-an-address"}),
            )

        assert 403 == response.status_code
        assert ["malformed_forwarded_header"] == events[0]["reasons"]


class FailingApp:
    """A WSGI app that raises, before or while producing its body."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.closed = False

    def __call__(self, environ: Environ, start_response: Any) -> Iterable[bytes]:
        if self.where == "call":
            raise RuntimeError("app failed")
        if self.where == "start":
            start_response("200 OK", [])
            raise RuntimeError("app failed after start_response")
        return self.body(start_response)

    def body(self, start_response: Any) -> Iterator[bytes]:
        try:
            start_response("200 OK", [])
            if self.where == "late":
                yield b"first"
            raise RuntimeError("body failed")
        finally:
            self.closed = True


class TestEvents:
    def test_final_status(self) -> None:
        """The event records the status the app answered, not the decision's 200."""
        with capture_events() as events:
            call(middleware(RecordingApp("201 Created")), environ_for("/api/items"))

        assert 1 == len(events)
        assert 201 == events[0]["status"]
        assert "allow" == events[0]["decision"]

    def test_deny_event(self) -> None:
        """A denial records its status and reasons."""
        with capture_events() as events:
            call(middleware(), environ_for("/admin"))

        assert (403, ["no_segment"]) == (events[0]["status"], events[0]["reasons"])

    def test_event_after_close(self) -> None:
        """The event is recorded when the server closes the body, not before."""
        app = RecordingApp()
        start_response = lambda status, headers, exc_info=None: None  # noqa: E731

        with capture_events() as events:
            body = middleware(app)(environ_for("/api/items"), start_response)
            list(body)
            before = len(events)
            body.close()  # type: ignore[attr-defined]
            body.close()  # type: ignore[attr-defined]

        assert 0 == before
        assert 1 == len(events)
        assert 1 == app.closed

    def test_app_raises(self) -> None:
        """An app that raises is recorded as a 500 and the exception reaches the server."""
        with capture_events() as events, pytest.raises(RuntimeError, match="app failed"):
            call(middleware(FailingApp("call")), environ_for("/api/items"))

        assert 500 == events[0]["status"]

    def test_app_raises_after_start(self) -> None:
        """An app that raises after start_response but before any body is recorded as a 500."""
        with capture_events() as events, pytest.raises(RuntimeError):
            call(middleware(FailingApp("start")), environ_for("/api/items"))

        assert 500 == events[0]["status"]

    def test_body_raises(self) -> None:
        """A body that raises before its first chunk is a 500, and is closed."""
        app = FailingApp("early")

        with capture_events() as events, pytest.raises(RuntimeError, match="body failed"):
            call(middleware(app), environ_for("/api/items"))

        assert 500 == events[0]["status"]
        assert app.closed

    def test_body_raises_late(self) -> None:
        """A body that raises after sending data keeps the status already sent."""
        with capture_events() as events, pytest.raises(RuntimeError, match="body failed"):
            call(middleware(FailingApp("late")), environ_for("/api/items"))

        assert 200 == events[0]["status"]

    def test_latency_recorded(self) -> None:
        """The event carries the request's latency and the decision time."""
        with capture_events() as events:
            call(middleware(), environ_for("/api/items"))

        assert events[0]["latency_ms"] >= events[0]["decision_ms"] >= 0


class TestEventLoop:
    def test_fast_path_starts_no_loop(self, issuer: TokenIssuer, reader: JWTVerifier) -> None:
        """Decisions the verifiers make from their caches need no event loop at all."""
        segments = [
            Segment(
                "api", paths=["/api/"], verifiers=[reader, StaticVerifier("pass", name="context")]
            )
        ]
        protected = middleware(RecordingApp(), segments)
        token = issuer.token("bob", audience="api", alg="RS256")

        for _ in range(5):
            response = call(
                protected, environ_for("/api/x", headers={"authorization": f"Bearer {token}"})
            )
            assert 200 == response.status_code

        assert protected._runner._loop is None

    def test_one_loop_for_all_requests(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Every request that must await runs on the same loop, in the same thread."""
        created: list[asyncio.AbstractEventLoop] = []
        real_new_event_loop = asyncio.new_event_loop

        def counting_new_event_loop() -> asyncio.AbstractEventLoop:
            loop = real_new_event_loop()
            created.append(loop)
            return loop

        monkeypatch.setattr(asyncio, "new_event_loop", counting_new_event_loop)
        verifier = AwaitingVerifier()
        protected = middleware(segments=[Segment("s", paths=["/s"], verifiers=[verifier])])

        with ThreadPoolExecutor(4) as pool:
            responses = list(pool.map(lambda _: call(protected, environ_for("/s")), range(40)))

        assert [200] * 40 == [response.status_code for response in responses]
        assert 1 == len(created)
        assert 1 == len(set(verifier.loops))
        assert {"zerotrust-wsgi-loop"} == set(verifier.threads)
        protected.close()

    def test_jwks_fetched_at_first_use(self, issuer: TokenIssuer, jwks_url: str) -> None:
        """The first token waits for the JWKS on the loop; later ones use the cache."""
        verifier = JWTVerifier(
            issuer=issuer.issuer, audience="api", algorithms=["RS256"], jwks_url=jwks_url
        )
        protected = middleware(segments=[Segment("api", paths=["/api/"], verifiers=[verifier])])
        token = issuer.token("bob", audience="api", alg="RS256")
        environ = environ_for("/api/x", headers={"authorization": f"Bearer {token}"})

        before = protected.engine.decide_cached(protected._access_request(environ))
        first = call(protected, environ)
        after = protected.engine.decide_cached(protected._access_request(environ))

        assert before is None
        assert 200 == first.status_code
        assert after is not None
        assert after.allowed
        protected.close()

    def test_warm_up(self, issuer: TokenIssuer, jwks_url: str) -> None:
        """warm_up fetches the JWKS, so the first request is decided from the cache."""
        verifier = JWTVerifier(
            issuer=issuer.issuer, audience="api", algorithms=["RS256"], jwks_url=jwks_url
        )
        protected = middleware(segments=[Segment("api", paths=["/api/"], verifiers=[verifier])])
        token = issuer.token("bob", audience="api", alg="RS256")
        environ = environ_for("/api/x", headers={"authorization": f"Bearer {token}"})

        assert protected.warm_up(timeout=5)

        assert protected.engine.decide_cached(protected._access_request(environ)) is not None
        protected.close()

    def test_slow_decision_times_out(self) -> None:
        """A decision slower than decision_timeout is denied with engine_timeout."""
        verifier = AwaitingVerifier(delay=5.0, timeout=10.0)
        protected = middleware(
            segments=[Segment("s", paths=["/s"], verifiers=[verifier])], decision_timeout=0.2
        )

        with capture_events() as events:
            response = call(protected, environ_for("/s"))

        assert 403 == response.status_code
        assert ["engine_timeout"] == events[0]["reasons"]
        protected.close()

    def test_close_then_reuse(self) -> None:
        """After close, a request that must await starts a new loop."""
        verifier = AwaitingVerifier()
        protected = middleware(segments=[Segment("s", paths=["/s"], verifiers=[verifier])])

        call(protected, environ_for("/s"))
        protected.close()
        response = call(protected, environ_for("/s"))

        assert 200 == response.status_code
        assert 2 == len(set(verifier.loops))
        protected.close()


class TestGetAccess:
    def test_environ_and_scope(self) -> None:
        """get_access reads a WSGI environ and an ASGI scope."""
        app = RecordingApp()
        call(middleware(app), environ_for("/api/x"))
        context = app.environs[0][STATE_KEY]

        assert context is get_access({STATE_KEY: context})
        assert context is get_access({"type": "http", "state": {STATE_KEY: context}})

    @pytest.mark.parametrize("attribute", ["scope", "environ", "env"])
    def test_request_objects(self, attribute: str) -> None:
        """get_access reads requests that carry their scope or environ as an attribute."""
        app = RecordingApp()
        call(middleware(app), environ_for("/api/x"))
        context = app.environs[0][STATE_KEY]
        carrier = {STATE_KEY: context} if attribute != "scope" else {"state": {STATE_KEY: context}}
        request = type("Request", (), {attribute: carrier})()

        assert context is get_access(request)

    @pytest.mark.parametrize("value", [None, object(), {}, {STATE_KEY: "forged"}, {"state": 1}])
    def test_nothing_found(self, value: Any) -> None:
        """Anything without an access context gives None."""
        assert get_access(value) is None


class TestRouteCheck:
    """``check_routes=True`` checks a Flask app's routes when the first request arrives."""

    @staticmethod
    def flask_app(*, uncovered: bool) -> Any:
        flask = pytest.importorskip("flask")
        app = flask.Flask(__name__, static_folder=None)
        # Wrapped before its routes exist, as Flask apps usually are.
        app.wsgi_app = ZeroTrustWSGIMiddleware(  # type: ignore[method-assign]
            app.wsgi_app,
            policy=[
                Segment("health", paths=["/healthz"], public=True),
                Segment("api", paths=["/api/"], verifiers=[allow()]),
            ],
            check_routes=True,
            public_routes=["/healthz"],
        )

        @app.get("/healthz")
        def health() -> str:
            return "ok"

        @app.get("/api/items")
        def items() -> str:
            return "items"

        if uncovered:

            @app.get("/debug/vars")
            def debug() -> str:
                return "secrets"

        return app

    def test_covered_app_serves(self) -> None:
        app = self.flask_app(uncovered=False)

        response = call(app, environ_for("/api/items"))

        assert 200 == response.status_code

    def test_uncovered_route_denies_everything(self, caplog: pytest.LogCaptureFixture) -> None:
        app = self.flask_app(uncovered=True)

        with capture_events() as events:
            responses = [call(app, environ_for(path)) for path in ("/api/items", "/healthz")]

        assert [403, 403] == [response.status_code for response in responses]
        assert [["route_check_failed"]] * 2 == [event["reasons"] for event in events]
        assert "/debug/vars" in caplog.text

    def test_public_routes_need_the_check(self) -> None:
        with pytest.raises(ConfigurationError, match="check_routes=True"):
            ZeroTrustWSGIMiddleware(
                RecordingApp(),
                policy=[Segment("all", paths=["/"], public=True)],
                public_routes=["/healthz"],
            )

    def test_malformed_public_route(self) -> None:
        with pytest.raises(ConfigurationError, match="public_routes"):
            ZeroTrustWSGIMiddleware(
                RecordingApp(),
                policy=[Segment("all", paths=["/"], public=True)],
                check_routes=True,
                public_routes="/healthz",
            )
