# SPDX-License-Identifier: Apache-2.0
"""Profile the cached-token request path of zerotrust, one JWT or the full chain, by stage."""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from bench_apps import (
    Credentials,
    cold_request_headers,
    full_chain_app,
    list_items,
    request_headers,
    zerotrust_app,
)
from bench_inprocess import build_scope, discard, receive
from rich.console import Console
from rich.table import Table
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from zerotrust import (
    AccessContext,
    EventEmitter,
    JsonLinesSink,
    Sink,
    VerificationContext,
    ZeroTrustMiddleware,
    get_access,
)
from zerotrust.events import build_access_event
from zerotrust.request import (
    accept_request_id,
    check_raw_path,
    normalize_path,
    parse_host,
    parse_peer,
)

BATCH_SIZE = 256  # the emitter's default batch size
PAUSE = 0.0001


class CountingSink(JsonLinesSink):
    """A `JsonLinesSink` that records the size of every batch it writes."""

    def __init__(self, target: Path) -> None:
        super().__init__(target)
        self.batches: list[int] = []

    def write(self, events: Sequence[dict[str, Any]]) -> None:
        self.batches.append(len(events))
        super().write(events)


def time_call(function: Callable[[], Any], count: int) -> float:
    """Return the CPU microseconds of the calling thread per call of ``function``."""
    started = time.thread_time()
    for _ in range(count):
        function()
    elapsed: float = time.thread_time() - started
    return elapsed / count * 1e6


async def time_request_path(app: Any, scope: Scope, count: int) -> tuple[float, float]:
    """Return µs per request of the request thread and of the whole process (writer included)."""
    thread_started = time.thread_time()
    process_started = time.process_time()
    for _ in range(count):
        await app(dict(scope), receive, discard)
    thread = time.thread_time() - thread_started
    app.events.flush(timeout=60)
    process = time.process_time() - process_started

    return thread / count * 1e6, process / count * 1e6


async def profile_request_path(app: Any, scope: Scope, count: int) -> cProfile.Profile:
    # thread_time counts only this thread, so the writer thread's work does not leak in.
    profiler = cProfile.Profile(time.thread_time)
    profiler.enable()
    for _ in range(count):
        await app(dict(scope), receive, discard)
    profiler.disable()
    app.events.flush(timeout=60)

    return profiler


async def measure_batches(
    app: Any, sink: CountingSink, scope: Scope, pause: float, count: int
) -> str:
    """
    Run requests with a blocking ``pause`` after each; return batch size and CPU per request.

    A server waits in ``epoll`` between requests and releases the GIL there; ``time.sleep``
    does the same, so the writer thread gets to run between requests as it would when served.
    """
    sink.batches.clear()
    started = time.process_time()
    for _ in range(count):
        await app(dict(scope), receive, discard)
        if pause:
            time.sleep(pause)  # noqa: ASYNC251 -- blocking on purpose, see the docstring
    app.events.flush(timeout=60)
    cpu = (time.process_time() - started) / count * 1e6
    mean = sum(sink.batches) / max(1, len(sink.batches))

    return f"{mean:.1f} events per write, {cpu:.1f} µs CPU per request (process)"


def write_events(sink: JsonLinesSink, context: AccessContext, count: int) -> None:
    """Do the writer thread's work for ``count`` events: build, then write in batches."""
    batch: list[dict[str, Any]] = []
    for _ in range(count):
        event = build_access_event(
            context.request, context.decision, status=200, latency=0.0001, decision_time=0.00005
        )
        batch.append(event)
        if len(batch) == BATCH_SIZE:
            sink.write(batch)
            batch = []
    if batch:
        sink.write(batch)


def print_profile(title: str, profiler: cProfile.Profile, count: int, limit: int) -> None:
    """Print the zerotrust functions with the largest cumulative time, in µs per request."""
    stats = pstats.Stats(profiler)
    rows = []
    for (filename, line, function), entry in stats.stats.items():  # type: ignore[attr-defined]
        calls, _primitive, own, cumulative, _callers = entry
        if "/zerotrust/" not in filename:
            continue
        location = filename.split("/zerotrust/", 1)[1]
        rows.append((cumulative, own, calls, f"zerotrust/{location}:{line} {function}"))
    rows.sort(reverse=True)

    table = Table(title=title)
    table.add_column("function")
    table.add_column("calls/request", justify="right")
    table.add_column("cumulative µs", justify="right")
    table.add_column("own µs", justify="right")
    for cumulative, own, calls, name in rows[:limit]:
        table.add_row(
            name,
            f"{calls / count:.2f}",
            f"{cumulative / count * 1e6:.1f}",
            f"{own / count * 1e6:.1f}",
        )
    Console(width=140).print(table)


def protected_app(
    variant: str,
    credentials: Credentials,
    *,
    events_path: Path | None,
    max_queue: int = 10_000,
    app: ASGIApp | None = None,
    sink: Sink | None = None,
) -> tuple[ZeroTrustMiddleware, EventEmitter]:
    """Build the ``rs256-cached`` or ``full-chain`` variant around ``app``."""
    if variant == "full-chain":
        return full_chain_app(
            credentials, events_path=events_path, max_queue=max_queue, app=app, sink=sink
        )
    jwks = credentials.identity.jwks()
    return zerotrust_app(
        jwks, algorithm="RS256", events_path=events_path, max_queue=max_queue, app=app, sink=sink
    )


def cold_stages(credentials: Credentials, directory: Path, count: int) -> list[tuple[str, float]]:
    """
    Time the full chain with cold caches: each verifier on requests it has not seen, then whole
    requests on a new app. Returns the stages in CPU µs of the calling thread per call.
    """
    credentials.add_cold(count)
    scopes = [build_scope(headers) for headers in cold_request_headers(credentials)]
    app, emitter = full_chain_app(
        credentials, events_path=directory / "cold-stages.jsonl", max_queue=4 * count
    )
    segment = app.policy.segments[0]
    verification = VerificationContext(segment)
    requests = [app._access_request(dict(scope))[0] for scope in scopes]
    stages = []
    for verifier in segment.verifiers:
        started = time.thread_time()
        for request in requests:
            verifier.verify_cached(request, verification)
        elapsed = (time.thread_time() - started) / count * 1e6
        stages.append((f"  {type(verifier).__name__}.verify_cached (first request)", elapsed))
    emitter.close()

    # A new app has empty caches, so every one of these requests is its first.
    fresh, fresh_emitter = full_chain_app(
        credentials, events_path=directory / "cold-requests.jsonl", max_queue=4 * count
    )

    async def run_all() -> float:
        started = time.thread_time()
        for scope in scopes:
            await fresh(dict(scope), receive, discard)
        return (time.thread_time() - started) / count * 1e6

    whole = asyncio.run(run_all())
    fresh_emitter.close()
    return [("whole request, request thread (CPU)", whole), *stages]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=5000, help="requests per measurement")
    parser.add_argument("--limit", type=int, default=25, help="rows per profile table")
    parser.add_argument(
        "--variant",
        choices=("rs256-cached", "full-chain"),
        default="rs256-cached",
        help="one cached RS256 JWTVerifier, or the seven verifiers of the full chain",
    )
    parser.add_argument(
        "--cold",
        type=int,
        default=0,
        metavar="N",
        help="with full-chain, also time N requests whose credentials and address are new",
    )
    args = parser.parse_args(argv)
    count: int = args.requests
    variant: str = args.variant

    credentials = Credentials.generate()
    scope = build_scope(request_headers(variant, credentials))
    captured: list[AccessContext] = []

    async def capturing_app(scope: Scope, receive: Receive, send: Send) -> None:
        if not captured:
            access = get_access(scope)
            assert access is not None
            captured.append(access)
        response = await list_items(Request(scope, receive))
        await response(scope, receive, send)

    with tempfile.TemporaryDirectory(prefix="zerotrust-profile-") as directory:
        events_path = Path(directory) / "events.jsonl"
        app, emitter = protected_app(
            variant, credentials, events_path=events_path, max_queue=4 * count
        )
        capturing, capturing_emitter = protected_app(
            variant,
            credentials,
            events_path=Path(directory) / "capture.jsonl",
            app=capturing_app,
        )
        asyncio.run(capturing(dict(scope), receive, discard))
        capturing_emitter.close()
        context = captured[0]
        request = context.request
        segment = app.policy.segments[0]
        verification = VerificationContext(segment)
        headers = Headers(scope=scope)
        peer = parse_peer(scope["client"])
        sink = JsonLinesSink(Path(directory) / "direct.jsonl")

        asyncio.run(time_request_path(app, scope, count // 5))  # warm-up
        thread_us, process_us = asyncio.run(time_request_path(app, scope, count))

        async def decide_many() -> float:
            started = time.thread_time()
            for _ in range(count):
                await app.engine.decide(request)
            elapsed: float = time.thread_time() - started
            return elapsed / count * 1e6

        verifier_stages = [
            (
                f"  {type(verifier).__name__}.verify_cached (cache hit)",
                time_call(partial(verifier.verify_cached, request, verification), count),
            )
            for verifier in segment.verifiers
        ]
        stages = [
            ("whole request, request thread (CPU)", thread_us),
            ("whole request, process incl. writer thread (CPU)", process_us),
            ("  Headers(scope=...)", time_call(lambda: Headers(scope=scope), count)),
            ("  check_raw_path", time_call(lambda: check_raw_path(b"/api/items"), count)),
            ("  normalize_path", time_call(lambda: normalize_path("/api/items"), count)),
            ("  parse_host", time_call(lambda: parse_host(headers.getlist("host")), count)),
            ("  parse_peer", time_call(lambda: parse_peer(("127.0.0.1", 50000)), count)),
            ("  accept_request_id(None)", time_call(lambda: accept_request_id(None), count)),
            (
                "  TrustedProxies.resolve_client",
                time_call(lambda: app.trusted_proxies.resolve_client(peer, headers), count),
            ),
            *verifier_stages,
            ("  Engine.decide (cache hit)", asyncio.run(decide_many())),
            (
                "  build_access_event",
                time_call(
                    lambda: build_access_event(
                        request, context.decision, status=200, latency=0.0001, decision_time=0.00005
                    ),
                    count,
                ),
            ),
            (
                "  build + JsonLinesSink.write, batches of 256",
                time_call(
                    lambda: write_events(sink, context, BATCH_SIZE), max(1, count // BATCH_SIZE)
                )
                / BATCH_SIZE,
            ),
        ]
        table = Table(title=f"Stages of the {variant} path, CPU µs per call ({count} calls)")
        table.add_column("stage")
        table.add_column("µs", justify="right")
        for name, value in stages:
            table.add_row(name, f"{value:.2f}")
        Console(width=140).print(table)

        if args.cold and variant == "full-chain":
            cold = Table(title=f"Full chain with cold caches, CPU µs per call ({args.cold} calls)")
            cold.add_column("stage")
            cold.add_column("µs", justify="right")
            for name, value in cold_stages(credentials, Path(directory), args.cold):
                cold.add_row(name, f"{value:.2f}")
            Console(width=140).print(cold)

        counting_sink = CountingSink(Path(directory) / "counted.jsonl")
        counted, counted_emitter = protected_app(
            variant, credentials, events_path=None, sink=counting_sink
        )
        asyncio.run(measure_batches(counted, counting_sink, scope, 0, count // 5))  # warm-up
        for pause in (0, PAUSE):
            line = asyncio.run(measure_batches(counted, counting_sink, scope, pause, count))
            print(f"writer batches with a {pause * 1e6:g} µs pause after each request: {line}")
        counted_emitter.close()

        profiler = asyncio.run(profile_request_path(app, scope, count))
        print_profile(
            "cProfile, request thread: zerotrust functions (the profiler inflates all numbers)",
            profiler,
            count,
            args.limit,
        )
        writer = cProfile.Profile(time.thread_time)
        writer.runcall(write_events, sink, context, count)
        print_profile(
            "cProfile, writer-thread work run inline: build and write events",
            writer,
            count,
            args.limit,
        )
        sink.close()
        emitter.close()

    return 0


if __name__ == "__main__":
    sys.exit(main())
