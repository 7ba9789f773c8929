# SPDX-License-Identifier: Apache-2.0
"""Prometheus metrics from access events, and the delivery state of an event emitter."""

from __future__ import annotations

import dataclasses
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from ..exceptions import ConfigurationError, MissingExtraError
from . import emitter as _emitter_module
from .sinks import Sink

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

    from .emitter import EventEmitter

__all__ = [
    "LATENCY_BUCKETS",
    "OTHER_LABEL",
    "MetricsSink",
    "PrometheusSink",
    "SinkState",
    "delivery_state",
    "metrics_app",
]

LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
"""Histogram bucket bounds in seconds: a decision takes well under a millisecond to seconds."""

OTHER_LABEL = "other"
"""The label value that replaces values past the limit or outside the allowed characters."""

# The characters of segment names, verifier names and reason codes. An IPv6 address or a path
# (with ':' or '/') cannot pass, and the other identifying fields are never read.
_LABEL_VALUE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_PROMETHEUS_NAMESPACE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_ASGI = Callable[..., Any]


class _LabelValues:
    """Bound the distinct values of one label: later new values become `OTHER_LABEL`."""

    def __init__(self, max_values: int) -> None:
        self.max_values = max_values
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: object) -> str:
        if value is None:
            return ""
        text = str(value)
        if text in self._seen:
            return text
        if not _LABEL_VALUE.fullmatch(text):
            return OTHER_LABEL
        with self._lock:
            if len(self._seen) >= self.max_values:
                return OTHER_LABEL
            self._seen.add(text)

        return text


@dataclasses.dataclass(frozen=True)
class SinkState:
    """
    The delivery state of one sink of an emitter, read at collection time.

    .. versionadded:: 0.2.0
    """

    sink: str
    """The sink's ``name``, such as ``webhook``."""
    position: str
    """The sink's index in the emitter's sink list, as text, to distinguish sinks of one type."""
    queued: int
    """Events waiting in the sink's queue."""
    spool_files: int
    """Batches waiting in the sink's spool, one file each; 0 without a spool."""
    spool_bytes: int
    """Bytes in the sink's spool; 0 without a spool."""
    spooled: int
    """Events written to the spool since start, including those replayed since."""
    delivered: int
    """Events the sink accepted."""
    failed: int
    """Events the sink could not take and that were not kept."""
    dropped: int
    """Events lost because the sink's queue or spool was full."""


def delivery_state(emitter: EventEmitter) -> Iterator[SinkState]:
    """
    Read the delivery state of every sink of ``emitter`` without locking or waiting.

    .. versionadded:: 0.2.0
    """
    for position, channel in enumerate(emitter.channels):
        spool = channel.spool
        yield SinkState(
            sink=channel.sink.name,
            position=str(position),
            queued=channel.queued_events,
            spool_files=len(spool) if spool is not None else 0,
            spool_bytes=spool.bytes if spool is not None else 0,
            spooled=channel.spooled,
            delivered=channel.delivered,
            failed=channel.failed,
            dropped=channel.dropped,
        )


class MetricsSink(Sink):
    """
    Base class of the sinks that turn events into metrics; subclasses record the values.

    `write` runs in the sink's own delivery thread, so metrics never cost the request path
    anything beyond queueing the event. Only bounded fields become labels: segment, decision,
    action, the first reason code, verifier name and result, event name. The subject, token,
    addresses, host and path never do.

    Args:
        emitter: The emitter whose delivery state to report. ``None`` reports the emitter
            that this sink belongs to, found when the metrics are collected.
        max_label_values: The maximum number of distinct values of each label. Later new
            values are reported as ``other``, so a misbehaving verifier cannot flood the
            metrics store.

    .. versionadded:: 0.2.0
    """

    def __init__(self, *, emitter: EventEmitter | None = None, max_label_values: int = 200) -> None:
        valid = isinstance(max_label_values, int) and not isinstance(max_label_values, bool)
        if not valid or max_label_values < 1:
            message = f"max_label_values must be a positive integer, not {max_label_values!r}"
            raise ConfigurationError(message, parameter="max_label_values", value=max_label_values)

        self._emitter = emitter
        self._labels: dict[str, _LabelValues] = {
            name: _LabelValues(max_label_values)
            for name in ("event", "segment", "decision", "action", "reason", "verifier", "result")
        }

    @property
    def emitter(self) -> EventEmitter | None:
        """The emitter whose delivery state is reported, given or found by this sink."""
        if self._emitter is not None:
            return self._emitter
        # The sink is built before the emitter that contains it, so look it up at collection time.
        holders = [emitter for emitter in list(_emitter_module._emitters) if self in emitter.sinks]
        open_holders = [emitter for emitter in holders if not emitter._closed]

        candidates = open_holders or holders

        return candidates[0] if candidates else None

    def write(self, events: Sequence[dict[str, Any]]) -> None:
        label = self._labels
        for event in events:
            name = event.get("event")
            self.record_event(label["event"](name))
            if name != "access":
                continue

            reasons = event.get("reasons") or ()
            segment = label["segment"](event.get("segment"))
            self.record_decision(
                segment,
                label["decision"](event.get("decision")),
                label["action"](event.get("action")),
                label["reason"](reasons[0]) if reasons else "",
                _seconds(event.get("latency_ms")),
                _seconds(event.get("decision_ms")),
            )
            for verifier in event.get("verifiers") or ():
                duration = _seconds(verifier.get("duration_ms"))
                if duration is not None:
                    self.record_verifier(
                        label["verifier"](verifier.get("name")),
                        label["result"](verifier.get("result")),
                        duration,
                    )

    def record_event(self, event: str) -> None:
        """Count one event of any kind by its ``event`` name."""
        raise NotImplementedError

    def record_decision(
        self,
        segment: str,
        decision: str,
        action: str,
        reason: str,
        latency: float | None,
        decision_time: float | None,
    ) -> None:
        """Count one access decision and record its latencies in seconds."""
        raise NotImplementedError

    def record_verifier(self, verifier: str, result: str, duration: float) -> None:
        """Record how long one verifier took, in seconds."""
        raise NotImplementedError


class PrometheusSink(MetricsSink):
    """
    Record access events as Prometheus counters and histograms, and report delivery state.

    The counters and histograms are updated from events in the sink's delivery thread. The
    delivery state of every sink of the emitter (queue length, spool, delivered, failed and
    dropped events) is read by a collector when Prometheus scrapes, so nothing is pushed
    from the request path. Serve the registry with `metrics_app`.

    Metric names, with the default namespace: ``zerotrust_decisions_total``,
    ``zerotrust_request_duration_seconds``, ``zerotrust_decision_duration_seconds``,
    ``zerotrust_verifier_duration_seconds``, ``zerotrust_events_total``, the per-sink
    ``zerotrust_sink_*`` families and the emitter's ``zerotrust_emitter_*`` families;
    docs/metrics.md describes each one.

    Args:
        registry: Where to register the metrics; ``prometheus_client.REGISTRY`` by default.
            Two sinks cannot share a registry because their metric names would clash.
        namespace: Prefix of every metric name.
        emitter: The emitter whose delivery state to report; by default the one holding
            this sink.
        buckets: Histogram bucket bounds in seconds.
        max_label_values: The maximum number of distinct values of each label; see `MetricsSink`.

    Raises:
        MissingExtraError: ``prometheus-client`` is not installed.
        ConfigurationError: ``namespace`` is not a valid metric name prefix.

    .. versionadded:: 0.2.0
    """

    name = "prometheus"

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        namespace: str = "zerotrust",
        emitter: EventEmitter | None = None,
        *,
        buckets: Sequence[float] = LATENCY_BUCKETS,
        max_label_values: int = 200,
    ) -> None:
        super().__init__(emitter=emitter, max_label_values=max_label_values)
        try:
            import prometheus_client
        except ImportError:
            raise MissingExtraError("zerotrust.events.metrics.PrometheusSink", "metrics") from None
        if not isinstance(namespace, str) or not _PROMETHEUS_NAMESPACE.fullmatch(namespace):
            message = (
                f"namespace must be letters, digits and '_', not starting with a digit, "
                f"not {namespace!r}"
            )
            raise ConfigurationError(message, parameter="namespace", value=namespace)

        if registry is None:
            registry = prometheus_client.REGISTRY
        self.registry = registry
        self.namespace = namespace
        options: dict[str, Any] = {"namespace": namespace, "registry": registry}
        self.decisions = prometheus_client.Counter(
            "decisions",
            "Access decisions, by segment, decision, action taken and first reason code.",
            ["segment", "decision", "action", "reason"],
            **options,
        )
        self.request_duration = prometheus_client.Histogram(
            "request_duration_seconds",
            "Time from the start of the middleware to the end of the response.",
            ["segment", "action"],
            buckets=buckets,
            **options,
        )
        self.decision_duration = prometheus_client.Histogram(
            "decision_duration_seconds",
            "Time the policy decision point took to decide.",
            ["segment"],
            buckets=buckets,
            **options,
        )
        self.verifier_duration = prometheus_client.Histogram(
            "verifier_duration_seconds",
            "Time each verifier took, by verifier name and result.",
            ["verifier", "result"],
            buckets=buckets,
            **options,
        )
        self.events = prometheus_client.Counter(
            "events",
            "Events that reached this sink, by event name (access, anomaly, grant events).",
            ["event"],
            **options,
        )
        registry.register(_DeliveryCollector(self, namespace))

    def record_event(self, event: str) -> None:
        self.events.labels(event).inc()

    def record_decision(
        self,
        segment: str,
        decision: str,
        action: str,
        reason: str,
        latency: float | None,
        decision_time: float | None,
    ) -> None:
        self.decisions.labels(segment, decision, action, reason).inc()
        if latency is not None:
            self.request_duration.labels(segment, action).observe(latency)
        if decision_time is not None:
            self.decision_duration.labels(segment).observe(decision_time)

    def record_verifier(self, verifier: str, result: str, duration: float) -> None:
        self.verifier_duration.labels(verifier, result).observe(duration)


# Per-sink families: suffix, type, help, SinkState attribute.
_SINK_FAMILIES: tuple[tuple[str, str, str, str], ...] = (
    ("sink_queue_events", "gauge", "Events waiting in the sink's queue.", "queued"),
    ("sink_spool_files", "gauge", "Batches waiting in the sink's spool.", "spool_files"),
    ("sink_spool_bytes", "gauge", "Bytes in the sink's spool.", "spool_bytes"),
    ("sink_spooled_events", "counter", "Events written to the sink's spool.", "spooled"),
    ("sink_delivered_events", "counter", "Events the sink accepted.", "delivered"),
    ("sink_failed_events", "counter", "Events the sink failed to take and lost.", "failed"),
    ("sink_dropped_events", "counter", "Events lost to a full sink queue or spool.", "dropped"),
)


class _DeliveryCollector:
    """Read the delivery state of the sink's emitter when the registry is collected."""

    def __init__(self, sink: MetricsSink, namespace: str) -> None:
        self.sink = sink
        self.prefix = f"{namespace}_"

    def describe(self) -> Iterable[Any]:
        # Names only, so registering does not read an emitter that may not exist yet.
        return self._families(None)

    def collect(self) -> Iterable[Any]:
        return self._families(self.sink.emitter)

    def _families(self, emitter: EventEmitter | None) -> list[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        states = list(delivery_state(emitter)) if emitter is not None else []
        families: list[Any] = []
        for suffix, kind, documentation, attribute in _SINK_FAMILIES:
            family_class = GaugeMetricFamily if kind == "gauge" else CounterMetricFamily
            family = family_class(self.prefix + suffix, documentation, labels=["sink", "position"])
            for state in states:
                family.add_metric([state.sink, state.position], getattr(state, attribute))
            families.append(family)

        queue = GaugeMetricFamily(
            self.prefix + "emitter_queue_events",
            "Events waiting for the emitter's writer thread.",
        )
        dropped = CounterMetricFamily(
            self.prefix + "emitter_dropped_events",
            "Events dropped in the request path because the emitter's queue was full or closed.",
        )
        if emitter is not None:
            queue.add_metric([], len(emitter._queue))
            dropped.add_metric([], emitter.dropped)
        families += [queue, dropped]

        return families


def metrics_app(registry: CollectorRegistry | None = None) -> _ASGI:
    """
    Build an ASGI app that serves ``registry`` in the Prometheus or OpenMetrics text format.

    It responds to ``GET`` and ``HEAD`` on any path with ``Cache-Control: no-store``, other
    methods with 405, and completes lifespan startup and shutdown.

    .. warning:: The metrics show segment names, reason codes and traffic volumes. Mount the
       app behind your own protection, such as a zerotrust segment that allows only the
       scraper's network, and never on a public route by accident.

    Args:
        registry: The registry to serve; ``prometheus_client.REGISTRY`` by default.

    Raises:
        MissingExtraError: ``prometheus-client`` is not installed.

    .. versionadded:: 0.2.0
    """
    try:
        import prometheus_client
        from prometheus_client.exposition import choose_encoder
    except ImportError:
        raise MissingExtraError("zerotrust.events.metrics.metrics_app", "metrics") from None

    served = registry if registry is not None else prometheus_client.REGISTRY
    return _MetricsApp(served, choose_encoder)


class _MetricsApp:
    # A class rather than a function, so Starlette's Route and Mount treat it as an ASGI app
    # instead of wrapping it as a request handler.

    def __init__(self, registry: CollectorRegistry, choose_encoder: Callable[..., Any]) -> None:
        self.registry = registry
        self.choose_encoder = choose_encoder

    async def __call__(self, scope: dict[str, Any], receive: _ASGI, send: _ASGI) -> None:
        if scope["type"] == "lifespan":
            await _run_lifespan(receive, send)
            return
        if scope["type"] != "http":
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["method"] not in ("GET", "HEAD"):
            await _send_response(send, 405, b"method not allowed\n", [(b"allow", b"GET, HEAD")])
            return

        accept = ",".join(
            value.decode("latin-1") for name, value in scope["headers"] if name == b"accept"
        )
        encoder, content_type = self.choose_encoder(accept)
        body = encoder(self.registry)
        headers = [(b"content-type", content_type.encode()), (b"cache-control", b"no-store")]
        await _send_response(send, 200, body, headers, head=scope["method"] == "HEAD")


async def _run_lifespan(receive: _ASGI, send: _ASGI) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _send_response(
    send: _ASGI,
    status: int,
    body: bytes,
    headers: list[tuple[bytes, bytes]],
    *,
    head: bool = False,
) -> None:
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    if status != 200:
        headers.append((b"content-type", b"text/plain; charset=utf-8"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})


def _seconds(milliseconds: object) -> float | None:
    if isinstance(milliseconds, bool) or not isinstance(milliseconds, int | float):
        return None
    if milliseconds < 0:
        return None

    return milliseconds / 1000
