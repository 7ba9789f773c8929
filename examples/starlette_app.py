# SPDX-License-Identifier: Apache-2.0
"""A small Starlette inventory API where zerotrust verifies every request before a route runs."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from zerotrust import (
    ConfigurationError,
    EventEmitter,
    JsonLinesSink,
    JWTVerifier,
    Principal,
    Segment,
    ZeroTrustMiddleware,
    get_access,
)


def require_env(name: str, meaning: str, example: str) -> str:
    """Read a required environment variable, or fail at start-up with what to set."""
    value = os.environ.get(name, "").strip()
    if not value:
        message = f"environment variable {name} is not set: set it to {meaning}, such as {example}"
        raise ConfigurationError(message, parameter=name, value=None)
    return value


ISSUER = require_env(
    "ZEROTRUST_ISSUER", "the exact 'iss' of your tokens", "https://login.example.com/"
)
JWKS_URL = require_env(
    "ZEROTRUST_JWKS_URL", "the issuer's JWKS URL", "https://login.example.com/.well-known/jwks.json"
)
AUDIENCE = require_env("ZEROTRUST_AUDIENCE", "the 'aud' this API accepts", "inventory-api")
ALGORITHMS = os.environ.get("ZEROTRUST_ALGORITHMS", "RS256").replace(",", " ").split()
# Access events go to standard error unless a file is named, for a log shipper to pick up.
EVENTS_FILE = os.environ.get("ZEROTRUST_EVENTS_FILE", "").strip() or "stderr"

jwt_verifier = JWTVerifier(
    issuer=ISSUER, audience=AUDIENCE, algorithms=ALGORITHMS, jwks_url=JWKS_URL
)
policy = [
    Segment("health", paths=["/healthz"], public=True),
    Segment("profile", paths=["/me"], verifiers=[jwt_verifier]),
    # GET needs items:read and POST needs items:write. Any other method is denied.
    Segment(
        "items",
        paths=["/items/"],
        verifiers=[jwt_verifier],
        scopes={"GET": ["items:read"], "POST": ["items:write"]},
    ),
]
events = EventEmitter([JsonLinesSink(EVENTS_FILE)])

# The items live in memory, so a restart loses them.
inventory: list[dict[str, str]] = [{"name": "keyboard", "owner": "seed"}]


def principal_of(request: Request) -> Principal:
    """Return the principal that the middleware attached to the request."""
    access = get_access(request)
    if access is None or access.principal is None:
        # Only reachable for a route in a public segment or an app without the middleware.
        message = (
            f"no authenticated principal on {request.url.path}: is ZeroTrustMiddleware installed?"
        )
        raise RuntimeError(message)
    return access.principal


async def health(_request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def me(request: Request) -> JSONResponse:
    principal = principal_of(request)
    return JSONResponse(
        {
            "subject": principal.subject,
            "issuer": principal.issuer,
            "scopes": sorted(principal.scopes),
        }
    )


async def list_items(request: Request) -> JSONResponse:
    return JSONResponse({"items": inventory, "viewer": principal_of(request).subject})


async def create_item(request: Request) -> JSONResponse:
    body = await request.json()
    name = body.get("name") if isinstance(body, dict) else None
    if not isinstance(name, str) or not name.strip():
        return JSONResponse({"error": "body must be a JSON object with a non-empty 'name'"}, 422)

    item = {"name": name.strip(), "owner": principal_of(request).subject}
    inventory.append(item)

    return JSONResponse(item, status_code=201)


@contextlib.asynccontextmanager
async def lifespan(_app: Starlette) -> AsyncIterator[None]:
    yield
    # Deliver queued access events and close the events file before the process exits.
    events.close()


app = Starlette(
    routes=[
        Route("/healthz", health),
        Route("/me", me),
        Route("/items", list_items, methods=["GET"]),
        Route("/items", create_item, methods=["POST"]),
    ],
    lifespan=lifespan,
)
app.add_middleware(ZeroTrustMiddleware, policy=policy, events=events)
