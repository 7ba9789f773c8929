# SPDX-License-Identifier: Apache-2.0
"""The event emitter: bounded queues and background threads that keep event I/O off requests."""

from __future__ import annotations

import atexit
import collections
import logging
import os
import re
import threading
import time
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..exceptions import ConfigurationError
from .access import build_access_event, format_timestamp, new_event_id
from .delivery import SinkChannel, Spool
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
    Queue events in the request path and deliver them to sinks from background threads.

    The request path only appends to a bounded queue: when it is full, new events are dropped
    and counted in `dropped` rather than slowing requests down or growing memory. A writer
    thread builds the events and hands each batch to every sink's `SinkChannel`, which delivers
    it from a thread of its own, so a slow or broken sink delays no other sink and no request.
    While a sink fails, its batches wait in an on-disk spool (with ``spool_dir``) and are
    replayed in order when it recovers. Events lost for good are counted, and reported at most
    every ``drop_report_interval`` seconds as an ``events_dropped`` event.

    Threads start on the first event and again after a ``fork``. The queues are flushed, within
    a timeout, when the app's lifespan shuts down, at interpreter exit and on `close`.

    Args:
        sinks: Where events go; JSON lines on standard error by default.
        max_queue: Most events waiting for the writer thread.
        batch_size: Most events handed to a sink in one call.
        flush_interval: Seconds the writer thread waits before writing a batch that is not
            full. It is also the maximum time an event waits in the queue when traffic is light.
        max_sink_queue: Maximum number of events waiting for one sink; more spill to its spool.
        spool_dir: Directory for the spools, one subdirectory per sink; no spool when ``None``.
        spool_max_bytes: Largest size of one sink's spool.
        retry_initial: Seconds before a failed sink is tried again; doubles up to ``retry_max``.
        retry_max: Longest wait between tries of a failed sink.
        drop_report_interval: Seconds between ``events_dropped`` reports.
    """

    def __init__(
        self,
        sinks: Sequence[Sink] | None = None,
        *,
        max_queue: int = 10_000,
        batch_size: int = 256,
        flush_interval: float = 0.2,
        max_sink_queue: int = 10_000,
        spool_dir: str | os.PathLike[str] | None = None,
        spool_max_bytes: int = 64 * 1024 * 1024,
        retry_initial: float = 0.5,
        retry_max: float = 30.0,
        drop_report_interval: float = 10.0,
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
        self.channels: tuple[SinkChannel, ...] = tuple(
            SinkChannel(
                sink,
                max_queue=max_sink_queue,
                spool=_spool_for(spool_dir, index, sink, spool_max_bytes),
                retry_initial=retry_initial,
                retry_max=retry_max,
            )
            for index, sink in enumerate(sink_list)
        )
        self.drop_report_interval = drop_report_interval
        self._next_drop_report = 0.0
        self.max_queue = max_queue
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.dropped = 0
        self.delivered = 0
        self._build_failures = 0
        self._queue: collections.deque[tuple[Any, ...]] = collections.deque()
        self._enqueued = 0
        self._processed = 0
        self._wakeup = threading.Event()
        # WSGI servers emit from many threads at once, so the lock keeps the counters exact and
        # lets only one writer thread start. Uncontended, as on an event loop, it costs about
        # a tenth of a microsecond per event.
        self._lock = threading.Lock()
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
        queue = self._queue
        with self._lock:
            if self._closed or len(queue) >= self.max_queue:
                self.dropped += 1
                return
            queue.append(item)
            self._enqueued += 1
            if not self._running:
                self._start()
                return
        if len(queue) >= self.batch_size and not self._wakeup.is_set():
            # Below a full batch the writer wakes on its own timer: waking it for every event
            # makes it write batches of one and compete with the event loop for the GIL.
            self._wakeup.set()

    def _start(self) -> None:
        # Called with self._lock held, so two threads never both start a writer.
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
                self._build_failures += 1
        self._deliver(batch)
        self._processed += taken

    def _deliver(self, batch: list[dict[str, Any]]) -> None:
        if batch:
            for channel in self.channels:
                channel.offer(batch)
            self.delivered += len(batch)
        self._report_drops()

    def _report_drops(self) -> None:
        now = time.monotonic()
        if now < self._next_drop_report:
            return
        self._next_drop_report = now + self.drop_report_interval
        for channel in self.channels:
            count = channel.unreported_drops
            if not count:
                continue
            channel.unreported_drops -= count
            report = {
                "event": "events_dropped",
                "timestamp": format_timestamp(time.time()),
                "event_id": new_event_id(),
                "sink": channel.sink.name,
                "count": count,
                "reason": _drop_reason(channel),
            }
            logger.warning("sink %s dropped %d events", channel.sink.name, count)
            self._put((report,))

    @property
    def failed(self) -> int:
        """Events that a sink could not take and that were not kept, over every sink."""
        return self._build_failures + sum(channel.failed for channel in self.channels)

    @property
    def spooled(self) -> int:
        """Events written to a spool because their sink was down or behind."""
        return sum(channel.spooled for channel in self.channels)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every queued event reached the sinks; ``False`` on timeout."""
        deadline = time.monotonic() + timeout
        target = self._enqueued
        with self._done:
            while self._processed < target:
                if not self._running or self._thread is None or not self._thread.is_alive():
                    self._process(len(self._queue))
                    break
                self._wakeup.set()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._done.wait(min(remaining, 0.05))

        return all(channel.wait_idle(deadline) for channel in self.channels)

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued, stop the writer thread and close the sinks."""
        if self._closed:
            return
        deadline = time.monotonic() + timeout
        self.flush(timeout)
        with self._lock:
            self._closed = True
        self._wakeup.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(max(0.0, deadline - time.monotonic()))
        for channel in self.channels:
            channel.close(deadline)
        for channel in self.channels:
            if channel.alive:
                # Its thread is still inside write(); closing the sink under it could corrupt it.
                logger.warning("sink %s is still writing; not closing it", channel.sink.name)
        for sink in (channel.sink for channel in self.channels if not channel.alive):
            try:
                sink.close()
            except Exception:
                logger.exception("closing sink %s failed", sink.name)


def _drop_reason(channel: SinkChannel) -> str:
    if channel.spool is None:
        return "sink_queue_full"
    return "spool_unwritable" if channel.spool.write_errors else "spool_full"


def _spool_for(
    directory: str | os.PathLike[str] | None, index: int, sink: Sink, max_bytes: int
) -> Spool | None:
    if directory is None:
        return None
    # One subdirectory per sink, named by position and sink name, stable across restarts.
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", sink.name)[:40]
    return Spool(os.path.join(directory, f"{index}-{name}"), max_bytes=max_bytes)


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
        # Another thread of the parent may have held the lock at the fork.
        emitter._lock = threading.Lock()
        emitter._running = False
        emitter._thread = None
        for channel in emitter.channels:
            channel.forget_thread()


os.register_at_fork(after_in_child=_forget_threads)


@atexit.register
def _close_all() -> None:
    for emitter in list(_emitters):
        emitter.close(timeout=2.0)
