# SPDX-License-Identifier: Apache-2.0
"""Property tests of path handling, proxy resolution, segment matching and the ASGI middleware."""

from __future__ import annotations

import random
import re
import urllib.parse
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from hypothesis import assume, given
from hypothesis import event as note_event
from hypothesis import strategies as st
from starlette.datastructures import Headers

from tests import strategies
from zerotrust import JWTVerifier, MemorySink, Policy, Segment, TrustedProxies, ZeroTrustMiddleware
from zerotrust.asgi import STATE_KEY, AccessContext
from zerotrust.events import EventEmitter
from zerotrust.events.access import new_event_id
from zerotrust.request import PathProblem, check_raw_path, new_request_id, normalize_path
from zerotrust.testing import StaticVerifier, TokenIssuer, abstain, allow, capture_events, deny

# Strategies need the issuer when the module is collected, before any fixture exists.
ISSUER = TokenIssuer(algorithms=("RS256", "ES256", "EdDSA"))
_REASON_CODE = re.compile(r"[a-z][a-z0-9_]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def build_policy() -> Policy:
    """
    Build a policy with a public health check, an API zone, a stricter admin zone, a zone that
    always denies and a glob zone that a static verifier authenticates.
    """
    jwt = JWTVerifier(
        issuer=ISSUER.issuer,
        audience=strategies.TOKEN_AUDIENCE,
        algorithms=sorted(ISSUER.private_keys),
        keys=ISSUER.jwks(),
    )
    device = StaticVerifier("pass", name="device")
    return Policy(
        [
            Segment("public", paths=["/healthz"], public=True),
            Segment(
                "api", paths=["/api/"], verifiers=[jwt], scopes={"GET": ["read"], "*": ["write"]}
            ),
            Segment("internal", paths=["/api/internal/"], verifiers=[jwt, deny("blocked")]),
            Segment("files", paths=["/api/*/raw"], verifiers=[allow("svc", scopes=["read"])]),
            Segment(
                "admin",
                paths=["/admin/"],
                verifiers=[jwt, device, abstain()],
                scopes=["admin"],
                roles=["ops"],
            ),
        ]
    )


POLICY = build_policy()
EMITTER = EventEmitter([MemorySink(maxlen=100)])


class RecordingApp:
    """An ASGI app that responds with 200 and records the scope of every request it receives."""

    def __init__(self) -> None:
        self.scopes: list[dict[str, Any]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.scopes.append(scope)
        if scope["type"] == "websocket":
            await receive()
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.close", "code": 1000})
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def decode_latin1(raw_path: bytes) -> str:
    """Percent-decode the way a server does that reads the request target as Latin-1."""
    return urllib.parse.unquote(raw_path.decode("latin-1"))


def decode_utf8(raw_path: bytes) -> str:
    """Percent-decode to UTF-8, replacing invalid sequences, as ``urllib.parse.unquote`` does."""
    return urllib.parse.unquote_to_bytes(raw_path).decode("utf-8", "replace")


def build_scope(
    method: str,
    raw_path: bytes,
    headers: list[tuple[str, str]],
    decode: Callable[[bytes], str],
    peer: str | None = "198.51.100.9",
    scope_type: str = "http",
) -> dict[str, Any]:
    """Build a scope as a server would: ``path`` is ``raw_path`` percent-decoded."""
    return {
        "type": scope_type,
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": decode(raw_path),
        "raw_path": raw_path,
        "query_string": b"",
        "root_path": "",
        "headers": [(name.encode("latin-1"), value.encode("utf-8")) for name, value in headers],
        "client": (peer, 50000) if peer is not None else None,
        "server": ("127.0.0.1", 8000),
    }


async def run_request(
    middleware: ZeroTrustMiddleware, scope: dict[str, Any]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Call the middleware once; return the messages it sent and the events it emitted."""
    sent: list[dict[str, Any]] = []
    if scope["type"] == "websocket":
        incoming = [{"type": "websocket.connect"}, {"type": "websocket.disconnect", "code": 1000}]
    else:
        incoming = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> dict[str, Any]:
        return incoming.pop(0) if len(incoming) > 1 else incoming[0]

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    with capture_events() as events:
        await middleware(scope, receive, send)
    # Drain the writer thread, so that no work of one example overlaps the next one.
    middleware.events.flush()

    return sent, list(events)


def presented_tokens(headers: list[tuple[str, str]]) -> list[str]:
    """Return the credential part of every ``Authorization`` header."""
    found = []
    for name, value in headers:
        if name == "authorization":
            found.append(value.strip().rpartition(" ")[2] or value)
    return found


def sent_elsewhere(token: str, raw_path: bytes, headers: list[tuple[str, str]]) -> bool:
    """Whether the client also sent ``token`` outside ``Authorization``, where it may be logged."""
    if token in raw_path.decode("latin-1"):
        return True
    return any(token in value for name, value in headers if name != "authorization")


def new_middleware(path_normalization: str) -> tuple[ZeroTrustMiddleware, RecordingApp]:
    app = RecordingApp()
    middleware = ZeroTrustMiddleware(
        app, policy=POLICY, events=EMITTER, path_normalization=path_normalization
    )
    return middleware, app


MIDDLEWARES = {mode: new_middleware(mode) for mode in ("reject", "rewrite")}


class TestNormalizePath:
    @given(path=strategies.path_texts())
    def test_idempotent(self, path: str) -> None:
        """Normalising a normalised path returns it unchanged."""
        once = normalize_path(path)

        assert once == normalize_path(once)

    @given(path=strategies.path_texts())
    def test_starts_with_slash(self, path: str) -> None:
        """The result always starts with a slash, whatever the input."""
        assert normalize_path(path).startswith("/")

    @given(path=strategies.path_texts())
    def test_no_empty_or_dot_segments(self, path: str) -> None:
        """The result has no repeated slash and no ``.`` or ``..`` segment."""
        normalised = normalize_path(path)

        assert "//" not in normalised
        assert "." not in normalised.split("/")
        assert ".." not in normalised.split("/")


class TestCheckRawPath:
    @given(raw_path=st.one_of(strategies.raw_paths(), st.binary(max_size=64)))
    def test_returns_text_or_raises_path_problem(self, raw_path: bytes) -> None:
        """Any raw path is decoded to text or rejected with `PathProblem`, never another error."""
        try:
            decoded = check_raw_path(raw_path)
        except PathProblem as problem:
            reason = problem.reason
            assert _REASON_CODE.fullmatch(reason)
            return

        assert isinstance(decoded, str)
        assert decoded.startswith("/")
        assert "\\" not in decoded
        assert not _CONTROL.search(decoded)


class TestTrustedProxies:
    @given(
        networks=strategies.network_lists(),
        header=st.sampled_from(("x-forwarded-for", "forwarded")),
        peer=st.one_of(st.none(), strategies.ip_addresses()),
        values=st.lists(strategies.forwarded_for_values(), max_size=3),
        header_names=st.lists(st.sampled_from(("x-forwarded-for", "forwarded")), max_size=3),
    )
    def test_resolve_client_never_raises(
        self,
        networks: list[str],
        header: str,
        peer: Any,
        values: list[str],
        header_names: list[str],
    ) -> None:
        """Any peer and forwarding headers give an address, or the peer with a reason code."""
        proxies = TrustedProxies(networks, header=header)  # type: ignore[arg-type]
        raw = [
            (name.encode(), value.encode("utf-8"))
            for name, value in zip(header_names, values, strict=False)
        ]

        client, reason = proxies.resolve_client(peer, Headers(raw=raw))

        if reason is not None:
            assert peer == client
            assert _REASON_CODE.fullmatch(reason)
        if peer is None:
            assert (None, None) == (client, reason)

    @given(
        networks=strategies.network_lists(),
        header=st.sampled_from(("x-forwarded-for", "forwarded")),
        peer=strategies.ip_addresses(),
        values=st.lists(strategies.forwarded_for_values(), min_size=1, max_size=3),
    )
    def test_untrusted_peer_is_client(
        self, networks: list[str], header: str, peer: Any, values: list[str]
    ) -> None:
        """A peer outside the trusted networks is the client, whatever it forwards."""
        proxies = TrustedProxies(networks, header=header)  # type: ignore[arg-type]
        assume(peer not in proxies)
        raw = [(header.encode(), value.encode("utf-8")) for value in values]

        assert (peer, None) == proxies.resolve_client(peer, Headers(raw=raw))


class TestPolicyMatch:
    @given(path=st.one_of(strategies.path_texts(), strategies.admin_paths().map(decode_utf8)))
    def test_admin_path_stays_admin(self, path: str) -> None:
        """A path that normalises into ``/admin`` is decided in the admin segment only."""
        normalised = normalize_path(path)
        segment = POLICY.match(normalised)
        in_admin = normalised == "/admin" or normalised.startswith("/admin/")

        assert in_admin == (segment is not None and segment.name == "admin")

    @given(
        raw_path=strategies.admin_paths(),
        decode=st.sampled_from((decode_latin1, decode_utf8)),
        mode=st.sampled_from(("reject", "rewrite")),
    )
    async def test_admin_tricks_never_reach_other_zones(
        self, raw_path: bytes, decode: Callable[[bytes], str], mode: str
    ) -> None:
        """A request whose decoded path normalises into ``/admin`` is never decided elsewhere."""
        middleware, _ = MIDDLEWARES[mode]
        token = ISSUER.token(scopes=strategies.SCOPES, roles=["ops"])
        headers = [("authorization", f"Bearer {token}")]
        scope = build_scope("GET", raw_path, headers, decode)

        _, events = await run_request(middleware, scope)

        normalised = normalize_path(scope["path"])
        if normalised == "/admin" or normalised.startswith("/admin/"):
            assert events[0]["segment"] in ("admin", None)


class TestMiddleware:
    @given(
        method=strategies.methods(),
        raw_path=strategies.raw_paths(),
        headers=strategies.header_lists(ISSUER),
        decode=st.sampled_from((decode_latin1, decode_utf8)),
        peer=st.sampled_from(("198.51.100.9", "::1", "not-an-address", None)),
        mode=st.sampled_from(("reject", "rewrite")),
    )
    async def test_any_request_is_answered(
        self,
        method: str,
        raw_path: bytes,
        headers: list[tuple[str, str]],
        decode: Callable[[bytes], str],
        peer: str | None,
        mode: str,
    ) -> None:
        """Any request gets one 200, 401 or 403 response and one access event without the token."""
        middleware, app = MIDDLEWARES[mode]
        app.scopes.clear()
        scope = build_scope(method, raw_path, headers, decode, peer)

        sent, events = await run_request(middleware, scope)

        starts = [message for message in sent if message["type"] == "http.response.start"]
        assert 1 == len(starts)
        status = starts[0]["status"]
        assert status in (200, 401, 403)
        assert 1 == len(events)
        access = events[0]
        note_event(f"status {status}")
        assert "access" == access["event"]
        assert status == access["status"]
        assert (status == 200) == (len(app.scopes) == 1)

        rendered = orjson.dumps(access, default=str).decode()
        for token in presented_tokens(headers):
            if len(token) >= 16 and not sent_elsewhere(token, raw_path, headers):
                assert token not in rendered

        if status != 200:
            body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
            if method != "HEAD":
                assert {"error", "request_id"} == set(orjson.loads(body))

    @given(
        method=strategies.methods(),
        raw_path=st.one_of(strategies.raw_paths(), strategies.admin_paths()),
        headers=strategies.header_lists(ISSUER),
        decode=st.sampled_from((decode_latin1, decode_utf8)),
        mode=st.sampled_from(("reject", "rewrite")),
    )
    async def test_allow_meets_segment_requirements(
        self,
        method: str,
        raw_path: bytes,
        headers: list[tuple[str, str]],
        decode: Callable[[bytes], str],
        mode: str,
    ) -> None:
        """An allowed request passed every check of its segment, whose path the app receives."""
        middleware, app = MIDDLEWARES[mode]
        app.scopes.clear()
        scope = build_scope(method, raw_path, headers, decode)

        _, events = await run_request(middleware, scope)

        access = events[0]
        if access["segment"] is not None:
            decided_in = POLICY.match(normalize_path(scope["path"]), method=access["method"])
            assert decided_in is not None
            assert access["segment"] == decided_in.name
        if access["decision"] != "allow":
            assert [] == app.scopes
            return

        assert 1 == len(app.scopes)
        received = app.scopes[0]
        context = received["state"][STATE_KEY]
        assert isinstance(context, AccessContext)
        decision = context.decision
        segment = decision.segment
        assert segment is not None
        assert decision.allowed

        received_in = POLICY.match(
            normalize_path(received["path"]),
            method=context.request.method,
            host=context.request.host,
        )
        assert segment is received_in
        if segment.public:
            return

        for record, verifier in zip(decision.verdicts, segment.verifiers, strict=True):
            assert record.outcome == "pass" or (
                record.outcome == "not_applicable" and not verifier.required
            )
        principal = decision.principal
        assert principal is not None
        required = segment.required_scopes(context.request.method)
        assert required is not None
        assert required <= principal.scopes
        if segment.roles:
            assert segment.roles & principal.roles

    @given(
        raw_path=strategies.raw_paths(),
        headers=strategies.header_lists(ISSUER),
        http_response_extension=st.booleans(),
        peer=st.sampled_from(("198.51.100.9", "::1", "not-an-address", None)),
        mode=st.sampled_from(("reject", "rewrite")),
    )
    async def test_any_websocket_handshake_is_answered(
        self,
        raw_path: bytes,
        headers: list[tuple[str, str]],
        http_response_extension: bool,
        peer: str | None,
        mode: str,
    ) -> None:
        """A handshake is accepted by the app or denied by a 401/403 or a 1008 close, never both."""
        middleware, app = MIDDLEWARES[mode]
        app.scopes.clear()
        scope = build_scope("GET", raw_path, headers, decode_utf8, peer, "websocket")
        scope["scheme"] = "ws"
        del scope["method"]
        if http_response_extension:
            scope["extensions"] = {"websocket.http.response": {}}

        sent, events = await run_request(middleware, scope)

        assert 1 == len(events)
        access = events[0]
        assert "websocket" == access["protocol"]
        types = [message["type"] for message in sent]
        if access["decision"] == "allow":
            assert ["websocket.accept", "websocket.close"] == types
            assert 101 == access["status"]
            return

        assert [] == app.scopes
        if http_response_extension:
            assert ["websocket.http.response.start", "websocket.http.response.body"] == types
            assert sent[0]["status"] in (401, 403)
            assert sent[0]["status"] == access["status"]
        else:
            assert ["websocket.close"] == types
            assert 1008 == sent[0]["code"]
            assert 1008 == access["close_code"]


@pytest.mark.parametrize("mode", ["reject", "rewrite"])
async def test_allow_reachable(mode: str) -> None:
    """A fully scoped token reaches the admin zone, so the properties above can see allows."""
    middleware, app = MIDDLEWARES[mode]
    app.scopes.clear()
    token = ISSUER.token(scopes=strategies.SCOPES, roles=["ops"])
    scope = build_scope("GET", b"/admin/x", [("authorization", f"Bearer {token}")], decode_utf8)

    sent, events = await run_request(middleware, scope)

    assert 200 == sent[0]["status"]
    assert "allow" == events[0]["decision"]


class TestIdentifiers:
    def test_global_random_state_untouched(self) -> None:
        """Generating request and event ids leaves the application's global random state alone."""
        saved = random.getstate()
        try:
            random.seed(1234)
            before = random.getstate()
            new_request_id()
            new_event_id()

            assert before == random.getstate()
        finally:
            random.setstate(saved)

    def test_ids_unique_after_reseed(self) -> None:
        """An application that seeds the global random module does not make ids repeat."""
        saved = random.getstate()
        try:
            random.seed(7)
            first = (new_request_id(), new_event_id(0.0))
            random.seed(7)
            second = (new_request_id(), new_event_id(0.0))

            assert first[0] != second[0]
            assert first[1] != second[1]
        finally:
            random.setstate(saved)
