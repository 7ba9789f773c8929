# SPDX-License-Identifier: Apache-2.0
"""The grant token format: a JWS whose claims mirror the `Grant` record."""

from __future__ import annotations

import math
from typing import Any

import jwt

from .model import Grant

__all__ = ["TOKEN_TYPE", "encode_grant_token", "grant_audience"]

TOKEN_TYPE = "zt-grant+jwt"  # noqa: S105 -- a media type, not a secret
"""The ``typ`` header of grant tokens, so no other JWT can pass for a grant (RFC 8725 3.11)."""

_AUDIENCE_PREFIX = "urn:zerotrust:grant:"


def grant_audience(segment: str) -> str:
    """
    Return the ``aud`` claim of grants for ``segment``.

    The prefix keeps a grant token from being accepted as an access token by a service whose
    audience happens to be the segment name.
    """
    return f"{_AUDIENCE_PREFIX}{segment}"


def encode_grant_token(
    grant: Grant, *, key: Any, algorithm: str, kid: str, issuer: str, issued_at: float
) -> str:
    """Sign the token for a grant; NumericDate claims are whole seconds (the broker rounds)."""
    claims = {
        "iss": issuer,
        "sub": grant.subject,
        "aud": grant_audience(grant.segment),
        "jti": grant.grant_id,
        "iat": math.floor(issued_at),
        "nbf": math.floor(grant.not_before),
        "exp": math.floor(grant.expires_at),
        "segment": grant.segment,
        "methods": list(grant.methods),
        "paths": list(grant.paths),
    }
    headers = {"kid": kid, "typ": TOKEN_TYPE}

    return jwt.encode(claims, key, algorithm=algorithm, headers=headers)
