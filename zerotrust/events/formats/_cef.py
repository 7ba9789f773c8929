# SPDX-License-Identifier: Apache-2.0
"""ArcSight Common Event Format (CEF) version 0: a header and key=value extensions per line."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, MutableMapping
from typing import Any

from ..._version import __version__
from ...exceptions import ConfigurationError
from ._common import Severity, clip, epoch_milliseconds, severity_of, strip_controls

__all__ = ["CEF_SEVERITIES", "MAX_CEF_VALUE_CHARS", "CEFFormat", "cef_format"]

MAX_CEF_VALUE_CHARS = 1023
"""Maximum length of an extension value, counted before escaping; longer values are cut."""
_MAX_HEADER_CHARS = 255

CEF_SEVERITIES: dict[Severity, int] = {
    "informational": 1,
    "low": 3,
    "medium": 5,
    "high": 8,
    "critical": 10,
}
# Every control character but CR and LF, which extensions encode as \r and \n instead.
_EXTENSION_CONTROLS = re.compile("[\x00-\x09\x0b\x0c\x0e-\x1f\x7f-\x9f\u2028\u2029]")
_HEADER_SPECIALS = re.compile(r"[\\|]")
_EXTENSION_SPECIALS = re.compile(r"[\\=\r\n]")
_EXTENSION_ESCAPES = {"\\": "\\\\", "=": "\\=", "\r": "\\r", "\n": "\\n"}


class CEFFormat:
    """
    Render zerotrust events as CEF lines.

    A line is ``CEF:0|vendor|product|version|signature id|name|severity|extensions``.

    In header fields ``\\`` and ``|`` are escaped with a backslash. In extension values ``\\``
    and ``=`` are escaped, and CR and LF become ``\\r`` and ``\\n``. Every other control
    character, and U+2028 and U+2029, is removed everywhere, so one event is exactly one line
    and no value can start a field or a line of its own. Extension values are cut to
    `MAX_CEF_VALUE_CHARS` characters before escaping, with a ``...[truncated]`` marker.

    The signature id of an access event is its first reason code, or ``allow`` when it was
    allowed. An anomaly uses its detector, and any other event its ``event`` name.

    Severity: 1 for an allowed request, 3 for a denial that monitor mode let through, 5 for an
    enforced denial, 8 for an anomaly (3, 5, 8 or 10 when the anomaly names its severity low,
    medium, high or critical), 1 for other events.

    An instance is both a sink ``format`` (called with the redacted event) and, through
    `render`, a structlog processor.

    Args:
        vendor: The Device Vendor header field.
        product: The Device Product header field.
        version: The Device Version header field; the zerotrust version when ``None``.

    Raises:
        ConfigurationError: A header field is empty or not a string.

    .. versionadded:: 0.2.0
    """

    def __init__(
        self,
        vendor: str = "zerotrust",
        product: str = "zerotrust-middleware",
        version: str | None = None,
    ) -> None:
        if version is None:
            version = __version__
        for name, value in (("vendor", vendor), ("product", product), ("version", version)):
            if not isinstance(value, str) or not value.strip():
                message = f"CEF {name} must be a non-empty string, got {value!r}"
                raise ConfigurationError(message, parameter=name, value=value)

        self.vendor = vendor
        self.product = product
        self.version = version
        self._prefix = "|".join(("CEF:0", _header(vendor), _header(product), _header(version)))

    def __call__(self, event: dict[str, Any]) -> bytes:
        return self.render(None, "info", event)

    def render(
        self, _logger: object, _method_name: str, event_dict: MutableMapping[str, Any]
    ) -> bytes:
        """Render one already redacted event as a CEF line (bytes, without the newline)."""
        kind = event_dict.get("event")
        if kind == "access":
            signature, name, extensions = _access(event_dict)
        elif kind == "anomaly":
            signature, name, extensions = _anomaly(event_dict)
        else:
            signature, name, extensions = _other(event_dict)

        severity = CEF_SEVERITIES[severity_of(event_dict)]
        header = f"{self._prefix}|{_header(signature)}|{_header(name)}|{severity}|"
        body = " ".join(
            f"{key}={_extension(value)}" for key, value in extensions if value is not None
        )

        return (header + body).encode()


def _header(value: object) -> str:
    text = clip(strip_controls(str(value)), _MAX_HEADER_CHARS)
    return _HEADER_SPECIALS.sub(lambda match: "\\" + match[0], text)


def _extension(value: object) -> str:
    text = clip(_EXTENSION_CONTROLS.sub("", str(value)), MAX_CEF_VALUE_CHARS)
    return _EXTENSION_SPECIALS.sub(lambda match: _EXTENSION_ESCAPES[match[0]], text)


Extensions = list[tuple[str, object]]


def _source_address(address: object) -> Extensions:
    # CEF defines src as an IPv4 address, so an IPv6 client goes to the custom IPv6 field c6a2.
    if not isinstance(address, str):
        return []
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return []
    if parsed.version == 4:
        return [("src", address)]
    return [("c6a2", address), ("c6a2Label", "Source IPv6 Address")]


def _labelled(key: str, label: str, value: object) -> Extensions:
    if value is None or value == "":
        return []
    return [(key, value), (key + "Label", label)]


def _access(event: Mapping[str, Any]) -> tuple[str, str, Extensions]:
    reasons = [str(reason) for reason in event.get("reasons") or ()]
    denied = event.get("decision") == "deny"
    let_through = event.get("action") == "allow"
    if not denied:
        name = "Access allowed"
    elif let_through:
        name = "Access denied (monitor mode)"
    else:
        name = "Access denied"
    verifiers = ",".join(
        f"{verifier.get('name')}:{verifier.get('result')}"
        for verifier in event.get("verifiers") or ()
        if isinstance(verifier, Mapping)
    )

    extensions: Extensions = [
        ("rt", epoch_milliseconds(event.get("timestamp"))),
        ("cat", "access"),
        ("act", event.get("action")),
        ("outcome", "failure" if denied else "success"),
        ("reason", ",".join(reasons) or None),
        *_source_address(event.get("client_ip")),
        ("suser", event.get("subject")),
        ("dhost", event.get("host") or None),
        ("requestMethod", event.get("method")),
        ("request", event.get("path")),
        ("requestClientApplication", event.get("user_agent") or None),
        ("externalId", event.get("request_id")),
        *_labelled("cs1", "segment", event.get("segment")),
        *_labelled("cs2", "mode", event.get("mode")),
        *_labelled("cs3", "credentialFingerprint", event.get("credential_fingerprint")),
        *_labelled("cs4", "verifiers", verifiers),
        *_labelled("cs5", "issuer", event.get("issuer")),
        *_labelled("cs6", "eventId", event.get("event_id")),
        *_labelled("cn1", "httpStatus", event.get("status")),
        *_labelled("cfp1", "latencyMs", event.get("latency_ms")),
    ]
    return (reasons[0] if reasons else "allow"), name, extensions


def _anomaly(event: Mapping[str, Any]) -> tuple[str, str, Extensions]:
    detector = str(event.get("detector") or "anomaly")
    contributing = event.get("contributing_event_ids")
    extensions: Extensions = [
        ("rt", epoch_milliseconds(event.get("timestamp"))),
        ("cat", "anomaly"),
        ("msg", event.get("description")),
        *_source_address(event.get("client_ip")),
        ("suser", event.get("subject")),
        ("cnt", event.get("count") if type(event.get("count")) is int else None),
        ("start", epoch_milliseconds(event.get("first_seen"))),
        ("end", epoch_milliseconds(event.get("last_seen"))),
        ("externalId", event.get("event_id")),
        *_labelled("cs1", "segment", event.get("segment")),
        *_labelled("cs3", "credentialFingerprint", event.get("credential_fingerprint")),
        *_labelled(
            "cs6",
            "contributingEventIds",
            ",".join(str(uid) for uid in contributing) if isinstance(contributing, list) else None,
        ),
    ]
    return detector, f"Anomaly detected by {detector}", extensions


def _other(event: Mapping[str, Any]) -> tuple[str, str, Extensions]:
    kind = str(event.get("event") or "event")
    extensions: Extensions = [
        ("rt", epoch_milliseconds(event.get("timestamp"))),
        ("cat", kind),
        ("msg", event.get("reason")),
        ("suser", event.get("subject")),
        ("externalId", event.get("event_id")),
        *_labelled("cs1", "segment", event.get("segment")),
        *_labelled("cs6", "grantId", event.get("grant_id")),
    ]
    return kind, kind.replace("_", " ").capitalize(), extensions


cef_format = CEFFormat()
"""A `CEFFormat` with vendor ``zerotrust`` and product ``zerotrust-middleware``."""
