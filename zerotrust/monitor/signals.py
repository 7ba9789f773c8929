# SPDX-License-Identifier: Apache-2.0
"""Risk signals: what detectors found, kept for a cooldown so verifiers can act on it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from cachetools import TLRUCache

from ..exceptions import ConfigurationError

__all__ = ["RiskSignal", "RiskSignals", "SignalKind"]

SignalKind = Literal["subject", "client_ip", "network", "credential", "device"]
"""What a signal is about: a subject, a client address, a network (CIDR), a credential
fingerprint or a device id."""


@dataclass(frozen=True, slots=True)
class RiskSignal:
    """
    One flag raised by a detector.

    Attributes:
        kind: What the flag is about.
        key: The flagged value, such as a subject or an address.
        detector: The detector that raised it.
        reason: A reason code, such as ``denied_burst``.
        raised_at: When it was raised, seconds since the epoch.
        expires_at: When the cooldown ends, seconds since the epoch.
        anomaly_id: The event id of the anomaly event that explains it.
        source_ips: Client addresses the offending traffic came from, when the flag should only
            affect requests from those addresses (so an attacker cannot lock out a victim).
    """

    kind: SignalKind
    key: str
    detector: str
    reason: str
    raised_at: float
    expires_at: float
    anomaly_id: str | None = None
    source_ips: frozenset[str] = frozenset()


class RiskSignals:
    """
    A bounded, thread-safe store of risk signals, each expiring after its cooldown.

    Detectors `raise_signal` from the event delivery thread; verifiers call `active` from the
    request path, which only reads memory.

    Args:
        maxsize: Most signals kept; the least recently used go first.
        clock: Returns the current time in seconds since the epoch.
    """

    def __init__(self, *, maxsize: int = 100_000, clock: Callable[[], float] = time.time) -> None:
        if not isinstance(maxsize, int) or maxsize < 1:
            message = f"maxsize must be a positive number of signals, not {maxsize!r}"
            raise ConfigurationError(message, parameter="maxsize", value=maxsize)
        self.clock = clock
        self._lock = threading.Lock()
        self._signals: TLRUCache[tuple[str, str], tuple[RiskSignal, ...]] = TLRUCache(
            maxsize=maxsize, ttu=self._time_to_use, timer=clock
        )

    @staticmethod
    def _time_to_use(_key: tuple[str, str], signals: tuple[RiskSignal, ...], _now: float) -> float:
        return max(signal.expires_at for signal in signals)

    def raise_signal(self, signal: RiskSignal) -> None:
        """Record a signal; several signals about one key are kept side by side."""
        key = (signal.kind, signal.key)
        with self._lock:
            now = self.clock()
            current = tuple(kept for kept in self._signals.get(key, ()) if kept.expires_at > now)
            others = tuple(kept for kept in current if kept.detector != signal.detector)
            self._signals[key] = (*others, signal)

    def active(self, kind: SignalKind, key: str) -> tuple[RiskSignal, ...]:
        """Return the signals about ``key`` whose cooldown has not ended."""
        with self._lock:
            signals = self._signals.get((kind, key), ())
            if not signals:
                return ()
            now = self.clock()
            return tuple(signal for signal in signals if signal.expires_at > now)

    def clear(self, kind: SignalKind, key: str) -> None:
        """Drop every signal about ``key``, such as after an investigation."""
        with self._lock:
            self._signals.pop((kind, key), None)

    def snapshot(self) -> list[RiskSignal]:
        """Return every signal whose cooldown has not ended, for inspection."""
        with self._lock:
            now = self.clock()
            return [
                signal
                for signals in self._signals.values()
                for signal in signals
                if signal.expires_at > now
            ]

    def __len__(self) -> int:
        with self._lock:
            return len(self._signals)

    def __repr__(self) -> str:
        return f"<RiskSignals active={len(self.snapshot())}>"
