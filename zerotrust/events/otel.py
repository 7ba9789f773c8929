# SPDX-License-Identifier: Apache-2.0
"""OpenTelemetry metrics from access events, and the delivery state of an event emitter."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from .._version import __version__
from ..exceptions import MissingExtraError
from .metrics import LATENCY_BUCKETS, MetricsSink, SinkState, delivery_state

if TYPE_CHECKING:
    from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation

    from .emitter import EventEmitter

__all__ = ["OpenTelemetrySink"]

# Per-sink observable instruments: name, monotonic, unit, description, SinkState attribute.
_SINK_INSTRUMENTS: tuple[tuple[str, bool, str, str, str], ...] = (
    ("zerotrust.sink.queue", False, "{event}", "Events waiting in the sink's queue.", "queued"),
    ("zerotrust.sink.spool.files", False, "{file}", "Batches in the sink's spool.", "spool_files"),
    ("zerotrust.sink.spool.size", False, "By", "Bytes in the sink's spool.", "spool_bytes"),
    ("zerotrust.sink.spooled", True, "{event}", "Events written to the sink's spool.", "spooled"),
    ("zerotrust.sink.delivered", True, "{event}", "Events the sink accepted.", "delivered"),
    ("zerotrust.sink.failed", True, "{event}", "Events the sink failed to take.", "failed"),
    ("zerotrust.sink.dropped", True, "{event}", "Events lost to a full queue or spool.", "dropped"),
)


class OpenTelemetrySink(MetricsSink):
    """
    Record access events as OpenTelemetry metrics through a ``MeterProvider``.

    The instruments match `PrometheusSink`: counters and histograms updated from events in
    the sink's delivery thread, and observable instruments for the delivery state, read when
    the provider's reader collects. Cumulative delivery counts are observable counters; queue
    length and spool size are observable gauges. Only ``opentelemetry-api`` is needed at run
    time; the application configures the SDK and its exporters.

    Instrument names: ``zerotrust.decisions``, ``zerotrust.events``,
    ``zerotrust.request.duration``, ``zerotrust.decision.duration``,
    ``zerotrust.verifier.duration`` (seconds), ``zerotrust.sink.*`` and
    ``zerotrust.emitter.*``; docs/metrics.md describes each one.

    Args:
        meter_provider: Where to create the meter; the global provider by default.
        emitter: The emitter whose delivery state to report; by default the one holding
            this sink.
        max_label_values: The maximum number of distinct values of each attribute; see
            `MetricsSink`.

    Raises:
        MissingExtraError: ``opentelemetry-api`` is not installed.

    .. versionadded:: 0.2.0
    """

    name = "opentelemetry"

    def __init__(
        self,
        meter_provider: MeterProvider | None = None,
        emitter: EventEmitter | None = None,
        *,
        max_label_values: int = 200,
    ) -> None:
        super().__init__(emitter=emitter, max_label_values=max_label_values)
        try:
            from opentelemetry import metrics
        except ImportError:
            raise MissingExtraError("zerotrust.events.otel.OpenTelemetrySink", "otel") from None

        provider = meter_provider if meter_provider is not None else metrics.get_meter_provider()
        meter = provider.get_meter("zerotrust", __version__)
        self.meter = meter
        self.decisions = meter.create_counter(
            "zerotrust.decisions",
            unit="{decision}",
            description="Access decisions, by segment, decision, action and first reason code.",
        )
        self.events = meter.create_counter(
            "zerotrust.events", unit="{event}", description="Events that reached this sink."
        )
        self.request_duration = meter.create_histogram(
            "zerotrust.request.duration",
            unit="s",
            description="Time from the start of the middleware to the end of the response.",
            explicit_bucket_boundaries_advisory=LATENCY_BUCKETS,
        )
        self.decision_duration = meter.create_histogram(
            "zerotrust.decision.duration",
            unit="s",
            description="Time the policy decision point took to decide.",
            explicit_bucket_boundaries_advisory=LATENCY_BUCKETS,
        )
        self.verifier_duration = meter.create_histogram(
            "zerotrust.verifier.duration",
            unit="s",
            description="Time each verifier took, by verifier name and result.",
            explicit_bucket_boundaries_advisory=LATENCY_BUCKETS,
        )

        for name, monotonic, unit, description, attribute in _SINK_INSTRUMENTS:
            create = meter.create_observable_counter if monotonic else meter.create_observable_gauge
            create(
                name,
                callbacks=[self._sink_callback(attribute)],
                unit=unit,
                description=description,
            )
        meter.create_observable_gauge(
            "zerotrust.emitter.queue",
            callbacks=[self._emitter_callback(lambda emitter: len(emitter._queue))],
            unit="{event}",
            description="Events waiting for the emitter's writer thread.",
        )
        meter.create_observable_counter(
            "zerotrust.emitter.dropped",
            callbacks=[self._emitter_callback(lambda emitter: emitter.dropped)],
            unit="{event}",
            description="Events dropped in the request path: the emitter's queue was full.",
        )

    def record_event(self, event: str) -> None:
        self.events.add(1, {"event": event})

    def record_decision(
        self,
        segment: str,
        decision: str,
        action: str,
        reason: str,
        latency: float | None,
        decision_time: float | None,
    ) -> None:
        attributes = {"segment": segment, "decision": decision, "action": action, "reason": reason}
        self.decisions.add(1, attributes)
        if latency is not None:
            self.request_duration.record(latency, {"segment": segment, "action": action})
        if decision_time is not None:
            self.decision_duration.record(decision_time, {"segment": segment})

    def record_verifier(self, verifier: str, result: str, duration: float) -> None:
        self.verifier_duration.record(duration, {"verifier": verifier, "result": result})

    def _sink_callback(self, attribute: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        from opentelemetry.metrics import Observation

        def observe(_options: CallbackOptions) -> Iterable[Observation]:
            emitter = self.emitter
            if emitter is None:
                return []
            states: Sequence[SinkState] = list(delivery_state(emitter))
            return [
                Observation(
                    getattr(state, attribute), {"sink": state.sink, "position": state.position}
                )
                for state in states
            ]

        return observe

    def _emitter_callback(
        self, read: Callable[[EventEmitter], int]
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        from opentelemetry.metrics import Observation

        def observe(_options: CallbackOptions) -> Iterable[Observation]:
            emitter = self.emitter
            if emitter is None:
                return []
            return [Observation(read(emitter))]

        return observe
