# SPDX-License-Identifier: Apache-2.0
"""Open Cybersecurity Schema Framework (OCSF) 1.3.0: zerotrust events as OCSF events."""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import Any

from ._common import (
    Severity,
    bounded,
    dumps_line,
    epoch_milliseconds,
    identity_failed,
    severity_of,
)

__all__ = ["OCSF_VERSION", "map_ocsf", "ocsf_format", "render_ocsf"]

OCSF_VERSION = "1.3.0"
"""The OCSF schema version the events conform to, written to ``metadata.version``."""

API_ACTIVITY = 6003
AUTHENTICATION = 3002
DETECTION_FINDING = 2004
BASE_EVENT = 0

_SEVERITY_IDS: dict[Severity, tuple[int, str]] = {
    "informational": (1, "Informational"),
    "low": (2, "Low"),
    "medium": (3, "Medium"),
    "high": (4, "High"),
    "critical": (5, "Critical"),
}
# API Activity activity_id by HTTP method: 1 Create, 2 Read, 3 Update, 4 Delete.
_API_ACTIVITIES = {
    "POST": (1, "Create"),
    "GET": (2, "Read"),
    "HEAD": (2, "Read"),
    "OPTIONS": (2, "Read"),
    "PUT": (3, "Update"),
    "PATCH": (3, "Update"),
    "DELETE": (4, "Delete"),
}
_OTHER_ACTIVITY = (99, "Other")
# Access-event fields that have an OCSF home; the others go to unmapped.zerotrust.
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
        "host",
        "scheme",
        "status",
        "user_agent",
        "latency_ms",
        "credential_fingerprint",
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
        "count",
        "first_seen",
        "last_seen",
        "contributing_event_ids",
        "severity",
        "description",
    }
)


def map_ocsf(
    _logger: object, _method_name: str, event_dict: MutableMapping[str, Any]
) -> dict[str, Any]:
    """
    Map a zerotrust event to an OCSF 1.3.0 event, as a structlog processor.

    An access event denied because of identity (an identity verifier failed, a required one
    abstained, or ``identity_missing``, ``authentication_too_old``, ``acr_not_satisfied`` or
    ``amr_not_satisfied``) becomes Authentication (3002) with activity Logon and status
    Failure. Every other access event, allowed or denied, becomes API Activity (6003) with the
    authenticated subject as ``actor.user``. An anomaly event becomes Detection Finding
    (2004); any other event, such as a grant event, becomes Base Event (0) with its fields
    under ``unmapped``. Access events carry the Security Control profile.

    Run it after `redact_secrets`: it copies values as they are.
    """
    event = bounded(event_dict)
    kind = event.get("event")
    if kind == "access":
        if identity_failed(event):
            return _authentication(event)
        return _api_activity(event)
    if kind == "anomaly":
        return _detection_finding(event)
    return _base_event(event)


def render_ocsf(_logger: object, method_name: str, event_dict: MutableMapping[str, Any]) -> bytes:
    """Render a zerotrust event as one OCSF JSON line (bytes), as a structlog processor."""
    return dumps_line(map_ocsf(None, method_name, event_dict))


def ocsf_format(event: dict[str, Any]) -> bytes:
    """Render an already redacted event as one OCSF JSON line; a sink ``format``."""
    return render_ocsf(None, "info", event)


def _base(
    event: Mapping[str, Any],
    category: tuple[int, str],
    class_: tuple[int, str],
    activity: tuple[int, str],
) -> dict[str, Any]:
    from ... import __version__

    severity_id, severity = _SEVERITY_IDS[severity_of(event)]
    milliseconds = epoch_milliseconds(event.get("timestamp"))
    metadata: dict[str, Any] = {
        "version": OCSF_VERSION,
        "product": {"name": "zerotrust", "vendor_name": "zerotrust", "version": __version__},
        "log_name": str(event.get("event")),
    }
    if event.get("event_id") is not None:
        metadata["uid"] = str(event["event_id"])

    return {
        "category_uid": category[0],
        "category_name": category[1],
        "class_uid": class_[0],
        "class_name": class_[1],
        "activity_id": activity[0],
        "activity_name": activity[1],
        "type_uid": class_[0] * 100 + activity[0],
        "type_name": f"{class_[1]}: {activity[1]}",
        "severity_id": severity_id,
        "severity": severity,
        "time": milliseconds if milliseconds is not None else 0,
        "metadata": metadata,
    }


def _access_common(event: Mapping[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    denied = event.get("decision") == "deny"
    let_through = event.get("action") == "allow"
    reasons = [str(reason) for reason in event.get("reasons") or ()]
    segment = event.get("segment")

    result["metadata"]["profiles"] = ["security_control"]
    if event.get("request_id") is not None:
        result["metadata"]["correlation_uid"] = str(event["request_id"])
    result["status_id"], result["status"] = (2, "Failure") if denied else (1, "Success")
    if reasons:
        result["status_detail"] = ", ".join(reasons)
    if event.get("status") is not None:
        result["status_code"] = str(event["status"])
    result["message"] = f"access {'denied' if denied else 'allowed'}"

    # Security Control profile: what the control did, and what became of the request.
    result["action_id"], result["action"] = (1, "Allowed") if let_through else (2, "Denied")
    if not denied:
        result["disposition_id"], result["disposition"] = 1, "Allowed"
    elif let_through:
        # Monitor mode: the violation was recorded and the request went on.
        result["disposition_id"], result["disposition"] = 15, "Detected"
    else:
        result["disposition_id"], result["disposition"] = 2, "Blocked"
    if segment is not None:
        result["policy"] = {"name": str(segment), "is_applied": event.get("mode") == "enforce"}

    result["src_endpoint"] = _source_endpoint(event)
    result["http_request"] = _http_request(event)
    if event.get("status") is not None:
        result["http_response"] = {"code": event["status"]}
    latency = event.get("latency_ms")
    if isinstance(latency, int | float):
        result["duration"] = round(latency)
    result["unmapped"] = {
        "zerotrust": {
            key: value
            for key, value in event.items()
            if key not in _ACCESS_MAPPED and value is not None
        }
    }

    return result


def _api_activity(event: Mapping[str, Any]) -> dict[str, Any]:
    method = str(event.get("method") or "")
    activity = _API_ACTIVITIES.get(method, _OTHER_ACTIVITY)
    result = _base(event, (6, "Application Activity"), (API_ACTIVITY, "API Activity"), activity)
    result["actor"] = {"user": _user(event)}

    api: dict[str, Any] = {"operation": method or "unknown"}
    if event.get("request_id") is not None:
        api["request"] = {"uid": str(event["request_id"])}
    if event.get("status") is not None:
        api["response"] = {"code": event["status"]}
    if event.get("segment") is not None:
        api["service"] = {"name": str(event["segment"])}
    result["api"] = api

    return _access_common(event, result)


def _authentication(event: Mapping[str, Any]) -> dict[str, Any]:
    result = _base(
        event, (3, "Identity & Access Management"), (AUTHENTICATION, "Authentication"), (1, "Logon")
    )
    result["user"] = _user(event)
    result["is_remote"] = True
    result["logon_type_id"], result["logon_type"] = 3, "Network"
    # The class needs a service or a destination endpoint; the segment names the service.
    result["service"] = {"name": str(event.get("segment") or event.get("host") or "zerotrust")}
    if event.get("host"):
        result["dst_endpoint"] = {"hostname": str(event["host"])}

    return _access_common(event, result)


def _detection_finding(event: Mapping[str, Any]) -> dict[str, Any]:
    result = _base(event, (2, "Findings"), (DETECTION_FINDING, "Detection Finding"), (1, "Create"))
    detector = str(event.get("detector") or "unknown")
    title = str(event.get("description") or f"Anomaly detected by {detector}")
    finding: dict[str, Any] = {
        "uid": str(event.get("event_id") or ""),
        "title": title,
        "types": ["anomaly"],
        "analytic": {"name": detector, "uid": detector, "type_id": 1, "type": "Rule"},
    }
    first_seen = epoch_milliseconds(event.get("first_seen"))
    if first_seen is not None:
        finding["first_seen_time"] = first_seen
    last_seen = epoch_milliseconds(event.get("last_seen"))
    if last_seen is not None:
        finding["last_seen_time"] = last_seen
    contributing = event.get("contributing_event_ids")
    if isinstance(contributing, list) and contributing:
        finding["related_events"] = [{"uid": str(uid)} for uid in contributing]
    result["finding_info"] = finding

    result["message"] = title
    result["is_alert"] = True
    result["status_id"], result["status"] = 1, "New"
    if isinstance(event.get("count"), int) and not isinstance(event.get("count"), bool):
        result["count"] = event["count"]
    if event.get("subject") is not None:
        result["actor"] = {"user": {"uid": str(event["subject"])}}
    if event.get("client_ip") is not None:
        result["src_endpoint"] = {"ip": str(event["client_ip"])}
    extra = {key: value for key, value in event.items() if key not in _ANOMALY_MAPPED}
    if extra:
        result["unmapped"] = {"zerotrust": extra}

    return result


def _base_event(event: Mapping[str, Any]) -> dict[str, Any]:
    kind = str(event.get("event") or "event")
    result = _base(event, (0, "Uncategorized"), (BASE_EVENT, "Base Event"), (99, "Other"))
    result["activity_name"] = kind
    result["message"] = kind.replace("_", " ")
    extra = {key: value for key, value in event.items() if key not in ("timestamp", "event_id")}
    result["unmapped"] = {"zerotrust": extra}

    return result


def _user(event: Mapping[str, Any]) -> dict[str, Any]:
    # An OCSF user needs a uid, name or account. A request without a principal gets the name
    # "anonymous", which cannot be mistaken for a subject because subjects go to uid.
    subject = event.get("subject")
    user: dict[str, Any] = {"uid": str(subject)} if subject is not None else {"name": "anonymous"}
    if event.get("credential_fingerprint") is not None:
        user["credential_uid"] = str(event["credential_fingerprint"])
    return user


def _source_endpoint(event: Mapping[str, Any]) -> dict[str, Any]:
    address = event.get("client_ip") or event.get("peer_ip")
    # A server that reports no peer leaves no address; OCSF needs some identifier.
    endpoint: dict[str, Any] = {"ip": str(address)} if address else {"name": "unknown"}
    facts = event.get("facts")
    country = facts.get("country") if isinstance(facts, Mapping) else None
    if isinstance(country, str) and country:
        endpoint["location"] = {"country": country}
    return endpoint


def _http_request(event: Mapping[str, Any]) -> dict[str, Any]:
    url: dict[str, Any] = {"path": str(event.get("path") or "")}
    if event.get("host"):
        url["hostname"] = str(event["host"])
    if event.get("scheme"):
        url["scheme"] = str(event["scheme"])
    request: dict[str, Any] = {"http_method": str(event.get("method") or ""), "url": url}
    if event.get("user_agent"):
        request["user_agent"] = str(event["user_agent"])
    if event.get("request_id") is not None:
        request["uid"] = str(event["request_id"])
    return request
