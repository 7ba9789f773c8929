# SPDX-License-Identifier: Apache-2.0
"""Per-sink delivery: a bounded queue and a thread for each sink, and an on-disk spool."""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import random
import threading
import time
from pathlib import Path
from typing import Any

import orjson

from ..exceptions import ConfigurationError
from .sinks import Sink

__all__ = ["SinkChannel", "Spool"]

logger = logging.getLogger("zerotrust.events")

_SEGMENT_SUFFIX = ".jsonl"
# Spooled events may hold personal data (subjects, addresses): owner only.
_FILE_MODE = 0o600


class Spool:
    """
    A bounded directory of JSON lines files that keeps events while a sink is down.

    Each batch becomes one file, named by a sequence number, so replay keeps the order. Files
    are written to a temporary name and renamed, so a crash never leaves half a batch. Files
    found at start-up are replayed too, so events survive a restart.

    Args:
        directory: Where the files go; created with mode 0700 if missing.
        max_bytes: The maximum size of the spool in bytes; a batch that does not fit is refused.
    """

    def __init__(self, directory: str | os.PathLike[str], *, max_bytes: int = 64 * 1024 * 1024):
        if not isinstance(max_bytes, int) or max_bytes < 1:
            message = f"spool max_bytes must be a positive number of bytes, not {max_bytes!r}"
            raise ConfigurationError(message, parameter="spool_max_bytes", value=max_bytes)
        self.directory = Path(directory)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._segments: collections.deque[tuple[int, Path, int]] = collections.deque()
        for path in sorted(self.directory.glob(f"*{_SEGMENT_SUFFIX}")):
            if path.stem.isdigit():
                self._segments.append((int(path.stem), path, path.stat().st_size))
        self._next = self._segments[-1][0] + 1 if self._segments else 0
        self.bytes = sum(size for _, _, size in self._segments)
        # Consecutive batches that could not be written; 0 once a write succeeds again.
        self.write_errors = 0

    def __bool__(self) -> bool:
        return bool(self._segments)

    def __len__(self) -> int:
        return len(self._segments)

    def append(self, events: list[dict[str, Any]]) -> bool:
        """
        Store a batch as one file, and return ``False`` when it does not fit in ``max_bytes``
        or the file cannot be written, such as on a full disk.
        """
        payload = b"".join(orjson.dumps(event, default=str) + b"\n" for event in events)
        with self._lock:
            if self.bytes + len(payload) > self.max_bytes:
                return False
            number = self._next
            path = self.directory / f"{number:012d}{_SEGMENT_SUFFIX}"
            temporary = path.with_suffix(".tmp")
            try:
                descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, _FILE_MODE)
                with os.fdopen(descriptor, "wb") as file:
                    file.write(payload)
                temporary.replace(path)
            except OSError as error:
                # A full disk or a lost directory: the batch is refused like one that does not
                # fit, and the sink's thread lives on.
                with contextlib.suppress(OSError):
                    temporary.unlink(missing_ok=True)
                if not self.write_errors:
                    logger.warning("cannot write to spool %s: %s", self.directory, error)
                self.write_errors += 1
                return False
            if self.write_errors:
                logger.warning("spool %s is writable again", self.directory)
                self.write_errors = 0
            self._next += 1
            self._segments.append((number, path, len(payload)))
            self.bytes += len(payload)
        return True

    def oldest(self) -> tuple[Path, list[dict[str, Any]]] | None:
        """Return the oldest batch and its file, or ``None`` when the spool is empty."""
        with self._lock:
            if not self._segments:
                return None
            _, path, _ = self._segments[0]
        events = []
        for line in path.read_bytes().splitlines():
            try:
                events.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                logger.warning("skipping an unreadable line in spool file %s", path)
        return path, events

    def remove(self, path: Path) -> None:
        """Forget a batch once its sink accepted it."""
        with self._lock:
            for index, (_, stored, size) in enumerate(self._segments):
                if stored == path:
                    del self._segments[index]
                    self.bytes -= size
                    break
        path.unlink(missing_ok=True)


class SinkChannel:
    """
    Deliver batches to one sink from a thread of its own, so a slow sink delays no other.

    While the sink fails, batches go to the spool, if there is one, and are replayed in order
    once it accepts writes again. Retries back off exponentially with jitter. Without a spool,
    a failed batch is lost and counted in `failed`; when the spool is full, in `dropped`.

    Args:
        sink: The sink to deliver to.
        max_queue: Maximum number of events waiting for this sink; more spill to the spool or
            are dropped.
        spool: Where batches wait while the sink is down, or ``None``.
        retry_initial: Seconds before the first retry after a failure.
        retry_max: The longest wait between retries.
    """

    def __init__(
        self,
        sink: Sink,
        *,
        max_queue: int = 10_000,
        spool: Spool | None = None,
        retry_initial: float = 0.5,
        retry_max: float = 30.0,
        idle_wait: float = 0.2,
    ) -> None:
        self.sink = sink
        self.max_queue = max_queue
        self.spool = spool
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.idle_wait = idle_wait
        self.delivered = 0
        self.failed = 0
        self.spooled = 0
        self.dropped = 0
        self.unreported_drops = 0
        self._queue: collections.deque[list[dict[str, Any]]] = collections.deque()
        self._queued_events = 0
        self._busy = False
        self._closed = False
        self._retry_at = 0.0
        self._failures = 0
        self._condition = threading.Condition()
        self._thread: threading.Thread | None = None
        self._in_flight: list[dict[str, Any]] | None = None
        if spool:
            # Replay what an earlier process left in the spool without waiting for new events.
            self._start()

    def offer(self, batch: list[dict[str, Any]]) -> None:
        """Queue a batch for the sink without waiting on the sink."""
        with self._condition:
            if self._queued_events + len(batch) > self.max_queue:
                self._spill(batch)
                return
            self._queue.append(batch)
            self._queued_events += len(batch)
            self._condition.notify()
        if self._thread is None or not self._thread.is_alive():
            self._start()

    def _spill(self, batch: list[dict[str, Any]]) -> None:
        if self.spool is not None and self.spool.append(batch):
            self.spooled += len(batch)
            return
        self.dropped += len(batch)
        self.unreported_drops += len(batch)

    def _start(self) -> None:
        with self._condition:
            if self._thread is not None and self._thread.is_alive():
                return
            name = f"zerotrust-sink-{self.sink.name}"
            self._thread = threading.Thread(target=self._run, name=name, daemon=True)
            self._thread.start()

    def forget_thread(self) -> None:
        """Drop the thread reference after a fork; the next batch starts a new thread."""
        self._thread = None
        self._condition = threading.Condition()

    def _run(self) -> None:
        while True:
            with self._condition:
                while not self._queue and not self._replay_due():
                    if self._closed:
                        return
                    self._condition.wait(self.idle_wait)
                batch = self._queue.popleft() if self._queue else None
                if batch is not None:
                    self._queued_events -= len(batch)
                self._busy = True
                self._in_flight = batch
            try:
                self._replay()
                if batch is not None:
                    self._send(batch)
            finally:
                with self._condition:
                    self._busy = False
                    self._in_flight = None
                    self._condition.notify_all()

    def _replay_due(self) -> bool:
        return bool(self.spool) and time.monotonic() >= self._retry_at

    def _replay(self) -> None:
        """Send spooled batches, oldest first, until the spool is empty or the sink fails."""
        while self.spool and time.monotonic() >= self._retry_at:
            oldest = self.spool.oldest()
            if oldest is None:
                return
            path, events = oldest
            if not self._write(events):
                return
            self.spool.remove(path)

    def _send(self, batch: list[dict[str, Any]]) -> None:
        if self.spool is not None and (self.spool or time.monotonic() < self._retry_at):
            # Older events wait in the spool, or the sink is backing off: appending keeps the
            # order and spares a sink that is down.
            self._spill(batch)
            return
        if self._write(batch):
            return
        if self.spool is not None:
            self._spill(batch)
        else:
            self.failed += len(batch)

    def _write(self, events: list[dict[str, Any]]) -> bool:
        """Write one batch; ``False`` when the sink failed and the batch should be kept."""
        try:
            self.sink.write(events)
        except Exception as error:  # noqa: BLE001 -- any sink failure keeps the batch
            lost = getattr(error, "failed", None)
            if isinstance(lost, int) and 0 <= lost < len(events):
                # The sink delivered part of the batch and reports how many events it rejected,
                # such as Elasticsearch bulk item errors, so keeping the batch would repeat it.
                self.failed += lost
                self.delivered += len(events) - lost
                logger.warning(
                    "sink %s rejected %d of %d events", self.sink.name, lost, len(events)
                )
                return True
            delay = min(self.retry_initial * 2**self._failures, self.retry_max)
            self._failures += 1
            self._retry_at = time.monotonic() + random.uniform(delay / 2, delay)  # noqa: S311
            logger.warning(
                "sink %s failed to write %d events (%s: %s); retrying in up to %.1f s",
                self.sink.name,
                len(events),
                type(error).__name__,
                str(error)[:200],
                delay,
            )
            return False

        self.delivered += len(events)
        self._retry_at = 0.0
        self._failures = 0
        return True

    @property
    def queued_events(self) -> int:
        """Events waiting in this channel's queue."""
        with self._condition:
            return self._queued_events

    @property
    def alive(self) -> bool:
        """Whether the delivery thread is running."""
        return self._thread is not None and self._thread.is_alive()

    def wait_idle(self, deadline: float) -> bool:
        """Wait until the queue is empty and no write runs; ``False`` at the deadline."""
        with self._condition:
            while self._queue or self._busy:
                if self._thread is None or not self._thread.is_alive():
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._condition.wait(min(remaining, 0.05))
        if self._queue and (self._thread is None or not self._thread.is_alive()):
            # No thread (after a fork, or never started): deliver here.
            while self._queue:
                batch = self._queue.popleft()
                self._queued_events -= len(batch)
                self._send(batch)
        return True

    def close(self, deadline: float) -> None:
        """Stop the thread; what is still queued goes to the spool, or is counted as dropped."""
        self.wait_idle(deadline)
        with self._condition:
            self._closed = True
            remaining = list(self._queue)
            if self._in_flight is not None:
                # The sink is still writing this batch: keep a copy, since the process may exit
                # before the write ends. A sink that then succeeds receives it twice on replay.
                remaining.insert(0, list(self._in_flight))
            self._queue.clear()
            self._queued_events = 0
            self._condition.notify_all()
        for batch in remaining:
            self._spill(batch)
        thread = self._thread
        if thread is not None and thread.is_alive():
            thread.join(max(0.0, deadline - time.monotonic()))
