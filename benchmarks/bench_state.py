# SPDX-License-Identifier: Apache-2.0
"""Measure the request overhead of shared state on Redis against state in memory, in-process.

Three apps answer the same request: the bare app, and zerotrust with a risk, a grant and a
device verifier whose state is in a `MemoryStateStore` or in a `RedisStateStore`. Each app is
called directly as ASGI, first one request at a time, then ``--concurrency`` at once, and the
cost is reported per request and as a ratio to the bare app in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

import redis

from zerotrust import EventEmitter, Policy, Segment, ZeroTrustMiddleware
from zerotrust.devices import DeviceRecord, StateDeviceRegistry
from zerotrust.events import MemorySink
from zerotrust.grants import GrantBroker, GrantVerifier, generate_signing_key
from zerotrust.grants.store import StateGrantStore
from zerotrust.monitor import RiskSignals, RiskVerifier
from zerotrust.state import MemoryStateStore, RedisStateStore, StateStore
from zerotrust.testing import TokenIssuer
from zerotrust.verifiers import DeviceVerifier, JWTVerifier

REDIS_URL = "redis://127.0.0.1:6379/0"


@dataclass
class Result:
    """Median cost of one app in one mode, in microseconds per request."""

    name: str
    mode: str
    wall_us: float
    cpu_us: float
    wall_ratio: float
    cpu_ratio: float
    round_trips_per_request: float | None


async def bare(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def build(store: StateStore) -> tuple[Any, list[tuple[bytes, bytes]]]:
    """Return the protected app on ``store`` and the headers of an allowed request."""
    issuer = TokenIssuer(algorithms=("RS256",))
    devices = TokenIssuer(issuer="https://mdm.test", algorithms=("ES256",))
    grants = StateGrantStore(store)
    broker = GrantBroker(signing_key=generate_signing_key(), store=grants)
    registry = StateDeviceRegistry(store)
    registry.put(DeviceRecord("pc-1", owner="alice", managed=True))
    issued = broker.mint(
        subject="alice",
        segment="ops",
        methods=["GET"],
        paths=["/ops/"],
        reason="benchmark",
        requested_by="alice",
        duration=3600,
    )
    identity = JWTVerifier(
        issuer=issuer.issuer, audience="api", algorithms=["RS256"], keys=issuer.jwks()
    )
    device = DeviceVerifier(
        issuer="https://mdm.test",
        audience="devices",
        algorithms=["ES256"],
        keys=devices.jwks(),
        registry=registry,
    )
    segment = Segment(
        "ops",
        paths=["/ops/"],
        roles=["operator"],
        verifiers=[
            identity,
            RiskVerifier(RiskSignals(store)),
            GrantVerifier(keys=broker.public_jwks(), store=grants, use_event_interval=3600),
            device,
        ],
    )
    app = ZeroTrustMiddleware(bare, policy=Policy([segment]), events=EventEmitter([MemorySink()]))
    headers = [
        (b"authorization", f"Bearer {issuer.token('alice', lifetime=3600)}".encode()),
        (b"x-zerotrust-grant", issued.token.encode()),
        (
            b"x-device-assertion",
            devices.token("pc-1", audience="devices", user="alice", lifetime=3600).encode(),
        ),
    ]
    return app, headers


def scope_for(headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/ops/restart",
        "raw_path": b"/ops/restart",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"api.test"), *headers],
        "client": ("192.0.2.10", 50000),
        "server": ("127.0.0.1", 8000),
    }


async def call(app: Any, scope: dict[str, Any]) -> int:
    status = 0

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


async def run(
    app: Any, scope: dict[str, Any], requests: int, concurrency: int
) -> tuple[float, float]:
    """Return wall and CPU seconds per request for ``requests`` calls, ``concurrency`` at a time."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(requests // concurrency):
        if concurrency == 1:
            status = await call(app, scope)
            statuses = [status]
        else:
            statuses = await asyncio.gather(*(call(app, scope) for _ in range(concurrency)))
        if any(status != 200 for status in statuses):
            message = f"the benchmark request was not allowed: {statuses[:3]}"
            raise RuntimeError(message)
    done = (requests // concurrency) * concurrency
    return (time.perf_counter() - wall) / done, (time.process_time() - cpu) / done


async def measure(arguments: argparse.Namespace, namespace: str) -> list[Result]:
    redis_store = RedisStateStore(REDIS_URL, namespace=namespace)
    apps: dict[str, tuple[Any, dict[str, Any], RedisStateStore | None]] = {
        "bare": (bare, scope_for([]), None),
    }
    memory_app, memory_headers = build(MemoryStateStore())
    apps["memory store"] = (memory_app, scope_for(memory_headers), None)
    redis_app, redis_headers = build(redis_store)
    apps["redis store"] = (redis_app, scope_for(redis_headers), redis_store)

    results: list[Result] = []
    for concurrency in (1, arguments.concurrency):
        mode = "sequential" if concurrency == 1 else f"{concurrency} concurrent"
        medians: dict[str, tuple[float, float, float | None]] = {}
        for name, (app, scope, store) in apps.items():
            await run(app, scope, min(200, arguments.requests), concurrency)
            walls, cpus = [], []
            trips_before = store.round_trips if store is not None else 0
            for _ in range(arguments.rounds):
                wall, cpu = await run(app, scope, arguments.requests, concurrency)
                walls.append(wall)
                cpus.append(cpu)
            trips = None
            if store is not None:
                trips = (store.round_trips - trips_before) / (arguments.requests * arguments.rounds)
            medians[name] = (statistics.median(walls), statistics.median(cpus), trips)
        base_wall, base_cpu, _ = medians["bare"]
        for name, (wall, cpu, trips) in medians.items():
            results.append(
                Result(
                    name,
                    mode,
                    round(wall * 1e6, 1),
                    round(cpu * 1e6, 1),
                    round(wall / base_wall, 2),
                    round(cpu / base_cpu, 2),
                    None if trips is None else round(trips, 3),
                )
            )
    await redis_store.aclose()
    redis_store.close()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=4000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; the median is reported")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight at once")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    arguments = parser.parse_args(argv)

    namespace = f"zt-bench-{uuid.uuid4().hex[:12]}"
    try:
        results = asyncio.run(measure(arguments, namespace))
    finally:
        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=f"{namespace}:*", count=500))
        if keys:
            client.delete(*keys)
        client.close()

    print(f"{'app':14} {'mode':15} {'wall µs':>8} {'CPU µs':>8} {'wall x':>7} {'CPU x':>7} trips")
    for result in results:
        trips = "" if result.round_trips_per_request is None else result.round_trips_per_request
        print(
            f"{result.name:14} {result.mode:15} {result.wall_us:8.1f} {result.cpu_us:8.1f} "
            f"{result.wall_ratio:7.2f} {result.cpu_ratio:7.2f} {trips}"
        )
    if arguments.json:
        with open(arguments.json, "w") as file:
            json.dump([asdict(result) for result in results], file, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
