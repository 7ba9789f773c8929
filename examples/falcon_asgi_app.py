# SPDX-License-Identifier: Apache-2.0
"""A small Falcon ASGI inventory API where zerotrust verifies every request before a route runs."""

from __future__ import annotations

import os
from typing import Any

import falcon
import falcon.asgi

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


def principal_of(req: falcon.asgi.Request) -> Principal:
    """Return the principal that the middleware attached to the request."""
    access = get_access(req)
    if access is None or access.principal is None:
        # Only reachable for a route in a public segment or an app without the middleware.
        message = f"no authenticated principal on {req.path}: is ZeroTrustMiddleware used?"
        raise RuntimeError(message)
    return access.principal


class Health:
    async def on_get(self, _req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.media = {"status": "ok"}


class Profile:
    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        principal = principal_of(req)
        resp.media = {
            "subject": principal.subject,
            "issuer": principal.issuer,
            "scopes": sorted(principal.scopes),
        }


class Items:
    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.media = {"items": inventory, "viewer": principal_of(req).subject}

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        body: Any = await req.get_media(default_when_empty=None)
        name = body.get("name") if isinstance(body, dict) else None
        if not isinstance(name, str) or not name.strip():
            raise falcon.HTTPUnprocessableEntity(
                description="body must be a JSON object with a non-empty 'name'"
            )

        item = {"name": name.strip(), "owner": principal_of(req).subject}
        inventory.append(item)
        resp.media = item
        resp.status = falcon.HTTP_201


class CloseEvents:
    """Deliver queued access events and close the events file when the server stops."""

    async def process_shutdown(self, _scope: dict[str, Any], _event: dict[str, Any]) -> None:
        events.close()


api = falcon.asgi.App(middleware=[CloseEvents()])
api.add_route("/healthz", Health())
api.add_route("/me", Profile())
api.add_route("/items", Items())

app = ZeroTrustMiddleware(api, policy=policy, events=events)
