# SPDX-License-Identifier: Apache-2.0
"""Checks shared by every verifier of signed tokens: user JWTs, device assertions, grants."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Collection
from typing import Any

import jwt

__all__ = ["TokenProblem", "claim_problem", "read_header"]

_COMPACT_JWS = re.compile(r"[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*")
_MAX_HEADER_CHARS = 2048
# Header parameters understood when a token lists them in "crit" (RFC 7515, section 4.1.11).
_UNDERSTOOD_CRITICAL: frozenset[str] = frozenset()

# Claim errors that only newer PyJWT releases (2.10 and later) raise.
_OPTIONAL_ERRORS: tuple[type[Exception], ...] = tuple(
    error
    for error in (
        getattr(jwt.exceptions, "InvalidSubjectError", None),
        getattr(jwt.exceptions, "InvalidJTIError", None),
    )
    if isinstance(error, type)
)
# PyJWT errors and the problem each stands for; subclasses come before their base classes.
_PROBLEMS: tuple[tuple[type[Exception], str], ...] = (
    (jwt.ExpiredSignatureError, "expired"),
    (jwt.ImmatureSignatureError, "not_yet_valid"),
    (jwt.InvalidAudienceError, "invalid_audience"),
    (jwt.InvalidIssuerError, "invalid_issuer"),
    (jwt.MissingRequiredClaimError, "missing_claim"),
    (jwt.InvalidIssuedAtError, "invalid_claim"),
    *((error, "invalid_claim") for error in _OPTIONAL_ERRORS),
    (jwt.InvalidSignatureError, "invalid_signature"),
    (jwt.InvalidAlgorithmError, "algorithm_not_allowed"),
    (jwt.DecodeError, "malformed"),
)


class TokenProblem(ValueError):
    """
    A token failed a check before or during signature verification.

    Attributes:
        problem: What failed: ``malformed``, ``algorithm_not_allowed``,
            ``unsupported_critical_header``, or a result of `claim_problem`. Each verifier maps
            it to its own reason code.
        detail: A short explanation without the token.
    """

    def __init__(self, problem: str, detail: str) -> None:
        super().__init__(f"{problem}: {detail}")
        self.problem = problem
        self.detail = detail


def read_header(token: str, algorithms: Collection[str]) -> dict[str, Any]:
    """
    Parse and check the protected header of a compact JWS without trusting it.

    The header is decoded here rather than by PyJWT, whose own checks raise before an
    unsupported ``kid`` or ``crit`` could be reported with its own problem.

    Raises:
        TokenProblem: for a token that is not a compact JWS, a header that is not JSON, an
            ``alg`` outside ``algorithms``, a ``kid`` that is not a string, or a ``crit``
            parameter that is not understood.
    """
    if not _COMPACT_JWS.fullmatch(token):
        raise TokenProblem("malformed", "not a compact JWS")
    header = _decode_header(token.partition(".")[0])
    if header is None:
        raise TokenProblem("malformed", "header is not base64url-encoded JSON")

    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in algorithms:
        raise TokenProblem("algorithm_not_allowed", f"alg {str(alg)[:20]!r}")
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise TokenProblem("malformed", "kid is not a string")
    critical = header.get("crit")
    if critical is not None and (
        not isinstance(critical, list)
        or not all(isinstance(name, str) for name in critical)
        or not set(critical) <= _UNDERSTOOD_CRITICAL
    ):
        raise TokenProblem("unsupported_critical_header", f"crit {str(critical)[:80]}")

    return header


def claim_problem(error: jwt.InvalidTokenError) -> str:
    """Return the problem a PyJWT error stands for, or ``invalid`` for any other error."""
    for error_type, problem in _PROBLEMS:
        if isinstance(error, error_type):
            return problem
    return "invalid"


def _decode_header(segment: str) -> dict[str, Any] | None:
    if len(segment) > _MAX_HEADER_CHARS:
        return None
    try:
        data = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        header = json.loads(data)
    except (ValueError, RecursionError):
        return None
    return header if isinstance(header, dict) else None
