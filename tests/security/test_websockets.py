# SPDX-License-Identifier: Apache-2.0
"""
Attack class: websocket handshakes that skip the HTTP checks.

Middleware that inspects only ``http`` scopes lets a websocket upgrade through to the same
handlers. Every protected websocket route is reached here without credentials, with path
tricks, with a token in places zerotrust does not read (query string, subprotocol header) and
with a token that lacks the role, both by ASGI calls in-process and over uvicorn (websockets
and wsproto implementations). The app must never accept: the handshake is refused with an HTTP
401 or 403 where the server supports the denial response extension, or closed with 1008.
"""

from __future__ import annotations

import base64
import os
import socket
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest
import websockets.exceptions
import websockets.sync.client

from zerotrust import ZeroTrustMiddleware
from zerotrust.testing import TokenIssuer, capture_events, serve

from .support import AUDIENCE, Recorder, asgi_call, http_scope, protect

PROTECTED_ROUTES = ["/admin/ws", "/admin/events/orders"]
# Each trick is denied in the admin area or as ambiguous, or names no route of the app at all.
TRICK_PATHS = [
    (b"/admin/ws", "/admin/ws", "deny"),
    (b"/admin/events/orders", "/admin/events/orders", "deny"),
    (b"/%61dmin/ws", "/admin/ws", "deny"),
    (b"//admin/ws", "//admin/ws", "deny"),
    (b"/public/../admin/ws", "/public/../admin/ws", "deny"),
    (b"/public/%2e%2e/admin/ws", "/public/../admin/ws", "deny"),
    (b"/public/..%2fadmin/ws", "/public/../admin/ws", "deny"),
    (b"/admin/ws/", "/admin/ws/", "deny"),
    (b"/admin/./ws", "/admin/./ws", "deny"),
    (b"/ADMIN/ws", "/ADMIN/ws", "no_route"),
    (b"/admin;x=1/ws", "/admin;x=1/ws", "no_route"),
]


def websocket_scope(
    raw_path: bytes, path: str, headers: list[tuple[bytes, bytes]] | None = None, **extra: Any
) -> dict[str, Any]:
    scope = http_scope(path, raw_path=raw_path, headers=headers, scope_type="websocket")
    scope.update(extra)
    return scope


@pytest.fixture(name="admin_without_role", scope="module")
def fixture_admin_without_role(issuer: TokenIssuer) -> str:
    return issuer.token("mallory", audience=AUDIENCE, scopes=["admin:read"])


@pytest.fixture(name="admin_token", scope="module")
def fixture_admin_token(issuer: TokenIssuer) -> str:
    return issuer.token("root", audience=AUDIENCE, roles=["admin"], scopes=["admin:read"])


class TestInProcess:
    @pytest.mark.parametrize(("raw_path", "path", "outcome"), TRICK_PATHS)
    @pytest.mark.parametrize("denial_extension", [False, True], ids=["close", "http-response"])
    @pytest.mark.parametrize("mode", ["reject", "rewrite"])
    async def test_never_accepted(
        self,
        issuer: TokenIssuer,
        raw_path: bytes,
        path: str,
        outcome: str,
        denial_extension: bool,
        mode: str,
    ) -> None:
        """A handshake without credentials never reaches an admin websocket handler."""
        recorder = Recorder()
        app = protect(issuer, recorder, path_normalization=mode)
        extensions = {"websocket.http.response": {}} if denial_extension else {}
        scope = websocket_scope(raw_path, path, extensions=extensions)

        with capture_events() as events:
            sent = await asgi_call(app, scope)

        assert [] == recorder.admin_websockets
        types = [message["type"] for message in sent]
        assert "websocket.accept" not in types
        assert 1 == len(events)
        if outcome == "no_route":
            # The public segment lets it through, and the router closes it unaccepted.
            assert "public" == events[0]["segment"]
            assert ["websocket.close"] == types
            return
        assert "deny" == events[0]["decision"]
        if denial_extension:
            assert ["websocket.http.response.start", "websocket.http.response.body"] == types
            assert sent[0]["status"] in (401, 403)
        else:
            assert [{"type": "websocket.close", "code": 1008}] == sent

    @pytest.mark.parametrize("route", PROTECTED_ROUTES)
    @pytest.mark.parametrize(
        "where",
        ["query", "subprotocol", "cookie", "role-missing", "token-in-path"],
    )
    async def test_credentials_elsewhere(
        self, issuer: TokenIssuer, admin_token: str, admin_without_role: str, route: str, where: str
    ) -> None:
        """A token where zerotrust does not read it, or one without the role, is refused."""
        recorder = Recorder()
        app = protect(issuer, recorder)
        headers: list[tuple[bytes, bytes]] = []
        scope = websocket_scope(route.encode(), route)
        if where == "query":
            scope["query_string"] = f"access_token={admin_token}".encode()
        elif where == "subprotocol":
            headers.append((b"sec-websocket-protocol", f"bearer, {admin_token}".encode()))
        elif where == "cookie":
            headers.append((b"cookie", f"access_token={admin_token}".encode()))
        elif where == "token-in-path":
            scope = websocket_scope(f"{route}/{admin_token}".encode(), f"{route}/{admin_token}")
        else:
            headers.append((b"authorization", f"Bearer {admin_without_role}".encode()))
        scope["headers"] += headers

        with capture_events() as events:
            sent = await asgi_call(app, scope)

        assert [] == recorder.admin_websockets
        assert [{"type": "websocket.close", "code": 1008}] == sent
        reasons = events[0]["reasons"]
        assert reasons == (["insufficient_role"] if where == "role-missing" else ["token_missing"])

    async def test_valid_token_accepted(self, issuer: TokenIssuer, admin_token: str) -> None:
        """An admin token opens the admin websocket, so the refusals above can fail."""
        recorder = Recorder()
        app = protect(issuer, recorder)
        scope = websocket_scope(
            b"/admin/ws",
            "/admin/ws",
            headers=[(b"authorization", f"Bearer {admin_token}".encode())],
        )

        sent = await asgi_call(app, scope)

        assert ["/admin/ws"] == recorder.admin_websockets
        assert "websocket.accept" == sent[0]["type"]

    async def test_disconnect_before_connect(self, issuer: TokenIssuer) -> None:
        """A client that leaves before the connect message gets nothing and one event."""
        recorder = Recorder()
        app = protect(issuer, recorder)
        scope = websocket_scope(b"/admin/ws", "/admin/ws")

        with capture_events() as events:
            sent = await asgi_call(app, scope, [{"type": "websocket.disconnect", "code": 1001}])

        assert [] == sent
        assert [] == recorder.admin_websockets
        assert 1 == len(events)


def handshake(port: int, target: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> bytes:
    """Send a raw websocket upgrade for ``target`` and return the status line of the response."""
    key = base64.b64encode(os.urandom(16))
    lines = [
        b"GET " + target + b" HTTP/1.1",
        b"Host: 127.0.0.1",
        b"Upgrade: websocket",
        b"Connection: Upgrade",
        b"Sec-WebSocket-Key: " + key,
        b"Sec-WebSocket-Version: 13",
        *(name + b": " + value for name, value in headers or []),
    ]
    with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
        connection.sendall(b"\r\n".join(lines) + b"\r\n\r\n")
        data = b""
        while b"\r\n" not in data:
            chunk = connection.recv(4096)
            if not chunk:
                break
            data += chunk

    return data.partition(b"\r\n")[0]


@pytest.fixture(name="served", scope="module", params=["websockets-sansio", "wsproto"])
def fixture_served(
    request: pytest.FixtureRequest, issuer: TokenIssuer
) -> Iterator[tuple[int, Recorder, ZeroTrustMiddleware]]:
    """The protected app under uvicorn, with each of its websocket implementations."""
    recorder = Recorder()
    app = protect(issuer, recorder)
    with serve(app, ws=request.param) as base_url:
        yield int(base_url.rsplit(":", 1)[1]), recorder, app


class TestServed:
    @pytest.mark.parametrize("route", PROTECTED_ROUTES)
    def test_client_refused(self, served: tuple[int, Recorder, Any], route: str) -> None:
        """A websockets client without a token gets a 401, and the app never accepts."""
        port, recorder, _ = served
        recorder.clear()

        with pytest.raises(websockets.exceptions.InvalidStatus) as failure:
            websockets.sync.client.connect(f"ws://127.0.0.1:{port}{route}", open_timeout=5)

        assert 401 == failure.value.response.status_code
        assert [] == recorder.admin_websockets

    @pytest.mark.parametrize(("raw_path", "path", "outcome"), TRICK_PATHS)
    def test_raw_handshake_refused(
        self, served: tuple[int, Recorder, Any], raw_path: bytes, path: str, outcome: str
    ) -> None:
        """A raw upgrade with a path trick is refused with 401, 403 or 404, never 101."""
        port, recorder, _ = served
        recorder.clear()

        status_line = handshake(port, raw_path)

        assert status_line.split(b" ")[1] in (b"401", b"403", b"404")
        assert [] == recorder.admin_websockets

    def test_query_token_refused(self, served: tuple[int, Recorder, Any], admin_token: str) -> None:
        """A token in the query string of the upgrade is not a credential."""
        port, recorder, _ = served
        recorder.clear()
        query = urllib.parse.urlencode({"access_token": admin_token}).encode()

        status_line = handshake(port, b"/admin/ws?" + query)

        assert b"401" == status_line.split(b" ")[1]
        assert [] == recorder.admin_websockets

    def test_admin_token_accepted(
        self, served: tuple[int, Recorder, Any], admin_token: str
    ) -> None:
        """An admin token opens the served admin websocket, so the refusals above can fail."""
        port, recorder, _ = served
        recorder.clear()

        with websockets.sync.client.connect(
            f"ws://127.0.0.1:{port}/admin/ws",
            additional_headers={"authorization": f"Bearer {admin_token}"},
            open_timeout=5,
        ) as connection:
            message = connection.recv(timeout=5)

        assert "admin" == message
        assert ["/admin/ws"] == recorder.admin_websockets
