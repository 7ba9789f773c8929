# SPDX-License-Identifier: Apache-2.0
from __future__ import annotations

import asyncio
import contextlib
import gzip
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from zerotrust import EventEmitter, Segment, ZeroTrustMiddleware
from zerotrust.events import WebhookSink
from zerotrust.testing import TokenIssuer, capture_events, serve
from zerotrust.verifiers.identity import JWTVerifier

REQUESTS = 30
# A request that waited for delivery would take at least the sink's retry_timeout (0.3 s).
MAX_REQUEST_SECONDS = 0.25


class Collector:
    """An HTTP event collector that can be switched to 503 or to stalling."""

    def __init__(self) -> None:
        self.up = True
        self.stall = 0.0
        self.events: list[dict[str, Any]] = []
        self.attempts = 0
        self.lock = threading.Lock()
        self.app = Starlette(routes=[Route("/hook", self.hook, methods=["POST"])])

    async def hook(self, request: Request) -> Response:
        body = await request.body()
        if request.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        with self.lock:
            self.attempts += 1
        if self.stall:
            await asyncio.sleep(self.stall)
        if not self.up:
            return PlainTextResponse("collector down", status_code=503)
        with self.lock:
            self.events.extend(orjson.loads(body))
        return JSONResponse({"accepted": True})

    def event_ids(self) -> list[str]:
        with self.lock:
            return [event["event_id"] for event in self.events]


@contextlib.contextmanager
def serve_on_port(app: Any, port: int) -> Iterator[None]:
    """Serve ``app`` with uvicorn on a given loopback port, to restart a stopped collector."""
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="collector", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive(), f"the collector did not start on port {port}"
        assert time.monotonic() < deadline, f"the collector did not start on port {port} in 10 s"
        time.sleep(0.01)
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(10)


def wait_for(condition: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return bool(condition())


def webhook(base_url: str, **options: Any) -> WebhookSink:
    """A webhook sink with small retry bounds, so a test outage costs fractions of a second."""
    settings: dict[str, Any] = {
        "timeout": 2.0,
        "connect_timeout": 0.5,
        "retry_timeout": 0.3,
        "max_retries": 2,
        "backoff": 0.01,
        "max_backoff": 0.05,
    }
    settings.update(options)
    return WebhookSink(f"{base_url}/hook", **settings)


def outage_emitter(sink: WebhookSink, spool_dir: Path) -> EventEmitter:
    return EventEmitter(
        [sink],
        spool_dir=spool_dir,
        retry_initial=0.05,
        retry_max=0.2,
        batch_size=8,
        flush_interval=0.05,
    )


async def hello(_request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello")


def protected_app(issuer: TokenIssuer, emitter: EventEmitter) -> ZeroTrustMiddleware:
    identity = JWTVerifier(
        issuer=issuer.issuer, audience="api", algorithms=["RS256"], keys=issuer.jwks()
    )
    app = Starlette(routes=[Route("/{path:path}", hello)])
    segment = Segment("api", paths=["/api/"], verifiers=[identity])
    return ZeroTrustMiddleware(app, policy=[segment], events=emitter)


async def send_requests(issuer: TokenIssuer, app: Any, count: int) -> list[float]:
    """Send ``count`` requests in turn, half of them without a token; return their durations."""
    token = issuer.token("alice")
    durations = []
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        for number in range(count):
            headers = {"authorization": f"Bearer {token}"} if number % 2 else {}
            started = time.perf_counter()
            await client.get(f"/api/items/{number}", headers=headers)
            durations.append(time.perf_counter() - started)
    return durations


def spooled_ids(spool_dir: Path) -> list[str]:
    """Event ids in the spool files, oldest file first."""
    ids = []
    for path in sorted(spool_dir.glob("*/*.jsonl")):
        ids += [orjson.loads(line)["event_id"] for line in path.read_bytes().splitlines()]
    return ids


@pytest.fixture(name="served_collector")
def fixture_served_collector() -> Iterator[tuple[Collector, str]]:
    """A fresh collector served by uvicorn on 127.0.0.1."""
    collector = Collector()
    with serve(collector.app, lifespan="off") as base_url:
        yield collector, base_url


class TestCollectorOutage:
    async def test_503_outage_loses_nothing(
        self, issuer: TokenIssuer, served_collector: tuple[Collector, str], tmp_path: Path
    ) -> None:
        """Events sent while the collector returns 503 arrive once each, in order, on recovery."""
        collector, base_url = served_collector
        emitter = outage_emitter(webhook(base_url), tmp_path)
        app = protected_app(issuer, emitter)
        channel = emitter.channels[0]

        collector.up = False
        with capture_events() as captured:
            durations = await send_requests(issuer, app, REQUESTS)
        expected = [event["event_id"] for event in captured]

        assert wait_for(lambda: channel.spooled >= REQUESTS)
        assert [] == collector.event_ids()
        assert collector.attempts > 0
        collector.up = True

        assert wait_for(lambda: len(collector.event_ids()) >= REQUESTS)
        assert emitter.flush()
        # Longer than retry_max, so a duplicate replay would have arrived.
        await asyncio.sleep(0.4)
        received = collector.event_ids()
        assert REQUESTS == len(expected)
        assert expected == received
        timestamps = [event["timestamp"] for event in collector.events]
        assert sorted(timestamps) == timestamps
        assert 0 == len(channel.spool or ())
        assert 0 == channel.failed
        assert 0 == channel.dropped
        assert max(durations) < MAX_REQUEST_SECONDS
        assert statistics.median(durations) < 0.05
        emitter.close()

    async def test_stopped_collector_restarted(self, issuer: TokenIssuer, tmp_path: Path) -> None:
        """Events sent while nothing listens arrive once each, in order, after a restart."""
        collector = Collector()
        with serve(collector.app, lifespan="off") as base_url:
            emitter = outage_emitter(webhook(base_url), tmp_path)
            app = protected_app(issuer, emitter)
        port = int(base_url.rsplit(":", 1)[1])
        channel = emitter.channels[0]

        with capture_events() as captured:
            durations = await send_requests(issuer, app, REQUESTS)
        expected = [event["event_id"] for event in captured]
        assert wait_for(lambda: channel.spooled >= REQUESTS)
        assert 0 == collector.attempts

        with serve_on_port(collector.app, port):
            assert wait_for(lambda: len(collector.event_ids()) >= REQUESTS)
            assert emitter.flush()
            await asyncio.sleep(0.4)
            received = collector.event_ids()
            emitter.close()

        assert expected == received
        assert 0 == len(channel.spool or ())
        assert max(durations) < MAX_REQUEST_SECONDS


class TestShutdown:
    async def test_close_delivers_queued(
        self, issuer: TokenIssuer, served_collector: tuple[Collector, str], tmp_path: Path
    ) -> None:
        """With the collector up, close delivers every queued event within its timeout."""
        collector, base_url = served_collector
        emitter = outage_emitter(webhook(base_url), tmp_path)
        app = protected_app(issuer, emitter)

        with capture_events() as captured:
            await send_requests(issuer, app, REQUESTS)
        started = time.monotonic()
        emitter.close(timeout=2.0)
        elapsed = time.monotonic() - started

        assert elapsed < 2.5
        assert [event["event_id"] for event in captured] == collector.event_ids()
        assert [] == spooled_ids(tmp_path)

    async def test_close_spools_when_down(
        self, issuer: TokenIssuer, served_collector: tuple[Collector, str], tmp_path: Path
    ) -> None:
        """With the collector down, close spools every queued event within its timeout."""
        collector, base_url = served_collector
        collector.up = False
        emitter = outage_emitter(webhook(base_url), tmp_path)
        app = protected_app(issuer, emitter)

        with capture_events() as captured:
            await send_requests(issuer, app, REQUESTS)
        started = time.monotonic()
        emitter.close(timeout=1.0)
        elapsed = time.monotonic() - started

        assert elapsed < 1.5
        assert [] == collector.event_ids()
        assert [event["event_id"] for event in captured] == spooled_ids(tmp_path)

    async def test_spool_replayed_after_restart(
        self, issuer: TokenIssuer, served_collector: tuple[Collector, str], tmp_path: Path
    ) -> None:
        """Events spooled at close reach the collector from the next emitter, before new ones."""
        collector, base_url = served_collector
        collector.up = False
        first = outage_emitter(webhook(base_url), tmp_path)
        with capture_events() as captured:
            await send_requests(issuer, protected_app(issuer, first), REQUESTS)
        first.close(timeout=1.0)
        collector.up = True

        second = outage_emitter(webhook(base_url), tmp_path)
        with capture_events() as later:
            await send_requests(issuer, protected_app(issuer, second), 2)
        expected = [event["event_id"] for event in captured + later]

        assert wait_for(lambda: len(collector.event_ids()) >= len(expected))
        second.close()
        assert expected == collector.event_ids()
        assert [] == spooled_ids(tmp_path)

    def test_spool_replayed_without_new_events(
        self, served_collector: tuple[Collector, str], tmp_path: Path
    ) -> None:
        """A spool found at start-up is replayed even if no new event arrives."""
        collector, base_url = served_collector
        collector.up = False
        first = outage_emitter(webhook(base_url), tmp_path)
        for number in range(5):
            first.emit({"event": "test", "event_id": f"id-{number}", "timestamp": str(number)})
        first.close(timeout=1.0)
        collector.up = True

        second = outage_emitter(webhook(base_url), tmp_path)
        try:
            assert wait_for(lambda: 5 == len(collector.event_ids()), timeout=2.0)
        finally:
            second.close()

    def test_close_accounts_for_batch_in_flight(
        self, served_collector: tuple[Collector, str], tmp_path: Path
    ) -> None:
        """A batch still being written when close times out is spooled before close returns."""
        collector, base_url = served_collector
        collector.up = False
        collector.stall = 1.5
        # The sink does not close a client it was given, so the stalled write stays in flight.
        with httpx.Client() as client:
            sink = webhook(base_url, client=client, timeout=3.0, retry_timeout=3.0)
            emitter = outage_emitter(sink, tmp_path)
            for number in range(20):
                emitter.emit({"event": "test", "event_id": f"id-{number:02d}"})
            assert wait_for(lambda: collector.attempts >= 1)
            emitter.close(timeout=0.5)

            accounted = spooled_ids(tmp_path) + collector.event_ids()
            assert [f"id-{number:02d}" for number in range(20)] == sorted(accounted)
