# SPDX-License-Identifier: Apache-2.0
"""
A small Django inventory API, served over ASGI, where zerotrust verifies every request.

Settings, URLs and views share this one file. From the repository root, run it with
``uvicorn app:application --app-dir examples/django_asgi --no-proxy-headers``.
"""

from __future__ import annotations

import json
import os
import secrets

import django
from django.conf import settings
from django.core.asgi import get_asgi_application
from django.http import HttpRequest, JsonResponse
from django.urls import path

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

settings.configure(
    # Nothing here signs cookies or sessions, so a key that changes on every start is enough.
    SECRET_KEY=os.environ.get("DJANGO_SECRET_KEY") or secrets.token_urlsafe(50),
    ALLOWED_HOSTS=os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1 localhost").split(),
    ROOT_URLCONF=__name__,
    # The API authenticates with bearer tokens, not cookies, so it needs no CSRF middleware.
    MIDDLEWARE=[],
    INSTALLED_APPS=[],
)
django.setup()

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
# Django's ASGI handler has no lifespan, so queued events are delivered at interpreter exit.
events = EventEmitter([JsonLinesSink(EVENTS_FILE)])

# The items live in memory, so a restart loses them.
inventory: list[dict[str, str]] = [{"name": "keyboard", "owner": "seed"}]


def principal_of(request: HttpRequest) -> Principal:
    """Return the principal that the middleware attached to the request."""
    access = get_access(request)
    if access is None or access.principal is None:
        # Only reachable for a route in a public segment or an app without the middleware.
        message = f"no authenticated principal on {request.path}: is ZeroTrustMiddleware used?"
        raise RuntimeError(message)
    return access.principal


async def health(_request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


async def me(request: HttpRequest) -> JsonResponse:
    principal = principal_of(request)
    return JsonResponse(
        {
            "subject": principal.subject,
            "issuer": principal.issuer,
            "scopes": sorted(principal.scopes),
        }
    )


async def items(request: HttpRequest) -> JsonResponse:
    if request.method in ("GET", "HEAD"):
        return JsonResponse({"items": inventory, "viewer": principal_of(request).subject})
    if request.method != "POST":
        return JsonResponse({"error": "method not allowed"}, status=405)

    try:
        body = json.loads(request.body)
    except ValueError:
        body = None
    name = body.get("name") if isinstance(body, dict) else None
    if not isinstance(name, str) or not name.strip():
        return JsonResponse({"error": "body must be a JSON object with a non-empty 'name'"}, 422)

    item = {"name": name.strip(), "owner": principal_of(request).subject}
    inventory.append(item)

    return JsonResponse(item, status=201)


urlpatterns = [
    path("healthz", health),
    path("me", me),
    path("items", items),
]

application = ZeroTrustMiddleware(get_asgi_application(), policy=policy, events=events)
