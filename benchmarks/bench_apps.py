# SPDX-License-Identifier: Apache-2.0
"""The apps the benchmarks compare: one trivial route, bare or behind access control."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jwt
from starlette.applications import Starlette
from starlette.authentication import (
    AuthCredentials,
    AuthenticationBackend,
    AuthenticationError,
    SimpleUser,
)
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp

from zerotrust import EventEmitter, JsonLinesSink, JWTVerifier, Segment, Sink, ZeroTrustMiddleware

__all__ = [
    "AUDIENCE",
    "ISSUER",
    "PATH",
    "SCOPE",
    "DiscardSink",
    "PyJWTBackend",
    "bare_app",
    "served_bare",
    "served_zerotrust",
    "served_zerotrust_discard",
    "starlette_auth_app",
    "zerotrust_app",
]

ISSUER = "https://issuer.bench"
AUDIENCE = "api"
PATH = "/api/items"
SCOPE = "items:read"

# Environment variables through which bench_served.py configures the uvicorn child processes.
JWKS_ENV = "ZEROTRUST_BENCH_JWKS"
EVENTS_ENV = "ZEROTRUST_BENCH_EVENTS"


async def list_items(_request: Request) -> JSONResponse:
    return JSONResponse({"items": [{"id": 1, "name": "first"}, {"id": 2, "name": "second"}]})


def bare_app(middleware: list[Middleware] | None = None) -> Starlette:
    """Build the Starlette app with the one route that every variant serves."""
    return Starlette(routes=[Route(PATH, list_items)], middleware=middleware)


def zerotrust_app(
    jwks: Mapping[str, Any],
    *,
    algorithm: str,
    events_path: str | os.PathLike[str] | None,
    cached: bool = True,
    max_queue: int = 10_000,
    app: ASGIApp | None = None,
    sink: Sink | None = None,
) -> tuple[ZeroTrustMiddleware, EventEmitter]:
    """
    Wrap ``app`` (the bare app by default) in `ZeroTrustMiddleware` with one JWT verifier.

    The verifier uses static keys from ``jwks``. Returns the middleware and its event emitter,
    which writes JSON lines to ``events_path``, or builds the events and discards them when
    ``events_path`` is ``None``. A given ``sink`` replaces both.
    """
    verifier = JWTVerifier(
        issuer=ISSUER,
        audience=AUDIENCE,
        algorithms=[algorithm],
        keys=jwks,
        cache_size=10_000 if cached else 0,
    )
    if sink is None:
        sink = DiscardSink() if events_path is None else JsonLinesSink(events_path)
    emitter = EventEmitter([sink], max_queue=max_queue)
    segment = Segment("api", paths=["/api/"], verifiers=[verifier], scopes=[SCOPE])
    middleware = ZeroTrustMiddleware(app or bare_app(), policy=[segment], events=emitter)

    return middleware, emitter


class DiscardSink(Sink):
    """A sink that drops every event: the events are still built, but never redacted or written."""

    name = "discard"

    def write(self, events: Sequence[dict[str, Any]]) -> None:
        return None


class PyJWTBackend(AuthenticationBackend):
    """
    A hand-written Starlette authentication backend: one ``jwt.decode`` per request, no cache.

    The public key object is parsed once here. Code that passes PEM text to ``jwt.decode``
    parses the key on every request as well, so it is slower still.
    """

    def __init__(self, public_key: Any, *, algorithm: str = "RS256") -> None:
        self.public_key = public_key
        self.algorithm = algorithm

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, SimpleUser]:
        scheme, _, token = conn.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise AuthenticationError("missing bearer token")
        try:
            claims = jwt.decode(
                token,
                self.public_key,
                algorithms=[self.algorithm],
                audience=AUDIENCE,
                issuer=ISSUER,
                options={"require": ["exp", "sub", "iss", "aud"]},
            )
        except jwt.InvalidTokenError as error:
            raise AuthenticationError(str(error)) from None
        scopes = str(claims.get("scope", "")).split()
        if SCOPE not in scopes:
            raise AuthenticationError(f"missing scope {SCOPE}")

        return AuthCredentials(scopes), SimpleUser(claims["sub"])


def starlette_auth_app(public_key: Any, *, algorithm: str = "RS256") -> Starlette:
    """Build the app behind Starlette's `AuthenticationMiddleware` and `PyJWTBackend`."""
    backend = PyJWTBackend(public_key, algorithm=algorithm)
    return bare_app([Middleware(AuthenticationMiddleware, backend=backend)])


def served_bare() -> ASGIApp:
    """uvicorn factory for the bare app."""
    return bare_app()


def served_zerotrust() -> ASGIApp:
    """uvicorn factory for the protected app; reads the JWKS and events paths from the env."""
    with open(os.environ[JWKS_ENV], encoding="utf-8") as file:
        jwks = json.load(file)
    middleware, _emitter = zerotrust_app(
        jwks, algorithm="RS256", events_path=os.environ[EVENTS_ENV]
    )

    return middleware


def served_zerotrust_discard() -> ASGIApp:
    """uvicorn factory for the protected app with `DiscardSink`, to separate the sink's cost."""
    with open(os.environ[JWKS_ENV], encoding="utf-8") as file:
        jwks = json.load(file)
    middleware, _emitter = zerotrust_app(jwks, algorithm="RS256", events_path=None)

    return middleware
