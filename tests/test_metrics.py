# SPDX-License-Identifier: Apache-2.0
from __future__ import annotations

import asyncio
import functools
import string
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from zerotrust import (
    ConfigurationError,
    EventEmitter,
    MissingExtraError,
    Segment,
    Sink,
    ZeroTrustMiddleware,
)
from zerotrust.events.metrics import PrometheusSink, metrics_app
from zerotrust.events.otel import OpenTelemetrySink
from zerotrust.testing import TokenIssuer, deny
from zerotrust.verifiers.identity import JWTVerifier
from zerotrust.verifiers.network import NetworkVerifier


class DownSink(Sink):
    """Always fails, like a collector that is down."""

    name = "down"

    def write(self, events: Sequence[dict[str, Any]]) -> None:
        raise ConnectionError("collector down")


class StalledSink(Sink):
    """Blocks every write until released."""

    name = "stalled"

    def __init__(self) -> None:
        self.release = threading.Event()

    def write(self, events: Sequence[dict[str, Any]]) -> None:
        self.release.wait(10)


async def hello(_request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello")


def protected_app(issuer: TokenIssuer, emitter: EventEmitter) -> ZeroTrustMiddleware:
    identity = JWTVerifier(
        issuer=issuer.issuer, audience="api", algorithms=["RS256"], keys=issuer.jwks()
    )
    app = Starlette(routes=[Route("/{path:path}", hello)])
    segments = [
        Segment("api", paths=["/api/"], verifiers=[identity], scopes=["read"]),
        Segment("admin", paths=["/admin/"], verifiers=[identity, deny("outside_hours")]),
    ]
    return ZeroTrustMiddleware(app, policy=segments, events=emitter)


def client_for(app: Any, client_ip: str = "127.0.0.1") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(client_ip, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


async def send_mixed_traffic(issuer: TokenIssuer, app: Any) -> None:
    """3 allowed, 2 without a token, 1 without the scope, 1 denied by a verifier, 1 unmatched."""
    reader = {"authorization": f"Bearer {issuer.token('alice', scopes=['read'])}"}
    no_scope = {"authorization": f"Bearer {issuer.token('bob')}"}
    async with client_for(app) as client:
        for number in range(3):
            assert 200 == (await client.get(f"/api/items/{number}", headers=reader)).status_code
        for _ in range(2):
            assert 401 == (await client.get("/api/items")).status_code
        assert 403 == (await client.get("/api/items", headers=no_scope)).status_code
        assert 403 == (await client.get("/admin/users", headers=reader)).status_code
        assert 403 == (await client.get("/elsewhere")).status_code


def samples(registry: CollectorRegistry) -> list[Any]:
    return [sample for family in registry.collect() for sample in family.samples]


@pytest.fixture(name="registry")
def fixture_registry() -> CollectorRegistry:
    return CollectorRegistry()


class TestPrometheusSink:
    async def test_decisions_by_label(
        self, issuer: TokenIssuer, registry: CollectorRegistry
    ) -> None:
        """Each decision counts once, by segment, decision, action and first reason."""
        emitter = EventEmitter([PrometheusSink(registry=registry)])
        await send_mixed_traffic(issuer, protected_app(issuer, emitter))
        assert emitter.flush()

        def decisions(segment: str, decision: str, reason: str) -> float | None:
            labels = {"segment": segment, "decision": decision, "action": decision}
            return registry.get_sample_value(
                "zerotrust_decisions_total", labels | {"reason": reason}
            )

        assert 3.0 == decisions("api", "allow", "")
        assert 2.0 == decisions("api", "deny", "token_missing")
        assert 1.0 == decisions("api", "deny", "insufficient_scope")
        assert 1.0 == decisions("admin", "deny", "outside_hours")
        assert 1.0 == decisions("", "deny", "no_segment")
        emitter.close()

    async def test_latency_histograms(
        self, issuer: TokenIssuer, registry: CollectorRegistry
    ) -> None:
        """Request, decision and verifier latencies land in histograms in seconds."""
        emitter = EventEmitter([PrometheusSink(registry=registry)])
        await send_mixed_traffic(issuer, protected_app(issuer, emitter))
        assert emitter.flush()

        value = registry.get_sample_value
        allowed = {"segment": "api", "action": "allow"}
        assert 3.0 == value("zerotrust_request_duration_seconds_count", allowed)
        request_seconds = value("zerotrust_request_duration_seconds_sum", allowed)
        assert request_seconds is not None
        assert 0 < request_seconds < 5
        assert 6.0 == value("zerotrust_decision_duration_seconds_count", {"segment": "api"})
        assert 1.0 == value("zerotrust_decision_duration_seconds_count", {"segment": "admin"})
        # The JWT verifier runs on every api and admin request: 5 passes, 2 failures.
        assert 5.0 == value(
            "zerotrust_verifier_duration_seconds_count", {"verifier": "jwt", "result": "pass"}
        )
        assert 2.0 == value(
            "zerotrust_verifier_duration_seconds_count", {"verifier": "jwt", "result": "fail"}
        )
        assert 1.0 == value(
            "zerotrust_verifier_duration_seconds_count", {"verifier": "deny", "result": "fail"}
        )
        emitter.close()

    def test_counts_other_events(self, registry: CollectorRegistry) -> None:
        """Anomaly and grant events are counted by name and add no decision."""
        emitter = EventEmitter([PrometheusSink(registry=registry)])
        emitter.emit({"event": "anomaly", "detector": "burst"})
        emitter.emit({"event": "grant_minted", "grant_id": "g-1"})
        assert emitter.flush()

        assert 1.0 == registry.get_sample_value("zerotrust_events_total", {"event": "anomaly"})
        assert 1.0 == registry.get_sample_value("zerotrust_events_total", {"event": "grant_minted"})
        decisions = [s for s in samples(registry) if s.name == "zerotrust_decisions_total"]
        assert [] == decisions
        emitter.close()

    def test_label_values_bounded(self, registry: CollectorRegistry) -> None:
        """Past max_label_values, and for values outside the name characters, labels read other."""
        emitter = EventEmitter([PrometheusSink(registry=registry, max_label_values=2)])
        for segment in ("one", "two", "three", "four", "a/b"):
            emitter.emit({"event": "access", "segment": segment, "decision": "allow"})
        assert emitter.flush()

        segments = {
            s.labels["segment"] for s in samples(registry) if s.name == "zerotrust_decisions_total"
        }
        assert {"one", "two", "other"} == segments
        other = {"segment": "other", "decision": "allow", "action": "", "reason": ""}
        assert 3.0 == registry.get_sample_value("zerotrust_decisions_total", other)
        emitter.close()

    def test_skips_invalid_latency(self, registry: CollectorRegistry) -> None:
        """An event without a numeric latency still counts its decision."""
        emitter = EventEmitter([PrometheusSink(registry=registry)])
        emitter.emit(
            {"event": "access", "segment": "api", "decision": "allow", "latency_ms": "slow"}
        )
        assert emitter.flush()

        labels = {"segment": "api", "decision": "allow", "action": "", "reason": ""}
        assert 1.0 == registry.get_sample_value("zerotrust_decisions_total", labels)
        count = registry.get_sample_value(
            "zerotrust_request_duration_seconds_count", {"segment": "api", "action": ""}
        )
        assert count is None
        emitter.close()

    def test_namespace(self, registry: CollectorRegistry) -> None:
        """The namespace prefixes every metric name."""
        emitter = EventEmitter([PrometheusSink(registry=registry, namespace="edge")])
        emitter.emit({"event": "access", "segment": "api", "decision": "allow"})
        assert emitter.flush()

        names = {sample.name for sample in samples(registry)}
        assert "edge_decisions_total" in names
        assert "edge_sink_delivered_events_total" in names
        assert all(name.startswith("edge_") for name in names)
        emitter.close()

    @pytest.mark.parametrize("namespace", ["", "1st", "zero-trust", "a b", None])
    def test_invalid_namespace(self, registry: CollectorRegistry, namespace: Any) -> None:
        """A namespace that is not a metric name prefix raises at construction."""
        with pytest.raises(ConfigurationError) as caught:
            PrometheusSink(registry=registry, namespace=namespace)

        assert "namespace" == caught.value.parameter

    @pytest.mark.parametrize("value", [0, -1, True, 1.5])
    def test_invalid_max_label_values(self, registry: CollectorRegistry, value: Any) -> None:
        """max_label_values must be a positive integer."""
        with pytest.raises(ConfigurationError) as caught:
            PrometheusSink(registry=registry, max_label_values=value)

        assert "max_label_values" == caught.value.parameter

    def test_two_sinks_one_registry(self, registry: CollectorRegistry) -> None:
        """A second sink on the same registry raises instead of mixing metrics."""
        PrometheusSink(registry=registry)

        with pytest.raises(ValueError, match="Duplicated timeseries"):
            PrometheusSink(registry=registry)

    def test_missing_extra(
        self, registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Without prometheus-client the sink names the extra to install."""
        monkeypatch.setitem(sys.modules, "prometheus_client", None)

        with pytest.raises(MissingExtraError) as caught:
            PrometheusSink(registry=registry)

        assert "metrics" == caught.value.extra

    def test_metrics_app_missing_extra(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without prometheus-client metrics_app names the extra to install."""
        monkeypatch.setitem(sys.modules, "prometheus_client", None)
        monkeypatch.setitem(sys.modules, "prometheus_client.exposition", None)

        with pytest.raises(MissingExtraError) as caught:
            metrics_app(CollectorRegistry())

        assert "metrics" == caught.value.extra


class TestDeliveryMetrics:
    def test_failing_sink_with_spool(self, registry: CollectorRegistry, tmp_path: Path) -> None:
        """A sink that is down shows its events spooled, none delivered, nothing lost."""
        emitter = EventEmitter(
            [PrometheusSink(registry=registry), DownSink()],
            spool_dir=tmp_path,
            retry_initial=5.0,
            retry_max=5.0,
        )
        for number in range(20):
            emitter.emit({"event": "test", "n": number})
        assert emitter.flush()

        def value(name: str, sink: str, position: str) -> float | None:
            labels = {"sink": sink, "position": position}
            return registry.get_sample_value(f"zerotrust_sink_{name}", labels)

        assert 20.0 == value("spooled_events_total", "down", "1")
        assert 0.0 == value("delivered_events_total", "down", "1")
        assert 0.0 == value("failed_events_total", "down", "1")
        assert 0.0 == value("dropped_events_total", "down", "1")
        spool_files = value("spool_files", "down", "1")
        assert spool_files is not None
        assert spool_files >= 1
        spool_bytes = value("spool_bytes", "down", "1")
        assert spool_bytes is not None
        assert spool_bytes > 0
        assert 20.0 == value("delivered_events_total", "prometheus", "0")
        assert 0.0 == value("spool_bytes", "prometheus", "0")
        emitter.close(timeout=1.0)

    def test_failing_sink_without_spool(self, registry: CollectorRegistry) -> None:
        """Without a spool the events of a failing sink count as failed."""
        emitter = EventEmitter([PrometheusSink(registry=registry), DownSink()])
        for number in range(5):
            emitter.emit({"event": "test", "n": number})
        assert emitter.flush()

        labels = {"sink": "down", "position": "1"}
        assert 5.0 == registry.get_sample_value("zerotrust_sink_failed_events_total", labels)
        assert 0.0 == registry.get_sample_value("zerotrust_sink_spool_files", labels)
        emitter.close(timeout=1.0)

    def test_queue_and_drops(self, registry: CollectorRegistry) -> None:
        """A stalled sink shows its queue, and the events past max_sink_queue as dropped."""
        stalled = StalledSink()
        emitter = EventEmitter(
            [PrometheusSink(registry=registry), stalled], batch_size=5, max_sink_queue=10
        )
        try:
            for number in range(40):
                emitter.emit({"event": "test", "n": number})
            emitter.flush(timeout=0.5)

            labels = {"sink": "stalled", "position": "1"}
            queued = registry.get_sample_value("zerotrust_sink_queue_events", labels)
            dropped = registry.get_sample_value("zerotrust_sink_dropped_events_total", labels)
            assert queued is not None
            assert dropped is not None
            assert 0 < queued <= 10
            # At most one batch of 5 is in the stalled write; the rest wait or were dropped.
            assert 35 <= queued + dropped <= 40
        finally:
            stalled.release.set()
            emitter.close(timeout=2.0)

    def test_emitter_queue_full(self, registry: CollectorRegistry) -> None:
        """Events the emitter drops in the request path show in emitter_dropped_events_total."""
        emitter = EventEmitter([PrometheusSink(registry=registry)], max_queue=3)
        # Mark the writer thread as running without starting it, so the queue fills and stays full.
        emitter._running = True
        for number in range(10):
            emitter.emit({"event": "test", "n": number})

        assert 3.0 == registry.get_sample_value("zerotrust_emitter_queue_events")
        assert 7.0 == registry.get_sample_value("zerotrust_emitter_dropped_events_total")
        emitter._running = False
        emitter.close(timeout=1.0)

    def test_explicit_emitter(self, registry: CollectorRegistry) -> None:
        """A sink given emitter= reports that emitter's sinks, not its own."""
        watched = EventEmitter([DownSink()])
        sink = PrometheusSink(registry=registry, emitter=watched)
        holder = EventEmitter([sink])
        watched.emit({"event": "test"})
        assert watched.flush()

        sinks = {
            s.labels["sink"] for s in samples(registry) if s.name.startswith("zerotrust_sink_")
        }
        assert {"down"} == sinks
        watched.close(timeout=1.0)
        holder.close(timeout=1.0)

    def test_no_emitter(self, registry: CollectorRegistry) -> None:
        """A sink outside any emitter reports empty delivery families."""
        PrometheusSink(registry=registry)

        names = {s.name for s in samples(registry)}
        assert not any(name.startswith("zerotrust_sink_") for name in names)


class TestMetricsApp:
    async def test_exposition_text(self, issuer: TokenIssuer, registry: CollectorRegistry) -> None:
        """GET returns the Prometheus text format with the decision counters."""
        emitter = EventEmitter([PrometheusSink(registry=registry)])
        await send_mixed_traffic(issuer, protected_app(issuer, emitter))
        assert emitter.flush()

        async with client_for(metrics_app(registry)) as client:
            response = await client.get("/metrics")

        assert 200 == response.status_code
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        assert "no-store" == response.headers["cache-control"]
        assert "# TYPE zerotrust_decisions_total counter" in response.text
        expected = (
            'zerotrust_decisions_total{action="deny",decision="deny",'
            'reason="token_missing",segment="api"} 2.0'
        )
        assert expected in response.text
        emitter.close()

    async def test_openmetrics(self, registry: CollectorRegistry) -> None:
        """An OpenMetrics Accept header gets the OpenMetrics format."""
        PrometheusSink(registry=registry)
        accept = {"accept": "application/openmetrics-text; version=1.0.0"}

        async with client_for(metrics_app(registry)) as client:
            response = await client.get("/metrics", headers=accept)

        assert response.headers["content-type"].startswith("application/openmetrics-text")
        assert response.text.endswith("# EOF\n")

    async def test_head(self, registry: CollectorRegistry) -> None:
        """HEAD returns the headers and no body."""
        async with client_for(metrics_app(registry)) as client:
            response = await client.head("/metrics")

        assert 200 == response.status_code
        assert b"" == response.content

    async def test_post_rejected(self, registry: CollectorRegistry) -> None:
        """Methods other than GET and HEAD get 405 with an Allow header."""
        async with client_for(metrics_app(registry)) as client:
            response = await client.post("/metrics")

        assert 405 == response.status_code
        assert "GET, HEAD" == response.headers["allow"]

    async def test_lifespan(self, registry: CollectorRegistry) -> None:
        """The app completes lifespan startup and shutdown."""
        app = metrics_app(registry)
        messages = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return messages.pop(0)

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await asyncio.wait_for(app({"type": "lifespan"}, receive, send), 5)

        assert ["lifespan.startup.complete", "lifespan.shutdown.complete"] == [
            message["type"] for message in sent
        ]

    async def test_websocket_closed(self, registry: CollectorRegistry) -> None:
        """A websocket connection is closed with policy violation."""
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "websocket.connect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await metrics_app(registry)({"type": "websocket", "path": "/metrics"}, receive, send)

        assert [{"type": "websocket.close", "code": 1008}] == sent

    async def test_mounted_behind_network_segment(self, registry: CollectorRegistry) -> None:
        """Mounted in a segment of its own, only the scraper's network reads the metrics."""
        emitter = EventEmitter([PrometheusSink(registry=registry)])
        app = Starlette(routes=[Route("/metrics", metrics_app(registry))])
        scraper_only = Segment(
            "metrics",
            paths=["/metrics"],
            public=True,
            verifiers=[NetworkVerifier(allow=["10.20.0.0/16"])],
        )
        protected = ZeroTrustMiddleware(app, policy=[scraper_only], events=emitter)

        async with client_for(protected, "10.20.3.4") as client:
            scraper = await client.get("/metrics")
        async with client_for(protected, "192.0.2.7") as client:
            outsider = await client.get("/metrics")

        assert 200 == scraper.status_code
        assert "zerotrust_decisions_total" in scraper.text
        assert 403 == outsider.status_code
        assert "zerotrust" not in outsider.text
        emitter.close()


@functools.cache
def shared_app() -> tuple[ZeroTrustMiddleware, EventEmitter, CollectorRegistry, TokenIssuer]:
    """One protected app for every Hypothesis example, so examples stay fast."""
    registry = CollectorRegistry()
    issuer = TokenIssuer(algorithms=("ES256",))
    emitter = EventEmitter([PrometheusSink(registry=registry)])

    return protected_app_es256(issuer, emitter), emitter, registry, issuer


def protected_app_es256(issuer: TokenIssuer, emitter: EventEmitter) -> ZeroTrustMiddleware:
    identity = JWTVerifier(
        issuer=issuer.issuer, audience="api", algorithms=["ES256"], keys=issuer.jwks()
    )
    app = Starlette(routes=[Route("/{path:path}", hello)])
    segment = Segment("api", paths=["/api/"], verifiers=[identity], scopes=["read"])
    return ZeroTrustMiddleware(app, policy=[segment], events=emitter)


# Subjects and path segments drawn from the characters a label value may hold, so only the
# sink's choice of fields keeps them out of the labels.
label_like = st.text(
    alphabet=string.ascii_letters + string.digits + "_.-", min_size=12, max_size=40
)


class TestLabelPrivacy:
    @settings(max_examples=40, deadline=None)
    @given(
        subject=label_like,
        path_part=label_like,
        client_ip=st.ip_addresses(v=4).map(str),
        scoped=st.booleans(),
    )
    def test_no_identifying_label(
        self, subject: str, path_part: str, client_ip: str, scoped: bool
    ) -> None:
        """No label value contains the subject, token, client address or path."""
        app, emitter, registry, issuer = shared_app()
        token = issuer.token(subject, scopes=["read"] if scoped else [])

        async def send() -> int:
            headers = {"authorization": f"Bearer {token}"}
            async with client_for(app, client_ip) as client:
                response = await client.get(f"/api/{path_part}", headers=headers)
            return response.status_code

        status = asyncio.run(send())
        assert emitter.flush()

        assert (200 if scoped else 403) == status
        label_values = {value for s in samples(registry) for value in s.labels.values()}
        secrets = (subject, token, client_ip, path_part)
        leaked = [v for v in label_values for secret in secrets if secret in v]
        assert [] == leaked


def otel_points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    points: dict[str, list[Any]] = {}
    assert data is not None
    for resource_metrics in data.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                points.setdefault(metric.name, []).extend(metric.data.data_points)
    return points


def point_for(points: list[Any], **attributes: str) -> Any:
    matching = [p for p in points if dict(p.attributes) == attributes]
    assert 1 == len(matching), f"no single point with {attributes} in {points}"
    return matching[0]


class TestOpenTelemetrySink:
    async def test_decisions_and_latency(self, issuer: TokenIssuer) -> None:
        """Decisions count by attributes and latencies land in second histograms."""
        reader = InMemoryMetricReader()
        provider = MeterProvider(metric_readers=[reader])
        emitter = EventEmitter([OpenTelemetrySink(meter_provider=provider)])
        await send_mixed_traffic(issuer, protected_app(issuer, emitter))
        assert emitter.flush()

        points = otel_points(reader)
        decisions = points["zerotrust.decisions"]
        allowed = point_for(decisions, segment="api", decision="allow", action="allow", reason="")
        assert 3 == allowed.value
        missing = point_for(
            decisions, segment="api", decision="deny", action="deny", reason="token_missing"
        )
        assert 2 == missing.value
        unmatched = point_for(
            decisions, segment="", decision="deny", action="deny", reason="no_segment"
        )
        assert 1 == unmatched.value
        request = point_for(points["zerotrust.request.duration"], segment="api", action="allow")
        assert 3 == request.count
        assert 0 < request.sum < 5
        assert 0.0005 == request.explicit_bounds[0]
        verifier = point_for(points["zerotrust.verifier.duration"], verifier="jwt", result="fail")
        assert 2 == verifier.count
        decision = point_for(points["zerotrust.decision.duration"], segment="admin")
        assert 1 == decision.count
        emitter.close()
        provider.shutdown()

    def test_delivery_state(self, tmp_path: Path) -> None:
        """Observable instruments report a failing sink's spool and counts."""
        reader = InMemoryMetricReader()
        provider = MeterProvider(metric_readers=[reader])
        emitter = EventEmitter(
            [OpenTelemetrySink(meter_provider=provider), DownSink()],
            spool_dir=tmp_path,
            retry_initial=5.0,
            retry_max=5.0,
        )
        for number in range(8):
            emitter.emit({"event": "test", "n": number})
        assert emitter.flush()

        points = otel_points(reader)
        down = {"sink": "down", "position": "1"}
        assert 8 == point_for(points["zerotrust.sink.spooled"], **down).value
        assert 0 == point_for(points["zerotrust.sink.delivered"], **down).value
        assert 0 < point_for(points["zerotrust.sink.spool.size"], **down).value
        assert 0 < point_for(points["zerotrust.sink.spool.files"], **down).value
        assert 0 == point_for(points["zerotrust.sink.queue"], **down).value
        assert 0 == point_for(points["zerotrust.emitter.dropped"]).value
        events = point_for(points["zerotrust.events"], event="test")
        assert 8 == events.value
        emitter.close(timeout=1.0)
        provider.shutdown()

    def test_global_provider(self) -> None:
        """Without meter_provider the sink uses the global provider, a no-op until configured."""
        emitter = EventEmitter([OpenTelemetrySink()])
        emitter.emit({"event": "access", "segment": "api", "decision": "allow"})

        assert emitter.flush()
        emitter.close()

    def test_missing_extra(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without opentelemetry-api the sink names the extra to install."""
        monkeypatch.setitem(sys.modules, "opentelemetry", None)

        with pytest.raises(MissingExtraError) as caught:
            OpenTelemetrySink()

        assert "otel" == caught.value.extra
