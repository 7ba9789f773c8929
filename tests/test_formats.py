# SPDX-License-Identifier: Apache-2.0
"""Tests of the SIEM event formats: zerotrust JSON, ECS, OCSF 1.3.0 and CEF."""

from __future__ import annotations

import io
import pathlib
import sys
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st
from jsonschema import Draft202012Validator, FormatChecker
from referencing import Registry, Resource

from zerotrust import (
    ConfigurationError,
    InsecureConfigurationWarning,
    JsonLinesSink,
    MissingExtraError,
    Policy,
    Segment,
    ZeroTrustMiddleware,
)
from zerotrust.events import MemorySink, access_event_schema, redact_secrets
from zerotrust.events.formats import (
    ECS_VERSION,
    MAX_CEF_VALUE_CHARS,
    OCSF_VERSION,
    TRUNCATION_MARKER,
    CEFFormat,
    cef_format,
    ecs_format,
    ecs_renderer,
    json_format,
    map_ecs,
    map_ocsf,
    ocsf_format,
    render_cef,
    render_ecs,
    render_json_line,
    render_ocsf,
)
from zerotrust.testing import abstain, allow, capture_events, deny

OCSF_DIRECTORY = pathlib.Path(__file__).parent / "ocsf"
FORMATS: dict[str, Callable[[dict[str, Any]], bytes]] = {
    "json": json_format,
    "ecs": ecs_format,
    "ocsf": ocsf_format,
    "cef": cef_format,
}

# ---------------------------------------------------------------------------------------------
# Events
# ---------------------------------------------------------------------------------------------

EXAMPLE: dict[str, Any] = {
    "event": "access",
    "schema_version": "1",
    "timestamp": "2026-12-04T20:45:03.346894Z",
    "event_id": "01a242cd-a5f2-7cfd-8664-bd1666279a99",
    "request_id": "7f9c2d4e-req",
    "decision": "deny",
    "action": "deny",
    "mode": "enforce",
    "status": 403,
    "reasons": ["insufficient_scope"],
    "segment": "items",
    "subject": "alice@example.com",
    "issuer": "https://login.example.com/",
    "credential_fingerprint": "5d827316a4b0242f",
    "client_ip": "203.0.113.7",
    "peer_ip": "10.0.0.5",
    "method": "POST",
    "scheme": "https",
    "protocol": "http",
    "host": "api.example.com",
    "path": "/items",
    "user_agent": "inventory-cli/2.3",
    "latency_ms": 1.026,
    "decision_ms": 0.977,
    "verifiers": [
        {
            "name": "jwt",
            "kind": "identity",
            "result": "pass",
            "reason": None,
            "detail": None,
            "duration_ms": 0.538,
        },
        {
            "name": "device",
            "kind": "context",
            "result": "pass",
            "reason": None,
            "detail": None,
            "duration_ms": 0.257,
        },
    ],
    "missing_scopes": ["items:write"],
    "facts": {"device_id": "laptop-0042", "country": "DE"},
}
EXAMPLE_MILLISECONDS = 1796417103346

ANOMALY: dict[str, Any] = {
    "event": "anomaly",
    "timestamp": "2026-12-04T20:50:00.000000Z",
    "event_id": "01a242d2-0000-7000-8000-000000000001",
    "detector": "token_failures",
    "subject": "alice@example.com",
    "client_ip": "203.0.113.7",
    "count": 12,
    "first_seen": "2026-12-04T20:45:03.346894Z",
    "last_seen": "2026-12-04T20:49:59.500000Z",
    "contributing_event_ids": [
        "01a242cd-a5f2-7cfd-8664-bd1666279a99",
        "01a242cd-a5f2-7cfd-8664-bd1666279a9a",
    ],
    "window_seconds": 300,
}

GRANT: dict[str, Any] = {
    "event": "grant_minted",
    "timestamp": "2026-12-04T20:40:00.000000Z",
    "event_id": "01a242c8-0000-7000-8000-000000000002",
    "grant_id": "g-42",
    "subject": "bob@example.com",
    "segment": "admin",
    "methods": ["POST"],
    "paths": ["/admin/"],
    "not_before": "2026-12-04T20:40:00.000000Z",
    "expires_at": "2026-12-04T21:40:00.000000Z",
    "reason": "incident 7",
    "requested_by": "bob@example.com",
    "approved_by": "carol@example.com",
}


def access_event(**changes: Any) -> dict[str, Any]:
    """The documented example event with ``changes``, checked against the access event schema."""
    event = orjson.loads(orjson.dumps(EXAMPLE))
    event.update(changes)
    for key in [key for key, value in changes.items() if value is _ABSENT]:
        del event[key]
    validator = Draft202012Validator(access_event_schema(), format_checker=FormatChecker())
    validator.validate(event)
    return event


_ABSENT = object()


def identity_denied() -> dict[str, Any]:
    return access_event(
        decision="deny",
        action="deny",
        status=401,
        reasons=["token_expired"],
        subject=None,
        issuer=None,
        missing_scopes=_ABSENT,
        verifiers=[
            {
                "name": "jwt",
                "kind": "identity",
                "result": "fail",
                "reason": "token_expired",
                "detail": "Signature has expired",
                "duration_ms": 0.2,
            }
        ],
    )


def allowed() -> dict[str, Any]:
    return access_event(
        decision="allow", action="allow", status=200, reasons=[], missing_scopes=_ABSENT
    )


def monitored() -> dict[str, Any]:
    return access_event(decision="deny", action="allow", mode="monitor", status=200)


async def served_events() -> list[dict[str, Any]]:
    """Real access events from the middleware: allowed, scope, identity, monitor, unmatched."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    with pytest.warns(InsecureConfigurationWarning):
        trial = Segment(
            "trial",
            paths=["/trial"],
            verifiers=[allow("alice"), deny("outside_hours")],
            mode="monitor",
        )
    policy = Policy(
        [
            Segment(
                "items",
                paths=["/items"],
                verifiers=[allow("alice", scopes=["read"])],
                scopes={"GET": ["read"], "POST": ["write"]},
            ),
            Segment("login", paths=["/login"], verifiers=[deny("token_expired", identity=True)]),
            Segment("anonymous", paths=["/anonymous"], verifiers=[abstain()]),
            trial,
        ]
    )
    middleware = ZeroTrustMiddleware(app, policy=policy, events=MemorySink())
    transport = httpx.ASGITransport(app=middleware, client=("198.51.100.4", 50000))
    with capture_events() as events:
        async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
            await client.get("/items")
            await client.post("/items")
            await client.get("/login")
            await client.get("/anonymous")
            await client.get("/trial")
            await client.get("/nowhere")
    return events


# ---------------------------------------------------------------------------------------------
# OCSF schemas and a CEF parser, written for these tests
# ---------------------------------------------------------------------------------------------


def ocsf_validator(name: str) -> Draft202012Validator:
    resources = []
    for path in OCSF_DIRECTORY.glob("*.schema.json"):
        schema = orjson.loads(path.read_bytes())
        resources.append((schema["$id"], Resource.from_contents(schema)))
    registry: Registry[Any] = Registry().with_resources(resources)
    schema = orjson.loads((OCSF_DIRECTORY / f"{name}.schema.json").read_bytes())
    return Draft202012Validator(schema, registry=registry, format_checker=FormatChecker())


OCSF_SCHEMAS = {6003: "api_activity", 3002: "authentication", 2004: "detection_finding"}


def validate_ocsf(document: dict[str, Any]) -> None:
    ocsf_validator(OCSF_SCHEMAS[document["class_uid"]]).validate(document)


_KEY_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")
_UNESCAPED = {"r": "\r", "n": "\n"}


def parse_cef(line: str) -> tuple[list[str], dict[str, str]]:
    """Split a CEF line into "CEF:0", its six unescaped header fields and its extensions."""
    assert line.startswith("CEF:0|")
    header: list[str] = []
    current: list[str] = []
    index = len("CEF:0|")
    while len(header) < 6:
        character = line[index]
        if character == "\\":
            current.append(line[index + 1])
            index += 2
            continue
        if character == "|":
            header.append("".join(current))
            current = []
        else:
            current.append(character)
        index += 1

    characters: list[tuple[str, bool]] = []
    text = line[index:]
    position = 0
    while position < len(text):
        if text[position] == "\\":
            following = text[position + 1]
            characters.append((_UNESCAPED.get(following, following), True))
            position += 2
        else:
            characters.append((text[position], False))
            position += 1
    # An unescaped "=" ends a key: the run of key characters before it, after a space.
    boundaries = []
    for position, (character, escaped) in enumerate(characters):
        if character == "=" and not escaped:
            start = position
            while (
                start > 0
                and not characters[start - 1][1]
                and characters[start - 1][0] in _KEY_CHARACTERS
            ):
                start -= 1
            boundaries.append((start, position))
    extensions = {}
    for number, (start, equals) in enumerate(boundaries):
        end = boundaries[number + 1][0] - 1 if number + 1 < len(boundaries) else len(characters)
        key = "".join(character for character, _ in characters[start:equals])
        assert key not in extensions, f"key {key} appears twice"
        extensions[key] = "".join(character for character, _ in characters[equals + 1 : end])
    return [line[: len("CEF:0")], *header], extensions


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------


class TestJsonFormat:
    def test_round_trip(self) -> None:
        """The JSON format writes the event unchanged."""
        assert EXAMPLE == orjson.loads(json_format(dict(EXAMPLE)))

    def test_processor_matches_format(self) -> None:
        """The structlog processor renders the same bytes as the sink format."""
        assert json_format(dict(EXAMPLE)) == render_json_line(None, "info", dict(EXAMPLE))

    def test_oversized_value_truncated(self) -> None:
        """A string over 4096 characters is cut and marked."""
        event = dict(GRANT, reason="x" * 10_000)

        reason = orjson.loads(json_format(event))["reason"]

        assert "x" * 4096 + TRUNCATION_MARKER == reason

    def test_long_list_cut(self) -> None:
        """A list keeps its first 128 items."""
        event = dict(ANOMALY, contributing_event_ids=[str(number) for number in range(1000)])

        assert 128 == len(orjson.loads(json_format(event))["contributing_event_ids"])

    def test_unicode_line_separators_escaped(self) -> None:
        """U+0085, U+2028 and U+2029 are written as escapes and read back unchanged."""
        agent = "a\u2028b\u2029c\x85d"
        line = json_format(access_event(user_agent=agent))

        assert b"\\u2028" in line
        assert 1 == len(line.decode().splitlines())
        assert agent == orjson.loads(line)["user_agent"]


class TestEcsFormat:
    def test_denied_by_scope(self) -> None:
        """A denial maps to the ECS categorization and request fields."""
        document = orjson.loads(ecs_format(dict(EXAMPLE)))

        assert "event" == document["event"]["kind"]
        assert ["api", "authentication"] == document["event"]["category"]
        assert ["denied"] == document["event"]["type"]
        assert "failure" == document["event"]["outcome"]
        assert ["insufficient_scope"] == document["event"]["reason"]
        assert "items" == document["rule"]["name"]
        assert "203.0.113.7" == document["source"]["ip"]
        assert "DE" == document["source"]["geo"]["country_iso_code"]
        assert "alice@example.com" == document["user"]["id"]
        assert "POST" == document["http"]["request"]["method"]
        assert "7f9c2d4e-req" == document["http"]["request"]["id"]
        assert "7f9c2d4e-req" == document["trace"]["id"]
        assert 403 == document["http"]["response"]["status_code"]
        assert "/items" == document["url"]["path"]
        assert "inventory-cli/2.3" == document["user_agent"]["original"]
        assert 1_026_000 == document["event"]["duration"]
        assert EXAMPLE["timestamp"] == document["@timestamp"]
        assert EXAMPLE["event_id"] == document["event"]["id"]

    def test_zerotrust_namespace(self) -> None:
        """Verifiers, mode and credential fingerprint are kept under zerotrust."""
        document = orjson.loads(ecs_format(dict(EXAMPLE)))

        assert EXAMPLE["verifiers"] == document["zerotrust"]["verifiers"]
        assert "enforce" == document["zerotrust"]["mode"]
        assert "5d827316a4b0242f" == document["zerotrust"]["credential_fingerprint"]

    def test_allowed_without_identity(self) -> None:
        """An allowed request without identity verifiers is api only, allowed, success."""
        event = access_event(
            decision="allow",
            action="allow",
            status=200,
            reasons=[],
            subject=None,
            missing_scopes=_ABSENT,
            verifiers=[EXAMPLE["verifiers"][1]],
        )

        document = orjson.loads(ecs_format(event))

        assert ["api"] == document["event"]["category"]
        assert ["allowed"] == document["event"]["type"]
        assert "success" == document["event"]["outcome"]
        assert "reason" not in document["event"]
        assert "user" not in document

    def test_identity_failure_is_authentication(self) -> None:
        """A failed identity verifier adds the authentication category."""
        document = orjson.loads(ecs_format(identity_denied()))

        assert ["api", "authentication"] == document["event"]["category"]

    def test_ecs_version_pinned(self) -> None:
        """The document carries the mapping's ECS version once, not ecs-logging's default."""
        document = orjson.loads(ecs_format(dict(EXAMPLE)))

        assert ECS_VERSION == document["ecs.version"]
        assert "ecs" not in document

    def test_dotted_fact_keys(self) -> None:
        """Facts named a and a.b do not collide in the nested document."""
        event = access_event(facts={"a": 1, "a.b": 2})

        facts = orjson.loads(ecs_format(event))["zerotrust"]["facts"]

        assert {"a": 1, "a_b": 2} == facts

    def test_anomaly_is_alert(self) -> None:
        """An anomaly becomes an ECS alert with the detector as rule name."""
        document = orjson.loads(ecs_format(dict(ANOMALY)))

        assert "alert" == document["event"]["kind"]
        assert "token_failures" == document["rule"]["name"]
        assert ANOMALY["first_seen"] == document["event"]["start"]
        assert 12 == document["zerotrust"]["anomaly"]["count"]

    def test_grant_is_iam(self) -> None:
        """A grant event becomes an iam event of type creation."""
        document = orjson.loads(ecs_format(dict(GRANT)))

        assert ["iam"] == document["event"]["category"]
        assert ["creation"] == document["event"]["type"]
        assert "g-42" == document["zerotrust"]["grant"]["grant_id"]

    def test_structlog_chain(self) -> None:
        """map_ecs and ecs_renderer work as an application's structlog processors."""
        logger = structlog.wrap_logger(
            structlog.ReturnLogger(), processors=[map_ecs, ecs_renderer()]
        )
        fields = {key: value for key, value in EXAMPLE.items() if key != "event"}

        document = orjson.loads(logger.info("access", **fields))

        assert "failure" == document["event"]["outcome"]

    def test_missing_extra(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without ecs-logging the ECS format raises MissingExtraError naming the extra."""
        monkeypatch.setitem(sys.modules, "ecs_logging", None)
        ecs_renderer.cache_clear()
        try:
            with pytest.raises(MissingExtraError) as raised:
                ecs_format(dict(EXAMPLE))
        finally:
            ecs_renderer.cache_clear()

        assert "ecs" == raised.value.extra
        assert "ECS format" == raised.value.feature


class TestOcsfFormat:
    async def test_served_events_validate(self) -> None:
        """Every access event from the middleware validates against its OCSF class schema."""
        events = await served_events()

        classes = [map_ocsf(None, "info", dict(event))["class_uid"] for event in events]
        for event in events:
            validate_ocsf(orjson.loads(ocsf_format(event)))
        assert [6003, 6003, 3002, 3002, 6003, 6003] == classes

    @pytest.mark.parametrize(
        ("make", "class_uid"),
        [
            (allowed, 6003),
            (lambda: dict(EXAMPLE), 6003),
            (monitored, 6003),
            (identity_denied, 3002),
            (lambda: dict(ANOMALY), 2004),
        ],
    )
    def test_class_and_type(self, make: Callable[[], dict[str, Any]], class_uid: int) -> None:
        """Each event picks its class, and type_uid is class_uid * 100 + activity_id."""
        document = orjson.loads(ocsf_format(make()))

        validate_ocsf(document)
        assert class_uid == document["class_uid"]
        assert document["class_uid"] * 100 + document["activity_id"] == document["type_uid"]
        assert OCSF_VERSION == document["metadata"]["version"]

    def test_api_activity_fields(self) -> None:
        """A denial maps to the Security Control profile and the HTTP objects."""
        document = orjson.loads(ocsf_format(dict(EXAMPLE)))

        assert EXAMPLE_MILLISECONDS == document["time"]
        assert (1, "Create") == (document["activity_id"], document["activity_name"])
        assert (2, "Denied") == (document["action_id"], document["action"])
        assert (2, "Blocked") == (document["disposition_id"], document["disposition"])
        assert {"name": "items", "is_applied": True} == document["policy"]
        assert 2 == document["status_id"]
        assert 3 == document["severity_id"]
        assert {"ip": "203.0.113.7", "location": {"country": "DE"}} == document["src_endpoint"]
        assert "alice@example.com" == document["actor"]["user"]["uid"]
        assert "5d827316a4b0242f" == document["actor"]["user"]["credential_uid"]
        assert "/items" == document["http_request"]["url"]["path"]
        assert "inventory-cli/2.3" == document["http_request"]["user_agent"]
        assert 403 == document["http_response"]["code"]
        assert "enforce" == document["unmapped"]["zerotrust"]["mode"]

    def test_monitor_mode_detected(self) -> None:
        """A denial let through in monitor mode is allowed with disposition Detected."""
        document = orjson.loads(ocsf_format(monitored()))

        assert (1, "Allowed") == (document["action_id"], document["action"])
        assert (15, "Detected") == (document["disposition_id"], document["disposition"])
        assert False is document["policy"]["is_applied"]

    def test_authentication_fields(self) -> None:
        """An identity denial is a failed Logon for an anonymous user."""
        document = orjson.loads(ocsf_format(identity_denied()))

        assert (1, "Logon") == (document["activity_id"], document["activity_name"])
        assert 2 == document["status_id"]
        assert "token_expired" == document["status_detail"]
        assert "anonymous" == document["user"]["name"]
        assert "items" == document["service"]["name"]

    def test_ipv6_client(self) -> None:
        """An IPv6 client address validates as src_endpoint.ip."""
        document = orjson.loads(ocsf_format(access_event(client_ip="2001:db8::7")))

        validate_ocsf(document)
        assert "2001:db8::7" == document["src_endpoint"]["ip"]

    def test_detection_finding_fields(self) -> None:
        """An anomaly maps detector, count, times and contributing events."""
        document = orjson.loads(ocsf_format(dict(ANOMALY)))

        finding = document["finding_info"]
        assert ANOMALY["event_id"] == finding["uid"]
        assert "token_failures" == finding["analytic"]["name"]
        assert EXAMPLE_MILLISECONDS == finding["first_seen_time"]
        assert [{"uid": uid} for uid in ANOMALY["contributing_event_ids"]] == finding[
            "related_events"
        ]
        assert 12 == document["count"]
        assert 4 == document["severity_id"]
        assert 300 == document["unmapped"]["zerotrust"]["window_seconds"]

    def test_minimal_anomaly(self) -> None:
        """An anomaly with only event, timestamp, event_id and detector validates."""
        event = {key: ANOMALY[key] for key in ("event", "timestamp", "event_id", "detector")}

        validate_ocsf(orjson.loads(ocsf_format(event)))

    def test_grant_is_base_event(self) -> None:
        """A grant event becomes Base Event with its fields under unmapped."""
        document = orjson.loads(ocsf_format(dict(GRANT)))

        assert (0, 99, 99) == (
            document["class_uid"],
            document["activity_id"],
            document["type_uid"],
        )
        assert "g-42" == document["unmapped"]["zerotrust"]["grant_id"]

    def test_json_lines_sink_chain(self) -> None:
        """map_ocsf in a JsonLinesSink chain writes OCSF lines."""
        stream = io.BytesIO()
        sink = JsonLinesSink(stream, processors=[map_ocsf])

        sink.write([dict(EXAMPLE)])

        validate_ocsf(orjson.loads(stream.getvalue()))

    def test_processor_matches_format(self) -> None:
        """The structlog processor renders the same bytes as the sink format."""
        assert ocsf_format(dict(EXAMPLE)) == render_ocsf(None, "info", dict(EXAMPLE))


class TestCefFormat:
    def test_example_line(self) -> None:
        """The documented example renders to the expected header and extensions."""
        header, extensions = parse_cef(cef_format(dict(EXAMPLE)).decode())

        assert [
            "CEF:0",
            "zerotrust",
            "zerotrust-middleware",
            "0.1.0",
            "insufficient_scope",
            "Access denied",
            "5",
        ] == header
        assert {
            "rt": str(EXAMPLE_MILLISECONDS),
            "cat": "access",
            "act": "deny",
            "outcome": "failure",
            "reason": "insufficient_scope",
            "src": "203.0.113.7",
            "suser": "alice@example.com",
            "dhost": "api.example.com",
            "requestMethod": "POST",
            "request": "/items",
            "requestClientApplication": "inventory-cli/2.3",
            "externalId": "7f9c2d4e-req",
            "cs1": "items",
            "cs1Label": "segment",
            "cs2": "enforce",
            "cs2Label": "mode",
            "cs3": "5d827316a4b0242f",
            "cs3Label": "credentialFingerprint",
            "cs4": "jwt:pass,device:pass",
            "cs4Label": "verifiers",
            "cs5": "https://login.example.com/",
            "cs5Label": "issuer",
            "cs6": EXAMPLE["event_id"],
            "cs6Label": "eventId",
            "cn1": "403",
            "cn1Label": "httpStatus",
            "cfp1": "1.026",
            "cfp1Label": "latencyMs",
        } == extensions

    @pytest.mark.parametrize(
        ("make", "signature", "severity"),
        [
            (allowed, "allow", "1"),
            (monitored, "insufficient_scope", "3"),
            (lambda: dict(EXAMPLE), "insufficient_scope", "5"),
            (lambda: dict(ANOMALY), "token_failures", "8"),
            (lambda: dict(ANOMALY, severity="critical"), "token_failures", "10"),
            (lambda: dict(GRANT), "grant_minted", "1"),
        ],
    )
    def test_signature_and_severity(
        self, make: Callable[[], dict[str, Any]], signature: str, severity: str
    ) -> None:
        """Signature id and severity follow the documented mapping."""
        header, _ = parse_cef(cef_format(make()).decode())

        assert signature == header[4]
        assert severity == header[6]

    def test_header_escaping(self) -> None:
        """Backslash and pipe are escaped in header fields, line breaks removed."""
        line = CEFFormat(vendor="a|b\\c", product="p\r\nq")(dict(EXAMPLE)).decode()

        assert line.startswith("CEF:0|a\\|b\\\\c|pq|")
        assert ["a|b\\c", "pq"] == parse_cef(line)[0][1:3]

    @given(
        path=st.text(
            st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp"))
            | st.sampled_from("\r\n|=\\ "),
            max_size=200,
        ),
        agent=st.text(st.sampled_from("ab =\\|\r\n/"), max_size=60),
    )
    def test_escaping_round_trip(self, path: str, agent: str) -> None:
        """Any path and user agent parse back to the original value."""
        event = dict(EXAMPLE, path=path, user_agent=agent)

        _, extensions = parse_cef(cef_format(event).decode())

        assert path == extensions.get("request", "")
        assert agent == extensions.get("requestClientApplication", "")

    @pytest.mark.parametrize(
        "value",
        [
            "/x act=allow outcome=success",
            "/x\r\nCEF:0|evil|evil|1|allow|Access allowed|1|act=allow",
            "/x|1|2|3|4",
            "/x\\ act=allow",
            "/x\\\\=act=allow",
            "/x\x00 act=allow",
        ],
    )
    def test_injection_cannot_forge(self, value: str) -> None:
        """A path or user agent cannot add a field, a header field or a line."""
        line = cef_format(dict(EXAMPLE, path=value, user_agent=value)).decode()

        header, extensions = parse_cef(line)
        assert 1 == len(line.splitlines())
        assert "\x00" not in line
        assert "deny" == extensions["act"]
        assert "failure" == extensions["outcome"]
        assert "Access denied" == header[5]
        assert value.replace("\x00", "") == extensions["request"]

    def test_ipv6_source(self) -> None:
        """An IPv6 client goes to c6a2, since src holds IPv4 only."""
        _, extensions = parse_cef(cef_format(access_event(client_ip="2001:db8::7")).decode())

        assert "src" not in extensions
        assert "2001:db8::7" == extensions["c6a2"]

    def test_value_truncated(self) -> None:
        """An extension value longer than 1023 characters is cut and marked."""
        _, extensions = parse_cef(cef_format(dict(EXAMPLE, user_agent="=" * 5000)).decode())

        assert (
            "=" * MAX_CEF_VALUE_CHARS + TRUNCATION_MARKER == extensions["requestClientApplication"]
        )

    def test_anomaly_extensions(self) -> None:
        """An anomaly carries count, first and last seen times and contributing events."""
        _, extensions = parse_cef(cef_format(dict(ANOMALY)).decode())

        assert "12" == extensions["cnt"]
        assert str(EXAMPLE_MILLISECONDS) == extensions["start"]
        assert ",".join(ANOMALY["contributing_event_ids"]) == extensions["cs6"]

    @pytest.mark.parametrize("vendor", ["", "  ", 7])
    def test_invalid_vendor(self, vendor: Any) -> None:
        """An empty or non-string header field is rejected at construction."""
        with pytest.raises(ConfigurationError):
            CEFFormat(vendor=vendor)

    def test_processor_matches_format(self) -> None:
        """The structlog processor renders the same bytes as the sink format."""
        assert cef_format(dict(EXAMPLE)) == render_cef(None, "info", dict(EXAMPLE))


_ANY_TEXT = st.text(max_size=300)


class TestAllFormats:
    @pytest.mark.parametrize("name", FORMATS)
    @given(
        path=_ANY_TEXT,
        agent=_ANY_TEXT,
        subject=st.none() | _ANY_TEXT,
        fact=_ANY_TEXT,
        detail=_ANY_TEXT,
    )
    def test_one_line_per_event(
        self, name: str, path: str, agent: str, subject: str | None, fact: str, detail: str
    ) -> None:
        """Any text in user-controlled fields gives exactly one line without raw CR or LF."""
        verifier = dict(EXAMPLE["verifiers"][0], detail=detail)
        event = dict(
            EXAMPLE,
            path=path,
            user_agent=agent,
            subject=subject,
            facts={"note": fact},
            verifiers=[verifier],
        )
        redacted = dict(redact_secrets(None, "info", event))

        line = FORMATS[name](redacted)

        assert b"\n" not in line
        assert b"\r" not in line
        assert 1 == len(line.decode().splitlines())

    @pytest.mark.parametrize("name", FORMATS)
    def test_huge_value_bounded(self, name: str) -> None:
        """A megabyte in an event field gives a line of bounded size."""
        line = FORMATS[name](dict(GRANT, reason="r" * 1_000_000))

        assert len(line) < 20_000

    @pytest.mark.parametrize("name", FORMATS)
    async def test_served_events_render(self, name: str) -> None:
        """Every real access event renders in every format."""
        for event in await served_events():
            assert FORMATS[name](event)

    def test_ecs_processor_matches_format(self) -> None:
        """The ECS processor renders the same bytes as the sink format."""
        assert ecs_format(dict(EXAMPLE)) == render_ecs(None, "info", dict(EXAMPLE))
