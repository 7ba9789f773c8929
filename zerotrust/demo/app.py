# SPDX-License-Identifier: Apache-2.0
"""The demo's sample application: three segments behind `ZeroTrustMiddleware`."""

from __future__ import annotations

from collections.abc import Sequence

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ..asgi import ZeroTrustMiddleware, get_access
from ..events import EventEmitter, Sink
from ..policy import Segment
from ..verifiers import JWTVerifier

__all__ = ["AUDIENCE", "build_demo_app", "build_segments"]

AUDIENCE = "api"


def build_segments(*, issuer: str, jwks_url: str) -> list[Segment]:
    """
    Build the demo policy: a public health check, a scoped API and an admin area.

    One `JWTVerifier` serves both protected segments, so the JWKS is fetched once.
    """
    verifier = JWTVerifier(
        issuer=issuer,
        audience=AUDIENCE,
        algorithms=["RS256", "ES256"],
        jwks_url=jwks_url,
    )

    return [
        Segment("public", paths=["/healthz"], public=True),
        Segment(
            "api",
            paths=["/api/"],
            verifiers=[verifier],
            scopes={"GET": ["api:read"], "POST": ["api:write"]},
        ),
        Segment("admin", paths=["/admin/"], verifiers=[verifier], roles=["admin"]),
    ]


def build_demo_app(
    *, issuer: str, jwks_url: str, sinks: Sequence[Sink]
) -> tuple[ZeroTrustMiddleware, EventEmitter]:
    """Build the protected app; return the middleware to serve and its event emitter."""
    app = Starlette(
        routes=[
            Route("/healthz", _health),
            Route("/api/items", _list_items, methods=["GET"]),
            Route("/api/items", _create_item, methods=["POST"]),
            Route("/admin/users", _list_users),
            # No segment covers /secret, so the middleware denies it although the route exists.
            Route("/secret", _secret),
        ]
    )
    emitter = EventEmitter(list(sinks), flush_interval=0.05)
    middleware = ZeroTrustMiddleware(
        app, policy=build_segments(issuer=issuer, jwks_url=jwks_url), events=emitter
    )

    return middleware, emitter


async def _health(_request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def _list_items(request: Request) -> JSONResponse:
    access = get_access(request)
    subject = access.subject if access is not None else None
    return JSONResponse({"items": ["alpha", "beta"], "subject": subject})


async def _create_item(_request: Request) -> JSONResponse:
    return JSONResponse({"created": "gamma"}, status_code=201)


async def _list_users(_request: Request) -> JSONResponse:
    return JSONResponse({"users": ["alice", "bob", "root"]})


async def _secret(_request: Request) -> JSONResponse:
    return JSONResponse({"secret": "never served"})
