# SPDX-License-Identifier: Apache-2.0
from __future__ import annotations

import pathlib
import threading
from typing import Any

import httpx
import orjson
import pytest
from jsonschema import Draft202012Validator, FormatChecker
from referencing import Registry, Resource

from zerotrust import Segment, ZeroTrustMiddleware
from zerotrust.events import EventEmitter, MemorySink, format_timestamp
from zerotrust.events.formats import cef_format, json_format, ocsf_format
from zerotrust.exceptions import ConfigurationError
from zerotrust.monitor import (
    CredentialStuffingDetector,
    DeniedBurstDetector,
    Detector,
    ImpossibleTravelDetector,
    LateralMovementDetector,
    MonitorSink,
    RiskSignals,
    TokenReplayDetector,
    run_detectors,
)
from zerotrust.testing import allow, deny

START = 1_790_000_000.0
OCSF_DIRECTORY = pathlib.Path(__file__).parent / "ocsf"


def access(at: float, index: int, **fields: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event": "access",
        "timestamp": format_timestamp(START + at),
        "event_id": f"m{index}",
        "decision": "deny",
        "status": 403,
        "segment": "api",
        "subject": None,
        "client_ip": "198.51.100.7",
        "credential_fingerprint": None,
    }
    event.update(fields)
    return event


class RecordingEmitter:
    """Stands in for `EventEmitter` where only ``emit`` matters."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def emit(self, event: dict[str, Any]) -> None:
        self.events.append(event)


async def ok_app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


class TestMonitorSink:
    def test_burst_signal_limited_to_sources(self) -> None:
        """A denied burst flags the subject only for the addresses it came from."""
        signals = RiskSignals()
        emitter = RecordingEmitter()
        sink = MonitorSink(
            [DeniedBurstDetector(threshold=3)],
            signals=signals,
            emitter=emitter,  # type: ignore[arg-type]
            cooldown=60,
        )
        sink.write([access(i, i, subject="alice", client_ip="203.0.113.9") for i in range(4)])

        assert ["denied_burst"] == [event["detector"] for event in emitter.events]
        (signal,) = signals.active("subject", "alice")
        assert "denied_burst" == signal.detector
        assert frozenset({"203.0.113.9"}) == signal.source_ips
        assert emitter.events[0]["event_id"] == signal.anomaly_id
        assert 60.0 == pytest.approx(signal.expires_at - signal.raised_at)

    @pytest.mark.parametrize(
        ("detector", "events", "kind", "key", "limited"),
        [
            (
                LateralMovementDetector(segments=2),
                [access(i, i, subject="svc", segment=f"s{i}") for i in range(2)],
                "subject",
                "svc",
                True,
            ),
            (
                ImpossibleTravelDetector(),
                [
                    access(0, 0, decision="allow", subject="eve", facts={"country": "DE"}),
                    access(60, 1, decision="allow", subject="eve", facts={"country": "JP"}),
                ],
                "subject",
                "eve",
                False,
            ),
            (
                TokenReplayDetector(max_ips=1),
                [
                    access(
                        i,
                        i,
                        decision="allow",
                        credential_fingerprint="fp9",
                        client_ip=f"192.0.2.{i}",
                    )
                    for i in range(2)
                ],
                "credential",
                "fp9",
                False,
            ),
            (
                CredentialStuffingDetector(subjects=2),
                [
                    access(i, i, status=401, subject=f"u{i}", client_ip="203.0.113.5")
                    for i in range(2)
                ],
                "client_ip",
                "203.0.113.5",
                False,
            ),
            (
                CredentialStuffingDetector(subjects=2, by="network"),
                [
                    access(i, i, status=401, subject=f"u{i}", client_ip=f"203.0.113.{i}")
                    for i in range(2)
                ],
                "network",
                "203.0.113.0/24",
                False,
            ),
        ],
        ids=["lateral", "travel", "replay", "stuffing", "stuffing-network"],
    )
    def test_signal_kinds(
        self, detector: Detector, events: list[dict[str, Any]], kind: Any, key: str, limited: bool
    ) -> None:
        """Each detector raises its kind of signal about the right key."""
        signals = RiskSignals()
        MonitorSink([detector], signals=signals).write(events)

        (signal,) = signals.active(kind, key)
        assert detector.name == signal.detector
        assert limited == bool(signal.source_ips)

    def test_ignores_other_events(self) -> None:
        """Anomaly and other events are never fed to detectors."""
        sink = MonitorSink([DeniedBurstDetector(threshold=1)])
        anomaly = access(0, 0, subject="a")
        anomaly["event"] = "anomaly"
        sink.write([anomaly, dict(anomaly, event="events_dropped"), dict(anomaly, event_id="x")])

        assert [] == list(sink.anomalies)

    def test_without_signals(self) -> None:
        """Anomalies are kept even with no signal store or emitter."""
        sink = MonitorSink([DeniedBurstDetector(threshold=1)])
        sink.write([access(i, i, subject="a") for i in range(2)])

        assert 1 == len(sink.anomalies)

    def test_failing_detector_isolated(self) -> None:
        """A detector that raises does not stop the others."""

        class Broken(Detector):
            name = "broken"

            def observe(self, event: dict[str, Any]) -> list[dict[str, Any]]:
                raise RuntimeError("boom")

        sink = MonitorSink([Broken(), DeniedBurstDetector(threshold=1)])
        sink.write([access(i, i, subject="a") for i in range(2)])

        assert 2 == sink.failures
        assert 1 == len(sink.anomalies)

    def test_thread_safe(self) -> None:
        """Concurrent writers lose no events and raise one anomaly per subject."""
        sink = MonitorSink([DeniedBurstDetector(threshold=99, window=10_000)])

        def feed(offset: int) -> None:
            for i in range(100):
                sink.write([access(i, offset + i, subject=f"s{offset}")])

        threads = [threading.Thread(target=feed, args=(n * 1000,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        assert 8 == len(sink.anomalies)

    @pytest.mark.parametrize(
        "options", [{"cooldown": 0}, {"cooldown": "15m"}, {"detectors": [object()]}]
    )
    def test_invalid_configuration(self, options: dict[str, Any]) -> None:
        """A bad cooldown or a non-detector is rejected at construction."""
        with pytest.raises(ConfigurationError):
            MonitorSink(**options)


class TestMonitorServed:
    async def test_middleware_to_signals(self) -> None:
        """Denials through the middleware become anomaly events and risk signals."""
        signals = RiskSignals()
        monitor = MonitorSink(
            [DeniedBurstDetector(threshold=5), LateralMovementDetector(segments=3)],
            signals=signals,
        )
        memory = MemorySink()
        emitter = EventEmitter([memory, monitor], flush_interval=0.01)
        monitor.emitter = emitter
        segments = [
            Segment(name, paths=[f"/{name}/"], verifiers=[allow("mallory"), deny("network_denied")])
            for name in ("billing", "hr", "admin")
        ]
        app = ZeroTrustMiddleware(ok_app, policy=segments, events=emitter)
        transport = httpx.ASGITransport(app=app, client=("203.0.113.77", 4000))
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://app.test") as client:
                for path in ["/billing/a"] * 4 + ["/hr/a", "/admin/a"]:
                    response = await client.get(path)
                    assert 403 == response.status_code
            assert emitter.flush(5.0)
            # The anomalies the monitor queued during delivery need a second flush.
            assert emitter.flush(5.0)
        finally:
            emitter.close()

        anomalies = [event for event in memory.events if event["event"] == "anomaly"]
        assert ["denied_burst", "lateral_movement"] == sorted(a["detector"] for a in anomalies)
        assert {"mallory"} == {anomaly["subject"] for anomaly in anomalies}
        access_ids = {event["event_id"] for event in memory.events if event["event"] == "access"}
        for anomaly in anomalies:
            assert set(anomaly["contributing_event_ids"]) <= access_ids
        flagged = signals.active("subject", "mallory")
        assert {"denied_burst", "lateral_movement"} == {signal.detector for signal in flagged}
        for signal in flagged:
            assert frozenset({"203.0.113.77"}) == signal.source_ips


def scripted_attacks() -> list[dict[str, Any]]:
    """One scripted attack per default detector, in time order."""
    events = [access(i, i, subject="alice") for i in range(11)]
    events += [access(100 + i, 100 + i, subject="svc", segment=f"s{i}") for i in range(3)]
    events += [
        access(200, 200, decision="allow", subject="eve", facts={"country": "DE"}),
        access(210, 201, decision="allow", subject="eve", facts={"country": "AU"}),
    ]
    events += [
        access(
            300 + i,
            300 + i,
            decision="allow",
            credential_fingerprint="fp",
            client_ip=f"192.0.2.{i}",
        )
        for i in range(3)
    ]
    events += [
        access(400 + i, 400 + i, status=401, subject=f"v{i}", client_ip="203.0.113.1")
        for i in range(10)
    ]
    return events


def ocsf_validator() -> Draft202012Validator:
    resources = []
    for path in OCSF_DIRECTORY.glob("*.schema.json"):
        schema = orjson.loads(path.read_bytes())
        resources.append((schema["$id"], Resource.from_contents(schema)))
    registry: Registry[Any] = Registry().with_resources(resources)
    schema = orjson.loads((OCSF_DIRECTORY / "detection_finding.schema.json").read_bytes())
    return Draft202012Validator(schema, registry=registry, format_checker=FormatChecker())


class TestAnomalyFormats:
    def test_every_detector_fires(self) -> None:
        """The scripted attacks raise one anomaly per default detector."""
        anomalies = run_detectors(scripted_attacks())

        assert 5 == len(anomalies)

    def test_ocsf_detection_finding(self) -> None:
        """Every anomaly maps to a valid OCSF Detection Finding."""
        validator = ocsf_validator()
        for anomaly in run_detectors(scripted_attacks()):
            document = orjson.loads(ocsf_format(anomaly))
            assert 2004 == document["class_uid"]
            validator.validate(document)

    def test_cef_and_json(self) -> None:
        """Every anomaly renders as CEF and zerotrust JSON with its detector."""
        for anomaly in run_detectors(scripted_attacks()):
            assert anomaly["detector"] in cef_format(anomaly).decode()
            assert anomaly == orjson.loads(json_format(anomaly))


def test_signals_snapshot_lists_active() -> None:
    """snapshot() lists active signals and repr shows how many there are."""
    import time as clock

    from zerotrust.monitor import RiskSignal, RiskSignals

    signals = RiskSignals()
    now = clock.time()
    signals.raise_signal(RiskSignal("client_ip", "203.0.113.9", "d", "r", now, now + 60))
    signals.raise_signal(RiskSignal("subject", "old", "d", "r", now - 120, now - 60))

    assert ["203.0.113.9"] == [signal.key for signal in signals.snapshot()]
    assert "<RiskSignals active=1>" == repr(signals)
