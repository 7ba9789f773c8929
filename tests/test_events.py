# SPDX-License-Identifier: Apache-2.0
from __future__ import annotations

import io
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest

from zerotrust import ConfigurationError, EventEmitter, JsonLinesSink, MemorySink, Sink
from zerotrust.events import format_timestamp, new_event_id, redact_secrets
from zerotrust.testing import capture_events

JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"


class FailingSink(Sink):
    name = "failing"

    def write(self, events: Sequence[dict[str, Any]]) -> None:
        raise OSError("collector down")


class SlowSink(Sink):
    name = "slow"

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def write(self, events: Sequence[dict[str, Any]]) -> None:
        time.sleep(0.05)
        self.events.extend(events)


class TestEmitter:
    def test_delivers_after_flush(self) -> None:
        """Queued events reach every sink once flush returns."""
        sink = MemorySink()
        emitter = EventEmitter([sink])

        for number in range(100):
            emitter.emit({"event": "test", "n": number})

        assert emitter.flush()
        assert list(range(100)) == [event["n"] for event in sink.events]
        emitter.close()

    def test_bounded_queue_drops(self) -> None:
        """A full queue drops new events and counts them instead of growing."""
        sink = SlowSink()
        emitter = EventEmitter([sink], max_queue=5, batch_size=1)

        for number in range(50):
            emitter.emit({"event": "test", "n": number})
        emitter.flush()

        assert emitter.dropped > 0
        assert 50 == emitter.dropped + len(sink.events)
        emitter.close()

    def test_failing_sink_does_not_block_others(self) -> None:
        """A sink that raises loses its batch, and the other sinks still receive it."""
        good = MemorySink()
        emitter = EventEmitter([FailingSink(), good])

        emitter.emit({"event": "test"})
        emitter.flush()

        assert 1 == len(good.events)
        assert 1 == emitter.failed
        emitter.close()

    def test_close_drains_and_rejects(self) -> None:
        """Close delivers what is queued; later events are counted as dropped."""
        sink = MemorySink()
        emitter = EventEmitter([sink])
        emitter.emit({"event": "before"})

        emitter.close()
        emitter.emit({"event": "after"})

        assert ["before"] == [event["event"] for event in sink.events]
        assert 1 == emitter.dropped

    def test_rejects_non_sink(self) -> None:
        """Sinks must be Sink instances."""
        with pytest.raises(ConfigurationError, match="not a zerotrust Sink"):
            EventEmitter([print])  # type: ignore[list-item]

    @pytest.mark.parametrize(
        "options", [{"max_queue": 0}, {"batch_size": 0}, {"flush_interval": 0}]
    )
    def test_rejects_bad_bounds(self, options: dict[str, Any]) -> None:
        """Queue bounds must be positive."""
        with pytest.raises(ConfigurationError):
            EventEmitter([MemorySink()], **options)

    def test_capture_is_synchronous(self) -> None:
        """capture_events sees events immediately, already redacted."""
        emitter = EventEmitter([MemorySink()])
        with capture_events() as events:
            emitter.emit({"event": "test", "authorization": "Bearer abc"})

        assert [{"event": "test", "authorization": "[redacted]"}] == events
        emitter.close()


class TestJsonLinesSink:
    def test_file(self, tmp_path: Path) -> None:
        """A path is opened for appending and receives one JSON object per line."""
        path = tmp_path / "events.jsonl"
        emitter = EventEmitter([JsonLinesSink(path)])
        emitter.emit({"event": "access", "decision": "allow"})
        emitter.emit({"event": "access", "decision": "deny"})

        emitter.close()

        lines = path.read_bytes().splitlines()
        assert ["allow", "deny"] == [orjson.loads(line)["decision"] for line in lines]

    def test_text_stream(self) -> None:
        """A text stream without a binary buffer receives decoded lines."""
        stream = io.StringIO()
        sink = JsonLinesSink(stream)

        sink.write([{"event": "access", "path": "/caf\u00e9"}])

        assert {"event": "access", "path": "/caf\u00e9"} == orjson.loads(stream.getvalue())

    def test_binary_stream(self) -> None:
        """A binary stream receives bytes."""
        stream = io.BytesIO()
        sink = JsonLinesSink(stream)

        sink.write([{"event": "access"}])

        assert b'{"event":"access"}\n' == stream.getvalue()

    def test_control_characters_escaped(self) -> None:
        """CR/LF in a value cannot start a new log line."""
        stream = io.BytesIO()
        JsonLinesSink(stream).write([{"event": "access", "user_agent": 'x\r\n{"forged":1}'}])

        assert 1 == len(stream.getvalue().splitlines())

    def test_redacts_before_rendering(self) -> None:
        """A token in any field is fingerprinted before it is written."""
        stream = io.BytesIO()
        JsonLinesSink(stream).write([{"event": "access", "detail": f"bad token {JWT}"}])

        assert JWT.encode() not in stream.getvalue()
        assert b"[redacted sha256:" in stream.getvalue()

    def test_extra_processors(self) -> None:
        """User processors run before redaction and rendering."""

        def add_service(logger: object, name: str, event: Any) -> Any:
            event["service"] = "billing"
            return event

        stream = io.BytesIO()
        JsonLinesSink(stream, processors=[add_service]).write([{"event": "access"}])

        assert "billing" == orjson.loads(stream.getvalue())["service"]


class TestRedaction:
    def test_secret_keys(self) -> None:
        """Values under secret-looking keys are replaced, at any depth."""
        event = {
            "Authorization": "Bearer x",
            "nested": {"password": "hunter2", "items": [{"api_key": "k"}]},
            "safe": "value",
        }

        redacted = redact_secrets(None, "info", event)

        assert "[redacted]" == redacted["Authorization"]
        assert "[redacted]" == redacted["nested"]["password"]
        assert "[redacted]" == redacted["nested"]["items"][0]["api_key"]
        assert "value" == redacted["safe"]

    def test_jwt_fingerprinted(self) -> None:
        """A JWT inside a string becomes a stable fingerprint."""
        first = redact_secrets(None, "info", {"detail": f"token {JWT} failed"})
        second = redact_secrets(None, "info", {"other": JWT})

        assert JWT not in first["detail"]
        assert first["detail"].split(" ")[2] == second["other"].split(" ")[1]

    def test_bearer_credentials(self) -> None:
        """A Bearer or Basic credential inside a string is fingerprinted."""
        redacted = redact_secrets(None, "info", {"detail": "header was Basic dXNlcjpwYXNz"})

        assert "dXNlcjpwYXNz" not in redacted["detail"]


class TestFormats:
    def test_timestamp(self) -> None:
        """Timestamps are RFC 3339 UTC with microseconds."""
        assert "2026-12-04T20:27:12.500000Z" == format_timestamp(1796416032.5)

    def test_event_id_is_uuid7(self) -> None:
        """Event ids are version 7 UUIDs that sort by time."""
        first = new_event_id(1_000.0)
        second = new_event_id(2_000.0)

        assert 7 == uuid.UUID(first).version
        assert first < second


class TestJsonLinesSinkFormat:
    def test_cef_format(self) -> None:
        """A sink can write another format, and redaction still runs before it."""
        from zerotrust.events import cef_format

        stream = io.BytesIO()
        sink = JsonLinesSink(stream, format=cef_format)

        sink.write(
            [
                {
                    "event": "access",
                    "timestamp": "2026-12-04T20:27:12.000000Z",
                    "decision": "deny",
                    "action": "deny",
                    "mode": "enforce",
                    "reasons": ["token_expired"],
                    "path": f"/api/{JWT}",
                    "method": "GET",
                }
            ]
        )

        line = stream.getvalue()
        assert line.startswith(b"CEF:0|")
        assert JWT.encode() not in line
        assert 1 == len(line.splitlines())


class TestFileModes:
    def test_events_file_private(self, tmp_path: Path) -> None:
        """A new events file is readable by its owner only: events hold personal data."""
        path = tmp_path / "events.jsonl"
        sink = JsonLinesSink(path)

        sink.write([{"event": "access"}])
        sink.close()

        assert 0o600 == path.stat().st_mode & 0o777


class TestBuiltEventRedaction:
    def test_detail_and_facts_redacted(self) -> None:
        """Credentials in a verifier's detail or facts are fingerprinted when the event is built."""
        import asyncio

        from zerotrust import AccessRequest, Engine, Policy, Segment, Verdict, Verifier
        from zerotrust.events import build_access_event
        from zerotrust.request import new_request_id
        from zerotrust.testing import allow

        class Leaky(Verifier):
            name = "leaky"

            async def verify(self, request: Any, context: Any) -> Verdict:
                return Verdict.failed("leaky_failure", f"saw {JWT}", note=f"Bearer {JWT}")

        from starlette.datastructures import Headers

        engine = Engine(Policy([Segment("api", paths=["/api/"], verifiers=[allow(), Leaky()])]))
        request = AccessRequest(
            method="GET",
            path="/api/x",
            raw_path="/api/x",
            host="app.test",
            headers=Headers(raw=[]),
            client_ip=None,
            peer_ip=None,
            request_id=new_request_id(),
            time=time.time(),
        )
        decision = asyncio.run(engine.decide(request))

        event = build_access_event(request, decision, status=403, latency=0.0, decision_time=0.0)
        line = JsonLinesSink(io.BytesIO()).render(event)

        assert JWT.encode() not in line
        assert b"[redacted sha256:" in line
