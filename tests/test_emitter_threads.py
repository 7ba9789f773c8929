# SPDX-License-Identifier: Apache-2.0
"""EventEmitter under many emitting threads, as a WSGI server with a thread pool calls it."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator

import pytest

from zerotrust.events import EventEmitter, MemorySink

THREADS = 16
EVENTS_PER_THREAD = 500
ATTEMPTS = 8


@pytest.fixture
def fast_switching() -> Iterator[None]:
    # Switching threads every microsecond makes interleavings inside emit() likely.
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


def emit_from_threads(emitter: EventEmitter, attempt: int) -> None:
    barrier = threading.Barrier(THREADS)

    def emit_all(thread: int) -> None:
        barrier.wait()
        for index in range(EVENTS_PER_THREAD):
            emitter.emit({"event": "test", "key": f"{attempt}-{thread}-{index}"})

    threads = [threading.Thread(target=emit_all, args=(number,)) for number in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)


@pytest.mark.usefixtures("fast_switching")
def test_concurrent_emits_delivered_once() -> None:
    for attempt in range(ATTEMPTS):
        sink = MemorySink(maxlen=THREADS * EVENTS_PER_THREAD * 2)
        emitter = EventEmitter([sink], max_queue=THREADS * EVENTS_PER_THREAD, batch_size=64)
        writers: list[str] = []
        run, start = emitter._run, emitter._start

        def counted_run(run: object = run, writers: list[str] = writers) -> None:
            writers.append(threading.current_thread().name)
            run()  # type: ignore[operator]

        def slow_start(start: object = start) -> None:
            # Starting a thread is slow on a busy machine, and the other threads emit meanwhile.
            time.sleep(0.01)
            start()  # type: ignore[operator]

        emitter._run = counted_run  # type: ignore[method-assign]
        emitter._start = slow_start  # type: ignore[method-assign]
        try:
            emit_from_threads(emitter, attempt)
            # flush() must wait for every event emitted before it, from any thread.
            assert emitter.flush(timeout=30)
            keys = [event["key"] for event in sink.events]
        finally:
            emitter.close(timeout=30)

        expected = {
            f"{attempt}-{thread}-{index}"
            for thread in range(THREADS)
            for index in range(EVENTS_PER_THREAD)
        }
        assert len(writers) == 1, f"attempt {attempt}: {len(writers)} writer threads started"
        assert len(keys) == len(expected), f"attempt {attempt}: {len(keys)} events delivered"
        assert set(keys) == expected
        assert emitter.dropped == 0
        assert emitter.delivered == len(expected)
