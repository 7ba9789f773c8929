# SPDX-License-Identifier: Apache-2.0
"""A small Litestar inventory API where zerotrust verifies every request before a route runs."""

from __future__ import annotations

import os
from typing import Any

from litestar import Litestar, Request, get, post
from litestar.exceptions import ValidationException
from litestar.params import JSONBody

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
    # Litestar serves its OpenAPI documents under /schema. Drop this segment to protect them.
    Segment("docs", paths=["/schema/"], methods=["GET"], public=True),
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


def principal_of(request: Request[Any, Any, Any]) -> Principal:
    """Return the principal that the middleware attached to the request."""
    access = get_access(request)
    if access is None or access.principal is None:
        # Only reachable for a route in a public segment or an app without the middleware.
        message = f"no authenticated principal on {request.url.path}: is ZeroTrustMiddleware used?"
        raise RuntimeError(message)
    return access.principal


@get("/healthz")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@get("/me")
async def me(request: Request[Any, Any, Any]) -> dict[str, Any]:
    principal = principal_of(request)
    return {
        "subject": principal.subject,
        "issuer": principal.issuer,
        "scopes": sorted(principal.scopes),
    }


@get("/items")
async def list_items(request: Request[Any, Any, Any]) -> dict[str, Any]:
    return {"items": inventory, "viewer": principal_of(request).subject}


@post("/items")
async def create_item(
    request: Request[Any, Any, Any], data: JSONBody[dict[str, Any]]
) -> dict[str, str]:
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ValidationException("body must be a JSON object with a non-empty 'name'")

    item = {"name": name.strip(), "owner": principal_of(request).subject}
    inventory.append(item)

    return item


# Wrapping the whole app, rather than listing the middleware in Litestar(middleware=...), lets
# zerotrust see requests for unknown paths and the lifespan events. check_routes=True stops the
# server at startup if a route falls in no segment, or in a public segment not listed here.
app = ZeroTrustMiddleware(
    Litestar(
        route_handlers=[health, me, list_items, create_item],
        on_shutdown=[events.close],
    ),
    policy=policy,
    events=events,
    check_routes=True,
    public_routes=["/healthz", "/schema/"],
)
