# SPDX-License-Identifier: Apache-2.0
"""Measure event rendering per SIEM format, delivery per sink, and request cost per sink."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib.metadata
import json
import os
import platform
import secrets
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
from bench_apps import (
    AUDIENCE,
    PATH,
    SCOPE,
    SUBJECT,
    Credentials,
    DiscardSink,
    bare_app,
    zerotrust_app,
)
from rich.console import Console
from rich.table import Table
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Scope

from zerotrust import EventEmitter, MissingExtraError
from zerotrust.events import (
    JsonLinesSink,
    PostgresSink,
    RotatingFileSink,
    Sink,
    SplunkHecSink,
    SQLiteSink,
    SyslogSink,
    WebhookSink,
    cef_format,
    ecs_format,
    json_format,
    new_event_id,
    ocsf_format,
    redact_secrets,
)
from zerotrust.events.sinks_file import EventFormat, format_event
from zerotrust.testing import capture_events, serve

POSTGRES_DSN = "postgresql://postgres@127.0.0.1:5432/test"
# The default batch size of EventEmitter.
BATCH_SIZE = 256
HEC_PATH = "/services/collector/event"
WEBHOOK_PATH = "/webhook"
HEC_TOKEN = "bench-hec-token"  # noqa: S105 -- the local collector accepts any token
# The body Splunk HEC returns for an accepted batch; SplunkHecSink only checks the 2xx status.
HEC_SUCCESS = b'{"text":"Success","code":0}'


@dataclass(frozen=True)
class Settings:
    """How much each part of the benchmark does; `Settings.quick` runs in about 10 to 20 seconds."""

    format_events: int = 20_000
    format_rounds: int = 3
    sink_events: int = 20_000
    sink_rounds: int = 3
    requests: int = 1_500
    request_rounds: int = 12
    # A sink that has used this many seconds runs no further rounds.
    sink_budget: float = 15.0
    flush_timeout: float = 30.0

    @classmethod
    def quick(cls) -> Settings:
        return cls(2_000, 2, 2_000, 2, 300, 3, sink_budget=3.0, flush_timeout=10.0)


FORMATS: dict[str, EventFormat] = {
    "zerotrust JSON": json_format,
    "ECS": ecs_format,
    "OCSF": ocsf_format,
    "CEF": cef_format,
}

SINKS: dict[str, str] = {
    "jsonl": "JsonLinesSink, file",
    "rotating": "RotatingFileSink",
    "syslog-udp": "SyslogSink UDP",
    "syslog-tcp": "SyslogSink TCP",
    "sqlite": "SQLiteSink",
    "postgres": "PostgresSink",
    "webhook": "WebhookSink",
    "splunk-hec": "SplunkHecSink",
}


# --- Events ------------------------------------------------------------------------------------

USER_AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4_1) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4.1 Safari/605.1.15",
    "curl/8.5.0",
    "python-requests/2.32.3",
    "okhttp/4.12.0",
)


async def capture_templates(credentials: Credentials) -> list[dict[str, Any]]:
    """
    Return the access events of 40 requests to a protected app: 70% allowed, 30% denied.

    Denials are a missing token, a token without the required scope, and an expired token,
    so the events carry the reasons, subjects and verifier details that real traffic does.
    """
    identity = credentials.identity
    valid = credentials.tokens["RS256"]
    wrong_scope = identity.token(
        SUBJECT, audience=AUDIENCE, scopes=["items:write"], alg="RS256", lifetime=3600
    )
    expired = identity.token(
        "bob", audience=AUDIENCE, scopes=[SCOPE], alg="RS256", now=time.time() - 7200
    )
    app, emitter = zerotrust_app(identity.jwks(), algorithm="RS256", events_path=None)

    requests: list[tuple[str, str | None]] = []
    for index in range(40):
        slot = index % 10
        path = (PATH, f"{PATH}?page={index}", f"/api/orders/{1000 + index}")[index % 3]
        if slot < 7:
            requests.append((path, valid))
        elif slot < 8:
            requests.append((path, None))
        elif slot < 9:
            requests.append((path, wrong_scope))
        else:
            requests.append((path, expired))

    transport = httpx.ASGITransport(app=app, client=("198.51.100.23", 51234))
    async with httpx.AsyncClient(transport=transport, base_url="https://api.example.com") as client:
        with capture_events() as events:
            for index, (path, token) in enumerate(requests):
                headers = {"user-agent": USER_AGENTS[index % len(USER_AGENTS)]}
                if token is not None:
                    headers["authorization"] = f"Bearer {token}"
                await client.get(path, headers=headers)
    emitter.close()

    decisions = [event["decision"] for event in events]
    if len(events) != len(requests) or decisions.count("allow") != 28:
        message = (
            f"expected 40 access events with 28 allowed, got {len(events)} with "
            f"{decisions.count('allow')} allowed: check the benchmark app"
        )
        raise RuntimeError(message)

    return events


def make_events(templates: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """Return ``count`` independent copies of the templates, each with its own ``event_id``."""
    events = []
    for index in range(count):
        event: dict[str, Any] = orjson.loads(orjson.dumps(templates[index % len(templates)]))
        event["event_id"] = new_event_id()
        events.append(event)
    return events


def renew_ids(events: list[dict[str, Any]]) -> None:
    """Give every event a fresh ``event_id``, so SQL sinks insert rows instead of skipping them."""
    for event in events:
        event["event_id"] = new_event_id()


# --- Part 1: formats ---------------------------------------------------------------------------


@dataclass
class FormatResult:
    """Median cost of rendering one event, redaction included."""

    name: str
    us_per_event: float
    events_per_second: float
    bytes_per_event: float
    rounds_us: list[float]


def redact_only(event: dict[str, Any]) -> Any:
    return redact_secrets(None, "info", dict(event))


def serialize_only(event: dict[str, Any]) -> bytes:
    return orjson.dumps(event, default=str)


def redact_and_serialize(event: dict[str, Any]) -> bytes:
    # What JsonLinesSink and the HTTP sinks do without a format: no caps, no extra escapes.
    return orjson.dumps(redact_secrets(None, "info", dict(event)), default=str)


def measure_formats(events: list[dict[str, Any]], rounds: int) -> list[FormatResult]:
    """Time each format through `format_event`, the redact-then-format step the sinks run."""
    candidates: list[tuple[str, Callable[[dict[str, Any]], Any]]] = [
        ("orjson.dumps alone, no redaction", serialize_only),
        ("redact_secrets alone", redact_only),
        ("redact_secrets + orjson.dumps", redact_and_serialize),
    ]
    for name, event_format in FORMATS.items():
        try:
            format_event(events[0], event_format)
        except MissingExtraError as error:
            print(f"skipping {name}: {error}", file=sys.stderr)
            continue
        candidates.append((name, _through_format_event(event_format)))

    batches = [events[start : start + BATCH_SIZE] for start in range(0, len(events), BATCH_SIZE)]
    results = []
    for name, render in candidates:
        sample = [render(event) for event in events[:1000]]
        sizes = [len(item) for item in sample if isinstance(item, bytes | str)]
        timings = []
        for _ in range(rounds):
            gc.collect()
            start = time.perf_counter()
            # Sinks keep a batch's rendered lines until they write the batch, so this does too:
            # the allocations cost more than rendering lines that are freed at once.
            for batch in batches:
                rendered = [render(event) for event in batch]
            timings.append((time.perf_counter() - start) / len(events) * 1e6)
            del rendered
        median = statistics.median(timings)
        results.append(
            FormatResult(
                name,
                round(median, 2),
                round(1e6 / median),
                round(statistics.mean(sizes), 1) if sizes else 0.0,
                [round(value, 2) for value in timings],
            )
        )
    return results


def _through_format_event(event_format: EventFormat) -> Callable[[dict[str, Any]], bytes]:
    def render(event: dict[str, Any]) -> bytes:
        result = format_event(event, event_format)
        return result[1] if result is not None else b""

    return render


# --- Receivers ---------------------------------------------------------------------------------


def thread_cpu(thread: threading.Thread) -> float:
    """Return the CPU seconds a live thread used so far, or 0.0 when it cannot be read."""
    if thread.ident is None or not thread.is_alive():
        return 0.0
    try:
        return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
    except (OSError, AttributeError):
        return 0.0


class UdpReceiver:
    """A syslog UDP listener on 127.0.0.1 that counts datagrams and discards them."""

    def __init__(self) -> None:
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        # A larger receive buffer loses fewer datagrams in bursts; the kernel caps it at rmem_max.
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024 * 1024)
        self.socket.bind(("127.0.0.1", 0))
        self.socket.settimeout(0.2)
        self.port: int = self.socket.getsockname()[1]
        self.datagrams = 0
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="bench-udp", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        buffer = bytearray(65536)
        while not self._stop.is_set():
            try:
                self.socket.recv_into(buffer)
            except TimeoutError:
                continue
            except OSError:
                return
            self.datagrams += 1

    def threads(self) -> list[threading.Thread]:
        return [self.thread]

    def close(self) -> None:
        self._stop.set()
        self.thread.join(2)
        self.socket.close()


class TcpReceiver:
    """A syslog TCP listener on 127.0.0.1 that counts octet-counted frames and discards them."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.2)
        self.port: int = self.server.getsockname()[1]
        self.frames = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._connections: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, name="bench-tcp", daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _address = self.server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            connection.settimeout(0.2)
            self._connections.append(connection)
            reader = threading.Thread(
                target=self._read, args=(connection,), name="bench-tcp-reader", daemon=True
            )
            self._threads.append(reader)
            reader.start()

    def _read(self, connection: socket.socket) -> None:
        pending = bytearray()
        while not self._stop.is_set():
            try:
                data = connection.recv(262144)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            pending += data
            position = 0
            # Each frame is "LENGTH SP MESSAGE" (RFC 6587 octet counting).
            while True:
                space = pending.find(b" ", position, position + 12)
                if space < 0:
                    break
                end = space + 1 + int(pending[position:space])
                if end > len(pending):
                    break
                self.frames += 1
                position = end
            del pending[:position]

    def threads(self) -> list[threading.Thread]:
        return [self.thread, *self._threads]

    def close(self) -> None:
        self._stop.set()
        self.thread.join(2)
        for thread in self._threads:
            thread.join(2)
        for connection in self._connections:
            connection.close()
        self.server.close()


@dataclass
class CollectorStats:
    """Requests and body bytes that the HTTP collector accepted."""

    requests: int = 0
    body_bytes: int = 0


def collector_app(stats: CollectorStats) -> Starlette:
    """Build an HTTP collector that accepts every webhook and HEC request and discards it."""

    async def accept(request: Request) -> Response:
        body = await request.body()
        stats.requests += 1
        stats.body_bytes += len(body)
        return Response(HEC_SUCCESS, media_type="application/json")

    return Starlette(
        routes=[
            Route(HEC_PATH, accept, methods=["POST"]),
            Route(WEBHOOK_PATH, accept, methods=["POST"]),
        ]
    )


@dataclass
class Receivers:
    """Everything the sinks deliver to: listeners, a collector, a directory and PostgreSQL."""

    directory: Path
    udp: UdpReceiver
    tcp: TcpReceiver
    collector_url: str
    collector_stats: CollectorStats
    collector_threads: list[threading.Thread]
    postgres_error: str | None
    postgres_tables: list[str] = field(default_factory=list)

    def threads(self) -> list[threading.Thread]:
        return [*self.udp.threads(), *self.tcp.threads(), *self.collector_threads]

    def cpu(self) -> float:
        """Return the CPU seconds used by the receiver threads, to leave out of sink timings."""
        return sum(thread_cpu(thread) for thread in self.threads())


def postgres_unavailable() -> str | None:
    """Return why PostgreSQL cannot be used, or ``None`` when it accepts a connection."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install 'zerotrust-middleware[postgres]')"
    try:
        with psycopg.connect(POSTGRES_DSN, connect_timeout=3) as connection:
            connection.execute("SELECT 1")
    except psycopg.Error as error:
        return f"cannot connect to {POSTGRES_DSN}: {str(error).strip()[:200]}"
    return None


def drop_postgres_tables(tables: list[str]) -> None:
    if not tables:
        return
    import psycopg
    from psycopg import sql

    with psycopg.connect(POSTGRES_DSN, connect_timeout=3, autocommit=True) as connection:
        for table in tables:
            connection.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))


@contextlib.contextmanager
def start_receivers(directory: Path) -> Iterator[Receivers]:
    stats = CollectorStats()
    before = set(threading.enumerate())
    udp = UdpReceiver()
    tcp = TcpReceiver()
    receivers: Receivers | None = None
    try:
        with serve(collector_app(stats), lifespan="off") as url:
            started = [thread for thread in threading.enumerate() if thread not in before]
            collector_threads = [thread for thread in started if thread.name == "zerotrust-serve"]
            receivers = Receivers(
                directory, udp, tcp, url, stats, collector_threads, postgres_unavailable()
            )
            yield receivers
    finally:
        udp.close()
        tcp.close()
        if receivers is not None:
            drop_postgres_tables(receivers.postgres_tables)


def build_sink(key: str, receivers: Receivers, tag: str) -> Sink:
    """Create a fresh sink of kind ``key`` writing to ``receivers``; ``tag`` names its files."""
    directory = receivers.directory
    if key == "jsonl":
        return JsonLinesSink(directory / f"{tag}.jsonl")
    if key == "rotating":
        return RotatingFileSink(directory / f"{tag}-rotating.jsonl")
    if key == "syslog-udp":
        return SyslogSink("127.0.0.1", receivers.udp.port, protocol="udp", timeout=5.0)
    if key == "syslog-tcp":
        return SyslogSink("127.0.0.1", receivers.tcp.port, protocol="tcp", timeout=5.0)
    if key == "sqlite":
        return SQLiteSink(directory / f"{tag}.sqlite3")
    if key == "postgres":
        table = f"zerotrust_bench_{os.getpid()}_{secrets.token_hex(3)}_{tag.replace('-', '_')}"
        receivers.postgres_tables.append(table)
        return PostgresSink(POSTGRES_DSN, table=table)
    if key == "webhook":
        return WebhookSink(receivers.collector_url + WEBHOOK_PATH)
    if key == "splunk-hec":
        return SplunkHecSink(receivers.collector_url + HEC_PATH, token=HEC_TOKEN)
    message = f"unknown sink {key!r}; choose from {', '.join(SINKS)}"
    raise ValueError(message)


def available_sinks(keys: list[str], receivers: Receivers) -> list[str]:
    if "postgres" in keys and receivers.postgres_error is not None:
        print(f"skipping PostgresSink: {receivers.postgres_error}", file=sys.stderr)
        return [key for key in keys if key != "postgres"]
    return keys


# --- Part 2: sinks -----------------------------------------------------------------------------


@dataclass
class SinkResult:
    """Delivery rate of one sink through `EventEmitter`, median over the rounds."""

    key: str
    name: str
    events_per_second: float
    cpu_us_per_event: float
    receiver_cpu_us_per_event: float
    rounds: int
    events: int
    delivered: int
    failed: int
    dropped: int
    confirmed: int | None
    rounds_events_per_second: list[float]


def confirmed_count(key: str, sink: Sink, receivers: Receivers) -> int | None:
    """
    Return the events confirmed so far: messages the syslog listeners counted, or events the
    HTTP collector acknowledged with 2xx. ``None`` for files and databases.
    """
    if key == "syslog-udp":
        return receivers.udp.datagrams
    if key == "syslog-tcp":
        return receivers.tcp.frames
    if key in ("webhook", "splunk-hec") and isinstance(sink, WebhookSink | SplunkHecSink):
        return sink.sent
    return None


def measure_sink(
    key: str, receivers: Receivers, events: list[dict[str, Any]], settings: Settings
) -> SinkResult:
    """Emit the events and flush, round after round, within the sink's time budget."""
    sink = build_sink(key, receivers, f"throughput-{key}")
    capacity = len(events) + 1024
    emitter = EventEmitter([sink], max_queue=capacity, max_sink_queue=capacity)
    channel = emitter.channels[0]

    # Connections, tables and files are created here, outside the timing.
    for event in events[:256]:
        emitter.emit(dict(event))
    emitter.flush(settings.flush_timeout)
    time.sleep(0.1)
    confirmed_before = confirmed_count(key, sink, receivers)
    delivered_before = channel.delivered

    rates: list[float] = []
    cpu_costs: list[float] = []
    receiver_costs: list[float] = []
    spent = 0.0
    emitted = 0
    try:
        for _ in range(settings.sink_rounds):
            if spent > settings.sink_budget:
                break
            renew_ids(events)
            gc.collect()
            receiver_cpu = receivers.cpu()
            cpu_start = time.process_time()
            start = time.perf_counter()
            for event in events:
                emitter.emit(event)
            flushed = emitter.flush(settings.flush_timeout)
            wall = time.perf_counter() - start
            receiver_cpu = receivers.cpu() - receiver_cpu
            cpu = time.process_time() - cpu_start - receiver_cpu
            emitted += len(events)
            spent += wall
            if not flushed:
                print(
                    f"warning: {SINKS[key]} did not take {len(events)} events within "
                    f"{settings.flush_timeout} s; this round counts the time until the timeout",
                    file=sys.stderr,
                )
            rates.append(len(events) / wall)
            cpu_costs.append(cpu / len(events) * 1e6)
            receiver_costs.append(receiver_cpu / len(events) * 1e6)
    finally:
        # Lets a UDP or TCP receiver drain its socket before the count is read.
        time.sleep(0.2)
        confirmed_after = confirmed_count(key, sink, receivers)
        emitter.close(settings.flush_timeout)

    confirmed = None
    if confirmed_after is not None and confirmed_before is not None:
        confirmed = confirmed_after - confirmed_before
    return SinkResult(
        key,
        SINKS[key],
        round(statistics.median(rates)),
        round(statistics.median(cpu_costs), 2),
        round(statistics.median(receiver_costs), 2),
        len(rates),
        emitted,
        channel.delivered - delivered_before,
        channel.failed,
        channel.dropped + emitter.dropped,
        confirmed,
        [round(rate) for rate in rates],
    )


# --- Part 3: request cost per sink -------------------------------------------------------------


@dataclass
class Variant:
    """One application under test for the request-cost part."""

    key: str
    name: str
    app: ASGIApp
    emitter: EventEmitter | None = None
    cpu: list[float] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)
    calls: int = 0


@dataclass
class RequestResult:
    """Median cost of one request with one sink, and its ratio to the bare app."""

    key: str
    name: str
    cpu_us: float
    cpu_ratio: float
    cpu_ratio_of_medians: float
    wall_us: float
    cpu_rounds_us: list[float]
    events_delivered: int | None
    events_lost: int | None


def request_scope(token: str) -> Scope:
    """Build the HTTP scope of ``GET /api/items`` with a bearer token, as uvicorn would."""
    headers = [
        (b"host", b"127.0.0.1:8000"),
        (b"user-agent", USER_AGENTS[0].encode()),
        (b"accept", b"application/json"),
        (b"authorization", f"Bearer {token}".encode()),
    ]
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": PATH,
        "raw_path": PATH.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("198.51.100.23", 51234),
        "server": ("127.0.0.1", 8000),
    }


async def receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


async def discard(_message: Message) -> None:
    return None


def build_request_variants(
    sink_keys: list[str], credentials: Credentials, receivers: Receivers, max_queue: int
) -> list[Variant]:
    jwks = credentials.identity.jwks()
    variants = [Variant("bare", "bare Starlette", bare_app())]
    app, emitter = zerotrust_app(
        jwks, algorithm="RS256", events_path=None, sink=DiscardSink(), max_queue=max_queue
    )
    variants.append(Variant("discard", "zerotrust, events discarded", app, emitter))
    for key in sink_keys:
        sink = build_sink(key, receivers, f"requests-{key}")
        app, emitter = zerotrust_app(
            jwks, algorithm="RS256", events_path=None, sink=sink, max_queue=max_queue
        )
        variants.append(Variant(key, f"zerotrust + {SINKS[key]}", app, emitter))
    return variants


async def check_allowed(variant: Variant, scope: Scope) -> None:
    """Fail unless the variant responds with 200, so a denial is never timed as a success."""
    statuses: list[int] = []

    async def record(message: Message) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    await variant.app(dict(scope), receive, record)
    variant.calls += 1
    if statuses != [200]:
        message = f"{variant.name} responded with {statuses} instead of [200]: check the setup"
        raise RuntimeError(message)


async def run_requests(
    variant: Variant, scope: Scope, count: int, receivers: Receivers, flush_timeout: float
) -> tuple[float, float]:
    """Call the app ``count`` times and flush its events; return wall and CPU seconds."""
    app = variant.app
    gc.collect()
    receiver_cpu = receivers.cpu()
    cpu_start = time.process_time()
    start = time.perf_counter()
    for _ in range(count):
        await app(dict(scope), receive, discard)
    # Events are rendered and written in background threads: wait for them inside the timing.
    if variant.emitter is not None and not variant.emitter.flush(flush_timeout):
        message = f"{variant.name}: events were not delivered within {flush_timeout} s"
        raise RuntimeError(message)
    wall = time.perf_counter() - start
    cpu = time.process_time() - cpu_start - (receivers.cpu() - receiver_cpu)
    variant.calls += count
    return wall, cpu


async def measure_requests(
    variants: list[Variant], scope: Scope, settings: Settings, receivers: Receivers
) -> None:
    warmup = max(100, settings.requests // 5)
    for variant in variants:
        await check_allowed(variant, scope)
        await run_requests(variant, scope, warmup, receivers, settings.flush_timeout)

    # Rounds interleave the variants, so a busy moment of the machine hits all of them alike.
    for _ in range(settings.request_rounds):
        for variant in variants:
            wall, cpu = await run_requests(
                variant, scope, settings.requests, receivers, settings.flush_timeout
            )
            variant.wall.append(wall / settings.requests * 1e6)
            variant.cpu.append(cpu / settings.requests * 1e6)


def summarize_requests(variants: list[Variant], flush_timeout: float) -> list[RequestResult]:
    bare_rounds = variants[0].cpu
    bare_cpu = statistics.median(bare_rounds)
    results = []
    for variant in variants:
        delivered = lost = None
        if variant.emitter is not None:
            variant.emitter.close(flush_timeout)
            channel = variant.emitter.channels[0]
            delivered = channel.delivered
            lost = channel.failed + channel.dropped + variant.emitter.dropped
        cpu = statistics.median(variant.cpu)
        # Each round runs every variant back to back, so a ratio within one round cancels out
        # the slow and fast phases of a shared virtual machine.
        ratios = [mine / bare for mine, bare in zip(variant.cpu, bare_rounds, strict=True)]
        results.append(
            RequestResult(
                variant.key,
                variant.name,
                round(cpu, 2),
                round(statistics.median(ratios), 3),
                round(cpu / bare_cpu, 3),
                round(statistics.median(variant.wall), 2),
                [round(value, 2) for value in variant.cpu],
                delivered,
                lost,
            )
        )
    return results


# --- Reporting ---------------------------------------------------------------------------------


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as file:
        for line in file:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    packages = (
        "zerotrust-middleware",
        "orjson",
        "structlog",
        "httpx",
        "starlette",
        "uvicorn",
        "psycopg",
        "ecs-logging",
    )
    return {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {name: package_version(name) for name in packages},
    }


def load_average() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


def cpu_counters() -> list[int] | None:
    """Return the machine-wide CPU time counters of /proc/stat, or ``None`` off Linux."""
    try:
        with open("/proc/stat", encoding="ascii") as file:
            return [int(value) for value in file.readline().split()[1:9]]
    except (OSError, ValueError):
        return None


def machine_usage(before: list[int] | None, cpu_seconds: float) -> dict[str, float] | None:
    """
    Return the share of the machine's CPU time that was busy, stolen by the hypervisor, and
    used by this process since ``before``, in percent.
    """
    after = cpu_counters()
    if before is None or after is None:
        return None
    # Fields: user, nice, system, idle, iowait, irq, softirq, steal, in clock ticks.
    delta = [end - start for start, end in zip(before, after, strict=True)]
    total = sum(delta)
    if total <= 0:
        return None
    busy = total - delta[3] - delta[4]
    ticks = os.sysconf("SC_CLK_TCK")
    return {
        "busy_percent": round(100 * busy / total, 1),
        "steal_percent": round(100 * delta[7] / total, 1),
        "this_process_percent": round(100 * cpu_seconds * ticks / total, 1),
    }


def wide_console() -> Console:
    # A pipe gets 80 columns by default, which wraps every row.
    return Console(width=max(Console().width, 140))


def print_formats(results: list[FormatResult], events: int, rounds: int) -> None:
    table = Table(title=f"Rendering one event (median of {rounds} rounds x {events} events)")
    table.add_column("format", no_wrap=True)
    table.add_column("µs/event", justify="right")
    table.add_column("events/s", justify="right")
    table.add_column("bytes/event", justify="right")
    for result in results:
        table.add_row(
            result.name,
            f"{result.us_per_event:.2f}",
            f"{result.events_per_second:,.0f}",
            f"{result.bytes_per_event:.0f}" if result.bytes_per_event else "-",
        )
    wide_console().print(table)


def print_sinks(results: list[SinkResult], events: int) -> None:
    table = Table(
        title=f"Delivery through EventEmitter.emit + flush ({events} events a round, median)"
    )
    table.add_column("sink", no_wrap=True)
    table.add_column("events/s", justify="right")
    table.add_column("CPU µs/event", justify="right")
    table.add_column("receiver CPU µs/event", justify="right")
    table.add_column("rounds", justify="right")
    table.add_column("delivered", justify="right")
    table.add_column("confirmed", justify="right")
    table.add_column("failed", justify="right")
    table.add_column("dropped", justify="right")
    for result in results:
        table.add_row(
            result.name,
            f"{result.events_per_second:,.0f}",
            f"{result.cpu_us_per_event:.1f}",
            f"{result.receiver_cpu_us_per_event:.1f}",
            str(result.rounds),
            f"{result.delivered}/{result.events}",
            "-" if result.confirmed is None else str(result.confirmed),
            str(result.failed),
            str(result.dropped),
        )
    wide_console().print(table)


def print_requests(results: list[RequestResult], requests: int, rounds: int) -> None:
    table = Table(
        title=f"Cost per request, events flushed (median of {rounds} rounds x {requests} requests)"
    )
    table.add_column("variant", no_wrap=True)
    table.add_column("CPU µs/req", justify="right")
    table.add_column("CPU µs over bare", justify="right")
    table.add_column("CPU ratio to bare", justify="right")
    table.add_column("wall µs/req", justify="right")
    table.add_column("events lost", justify="right")
    bare = results[0].cpu_us
    for result in results:
        table.add_row(
            result.name,
            f"{result.cpu_us:.1f}",
            f"{result.cpu_us - bare:+.1f}",
            f"{result.cpu_ratio:.2f}x",
            f"{result.wall_us:.1f}",
            "-" if result.events_lost is None else str(result.events_lost),
        )
    wide_console().print(table)


# --- Command line ------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smoke test of about 20 seconds")
    parser.add_argument(
        "--sinks",
        default=",".join(SINKS),
        help=f"comma-separated sinks to measure (default: all of {', '.join(SINKS)})",
    )
    parser.add_argument(
        "--parts",
        default="formats,sinks,requests",
        help="comma-separated parts to run: formats, sinks, requests (default: all)",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    args = parser.parse_args(argv)

    args.sinks = [key.strip() for key in args.sinks.split(",") if key.strip()]
    unknown = [key for key in args.sinks if key not in SINKS]
    if unknown:
        parser.error(f"--sinks: unknown sinks {unknown}; choose from {', '.join(SINKS)}")
    args.parts = [part.strip() for part in args.parts.split(",") if part.strip()]
    unknown = [part for part in args.parts if part not in ("formats", "sinks", "requests")]
    if unknown or not args.parts:
        parser.error(f"--parts: unknown parts {unknown} or none; use formats, sinks, requests")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = Settings.quick() if args.quick else Settings()
    document: dict[str, Any] = {
        "benchmark": "events",
        "settings": asdict(settings),
        "machine": machine_info(),
        "load_average": {"start": load_average()},
    }
    started = time.perf_counter()
    counters = cpu_counters()
    process_cpu = time.process_time()

    credentials = Credentials.generate()
    templates = asyncio.run(capture_templates(credentials))

    if "formats" in args.parts:
        events = make_events(templates, settings.format_events)
        formats = measure_formats(events, settings.format_rounds)
        document["formats"] = [asdict(result) for result in formats]
        document["load_average"]["after_formats"] = load_average()
        print_formats(formats, settings.format_events, settings.format_rounds)
        del events

    with (
        tempfile.TemporaryDirectory(prefix="zerotrust-bench-events-") as directory,
        start_receivers(Path(directory)) as receivers,
    ):
        sink_keys = available_sinks(args.sinks, receivers)
        document["postgres_skipped"] = receivers.postgres_error
        if "sinks" in args.parts:
            events = make_events(templates, settings.sink_events)
            sinks = [measure_sink(key, receivers, events, settings) for key in sink_keys]
            document["sinks"] = [asdict(result) for result in sinks]
            document["load_average"]["after_sinks"] = load_average()
            print_sinks(sinks, settings.sink_events)
            del events

        if "requests" in args.parts:
            max_queue = max(10_000, 2 * settings.requests)
            variants = build_request_variants(sink_keys, credentials, receivers, max_queue)
            scope = request_scope(credentials.tokens["RS256"])
            asyncio.run(measure_requests(variants, scope, settings, receivers))
            requests = summarize_requests(variants, settings.flush_timeout)
            document["requests"] = [asdict(result) for result in requests]
            document["load_average"]["after_requests"] = load_average()
            print_requests(requests, settings.requests, settings.request_rounds)

    elapsed = time.perf_counter() - started
    document["seconds"] = round(elapsed, 1)
    document["cpu_usage"] = machine_usage(counters, time.process_time() - process_cpu)
    machine = document["machine"]
    print(
        f"{elapsed:.1f} s in total; {machine['cpu_model']}, {machine['cpu_count']} CPUs, "
        f"Python {machine['python']}; load average {document['load_average']}; "
        f"CPU usage {document['cpu_usage']}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
