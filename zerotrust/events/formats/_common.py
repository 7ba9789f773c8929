# SPDX-License-Identifier: Apache-2.0
"""Helpers shared by the event formats: field caps, control characters and decision reading."""

from __future__ import annotations

import calendar
import re
import time
from collections.abc import Mapping
from typing import Any, Literal

import orjson

__all__ = [
    "MAX_FIELD_CHARS",
    "MAX_LIST_ITEMS",
    "TRUNCATION_MARKER",
    "Severity",
    "bounded",
    "clip",
    "dumps_line",
    "epoch_milliseconds",
    "identity_decided",
    "identity_failed",
    "severity_of",
    "strip_controls",
]

MAX_FIELD_CHARS = 4096
"""Maximum length of a string a format writes; longer ones end in `TRUNCATION_MARKER`."""
MAX_LIST_ITEMS = 128
"""Maximum number of list items a format writes; further items are dropped."""
TRUNCATION_MARKER = "...[truncated]"
_MAX_DEPTH = 8

# Codes that the engine records when the principal could not be established or is too weak.
_IDENTITY_REASONS = frozenset(
    {"identity_missing", "authentication_too_old", "acr_not_satisfied", "amr_not_satisfied"}
)
# C0 and C1 controls, DEL, and the Unicode line and paragraph separators: characters that
# end a line in some reader (str.splitlines, JavaScript, syslog relays) or hide text on screen.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# orjson writes these characters raw (JSON allows it), but str.splitlines and JavaScript
# treat them as line ends, so JSON lines carry them as escapes.
_RAW_LINE_SEPARATORS = (
    (b"\xc2\x85", b"\\u0085"),
    (b"\xe2\x80\xa8", b"\\u2028"),
    (b"\xe2\x80\xa9", b"\\u2029"),
)

Severity = Literal["informational", "low", "medium", "high", "critical"]
_ANOMALY_SEVERITIES: dict[str, Severity] = {
    "low": "low",
    "medium": "medium",
    "high": "high",
    "critical": "critical",
}


def clip(text: str, limit: int = MAX_FIELD_CHARS) -> str:
    """Cut ``text`` to ``limit`` characters plus `TRUNCATION_MARKER` when it is longer."""
    if len(text) <= limit:
        return text
    return text[:limit] + TRUNCATION_MARKER


def strip_controls(text: str) -> str:
    """Remove control characters and Unicode line separators from ``text``."""
    return _CONTROLS.sub("", text)


def bounded(value: Any, depth: int = 0) -> Any:
    """
    Copy ``value`` with every string clipped, every list cut to `MAX_LIST_ITEMS` items and
    nesting below eight levels replaced by its string form, clipped.
    """
    if isinstance(value, str):
        return clip(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if depth >= _MAX_DEPTH:
        return clip(str(value))
    if isinstance(value, Mapping):
        return {clip(str(key), 256): bounded(item, depth + 1) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [bounded(item, depth + 1) for item in value[:MAX_LIST_ITEMS]]
    return clip(str(value))


def dumps_line(value: Any) -> bytes:
    """Render ``value`` as one line of compact JSON with no character that ends a line."""
    line = orjson.dumps(value, default=str)
    if line.isascii():
        # Each separator has a byte above 0x7F. One check of the whole line costs far less
        # than the three searches.
        return line
    for raw, escaped in _RAW_LINE_SEPARATORS:
        if raw in line:
            line = line.replace(raw, escaped)
    return line


def epoch_milliseconds(timestamp: object) -> int | None:
    """
    Convert an RFC 3339 UTC timestamp such as ``2026-03-01T12:00:00.123456Z`` to milliseconds
    since the epoch; ``None`` when it is not one.
    """
    if not isinstance(timestamp, str) or not timestamp.endswith("Z"):
        return None
    whole, _, fraction = timestamp[:-1].partition(".")
    try:
        seconds = calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None
    digits = (fraction + "000")[:3]
    if not digits.isdigit():
        return None

    return seconds * 1000 + int(digits)


def identity_failed(event: Mapping[str, Any]) -> bool:
    """
    Tell whether a denial was caused by identity: an identity verifier failed, a required one
    abstained, or no principal with the required strength was established.
    """
    if event.get("decision") != "deny":
        return False
    reasons = set(event.get("reasons") or ())
    if reasons & _IDENTITY_REASONS:
        return True
    for verifier in event.get("verifiers") or ():
        if not isinstance(verifier, Mapping) or verifier.get("kind") != "identity":
            continue
        if verifier.get("result") == "fail" or verifier.get("reason") in reasons:
            return True
    return False


def identity_decided(event: Mapping[str, Any]) -> bool:
    """Tell whether an identity verifier passed or failed on this request."""
    for verifier in event.get("verifiers") or ():
        if not isinstance(verifier, Mapping) or verifier.get("kind") != "identity":
            continue
        if verifier.get("result") in ("pass", "fail"):
            return True
    return identity_failed(event)


def severity_of(event: Mapping[str, Any]) -> Severity:
    """
    Grade an event for the SIEM formats.

    An allowed request is informational, a denial that monitor mode let through is low, an
    enforced denial is medium, and an anomaly is high unless it names its own severity
    (``low``, ``medium``, ``high`` or ``critical``). Other events are informational.
    """
    kind = event.get("event")
    if kind == "access":
        if event.get("decision") != "deny":
            return "informational"
        if event.get("action") == "allow":
            return "low"
        return "medium"
    if kind == "anomaly":
        declared = event.get("severity")
        if isinstance(declared, str):
            return _ANOMALY_SEVERITIES.get(declared, "high")
        return "high"
    return "informational"
