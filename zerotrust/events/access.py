# SPDX-License-Identifier: Apache-2.0
"""Building access events: the structured record of one access decision."""

from __future__ import annotations

import functools
import time
from typing import TYPE_CHECKING, Any

from .._ids import random_bits
from .redaction import _SCRUBBED as _scrubbed_types
from .redaction import redact_text

if TYPE_CHECKING:
    from ..engine import Decision
    from ..request import AccessRequest

__all__ = [
    "SCHEMA_VERSION",
    "ScrubbedDict",
    "ScrubbedList",
    "build_access_event",
    "format_timestamp",
    "new_event_id",
]

SCHEMA_VERSION = "1"

_MAX_PATH = 2048
_MAX_USER_AGENT = 512
_MAX_HOST = 255
_MAX_DETAIL = 300
_MAX_FACT = 256


def new_event_id(timestamp: float | None = None) -> str:
    """Generate a time-ordered UUID (version 7, RFC 9562) as a string."""
    milliseconds = int((time.time() if timestamp is None else timestamp) * 1000)
    value = (milliseconds & 0xFFFF_FFFF_FFFF) << 80
    value |= random_bits(80)
    value = (value & ~(0xF << 76)) | (0x7 << 76)
    value = (value & ~(0x3 << 62)) | (0x2 << 62)
    text = f"{value:032x}"

    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def format_timestamp(timestamp: float) -> str:
    """Format seconds since the epoch as RFC 3339 UTC with microseconds and a ``Z`` suffix."""
    whole = int(timestamp)
    micros = round((timestamp - whole) * 1_000_000)
    if micros == 1_000_000:
        whole, micros = whole + 1, 0

    return f"{_format_second(whole)}.{micros:06d}Z"


@functools.lru_cache(maxsize=4)
def _format_second(second: int) -> str:
    # Events arrive in bursts within the same second; formatting the date once saves most of it.
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


def _clip(value: str | None, limit: int) -> str | None:
    if value is None or len(value) <= limit:
        return value
    # Redact before cutting, so a credential cut in half still gets its full fingerprint.
    return redact_text(value)[:limit] + "...[truncated]"


# Formatting an address costs about half a microsecond, and clients and proxies repeat.
_ip_text = functools.lru_cache(maxsize=4096)(str)


@functools.lru_cache(maxsize=1024)
def _name_text(name: str) -> str:
    # Verifier names and fact keys come from a few verifiers, so each is redacted once.
    return redact_text(name[:64])


def _fact_value(value: Any) -> Any:
    """Return a fact value that is safe to log: redacted, cut to size, JSON-ready."""
    value_type = type(value)
    if value is None or value_type is bool or value_type is int or value_type is float:
        return value
    if value_type is not str:
        if isinstance(value, list | tuple | set | frozenset):
            return [_fact_value(item) for item in list(value)[:32]]
        value = str(value)
    if "eyJ" in value or " " in value:
        value = redact_text(value)
    return value if len(value) <= _MAX_FACT else value[:_MAX_FACT] + "...[truncated]"


class ScrubbedDict(dict[str, Any]):
    """A dict built by zerotrust whose strings are already redacted; `redact_secrets` skips it."""


class ScrubbedList(list[Any]):
    """A list built by zerotrust whose strings are already redacted; `redact_secrets` skips it."""


def build_access_event(
    request: AccessRequest,
    decision: Decision,
    *,
    status: int | None,
    latency: float,
    decision_time: float,
    close_code: int | None = None,
) -> dict[str, Any]:
    """
    Build the access event for one request as a plain dict, ready for structlog processors.

    Args:
        request: The request as the engine saw it.
        decision: The engine's decision.
        status: The HTTP status actually sent, or ``None`` if no response started.
        latency: Seconds from the start of the middleware to the end of the response.
        decision_time: Seconds the engine took to decide.
        close_code: The websocket close code sent, for a denied websocket.
    """
    principal = decision.principal
    fingerprint = principal.credential_fingerprint if principal is not None else None
    verifiers = ScrubbedList()
    for record in decision.verdicts:
        detail = record.detail
        if detail is not None:
            detail = _clip(redact_text(detail), _MAX_DETAIL)
        name = record.name
        verifiers.append(
            {
                "name": _name_text(name) if type(name) is str else redact_text(name),
                "kind": record.kind,
                "result": record.outcome,
                "reason": record.reason,
                "detail": detail,
                "duration_ms": round(record.duration * 1000, 3),
            }
        )
        if fingerprint is None:
            candidate = record.verdict.facts.get("credential_fingerprint")
            if isinstance(candidate, str):
                fingerprint = candidate

    segment = decision.segment
    event: dict[str, Any] = {
        "event": "access",
        "schema_version": SCHEMA_VERSION,
        "timestamp": format_timestamp(request.time),
        "event_id": new_event_id(request.time),
        "request_id": request.request_id,
        "decision": "allow" if decision.allowed else "deny",
        "action": "allow" if decision.lets_through else "deny",
        "mode": decision.mode,
        "status": status,
        "reasons": list(decision.reasons),
        "segment": segment.name if segment is not None else None,
        "subject": principal.subject if principal is not None else None,
        "issuer": principal.issuer if principal is not None else None,
        "credential_fingerprint": fingerprint,
        "client_ip": _ip_text(request.client_ip) if request.client_ip is not None else None,
        "peer_ip": _ip_text(request.peer_ip) if request.peer_ip is not None else None,
        "method": request.method,
        "scheme": request.scheme,
        "protocol": request.protocol,
        "host": _clip(request.host, _MAX_HOST),
        "path": _clip(request.path, _MAX_PATH),
        "user_agent": _clip(request.user_agent, _MAX_USER_AGENT),
        "latency_ms": round(latency * 1000, 3),
        "decision_ms": round(decision_time * 1000, 3),
        "verifiers": verifiers,
    }
    if decision.missing_scopes:
        event["missing_scopes"] = list(decision.missing_scopes)
    facts = dict(decision.facts)
    for record in decision.verdicts:
        # A denial is explained by what the failing verifier saw too, such as the country.
        if record.outcome != "pass" and record.verdict.facts:
            for key, value in record.verdict.facts.items():
                facts.setdefault(key, value)
    facts.pop("credential_fingerprint", None)
    if facts:
        scrubbed = ScrubbedDict()
        for key, value in facts.items():
            value_type = type(value)
            if value_type is str:
                # The common case, inlined: _fact_value does the same for a string.
                if "eyJ" in value or " " in value:
                    value = redact_text(value)
                if len(value) > _MAX_FACT:
                    value = value[:_MAX_FACT] + "...[truncated]"
            elif not (
                value is None or value_type is bool or value_type is int or value_type is float
            ):
                value = _fact_value(value)
            scrubbed[_name_text(key) if type(key) is str else redact_text(str(key)[:64])] = value
        event["facts"] = scrubbed
    if close_code is not None:
        event["close_code"] = close_code
    if request.problem is not None and request.raw_path != request.path:
        # For a malformed request the normalised path hides what was sent, such as %2F.
        event["raw_path"] = _clip(request.raw_path, _MAX_PATH)

    return event


_scrubbed_types.update({ScrubbedDict, ScrubbedList})
