# SPDX-License-Identifier: Apache-2.0
"""
A small Flask inventory API where zerotrust verifies every request before a view runs.

Run it with gunicorn from the repository root:
``gunicorn --chdir examples --bind 127.0.0.1:8000 flask_app:app``.
"""

from __future__ import annotations

import os

from flask import Flask, jsonify, request
from flask.typing import ResponseReturnValue

from zerotrust import (
    ConfigurationError,
    EventEmitter,
    JsonLinesSink,
    JWTVerifier,
    Principal,
    Segment,
    ZeroTrustWSGIMiddleware,
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
# Each gunicorn worker delivers its queued events when it exits.
events = EventEmitter([JsonLinesSink(EVENTS_FILE)])

# The items live in memory, per worker process, so a restart loses them.
inventory: list[dict[str, str]] = [{"name": "keyboard", "owner": "seed"}]

app = Flask(__name__)


def current_principal() -> Principal:
    """Return the principal that the middleware attached to the request."""
    access = get_access(request)
    if access is None or access.principal is None:
        # Only reachable for a view in a public segment or an app without the middleware.
        message = f"no authenticated principal on {request.path}: is the middleware installed?"
        raise RuntimeError(message)
    return access.principal


@app.get("/healthz")
def health() -> ResponseReturnValue:
    return {"status": "ok"}


@app.get("/me")
def me() -> ResponseReturnValue:
    principal = current_principal()
    return {
        "subject": principal.subject,
        "issuer": principal.issuer,
        "scopes": sorted(principal.scopes),
    }


@app.get("/items")
def list_items() -> ResponseReturnValue:
    return {"items": inventory, "viewer": current_principal().subject}


@app.post("/items")
def create_item() -> ResponseReturnValue:
    body = request.get_json(silent=True)
    name = body.get("name") if isinstance(body, dict) else None
    if not isinstance(name, str) or not name.strip():
        return jsonify(error="body must be a JSON object with a non-empty 'name'"), 422

    item = {"name": name.strip(), "owner": current_principal().subject}
    inventory.append(item)

    return item, 201


# The one line that puts zerotrust in front of every view.
app.wsgi_app = ZeroTrustWSGIMiddleware(app.wsgi_app, policy=policy, events=events)
