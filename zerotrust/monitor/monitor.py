# SPDX-License-Identifier: Apache-2.0
"""The monitor sink: runs detectors on delivered access events and acts on their anomalies."""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..events.sinks import Sink
from ..exceptions import ConfigurationError
from ..state.base import StateStore, StateUnavailableError
from .detectors import Detector, default_detectors
from .signals import RiskSignal, RiskSignals

if TYPE_CHECKING:
    from ..events.emitter import EventEmitter

__all__ = ["MonitorSink"]

logger = logging.getLogger("zerotrust.monitor")

# The anomaly field that contains the flagged value, per signal kind.
_SIGNAL_KEYS = {
    "subject": "subject",
    "client_ip": "client_ip",
    "network": "network",
    "credential": "credential_fingerprint",
    "device": "device_id",
}


class MonitorSink(Sink):
    """
    Watch the access-event stream with detectors, and report and act on what they find.

    Add it to the `EventEmitter`'s sinks, then set its `emitter` attribute to that emitter,
    because the emitter takes its sinks at construction. It runs in the emitter's delivery
    thread, never in the request path. Each batch's access events go through every detector in
    order. Other events, anomalies included, are skipped, so it never feeds on its own output.
    Each anomaly is kept in `anomalies`, queued on ``emitter``, and turned into a `RiskSignal` in
    ``signals`` that lasts ``cooldown`` seconds, for verifiers to act on.

    With several workers, give every worker's sink the same shared ``store`` (and a
    `RiskSignals` on that store): the detectors then count the traffic of all workers
    together, and an attack spread over them fires once.

    Args:
        detectors: The detectors to run; `default_detectors` when ``None``.
        store: Where every detector keeps its windows (see `Detector.share`); each detector's
            own setting when ``None``.
        signals: Where risk signals go; none are raised when ``None``.
        emitter: Where anomaly events go; they are only kept in `anomalies` when ``None``.
        cooldown: Seconds a risk signal stays active, counted from when it is raised.
        max_anomalies: Most recent anomaly events kept in `anomalies`.

    .. versionadded:: 0.6
    """

    name = "monitor"

    def __init__(
        self,
        detectors: Sequence[Detector] | None = None,
        *,
        store: StateStore | None = None,
        signals: RiskSignals | None = None,
        emitter: EventEmitter | None = None,
        cooldown: float = 900.0,
        max_anomalies: int = 1000,
    ) -> None:
        if isinstance(cooldown, bool) or not isinstance(cooldown, int | float) or not cooldown > 0:
            message = f"cooldown must be a positive number of seconds, not {cooldown!r}"
            raise ConfigurationError(message, parameter="cooldown", value=cooldown)
        chosen = default_detectors() if detectors is None else list(detectors)
        for detector in chosen:
            if not isinstance(detector, Detector):
                message = f"{detector!r} is not a zerotrust Detector"
                raise ConfigurationError(message, parameter="detectors", value=detector)
        if store is not None:
            if not isinstance(store, StateStore):
                message = f"store must be a StateStore, not {type(store).__name__}"
                raise ConfigurationError(message, parameter="store", value=store)
            for detector in chosen:
                detector.share(store)
        self.store = store
        self.detectors: tuple[Detector, ...] = tuple(chosen)
        self.signals = signals
        self.emitter = emitter
        self.cooldown = float(cooldown)
        self.anomalies: collections.deque[dict[str, Any]] = collections.deque(maxlen=max_anomalies)
        self.failures = 0
        self._lock = threading.Lock()

    def write(self, events: Sequence[dict[str, Any]]) -> None:
        with self._lock:
            for event in events:
                if event.get("event") != "access":
                    continue
                for detector in self.detectors:
                    try:
                        anomalies = detector.observe(event)
                    except Exception:
                        # One broken detector must not blind the others or lose the batch.
                        self.failures += 1
                        logger.exception(
                            "detector %s failed on event %s", detector.name, event.get("event_id")
                        )
                        continue
                    for anomaly in anomalies:
                        self._act(detector, anomaly)

    def _act(self, detector: Detector, anomaly: dict[str, Any]) -> None:
        self.anomalies.append(anomaly)
        if self.emitter is not None:
            self.emitter.emit(anomaly)
        if self.signals is None:
            return

        key = anomaly.get(_SIGNAL_KEYS[detector.signal_kind])
        if not key:
            return
        source_ips: frozenset[str] = frozenset()
        if detector.limit_to_source_ips:
            source_ips = frozenset(str(ip) for ip in anomaly.get("distinct_ips", ()) if ip)
        raised_at = self.signals.clock()
        signal = RiskSignal(
            kind=detector.signal_kind,
            key=str(key),
            detector=detector.name,
            reason=detector.name,
            raised_at=raised_at,
            expires_at=raised_at + self.cooldown,
            anomaly_id=anomaly.get("event_id"),
            source_ips=source_ips,
        )
        try:
            self.signals.raise_signal(signal)
        except StateUnavailableError:
            # The signal stays in this process; failing the batch would replay it through
            # the detectors and count its events twice.
            self.failures += 1
            logger.warning(
                "risk signal of anomaly %s is kept in this process only: the state store "
                "is unavailable",
                anomaly.get("event_id"),
                exc_info=True,
            )
