# SPDX-License-Identifier: Apache-2.0
"""The event emitter: a bounded queue and a writer thread, so requests never wait on event I/O."""

from __future__ import annotations

import atexit
import collections
import logging
import os
import threading
import time
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..exceptions import ConfigurationError
from .access import build_access_event
from .redaction import redact_secrets
from .sinks import JsonLinesSink, Sink

if TYPE_CHECKING:
    from ..engine import Decision
    from ..request import AccessRequest

__all__ = ["EventEmitter"]

logger = logging.getLogger("zerotrust.events")

# Lists that `zerotrust.testing.capture_events` appends every event to, synchronously.
_capture_lists: list[list[dict[str, Any]]] = []
_emitters: weakref.WeakSet[EventEmitter] = weakref.WeakSet()


class EventEmitter:
    """
    Queue events in the request path and deliver them to sinks from a background thread.

    The queue is bounded: when it is full, new events are dropped and counted in `dropped`
    rather than slowing requests down or growing memory. The writer thread starts on the first
    event, restarts after a ``fork``, and drains the queue at exit and on `close`.

    Args:
        sinks: Where events go; JSON lines on standard error by default.
        max_queue: Most events waiting for the writer thread.
        batch_size: Most events handed to a sink in one call.
        flush_interval: Seconds the writer thread waits before writing a batch that is not
            full; also the longest an event waits in the queue when traffic is light.
    """

    def __init__(
        self,
        sinks: Sequence[Sink] | None = None,
        *,
        max_queue: int = 10_000,
        batch_size: int = 256,
        flush_interval: float = 0.2,
    ) -> None:
        if max_queue < 1 or batch_size < 1 or not flush_interval > 0:
            message = (
                "max_queue and batch_size must be at least 1 and flush_interval positive, not "
                f"{max_queue!r}, {batch_size!r}, {flush_interval!r}"
            )
            raise ConfigurationError(message, parameter="max_queue", value=max_queue)
        sink_list = list(sinks) if sinks is not None else [JsonLinesSink("stderr")]
        for sink in sink_list:
            if not isinstance(sink, Sink):
                message = f"{sink!r} is not a zerotrust Sink"
                raise ConfigurationError(message, parameter="sinks", value=sink)

        self.sinks: tuple[Sink, ...] = tuple(sink_list)
        self.max_queue = max_queue
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.dropped = 0
        self.delivered = 0
        self.failed = 0
        self._queue: collections.deque[tuple[Any, ...]] = collections.deque()
        self._enqueued = 0
        self._processed = 0
        self._wakeup = threading.Event()
        self._done = threading.Condition()
        self._thread: threading.Thread | None = None
        self._running = False
        self._closed = False
        _emitters.add(self)

    def emit_access(
        self,
        request: AccessRequest,
        decision: Decision,
        *,
        status: int | None,
        latency: float,
        decision_time: float,
        close_code: int | None = None,
    ) -> None:
        """Queue the access event of one request; the writer thread builds and renders it."""
        item: tuple[Any, ...] = (request, decision, status, latency, decision_time, close_code)
        if _capture_lists:
            # Build the event once, so the captured copy and the delivered one share their id.
            event = _build(item)
            for events in _capture_lists:
                events.append(dict(redact_secrets(None, "info", dict(event))))
            item = (event,)
        self._put(item)

    def emit(self, event: dict[str, Any]) -> None:
        """Queue an event that is already a dict, such as an anomaly or a grant event."""
        if _capture_lists:
            for events in _capture_lists:
                events.append(dict(redact_secrets(None, "info", dict(event))))
        self._put((event,))

    def _put(self, item: tuple[Any, ...]) -> None:
        if self._closed:
            self.dropped += 1
            return
        if len(self._queue) >= self.max_queue:
            self.dropped += 1
            return
        queue = self._queue
        queue.append(item)
        self._enqueued += 1
        if not self._running:
            self._start()
        elif len(queue) >= self.batch_size and not self._wakeup.is_set():
            # Below a full batch the writer wakes on its own timer: waking it for every event
            # makes it write batches of one and compete with the event loop for the GIL.
            self._wakeup.set()

    def _start(self) -> None:
        self._running = True
        self._thread = threading.Thread(target=self._run, name="zerotrust-events", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            if not self._queue:
                if self._closed:
                    return
                self._wakeup.wait(self.flush_interval)
                self._wakeup.clear()
                continue
            self._process(self.batch_size)
            with self._done:
                self._done.notify_all()

    def _process(self, limit: int) -> None:
        batch: list[dict[str, Any]] = []
        taken = 0
        while self._queue and taken < limit:
            item = self._queue.popleft()
            taken += 1
            try:
                batch.append(_build(item))
            except Exception:
                logger.exception("building an access event failed; dropping it")
                self.failed += 1
        self._deliver(batch)
        self._processed += taken

    def _deliver(self, batch: list[dict[str, Any]]) -> None:
        if not batch:
            return
        for sink in self.sinks:
            try:
                sink.write(batch)
            except Exception as error:
                # A sink may report how many events of the batch it lost, such as bulk item errors.
                lost = getattr(error, "failed", None)
                if not isinstance(lost, int) or not 0 <= lost <= len(batch):
                    lost = len(batch)
                self.failed += lost
                logger.exception("sink %s failed to write %d events", sink.name, len(batch))
        self.delivered += len(batch)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every queued event reached the sinks; ``False`` on timeout."""
        deadline = time.monotonic() + timeout
        target = self._enqueued
        with self._done:
            while self._processed < target:
                if not self._running or self._thread is None or not self._thread.is_alive():
                    self._process(len(self._queue))
                    return True
                self._wakeup.set()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._done.wait(min(remaining, 0.05))
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued, stop the writer thread and close the sinks."""
        if self._closed:
            return
        self.flush(timeout)
        self._closed = True
        self._wakeup.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout)
        for sink in self.sinks:
            try:
                sink.close()
            except Exception:
                logger.exception("closing sink %s failed", sink.name)


def _build(item: tuple[Any, ...]) -> dict[str, Any]:
    if len(item) == 1:
        event: dict[str, Any] = item[0]
        return event
    request, decision, status, latency, decision_time, close_code = item
    return build_access_event(
        request,
        decision,
        status=status,
        latency=latency,
        decision_time=decision_time,
        close_code=close_code,
    )


def _forget_threads() -> None:
    # A forked child has the parent's queues but none of its threads. os.getpid() in the request
    # path would notice too, but it is a system call per event.
    for emitter in list(_emitters):
        emitter._running = False
        emitter._thread = None


os.register_at_fork(after_in_child=_forget_threads)


@atexit.register
def _close_all() -> None:
    for emitter in list(_emitters):
        emitter.close(timeout=2.0)
