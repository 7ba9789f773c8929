# SPDX-License-Identifier: Apache-2.0
"""The demo's detection step and the check of the anomaly events it leaves in the events file."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any

from ..events import EventEmitter
from ..monitor import MonitorSink
from .script import AwaitDetection

__all__ = [
    "DETECTION_TIMEOUT",
    "MIN_DETECTORS",
    "AnomalyCheck",
    "DetectionOutcome",
    "await_detection",
    "check_anomaly_events",
]

# Seconds the runner waits for the delivery thread to run the detectors.
DETECTION_TIMEOUT = 2.0
# Distinct detectors that must fire for the attack phase to count as detected.
MIN_DETECTORS = 2


@dataclass(frozen=True, slots=True)
class DetectionOutcome:
    """
    The result of one detection step.

    Attributes:
        step: The scripted step.
        after_request: How many scripted requests were sent before the step ran.
        anomalies: Every anomaly the monitor had raised when the wait ended.
        waited_seconds: How long the runner waited.
        error: Why the step failed, when it did.
    """

    step: AwaitDetection
    after_request: int
    anomalies: tuple[dict[str, Any], ...]
    waited_seconds: float
    error: str | None = None

    @property
    def matched(self) -> bool:
        return self.error is None

    @property
    def detectors(self) -> list[str]:
        """The names of the detectors that fired, in the order they first fired."""
        return list(dict.fromkeys(str(anomaly.get("detector")) for anomaly in self.anomalies))


@dataclass(frozen=True, slots=True)
class AnomalyCheck:
    """
    The comparison of the anomaly events in the events file with those the monitor raised.

    Attributes:
        passed: Whether at least `MIN_DETECTORS` detectors fired and the events file contains
            every anomaly the monitor raised.
        detail: What differs, or a summary when nothing does.
        counts: How many anomaly events each detector wrote.
    """

    passed: bool
    detail: str
    counts: dict[str, int] = field(default_factory=dict)


def await_detection(
    step: AwaitDetection,
    *,
    after_request: int,
    monitor: MonitorSink | None,
    emitter: EventEmitter,
    timeout: float = DETECTION_TIMEOUT,
) -> DetectionOutcome:
    """
    Flush ``emitter`` so the monitor has seen every access event, then read its anomalies.

    A flush returns once the sinks have taken every queued event, and the monitor runs the
    detectors inside its ``write``. The step fails when the flush times out or a detector in
    ``step.detectors`` has not fired, and at once when the policy has no monitor.
    """
    if monitor is None:
        missing_monitor = "the policy file has no [monitor] table, so no detector runs"
        return DetectionOutcome(step, after_request, (), 0.0, missing_monitor)

    started = perf_counter()
    flushed = emitter.flush(timeout)
    waited = perf_counter() - started
    # The delivery thread appends to the deque; a copy gives a stable list to read.
    anomalies = tuple(list(monitor.anomalies))
    fired = {anomaly.get("detector") for anomaly in anomalies}
    missing = [name for name in step.detectors if name not in fired]

    error = None
    if not flushed:
        error = f"the events were not delivered within {timeout:g} s; the monitor fell behind"
    elif missing:
        error = f"no anomaly from {', '.join(missing)} after the events were delivered"

    return DetectionOutcome(step, after_request, anomalies, waited, error)


def check_anomaly_events(
    anomaly_events: Sequence[dict[str, Any]], detections: Sequence[DetectionOutcome]
) -> AnomalyCheck:
    """
    Check that the events file contains the anomalies the detection steps saw.

    The check passes when at least `MIN_DETECTORS` distinct detectors wrote anomaly events and
    every anomaly seen by a detection step is in the file, matched by ``event_id``.
    """
    counts: dict[str, int] = {}
    for event in anomaly_events:
        name = str(event.get("detector"))
        counts[name] = counts.get(name, 0) + 1

    written = {event.get("event_id") for event in anomaly_events}
    seen = {anomaly.get("event_id") for outcome in detections for anomaly in outcome.anomalies}
    unwritten = len(seen - written)
    if len(counts) < MIN_DETECTORS:
        names = ", ".join(sorted(counts)) or "none"
        detail = f"anomaly events from {len(counts)} detectors ({names}); expected {MIN_DETECTORS}"
        return AnomalyCheck(False, detail, counts)
    if unwritten:
        detail = f"{unwritten} anomalies the monitor raised are missing from the events file"
        return AnomalyCheck(False, detail, counts)

    detail = f"{len(anomaly_events)} anomaly events from {len(counts)} detectors"
    return AnomalyCheck(True, detail, counts)
