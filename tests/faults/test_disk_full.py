# SPDX-License-Identifier: Apache-2.0
"""
A spool on a disk that refuses writes, while the sink it protects is down.

The child process lowers its file size limit (``RLIMIT_FSIZE``) so that the kernel fails every
spool write, as it does on a full disk. Requests must still get responses, the other sinks must
go on receiving events, and the loss must be counted and reported as ``events_dropped``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="RLIMIT_FSIZE with SIGXFSZ ignored is Linux"
)

CHILD = textwrap.dedent(
    """
    import asyncio, json, resource, signal, sys, time

    import httpx
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from zerotrust import EventEmitter, Segment, ZeroTrustMiddleware
    from zerotrust.events.sinks import MemorySink, Sink
    from zerotrust.testing import allow

    class Down(Sink):
        name = "down"

        def write(self, events):
            raise ConnectionError("collector unreachable")

    memory = MemorySink()
    down = Down()
    emitter = EventEmitter(
        [down, memory],
        spool_dir=sys.argv[1],
        flush_interval=0.02,
        batch_size=8,
        max_sink_queue=1000,
        retry_initial=30.0,
        drop_report_interval=0.1,
    )

    async def hello(request):
        return PlainTextResponse("hello")

    app = ZeroTrustMiddleware(
        Starlette(routes=[Route("/api/hello", hello)]),
        policy=[Segment("api", paths=["/api/"], verifiers=[allow()])],
        events=emitter,
    )

    # From here on, every write to a file fails as on a full disk.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (16, 16))

    async def main():
        transport = httpx.ASGITransport(app=app)
        statuses = []
        started = time.monotonic()
        async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
            for _ in range(200):
                statuses.append((await client.get("/api/hello")).status_code)
                await asyncio.sleep(0.001)
        return statuses, time.monotonic() - started

    statuses, elapsed = asyncio.run(main())
    time.sleep(0.5)
    emitter.flush(2.0)
    channel = emitter.channels[0]
    kinds = [event.get("event") for event in memory.events]
    print(json.dumps({
        "statuses": sorted(set(statuses)),
        "elapsed": elapsed,
        "access_events": kinds.count("access"),
        "drop_reports": [e for e in memory.events if e.get("event") == "events_dropped"],
        "dropped": channel.dropped,
        "spooled": channel.spooled,
        "writer_alive": emitter._thread is not None and emitter._thread.is_alive(),
    }))
    """
)


def test_unwritable_spool_counts_drops(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    environment = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    result = subprocess.run(  # noqa: S603 -- runs this test's own child script
        [sys.executable, "-c", CHILD, str(spool)],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment,
        check=False,
    )
    assert 0 == result.returncode, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])

    assert [200] == report["statuses"]
    # The memory sink kept receiving events while the spool could not be written.
    assert 200 == report["access_events"]
    assert report["writer_alive"]
    assert 0 == report["spooled"]
    assert 150 <= report["dropped"]
    assert report["drop_reports"], "the loss was never reported"
    assert {"spool_unwritable"} == {entry["reason"] for entry in report["drop_reports"]}
    # No half-written batch is left behind.
    assert [] == [path.name for path in spool.rglob("*.tmp")]
