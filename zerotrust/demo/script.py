# SPDX-License-Identifier: Apache-2.0
"""The demo's scripted requests, each with the status and reason code the policy must produce."""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass

from ..testing import TokenIssuer

__all__ = ["Probe", "build_script"]


@dataclass(frozen=True, slots=True)
class Probe:
    """
    One scripted request and its expected outcome.

    Attributes:
        method: The HTTP method.
        target: The request target exactly as written on the wire.
        description: What the request tries, in a few words.
        token: The bearer token to send, or ``None`` for no ``Authorization`` header.
        expected_status: The HTTP status the middleware or the app must return.
        expected_reason: The first reason code of the access event; ``None`` for an allow.
    """

    method: str
    target: str
    description: str
    token: str | None
    expected_status: int
    expected_reason: str | None = None

    @property
    def expected_decision(self) -> str:
        return "allow" if self.expected_reason is None else "deny"


def build_script(issuer: TokenIssuer) -> list[Probe]:
    """Mint the demo's tokens with ``issuer`` and pair each request with its expected outcome."""
    reader = issuer.token("reader", scopes=["api:read"], alg="RS256")
    reader_ec = issuer.token("reader-ec", scopes=["api:read"], alg="ES256")
    writer = issuer.token("writer", scopes=["api:read", "api:write"], alg="ES256")
    admin = issuer.token("admin", scopes=["api:read"], roles=["admin"], alg="RS256")
    # Issued two hours ago with a one-hour lifetime: far outside the 30 s leeway.
    expired = issuer.token(
        "reader", scopes=["api:read"], alg="RS256", now=time.time() - 7200, lifetime=3600
    )
    other_audience = issuer.token("reader", audience="billing", scopes=["api:read"], alg="RS256")
    unknown_kid = issuer.token("reader", scopes=["api:read"], alg="RS256", kid="RS256-retired")

    unsigned = _unsigned(reader)
    altered = _alter_signature(reader)
    edited = _add_admin_role(reader)

    return [
        # Allowed: valid tokens with the scopes and roles each segment requires.
        Probe("GET", "/healthz", "public health check", None, 200),
        Probe("GET", "/api/items", "reader, RS256 token", reader, 200),
        Probe("GET", "/api/items", "reader, ES256 token", reader_ec, 200),
        Probe("POST", "/api/items", "writer creates an item", writer, 201),
        Probe("GET", "/admin/users", "admin on the admin area", admin, 200),
        # Denied with 401: the token is missing or not valid.
        Probe("GET", "/api/items", "no token", None, 401, "token_missing"),
        Probe("GET", "/api/items", "expired token", expired, 401, "token_expired"),
        Probe("GET", "/api/items", "audience 'billing'", other_audience, 401, "invalid_audience"),
        Probe("GET", "/api/items", "unsigned, alg: none", unsigned, 401, "algorithm_not_allowed"),
        Probe("GET", "/api/items", "signature altered", altered, 401, "invalid_signature"),
        Probe("GET", "/admin/users", "claims edited: admin", edited, 401, "invalid_signature"),
        Probe("GET", "/api/items", "unpublished key id", unknown_kid, 401, "unknown_kid"),
        # Denied with 403: a valid identity without the required scope or role.
        Probe("POST", "/api/items", "reader writes", reader, 403, "insufficient_scope"),
        Probe("GET", "/admin/users", "reader on admin area", reader, 403, "insufficient_role"),
        Probe("GET", "/secret", "route outside every segment", admin, 403, "no_segment"),
        # Denied with 403: ambiguous paths, sent byte for byte by the raw client.
        Probe("GET", "/api/../admin/users", "dot-dot segment", reader, 403, "path_not_normalized"),
        Probe("GET", "//admin/users", "doubled slash", reader, 403, "path_not_normalized"),
        Probe("GET", "/api/%2e%2e/admin/users", "encoded dots", reader, 403, "path_not_normalized"),
        Probe("GET", "/api%2Fitems", "encoded slash", reader, 403, "encoded_slash"),
    ]


def _split(token: str) -> list[str]:
    return token.split(".")


def _encode_part(value: dict[str, object]) -> str:
    raw = json.dumps(value, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _decode_part(part: str) -> dict[str, object]:
    padded = part + "=" * (-len(part) % 4)
    value: dict[str, object] = json.loads(base64.urlsafe_b64decode(padded))
    return value


def _unsigned(token: str) -> str:
    """Return the token's claims under an ``alg: none`` header with an empty signature."""
    _, payload, _ = _split(token)
    return f"{_encode_part({'alg': 'none', 'typ': 'JWT'})}.{payload}."


def _alter_signature(token: str) -> str:
    # Change a character in the middle: the last one may only carry padding bits.
    header, payload, signature = _split(token)
    middle = len(signature) // 2
    replacement = "A" if signature[middle] != "A" else "B"
    return f"{header}.{payload}.{signature[:middle]}{replacement}{signature[middle + 1 :]}"


def _add_admin_role(token: str) -> str:
    """Return the token with ``roles: ["admin"]`` added to its claims and the old signature."""
    header, payload, signature = _split(token)
    claims = _decode_part(payload)
    claims["roles"] = ["admin"]
    return f"{header}.{_encode_part(claims)}.{signature}"
