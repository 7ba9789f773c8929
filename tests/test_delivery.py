# SPDX-License-Identifier: Apache-2.0
from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from zerotrust import EventEmitter, MemorySink, Sink


class FlakySink(Sink):
    """Fails its first ``failures`` writes, then records every event in order."""

    name = "flaky"

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0
        self.events: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def write(self, events: Sequence[dict[str, Any]]) -> None:
        with self.lock:
            self.calls += 1
            if self.calls <= self.failures:
                raise ConnectionError("collector down")
            self.events.extend(events)


class DownSink(Sink):
    """Always fails."""

    name = "down"

    def write(self, events: Sequence[dict[str, Any]]) -> None:
        raise ConnectionError("collector down")


class StalledSink(Sink):
    """Takes ``seconds`` for every write."""

    name = "stalled"

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.stop = threading.Event()

    def write(self, events: Sequence[dict[str, Any]]) -> None:
        self.stop.wait(self.seconds)


def emit_numbered(emitter: EventEmitter, count: int, start: int = 0) -> None:
    for number in range(start, start + count):
        emitter.emit({"event": "test", "n": number})


def wait_for(condition: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


class TestSpool:
    def test_outage_loses_nothing(self, tmp_path: Path) -> None:
        """Events sent while the sink is down are spooled and replayed in order."""
        sink = FlakySink(failures=3)
        emitter = EventEmitter(
            [sink], spool_dir=tmp_path, batch_size=10, retry_initial=0.05, retry_max=0.1
        )

        for chunk in range(5):
            emit_numbered(emitter, 10, start=chunk * 10)
            emitter.flush()

        assert wait_for(lambda: len(sink.events) == 50)
        assert list(range(50)) == [event["n"] for event in sink.events]
        assert 0 == emitter.failed
        assert emitter.spooled > 0
        emitter.close()

    def test_replayed_after_restart(self, tmp_path: Path) -> None:
        """Events spooled by one process are delivered by the next one."""
        first = EventEmitter([DownSink()], spool_dir=tmp_path, retry_initial=60)
        emit_numbered(first, 5)
        first.close(timeout=2)
        assert [] != list(tmp_path.rglob("*.jsonl"))

        sink = FlakySink(failures=0)
        sink.name = "down"  # the spool directory is named after the sink's position and name
        second = EventEmitter([sink], spool_dir=tmp_path)
        second.emit({"event": "test", "n": 5})
        second.flush()

        assert wait_for(lambda: len(sink.events) == 6)
        assert list(range(6)) == [event["n"] for event in sink.events]
        second.close()

    def test_full_spool_drops_and_reports(self, tmp_path: Path) -> None:
        """When the spool is full, events are dropped, counted and reported to other sinks."""
        witness = MemorySink()
        emitter = EventEmitter(
            [DownSink(), witness],
            spool_dir=tmp_path,
            spool_max_bytes=200,
            retry_initial=60,
            drop_report_interval=0.05,
            batch_size=5,
        )

        for _ in range(6):
            emit_numbered(emitter, 5)
            emitter.flush()
        time.sleep(0.1)
        emit_numbered(emitter, 1)
        emitter.flush()

        reports = [event for event in witness.events if event["event"] == "events_dropped"]
        assert reports
        assert "down" == reports[0]["sink"]
        assert "spool_full" == reports[0]["reason"]
        assert sum(report["count"] for report in reports) > 0
        emitter.close(timeout=1)

    def test_spool_files_private(self, tmp_path: Path) -> None:
        """Spooled events may hold personal data, so only the owner can read them."""
        emitter = EventEmitter([DownSink()], spool_dir=tmp_path, retry_initial=60)
        emit_numbered(emitter, 3)
        emitter.flush()
        emitter.close(timeout=1)

        files = list(tmp_path.rglob("*.jsonl"))
        assert files
        assert all(0o600 == file.stat().st_mode & 0o777 for file in files)


class TestIsolation:
    def test_stalled_sink_delays_no_other(self) -> None:
        """A sink that hangs does not hold back another sink or the caller."""
        stalled = StalledSink(seconds=5)
        fast = MemorySink()
        emitter = EventEmitter([stalled, fast], batch_size=10, flush_interval=0.02)

        started = time.perf_counter()
        emit_numbered(emitter, 20)
        emitting = time.perf_counter() - started

        assert emitting < 0.1
        assert wait_for(lambda: len(fast.events) == 20, timeout=2)
        stalled.stop.set()
        emitter.close(timeout=2)

    def test_close_is_bounded(self) -> None:
        """Closing with a sink that hangs returns within the timeout."""
        stalled = StalledSink(seconds=30)
        emitter = EventEmitter([stalled])
        emit_numbered(emitter, 5)
        emitter.flush(timeout=0.2)

        started = time.perf_counter()
        emitter.close(timeout=0.5)
        elapsed = time.perf_counter() - started

        assert elapsed < 2
        stalled.stop.set()

    def test_failures_counted_without_spool(self) -> None:
        """Without a spool, a failing sink's events are counted as failed."""
        emitter = EventEmitter([DownSink()], retry_initial=60)
        emit_numbered(emitter, 4)

        emitter.flush()

        assert 4 == emitter.failed
        emitter.close(timeout=1)
