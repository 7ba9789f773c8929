# SPDX-License-Identifier: Apache-2.0
"""A small Quart inventory API where zerotrust verifies every request before a route runs."""

from __future__ import annotations

import os
from typing import Any

from quart import Quart, request

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

# Quart adds a /static/<path:filename> route by default, and this API serves no files.
app = Quart(__name__, static_folder=None)


def current_principal() -> Principal:
    """Return the principal that the middleware attached to the current request."""
    access = get_access(request)
    if access is None or access.principal is None:
        # Only reachable for a route in a public segment or an app without the middleware.
        message = f"no authenticated principal on {request.path}: is ZeroTrustMiddleware used?"
        raise RuntimeError(message)
    return access.principal


@app.get("/healthz")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/me")
async def me() -> dict[str, Any]:
    principal = current_principal()
    return {
        "subject": principal.subject,
        "issuer": principal.issuer,
        "scopes": sorted(principal.scopes),
    }


@app.get("/items")
async def list_items() -> dict[str, Any]:
    return {"items": inventory, "viewer": current_principal().subject}


@app.post("/items")
async def create_item() -> tuple[dict[str, str], int]:
    body = await request.get_json(silent=True)
    name = body.get("name") if isinstance(body, dict) else None
    if not isinstance(name, str) or not name.strip():
        return {"error": "body must be a JSON object with a non-empty 'name'"}, 422

    item = {"name": name.strip(), "owner": current_principal().subject}
    inventory.append(item)

    return item, 201


@app.after_serving
async def close_events() -> None:
    # Deliver queued access events and close the events file before the process exits.
    events.close()


# Wrapping app.asgi_app keeps `app` a Quart object, so `quart run` and app.test_client() work.
app.asgi_app = ZeroTrustMiddleware(app.asgi_app, policy=policy, events=events)  # type: ignore[method-assign]
