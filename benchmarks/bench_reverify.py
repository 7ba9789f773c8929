# SPDX-License-Identifier: Apache-2.0
"""Measure what ``reverify_every`` adds per websocket message and per plain HTTP request.

Run: ``.venv/bin/python benchmarks/bench_reverify.py``. The middleware runs in-process with a
verifier that always allows, so the numbers show only the cost of watching the connection.
Both variants run interleaved in one process, and the script prints the median of the rounds.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

from zerotrust import MemorySink, Segment, ZeroTrustMiddleware
from zerotrust.testing import allow

MESSAGES = 5_000
REQUESTS = 5_000
ROUNDS = 15

_SCOPE: dict[str, Any] = {
    "path": "/live",
    "raw_path": b"/live",
    "root_path": "",
    "headers": [(b"host", b"bench.test")],
    "client": ("127.0.0.1", 50000),
    "query_string": b"",
}


async def websocket_app(scope: Any, receive: Any, send: Any) -> None:
    await receive()
    await send({"type": "websocket.accept"})
    for _ in range(MESSAGES):
        await receive()
        await send({"type": "websocket.send", "text": "x"})
    await send({"type": "websocket.close", "code": 1000})


async def http_app(scope: Any, receive: Any, send: Any) -> None:
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def protect(app: Any, reverify_every: float | None) -> ZeroTrustMiddleware:
    segment = Segment("live", paths=["/live"], verifiers=[allow()])
    return ZeroTrustMiddleware(
        app, policy=[segment], events=MemorySink(), reverify_every=reverify_every
    )


async def _discard(_message: Any) -> None:
    return None


async def microseconds_per_message(app: ZeroTrustMiddleware) -> float:
    connected = False

    async def receive() -> dict[str, Any]:
        nonlocal connected
        # A server's receive suspends when no message is queued yet.
        await asyncio.sleep(0)
        if not connected:
            connected = True
            return {"type": "websocket.connect"}
        return {"type": "websocket.receive", "text": "x"}

    started = time.perf_counter()
    await app({**_SCOPE, "type": "websocket", "scheme": "ws"}, receive, _discard)
    return (time.perf_counter() - started) / MESSAGES * 1e6


async def microseconds_per_request(app: ZeroTrustMiddleware) -> float:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    scope = {**_SCOPE, "type": "http", "scheme": "http", "method": "GET"}
    started = time.perf_counter()
    for _ in range(REQUESTS):
        await app(dict(scope), receive, _discard)
    return (time.perf_counter() - started) / REQUESTS * 1e6


async def main() -> None:
    results: dict[str, list[float]] = {}
    for _ in range(ROUNDS):
        for reverify_every in (None, 30.0):
            label = "off" if reverify_every is None else "on"
            per_message = await microseconds_per_message(protect(websocket_app, reverify_every))
            per_request = await microseconds_per_request(protect(http_app, reverify_every))
            results.setdefault(f"websocket message, reverify {label}", []).append(per_message)
            results.setdefault(f"plain HTTP request, reverify {label}", []).append(per_request)

    for name, values in results.items():
        print(f"{name}: {statistics.median(values):.1f} us (median of {ROUNDS} rounds)")


if __name__ == "__main__":
    asyncio.run(main())
