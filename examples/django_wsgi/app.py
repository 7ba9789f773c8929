# SPDX-License-Identifier: Apache-2.0
"""
A small Django inventory API, served over WSGI, where zerotrust verifies every request.

Settings, URLs and views share this one file. From the repository root, run it with
``gunicorn --chdir examples/django_wsgi --bind 127.0.0.1:8000 app:application``.
In a full Django project the last line goes into the project's ``wsgi.py``.
"""

from __future__ import annotations

import json
import os
import secrets

from django.conf import settings
from django.core.wsgi import get_wsgi_application
from django.http import HttpRequest, JsonResponse
from django.urls import path

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

settings.configure(
    # This app signs no cookie or session, so a key that changes at each start does no harm.
    SECRET_KEY=os.environ.get("DJANGO_SECRET_KEY") or secrets.token_urlsafe(50),
    ALLOWED_HOSTS=os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1 localhost").split(),
    ROOT_URLCONF=__name__,
    # Callers authenticate with bearer tokens rather than cookies, so CSRF protection has
    # nothing to protect here.
    MIDDLEWARE=[],
    INSTALLED_APPS=[],
    DEBUG=False,
)

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


def current_principal(request: HttpRequest) -> Principal:
    """Return the principal that the middleware attached to the request."""
    access = get_access(request)
    if access is None or access.principal is None:
        # Only reachable for a view in a public segment or an app without the middleware.
        message = f"no authenticated principal on {request.path}: is the middleware installed?"
        raise RuntimeError(message)
    return access.principal


def health(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


def me(request: HttpRequest) -> JsonResponse:
    principal = current_principal(request)
    return JsonResponse(
        {
            "subject": principal.subject,
            "issuer": principal.issuer,
            "scopes": sorted(principal.scopes),
        }
    )


def items(request: HttpRequest) -> JsonResponse:
    # The policy lets only GET and POST through, so no other method reaches this view.
    if request.method == "GET":
        return JsonResponse({"items": inventory, "viewer": current_principal(request).subject})

    try:
        body = json.loads(request.body or b"null")
    except ValueError:
        body = None
    name = body.get("name") if isinstance(body, dict) else None
    if not isinstance(name, str) or not name.strip():
        return JsonResponse(
            {"error": "body must be a JSON object with a non-empty 'name'"}, status=422
        )

    item = {"name": name.strip(), "owner": current_principal(request).subject}
    inventory.append(item)

    return JsonResponse(item, status=201)


urlpatterns = [path("healthz", health), path("me", me), path("items", items)]

# The one line that puts zerotrust in front of every view.
application = ZeroTrustWSGIMiddleware(get_wsgi_application(), policy=policy, events=events)
