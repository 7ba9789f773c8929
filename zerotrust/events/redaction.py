# SPDX-License-Identifier: Apache-2.0
"""A structlog processor that removes secrets from an event before it is rendered."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, MutableMapping
from typing import Any

__all__ = ["SECRET_KEYS", "redact_secrets", "redact_text"]

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
# ``password=...`` or ``"api_key": "..."`` inside free text, such as an exception message.
_NAMED_SECRET = re.compile(
    r"(?i)(\b(?:password|passwd|pwd|secret|client_secret|api[_-]?key|access_token|refresh_token"
    r"|id_token|token|private_key)[\"']?\s*[=:]\s*)(?!\[redacted)(\"[^\"]*\"|'[^']*'|[^\s,;&\"'}]+)"
)
# The password in a URL's user information: ``postgresql://user:password@host``.
_URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://[^/\s:@]*:)([^/\s@]+)@")
_MAX_DEPTH = 8
_SKIP, _REPLACE, _SCAN = 0, 1, 2
_SCALARS = frozenset({bool, int, float})
# Containers the access-event builder already redacted: scanning them again costs more than the
# rest of rendering. Set by zerotrust.events.access, which imports this module.
_SCRUBBED: set[type] = set()
# The action for each key seen so far; event keys repeat, so classifying once saves time.
_KEY_ACTIONS: dict[object, int] = {}
_MAX_KEY_ACTIONS = 4096
# Access-event fields that hold only values zerotrust generated or validated.
_GENERATED_FIELDS = frozenset(
    {
        "event",
        "schema_version",
        "timestamp",
        "event_id",
        "decision",
        "action",
        "mode",
        "status",
        "reasons",
        "segment",
        "credential_fingerprint",
        "client_ip",
        "peer_ip",
        "scheme",
        "protocol",
        "latency_ms",
        "decision_ms",
        "close_code",
    }
)


def _fingerprint(match: re.Match[str]) -> str:
    digest = hashlib.sha256(match[0].encode()).hexdigest()[:16]
    return f"[redacted sha256:{digest}]"


def _fingerprint_credential(match: re.Match[str]) -> str:
    return f"{match[1]} {_fingerprint(match)}"


def _mask_named(match: re.Match[str]) -> str:
    # No fingerprint: a password is often guessable, and its hash would help the guessing.
    return f"{match[1]}[redacted]"


def _mask_url_password(match: re.Match[str]) -> str:
    return f"{match[1]}[redacted]@"


def redact_text(value: str) -> str:
    """
    Replace secrets in free text: compact JWTs and ``Bearer``/``Basic`` credentials by
    fingerprints; the value of a ``name=value`` pair whose name says secret (``password=``,
    ``api_key:``...) and the password in a URL such as ``postgresql://user:password@host`` by
    ``[redacted]``.
    """
    if "eyJ" in value:
        value = _JWT.sub(_fingerprint, value)
    if " " in value:
        lowered = value.lower()
        if "bearer" in lowered or "basic" in lowered:
            value = _BEARER.sub(_fingerprint_credential, value)
    if "=" in value or ":" in value:
        value = _NAMED_SECRET.sub(_mask_named, value)
        if "@" in value:
            value = _URL_PASSWORD.sub(_mask_url_password, value)
    return value


def _redact(value: Any, depth: int) -> Any:
    """Redact inside a nested value; containers are changed in place to avoid copies."""
    if isinstance(value, str):
        if "eyJ" in value or " " in value or "=" in value or ":" in value:
            return redact_text(value)
        return value
    if depth >= _MAX_DEPTH:
        return value
    if isinstance(value, dict):
        for key, item in value.items():
            action = _KEY_ACTIONS.get(key)
            if action is None:
                action = _classify_key(key)
            if action == _REPLACE:
                value[key] = "[redacted]"
            elif action == _SCAN and item is not None and type(item) not in _SCALARS:
                value[key] = _redact(item, depth + 1)
        return value
    if isinstance(value, Mapping):
        return _redact(dict(value), depth)
    if isinstance(value, list):
        for index, item in enumerate(value):
            value[index] = _redact(item, depth + 1)
        return value
    if isinstance(value, tuple):
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
    Fields that zerotrust itself fills from validated values (ids, times, enums, numbers) are
    skipped, which keeps this processor cheap at the request rate. Nested dicts and lists are
    redacted in place.
    """
    for key, value in event_dict.items():
        action = _KEY_ACTIONS.get(key)
        if action is None:
            action = _classify_key(key)
        if action == _SKIP:
            continue
        if action == _REPLACE:
            event_dict[key] = "[redacted]"
            continue

        value_type = type(value)
        if value_type is str:
            if "eyJ" in value or " " in value:
                event_dict[key] = redact_text(value)
        elif value is not None and value_type not in _SCALARS and value_type not in _SCRUBBED:
            event_dict[key] = _redact(value, 0)

    return event_dict


def _classify_key(key: object) -> int:
    name = str(key)
    if name in _GENERATED_FIELDS:
        action = _SKIP
    elif name.lower() in SECRET_KEYS:
        action = _REPLACE
    else:
        action = _SCAN
    if len(_KEY_ACTIONS) < _MAX_KEY_ACTIONS:
        _KEY_ACTIONS[key] = action
    return action
