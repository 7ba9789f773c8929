# SPDX-License-Identifier: Apache-2.0
"""Measure the per-request cost of zerotrust in-process, as a ratio to the bare Starlette app."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench_apps import (
    COLD_VARIANTS,
    PATH,
    VARIANTS,
    Credentials,
    build_variant,
    cold_request_headers,
    request_headers,
)
from bench_machine import machine_info, warn_if_sources_changed
from rich.console import Console
from rich.table import Table
from starlette.types import ASGIApp, Message, Scope

from zerotrust import EventEmitter

DEFAULT_REQUESTS = 8000
DEFAULT_ROUNDS = 5
QUICK_REQUESTS = 400
QUICK_ROUNDS = 3
# Every request of a cold variant needs credentials signed beforehand, so it runs fewer.
DEFAULT_COLD_REQUESTS = 1000
QUICK_COLD_REQUESTS = 100
COLD_WARMUP = 100


@dataclass
class Variant:
    """
    One application under test, with the scope it is called with.

    A cold variant has one scope per request in ``cold_scopes``, each used once, and ``scope``
    is the first of them.
    """

    name: str
    app: ASGIApp
    scope: Scope
    emitter: EventEmitter | None = None
    events_path: Path | None = None
    cold_scopes: list[Scope] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    calls: int = 0

    def next_scopes(self, count: int) -> list[Scope]:
        """Take the next ``count`` unused scopes of a cold variant."""
        taken = self.cold_scopes[self.calls : self.calls + count]
        if len(taken) != count:
            message = f"{self.name} has no unused credentials left for {count} requests"
            raise RuntimeError(message)
        return taken


@dataclass
class Result:
    """Median cost of one variant, in microseconds per request."""

    name: str
    wall_us: float
    cpu_us: float
    wall_ratio: float
    cpu_ratio: float
    wall_rounds_us: list[float]
    cpu_rounds_us: list[float]
    events_written: int | None
    events_dropped: int | None


def build_scope(credential_headers: list[tuple[str, str]]) -> Scope:
    """Build an HTTP scope shaped like the ones uvicorn creates for ``GET /api/items``."""
    headers = [
        (b"host", b"127.0.0.1:8000"),
        (b"user-agent", b"bench-inprocess/1"),
        (b"accept", b"*/*"),
    ]
    headers += [(name.encode(), value.encode()) for name, value in credential_headers]
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
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }


async def receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


async def discard(_message: Message) -> None:
    return None


def build_variants(
    keys: list[str], credentials: Credentials, events_dir: Path, max_queue: int
) -> list[Variant]:
    """Build the variants named by ``keys``; static keys mean that no network is involved."""
    variants = []
    cold_scopes = [build_scope(headers) for headers in cold_request_headers(credentials)]
    for key in keys:
        bench = build_variant(key, credentials, events_dir=events_dir, max_queue=max_queue)
        if key in COLD_VARIANTS:
            variant = Variant(
                bench.label, bench.app, cold_scopes[0], bench.emitter, bench.events_path
            )
            variant.cold_scopes = cold_scopes
        else:
            scope = build_scope(request_headers(key, credentials))
            variant = Variant(bench.label, bench.app, scope, bench.emitter, bench.events_path)
        variants.append(variant)

    return variants


async def check(variant: Variant) -> None:
    """Fail fast unless the variant responds with 200, so a denial is never timed as a success."""
    statuses: list[int] = []

    async def record(message: Message) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    scope = variant.next_scopes(1)[0] if variant.cold_scopes else variant.scope
    await variant.app(dict(scope), receive, record)
    variant.calls += 1
    if statuses != [200]:
        message = (
            f"{variant.name} responded with {statuses} instead of [200]: check the benchmark setup"
        )
        raise RuntimeError(message)


async def run_round(variant: Variant, requests: int) -> tuple[float, float]:
    """Call the app ``requests`` times; return wall and CPU seconds, event delivery included."""
    app = variant.app
    scope = variant.scope
    cold = variant.next_scopes(requests) if variant.cold_scopes else None
    gc.collect()

    wall_start = time.perf_counter()
    cpu_start = time.process_time()
    if cold is None:
        for _ in range(requests):
            # A server builds a fresh scope per request, and apps add keys to it.
            await app(dict(scope), receive, discard)
    else:
        for scope in cold:
            await app(dict(scope), receive, discard)
    # Rendering and writing happen in the emitter's thread: wait for them inside the timing.
    if variant.emitter is not None and not variant.emitter.flush(timeout=60):
        message = f"{variant.name}: events were not written within 60 s"
        raise RuntimeError(message)
    cpu = time.process_time() - cpu_start
    wall = time.perf_counter() - wall_start
    variant.calls += requests

    return wall, cpu


async def measure(
    variants: list[Variant], requests: int, rounds: int, warmup: int, cold_requests: int
) -> None:
    for variant in variants:
        await check(variant)
        await run_round(variant, COLD_WARMUP if variant.cold_scopes else warmup)

    # Rounds interleave the variants, so a slow phase of the machine hits all of them alike.
    for _ in range(rounds):
        for variant in variants:
            count = cold_requests if variant.cold_scopes else requests
            wall, cpu = await run_round(variant, count)
            variant.wall.append(wall / count * 1e6)
            variant.cpu.append(cpu / count * 1e6)


def summarize(variants: list[Variant]) -> list[Result]:
    bare_wall = statistics.median(variants[0].wall)
    bare_cpu = statistics.median(variants[0].cpu)
    results = []
    for variant in variants:
        wall = statistics.median(variant.wall)
        cpu = statistics.median(variant.cpu)
        written = dropped = None
        if variant.emitter is not None:
            variant.emitter.close()
        if variant.emitter is not None and variant.events_path is not None:
            with variant.events_path.open("rb") as file:
                written = sum(1 for _ in file)
            dropped = variant.emitter.dropped
        results.append(
            Result(
                variant.name,
                round(wall, 2),
                round(cpu, 2),
                round(wall / bare_wall, 3),
                round(cpu / bare_cpu, 3),
                [round(value, 2) for value in variant.wall],
                [round(value, 2) for value in variant.cpu],
                written,
                dropped,
            )
        )
        if written is not None and (written != variant.calls or dropped):
            print(
                f"warning: {variant.name} wrote {written} events for {variant.calls} requests "
                f"({dropped} dropped): its timing excludes the missing events",
                file=sys.stderr,
            )

    return results


def print_table(results: list[Result], requests: int, rounds: int) -> None:
    table = Table(
        title=f"In-process cost per request (median of {rounds} rounds x {requests} requests)"
    )
    table.add_column("variant", no_wrap=True)
    table.add_column("wall µs/req", justify="right")
    table.add_column("CPU µs/req", justify="right")
    table.add_column("CPU µs over bare", justify="right")
    table.add_column("wall ratio", justify="right")
    table.add_column("CPU ratio", justify="right")
    bare_cpu = results[0].cpu_us
    for result in results:
        table.add_row(
            result.name,
            f"{result.wall_us:.1f}",
            f"{result.cpu_us:.1f}",
            f"{result.cpu_us - bare_cpu:+.1f}",
            f"{result.wall_ratio:.2f}x",
            f"{result.cpu_ratio:.2f}x",
        )
    # A pipe gets 80 columns by default, which wraps every row.
    Console(width=max(Console().width, 140)).print(table)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--requests",
        type=int,
        default=None,
        help=f"requests per variant and round (default {DEFAULT_REQUESTS}, {QUICK_REQUESTS} quick)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help=f"timed rounds per variant; the median is reported (default {DEFAULT_ROUNDS})",
    )
    parser.add_argument(
        "--cold-requests",
        type=int,
        default=None,
        help=(
            "requests per round of a cold variant, each with new credentials (default "
            f"{DEFAULT_COLD_REQUESTS}, {QUICK_COLD_REQUESTS} quick)"
        ),
    )
    parser.add_argument(
        "--quick", action="store_true", help="a run of a few seconds, for a smoke test"
    )
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help="comma-separated variant keys; ratios are to the first (default: all, bare first)",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    args = parser.parse_args(argv)
    args.variants = [key.strip() for key in args.variants.split(",") if key.strip()]
    unknown = [key for key in args.variants if key not in VARIANTS]
    if unknown or not args.variants:
        parser.error(
            f"--variants: unknown variants {unknown} or none given; "
            f"choose from {', '.join(VARIANTS)}"
        )
    if args.requests is None:
        args.requests = QUICK_REQUESTS if args.quick else DEFAULT_REQUESTS
    if args.rounds is None:
        args.rounds = QUICK_ROUNDS if args.quick else DEFAULT_ROUNDS
    if args.cold_requests is None:
        args.cold_requests = QUICK_COLD_REQUESTS if args.quick else DEFAULT_COLD_REQUESTS
    if args.requests < 1 or args.rounds < 1 or args.cold_requests < 1:
        parser.error(
            f"--requests and --rounds must be at least 1, not {args.requests} and {args.rounds}"
        )

    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    warmup = max(100, args.requests // 5)
    machine = machine_info()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="zerotrust-bench-") as directory:
        credentials = Credentials.generate()
        if COLD_VARIANTS.intersection(args.variants):
            credentials.add_cold(1 + COLD_WARMUP + args.rounds * args.cold_requests)
        # The queue holds a whole round, so no event is dropped and every one is timed.
        variants = build_variants(
            args.variants,
            credentials,
            Path(directory),
            max_queue=max(10_000, 2 * args.requests),
        )
        asyncio.run(measure(variants, args.requests, args.rounds, warmup, args.cold_requests))
        results = summarize(variants)
    elapsed = time.perf_counter() - started
    warn_if_sources_changed(machine)

    print_table(results, args.requests, args.rounds)
    print(f"{elapsed:.1f} s in total; {machine}")
    if args.json:
        document = {
            "benchmark": "inprocess",
            "requests": args.requests,
            "rounds": args.rounds,
            "cold_requests": args.cold_requests,
            "warmup": warmup,
            "machine": machine,
            "load_average_end": [round(value, 2) for value in os.getloadavg()],
            "results": [asdict(result) for result in results],
        }
        Path(args.json).write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")

    return 0


if __name__ == "__main__":
    sys.exit(main())
