# SPDX-License-Identifier: Apache-2.0
"""Code shared by the ASGI and WSGI enforcement points: path checks, denials, the access context."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import orjson
from starlette.datastructures import Headers

from .engine import Decision
from .exceptions import ConfigurationError
from .policy import Policy
from .request import AccessRequest, PathProblem, check_raw_path, new_request_id, normalize_path
from .verifiers.base import Principal
from .verifiers.jwks import RemoteKeySet

__all__ = [
    "STATE_KEY",
    "AccessContext",
    "DenialResponse",
    "DenyHandler",
    "PathCheck",
    "PathNormalization",
    "build_denial",
    "check_path",
    "check_path_normalization",
    "default_denial",
    "get_access",
    "remote_key_sets",
    "route_path",
    "unreadable_request",
]

STATE_KEY = "zerotrust"
"""
Key of the `AccessContext` in ``scope["state"]`` (``request.state.zerotrust`` in Starlette) and
in the WSGI environ.
"""

PathNormalization = Literal["reject", "rewrite"]

_ERROR_NAMES = {401: "unauthorized", 403: "forbidden"}


@dataclass(frozen=True, slots=True)
class AccessContext:
    """
    The access details of an allowed request, for the application.

    Attributes:
        principal: The authenticated principal, or ``None`` in a public segment.
        decision: The full decision, including the segment and every verdict.
        request: The access request the decision was made on.
    """

    principal: Principal | None
    decision: Decision
    request: AccessRequest

    @property
    def subject(self) -> str | None:
        return self.principal.subject if self.principal is not None else None

    @property
    def request_id(self) -> str:
        return self.request.request_id


@dataclass(frozen=True, slots=True)
class DenialResponse:
    """The HTTP response sent for a denied request."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes


DenyHandler = Callable[[AccessRequest, Decision], DenialResponse]


def default_denial(
    request: AccessRequest, decision: Decision, realm: str = "zerotrust"
) -> DenialResponse:
    """
    Build the default denial: a short JSON body with the request id and no internal detail.

    A 401 carries ``WWW-Authenticate: Bearer`` (RFC 6750) with ``error="invalid_token"``
    when a token was presented; a 403 for a missing scope carries ``insufficient_scope``.
    """
    status = decision.status if decision.status in _ERROR_NAMES else 403
    body = orjson.dumps({"error": _ERROR_NAMES[status], "request_id": request.request_id})
    headers = [
        ("content-type", "application/json"),
        ("cache-control", "no-store"),
        ("x-request-id", request.request_id),
    ]
    if status == 401 or decision.challenge:
        parameters = {"realm": realm, **(decision.challenge or {})}
        challenge = ", ".join(f'{key}="{_quote(value)}"' for key, value in parameters.items())
        headers.append(("www-authenticate", f"Bearer {challenge}"))

    return DenialResponse(status, headers, body)


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def build_denial(
    on_deny: DenyHandler | None,
    realm: str,
    request: AccessRequest,
    decision: Decision,
    logger: logging.Logger,
) -> DenialResponse:
    """Call ``on_deny``, falling back to `default_denial` when it fails or returns no 401/403."""
    if on_deny is not None:
        try:
            response = on_deny(request, decision)
            if isinstance(response, DenialResponse) and response.status in (401, 403):
                return response
            logger.error("on_deny returned %r, not a 401 or 403 DenialResponse", response)
        except Exception:
            logger.exception("on_deny failed for request %s", request.request_id)

    return default_denial(request, decision, realm)


def check_path_normalization(value: object) -> None:
    """Raise `ConfigurationError` unless ``value`` is ``reject`` or ``rewrite``."""
    if value not in ("reject", "rewrite"):
        message = f"path_normalization must be 'reject' or 'rewrite', not {value!r}"
        raise ConfigurationError(message, parameter="path_normalization", value=value)


class PathCheck(NamedTuple):
    """
    The outcome of checking a request path.

    Attributes:
        problem: A reason code when the path is ambiguous or not normalised, else ``None``.
        path: The normalised path inside the app, the one segments match.
        rewrite: Whether the app must be handed ``path`` instead of the path it was sent.
    """

    problem: str | None
    path: str
    rewrite: bool


def check_path(
    raw_path: bytes,
    path: str,
    root_path: str,
    *,
    raw_from_server: bool,
    normalization: PathNormalization,
) -> PathCheck:
    """
    Check that the raw path, the server's decoded path and the app's route path agree.

    Args:
        raw_path: The path as the client sent it, without the query.
        path: The server's decoded path, mount prefix included.
        root_path: The mount prefix (ASGI ``root_path``, WSGI ``SCRIPT_NAME``).
        raw_from_server: Whether the server gave ``raw_path``; otherwise it was rebuilt from
            ``path`` and cannot disagree with it.
        normalization: ``reject`` or ``rewrite`` for a path with dot segments or ``//``.
    """
    problem: str | None = None
    try:
        decoded = check_raw_path(raw_path)
    except PathProblem as error:
        problem = error.reason
    else:
        # A proxy that strips the mount prefix sends the path without it.
        if raw_from_server and path != decoded and path != root_path + decoded:
            problem = "path_mismatch"

    inside = route_path(path, root_path)
    normalised = normalize_path(inside or "/")
    rewrite = False
    if problem is None and normalised != inside and inside:
        if normalization == "reject":
            problem = "path_not_normalized"
        else:
            rewrite = True

    return PathCheck(problem, normalised, rewrite)


def route_path(path: str, root_path: str) -> str:
    """Return the path the app's router matches: ``path`` without the mount prefix."""
    if not root_path or not path.startswith(root_path):
        return path
    if path == root_path:
        return ""
    if path[len(root_path)] == "/":
        return path[len(root_path) :]
    return path


def unreadable_request(method: object, *, websocket: bool = False) -> AccessRequest:
    """Build a minimal access request, marked as malformed, for a request that could not be read."""
    return AccessRequest(
        method=str(method)[:16],
        path="",
        raw_path="",
        host="",
        headers=Headers(raw=[]),
        client_ip=None,
        peer_ip=None,
        request_id=new_request_id(),
        time=time.time(),
        protocol="websocket" if websocket else "http",
        problem="malformed_request",
    )


def remote_key_sets(policy: Policy) -> list[RemoteKeySet]:
    """Return every JWKS key set the policy's verifiers fetch, each once."""
    found: dict[int, RemoteKeySet] = {}
    for segment in policy.segments:
        for verifier in segment.verifiers:
            key_set = getattr(verifier, "key_set", None)
            if isinstance(key_set, RemoteKeySet):
                found[id(key_set)] = key_set
    return list(found.values())


def get_access(obj: Any) -> AccessContext | None:
    """
    Return the `AccessContext` of an allowed request, or ``None`` when there is none.

    ``obj`` may be an ASGI scope, a WSGI environ, or a framework request that carries one of
    them as ``.scope`` (Starlette, FastAPI, Litestar, Quart, Django's ``ASGIRequest``, Falcon's
    ASGI request), ``.environ`` (Flask and Werkzeug, Django's ``WSGIRequest``) or ``.env``
    (Falcon's WSGI request).
    """
    if not isinstance(obj, Mapping):
        for attribute in ("scope", "environ", "env"):
            value = getattr(obj, attribute, None)
            if isinstance(value, Mapping):
                obj = value
                break
        else:
            return None

    context = obj.get(STATE_KEY)
    if context is None:
        state = obj.get("state")
        context = state.get(STATE_KEY) if isinstance(state, Mapping) else None

    return context if isinstance(context, AccessContext) else None
