# SPDX-License-Identifier: Apache-2.0
"""A small FastAPI inventory API where zerotrust verifies every request before a route runs."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from pydantic import BaseModel, Field

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
    # The interactive API docs stay public. Drop this segment to require a token for them too.
    Segment("docs", paths=["/docs", "/openapi.json"], methods=["GET"], public=True),
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


class NewItem(BaseModel):
    name: str = Field(min_length=1, max_length=100)


class Item(BaseModel):
    name: str
    owner: str


class Inventory(BaseModel):
    items: list[Item]
    viewer: str


class Profile(BaseModel):
    subject: str
    issuer: str | None
    scopes: list[str]


# The items live in memory, so a restart loses them.
inventory: list[Item] = [Item(name="keyboard", owner="seed")]


def current_principal(request: Request) -> Principal:
    """Return the principal that the middleware attached to the request."""
    access = get_access(request)
    if access is None or access.principal is None:
        # Only reachable for a route in a public segment or an app without the middleware.
        message = (
            f"no authenticated principal on {request.url.path}: is ZeroTrustMiddleware installed?"
        )
        raise RuntimeError(message)
    return access.principal


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


@contextlib.asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
    yield
    # Deliver queued access events and close the events file before the process exits.
    events.close()


app = FastAPI(title="Inventory", lifespan=lifespan, redoc_url=None)
app.add_middleware(ZeroTrustMiddleware, policy=policy, events=events)


@app.get("/healthz")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/me")
async def me(principal: CurrentPrincipal) -> Profile:
    return Profile(
        subject=principal.subject, issuer=principal.issuer, scopes=sorted(principal.scopes)
    )


@app.get("/items")
async def list_items(principal: CurrentPrincipal) -> Inventory:
    return Inventory(items=inventory, viewer=principal.subject)


@app.post("/items", status_code=201)
async def create_item(new_item: NewItem, principal: CurrentPrincipal) -> Item:
    item = Item(name=new_item.name.strip(), owner=principal.subject)
    inventory.append(item)
    return item
