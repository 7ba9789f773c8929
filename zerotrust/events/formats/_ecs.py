# SPDX-License-Identifier: Apache-2.0
"""Elastic Common Schema (ECS): access, anomaly and grant events as ECS documents."""

from __future__ import annotations

import functools
from collections.abc import Mapping, MutableMapping
from typing import Any

from ...exceptions import MissingExtraError
from ._common import bounded, identity_decided, severity_of

__all__ = ["ECS_VERSION", "ecs_format", "ecs_renderer", "map_ecs", "render_ecs"]

ECS_VERSION = "8.11.0"
"""The ECS version of the mapped fields; ``event.category: api`` is in ECS 8.7 but not 1.12."""

_SEVERITY_NUMBERS = {"informational": 1, "low": 2, "medium": 3, "high": 4, "critical": 5}
_GRANT_TYPES = {
    "grant_minted": "creation",
    "grant_revoked": "deletion",
    "grant_expired": "deletion",
    "grant_approved": "change",
}
# Access-event fields that have an ECS home; the rest go under zerotrust.*.
_ACCESS_MAPPED = frozenset(
    {
        "event",
        "timestamp",
        "event_id",
        "request_id",
        "reasons",
        "segment",
        "subject",
        "client_ip",
        "method",
        "path",
        "status",
        "user_agent",
        "host",
        "scheme",
        "latency_ms",
    }
)
_ANOMALY_MAPPED = frozenset(
    {
        "event",
        "timestamp",
        "event_id",
        "detector",
        "subject",
        "client_ip",
        "first_seen",
        "last_seen",
        "severity",
        "description",
        "segment",
    }
)


def map_ecs(
    _logger: object, _method_name: str, event_dict: MutableMapping[str, Any]
) -> dict[str, Any]:
    """
    Map a zerotrust event to ECS fields with dotted names, as a structlog processor.

    Put it right before `ecs_renderer` (or ``ecs_logging.StructlogFormatter``), which nests
    the dotted names and renders the document. The ``event`` key of the result is the message,
    which the ECS renderer moves to ``message``. Fields without an ECS equivalent are kept
    under ``zerotrust.``. Strings are capped like in the JSON format.

    Run it after `redact_secrets`: it copies values as they are.
    """
    event = bounded(event_dict)
    kind = event.get("event")
    if kind == "access":
        fields = _map_access(event)
    elif kind == "anomaly":
        fields = _map_anomaly(event)
    else:
        fields = _map_other(event)

    fields["ecs.version"] = ECS_VERSION
    fields["event.severity"] = _SEVERITY_NUMBERS[severity_of(event)]
    if isinstance(event.get("timestamp"), str):
        fields["@timestamp"] = event["timestamp"]
    if event.get("event_id") is not None:
        fields["event.id"] = event["event_id"]

    return {key: value for key, value in fields.items() if value is not None}


def _map_access(event: dict[str, Any]) -> dict[str, Any]:
    denied = event.get("decision") == "deny"
    categories = ["api", "authentication"] if identity_decided(event) else ["api"]
    facts = event.get("facts")
    country = facts.get("country") if isinstance(facts, Mapping) else None
    latency = event.get("latency_ms")

    fields: dict[str, Any] = {
        "event": "access denied" if denied else "access allowed",
        "event.kind": "event",
        "event.category": categories,
        "event.type": ["denied" if denied else "allowed"],
        "event.outcome": "failure" if denied else "success",
        "event.action": "access",
        "event.dataset": "zerotrust.access",
        "event.provider": "zerotrust",
        "event.reason": event.get("reasons") or None,
        "rule.name": event.get("segment"),
        "source.ip": event.get("client_ip"),
        "source.geo.country_iso_code": country if isinstance(country, str) else None,
        "user.id": event.get("subject"),
        "http.request.method": event.get("method"),
        "http.request.id": event.get("request_id"),
        "http.response.status_code": event.get("status"),
        "url.path": event.get("path"),
        "url.domain": event.get("host") or None,
        "url.scheme": event.get("scheme"),
        "user_agent.original": event.get("user_agent") or None,
        "trace.id": event.get("request_id"),
        "event.duration": round(latency * 1_000_000) if isinstance(latency, int | float) else None,
    }
    fields.update(_namespaced(event, _ACCESS_MAPPED, "zerotrust."))

    return fields


def _map_anomaly(event: dict[str, Any]) -> dict[str, Any]:
    detector = event.get("detector")
    fields: dict[str, Any] = {
        "event": event.get("description") or f"anomaly detected by {detector}",
        "event.kind": "alert",
        "event.category": ["intrusion_detection"],
        "event.type": ["info"],
        "event.action": "anomaly",
        "event.dataset": "zerotrust.anomaly",
        "event.provider": "zerotrust",
        "event.start": event.get("first_seen"),
        "event.end": event.get("last_seen"),
        "rule.name": detector,
        "rule.category": "anomaly",
        "user.id": event.get("subject"),
        "source.ip": event.get("client_ip"),
        "zerotrust.segment": event.get("segment"),
    }
    fields.update(_namespaced(event, _ANOMALY_MAPPED, "zerotrust.anomaly."))

    return fields


def _map_other(event: dict[str, Any]) -> dict[str, Any]:
    kind = str(event.get("event", "event"))
    grant = kind.startswith("grant_")
    fields: dict[str, Any] = {
        "event": kind.replace("_", " "),
        "event.kind": "event",
        "event.category": ["iam"] if grant else None,
        "event.type": [_GRANT_TYPES.get(kind, "info")] if grant else None,
        "event.action": kind,
        "event.dataset": "zerotrust.grant" if grant else "zerotrust.event",
        "event.provider": "zerotrust",
        "user.id": event.get("subject"),
        "rule.name": event.get("segment"),
    }
    skipped = {"event", "timestamp", "event_id", "subject", "segment"}
    fields.update(_namespaced(event, skipped, "zerotrust.grant." if grant else "zerotrust."))

    return fields


def _namespaced(
    event: Mapping[str, Any], skipped: frozenset[str] | set[str], prefix: str
) -> dict[str, Any]:
    return {
        prefix + _undotted_key(key): _undotted(value)
        for key, value in event.items()
        if key not in skipped and value is not None
    }


def _undotted_key(key: object) -> str:
    return str(key).replace(".", "_")


def _undotted(value: Any) -> Any:
    # The ECS renderer reads a dot in any key at any depth as nesting, and it raises when facts
    # "a" and "a.b" collide. Our keys are never nested, so their dots become "_".
    if isinstance(value, dict):
        return {_undotted_key(key): _undotted(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_undotted(item) for item in value]
    return value


@functools.cache
def ecs_renderer() -> Any:
    """
    Return the ECS renderer: ``ecs_logging.StructlogFormatter`` pinned to `ECS_VERSION`.

    ecs-logging stamps its own, older ``ecs.version`` (1.6.0 in ecs-logging 2.3) on every
    document; this renderer keeps the version the mapping was written for.

    Raises:
        MissingExtraError: ``ecs-logging`` is not installed (extra ``ecs``).
    """
    try:
        import ecs_logging
    except ImportError:
        raise MissingExtraError("ECS format", "ecs") from None

    class _Formatter(ecs_logging.StructlogFormatter):
        def format_to_ecs(self, event_dict: dict[str, Any]) -> dict[str, Any]:
            ecs = event_dict.get("ecs")
            if isinstance(ecs, dict) and "version" in ecs:
                event_dict["ecs.version"] = ecs.pop("version")
                if not ecs:
                    del event_dict["ecs"]
            result: dict[str, Any] = super().format_to_ecs(event_dict)
            return result

    return _Formatter()


def render_ecs(_logger: object, method_name: str, event_dict: MutableMapping[str, Any]) -> bytes:
    """
    Render a zerotrust event as one ECS JSON line (bytes), as a structlog processor.

    `map_ecs` followed by `ecs_renderer`. Non-ASCII characters and control characters are
    written as JSON escapes, so the line never breaks.

    Raises:
        MissingExtraError: ``ecs-logging`` is not installed (extra ``ecs``).
    """
    renderer = ecs_renderer()
    fields = map_ecs(None, method_name, event_dict)
    rendered: str = renderer(None, method_name, fields)
    return rendered.encode()


def ecs_format(event: dict[str, Any]) -> bytes:
    """Render an already redacted event as one ECS JSON line; a sink ``format``."""
    return render_ecs(None, "info", event)
