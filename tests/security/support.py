# SPDX-License-Identifier: Apache-2.0
"""Shared pieces of the attack suite: a protected Starlette app, raw requests and token forging."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from zerotrust import JWTVerifier, MemorySink, Segment, ZeroTrustMiddleware, get_access
from zerotrust.testing import TokenIssuer

__all__ = [
    "ALL_METHODS",
    "AUDIENCE",
    "Message",
    "RawResponse",
    "Recorder",
    "admin_policy",
    "asgi_call",
    "build_app",
    "encode_json",
    "encode_segment",
    "http_scope",
    "protect",
    "raw_request",
    "sign_raw",
    "wait_until",
]

Message = dict[str, Any]
AUDIENCE = "api"
ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


@dataclass
class Recorder:
    """What the protected app's handlers saw: one entry per request that reached a handler."""

    admin: list[str] = field(default_factory=list)
    public: list[str] = field(default_factory=list)
    admin_websockets: list[str] = field(default_factory=list)
    public_websockets: list[str] = field(default_factory=list)

    def clear(self) -> None:
        self.admin.clear()
        self.public.clear()
        self.admin_websockets.clear()
        self.public_websockets.clear()


def build_app(recorder: Recorder) -> Starlette:
    """
    Build a Starlette app with an admin area under ``/admin`` and a public catch-all.

    Every handler records the path it received, so a test can tell whether a request reached
    the admin area.
    """

    async def admin(request: Request) -> JSONResponse:
        recorder.admin.append(request.scope["path"])
        access = get_access(request)
        return JSONResponse({"area": "admin", "subject": access.subject if access else None})

    async def public(request: Request) -> JSONResponse:
        recorder.public.append(request.scope["path"])
        return JSONResponse({"area": "public"})

    async def admin_socket(websocket: WebSocket) -> None:
        recorder.admin_websockets.append(websocket.scope["path"])
        await websocket.accept()
        await websocket.send_text("admin")
        await websocket.close()

    async def public_socket(websocket: WebSocket) -> None:
        recorder.public_websockets.append(websocket.scope["path"])
        await websocket.accept()
        await websocket.send_text("public")
        await websocket.close()

    return Starlette(
        routes=[
            WebSocketRoute("/admin/ws", admin_socket),
            WebSocketRoute("/admin/events/{channel}", admin_socket),
            WebSocketRoute("/public/ws", public_socket),
            Route("/admin", admin, methods=ALL_METHODS),
            Route("/admin/{rest:path}", admin, methods=ALL_METHODS),
            Route("/{rest:path}", public, methods=ALL_METHODS),
        ]
    )


def admin_policy(identity: JWTVerifier) -> list[Segment]:
    """Return a public area everywhere and an admin area that needs a role and scopes."""
    return [
        Segment("public", paths=["/"], public=True),
        Segment(
            "admin",
            paths=["/admin/"],
            verifiers=[identity],
            roles=["admin"],
            scopes={"GET": ["admin:read"], "*": ["admin:write"]},
        ),
    ]


def protect(
    issuer: TokenIssuer, recorder: Recorder, sink: MemorySink | None = None, **options: Any
) -> ZeroTrustMiddleware:
    """Wrap `build_app` in the middleware, with a JWT verifier on the issuer's static keys."""
    identity = JWTVerifier(
        issuer=issuer.issuer,
        audience=AUDIENCE,
        algorithms=sorted(issuer.private_keys),
        keys=issuer.jwks(),
    )
    return ZeroTrustMiddleware(
        build_app(recorder),
        policy=admin_policy(identity),
        events=sink if sink is not None else MemorySink(),
        **options,
    )


# Tokens -----------------------------------------------------------------------------------------


def encode_segment(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def encode_json(value: Any) -> str:
    return encode_segment(json.dumps(value, separators=(",", ":")).encode())


def sign_raw(
    issuer: TokenIssuer, header: dict[str, Any], claims: Any, *, alg: str = "RS256"
) -> str:
    """
    Sign any header and claims with the issuer's real key for ``alg``.

    PyJWT's encoder rejects claims of unusual types, but this function signs them. A test can then
    check that the verifier rejects a correctly signed token whose content is hostile.
    """
    from jwt.algorithms import get_default_algorithms

    signing_input = f"{encode_json(header)}.{encode_json(claims)}"
    algorithm = get_default_algorithms()[alg]
    signature = algorithm.sign(signing_input.encode(), issuer.private_keys[alg])

    return f"{signing_input}.{encode_segment(signature)}"


# Requests ---------------------------------------------------------------------------------------


@dataclass
class RawResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = [value for key, value in self.headers if key == name]
        return values[0] if values else None


def raw_request(
    port: int,
    target: bytes,
    *,
    method: bytes = b"GET",
    headers: list[tuple[bytes, bytes]] | None = None,
    host: bytes = b"127.0.0.1",
) -> RawResponse:
    """
    Send one HTTP/1.1 request with ``target`` exactly as given and read the whole response.

    Clients such as httpx clean up a URL (dot segments, encoding) before sending it, which
    would hide the very tricks these tests need to deliver.
    """
    lines = [method + b" " + target + b" HTTP/1.1", b"Host: " + host, b"Connection: close"]
    lines += [name + b": " + value for name, value in headers or []]
    with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
        connection.sendall(b"\r\n".join(lines) + b"\r\n\r\n")
        data = b""
        while chunk := connection.recv(65536):
            data += chunk

    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed = []
    for line in header_lines:
        name, _, value = line.partition(":")
        parsed.append((name.strip().lower(), value.strip()))

    return RawResponse(int(status_line.split()[1]), parsed, body)


def http_scope(
    path: str,
    *,
    raw_path: bytes | None = None,
    method: str = "GET",
    headers: list[tuple[bytes, bytes]] | None = None,
    root_path: str = "",
    client: tuple[str, int] | None = ("127.0.0.1", 50000),
    scope_type: str = "http",
) -> dict[str, Any]:
    """Build the ASGI scope that uvicorn would build for ``raw_path``, decoded to ``path``."""
    scope: dict[str, Any] = {
        "type": scope_type,
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "scheme": "http" if scope_type == "http" else "ws",
        "path": path,
        "raw_path": raw_path if raw_path is not None else path.encode(),
        "root_path": root_path,
        "query_string": b"",
        "headers": [(b"host", b"app.test"), *(headers or [])],
        "client": client,
        "server": ("127.0.0.1", 8000),
        "extensions": {},
    }
    if scope_type == "http":
        scope["method"] = method

    return scope


async def asgi_call(
    app: Any, scope: dict[str, Any], incoming: list[Message] | None = None
) -> list[Message]:
    """Call an ASGI app once and return what it sent; ``receive`` idles after ``incoming``."""
    default = {"type": "http.request", "body": b"", "more_body": False}
    if scope["type"] == "websocket":
        default = {"type": "websocket.connect"}
    queue = list(incoming or [default])
    sent: list[Message] = []

    async def receive() -> Message:
        if queue:
            return queue.pop(0)
        await asyncio.sleep(5)
        return {"type": "http.disconnect" if scope["type"] == "http" else "websocket.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    async with asyncio.timeout(10):
        await app(scope, receive, send)

    return sent


def wait_until(condition: Any, timeout: float = 5.0) -> bool:
    """Poll ``condition`` until it is true or ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return bool(condition())
