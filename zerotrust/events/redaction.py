# SPDX-License-Identifier: Apache-2.0
"""A structlog processor that removes secrets from an event before any renderer sees it."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, MutableMapping
from typing import Any

__all__ = ["SECRET_KEYS", "redact_secrets"]

SECRET_KEYS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "token",
        "access_token",
        "id_token",
        "refresh_token",
        "client_secret",
        "secret",
        "password",
        "passwd",
        "api_key",
        "apikey",
        "x-api-key",
        "private_key",
        "session",
    }
)
# Three base64url parts starting with an encoded JSON object: a JWS or JWT in compact form.
_JWT = re.compile(r"eyJ[A-Za-z0-9_\-]{2,}\.[A-Za-z0-9_\-]{2,}\.[A-Za-z0-9_\-]*")
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/\-]+=*")
_MAX_DEPTH = 8


def _fingerprint(match: re.Match[str]) -> str:
    digest = hashlib.sha256(match[0].encode()).hexdigest()[:16]
    return f"[redacted sha256:{digest}]"


def _redact(value: Any, depth: int) -> Any:
    if isinstance(value, str):
        if "eyJ" in value:
            value = _JWT.sub(_fingerprint, value)
        if " " in value:
            value = _BEARER.sub(lambda m: f"{m[1]} {_fingerprint(m)}", value)
        return value
    if depth >= _MAX_DEPTH:
        return value
    if isinstance(value, Mapping):
        return {
            key: "[redacted]" if str(key).lower() in SECRET_KEYS else _redact(item, depth + 1)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [_redact(item, depth + 1) for item in value]
    return value


def redact_secrets(
    _logger: object, _method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """
    Replace secret-looking values in an event dict.

    Values under keys such as ``authorization``, ``cookie`` or ``access_token`` become
    ``[redacted]``. Compact JWTs and ``Bearer``/``Basic`` credentials anywhere in a string become
    a SHA-256 fingerprint, so two events about the same credential can still be correlated.
    """
    for key in list(event_dict):
        if key.lower() in SECRET_KEYS:
            event_dict[key] = "[redacted]"
        else:
            event_dict[key] = _redact(event_dict[key], 0)

    return event_dict
