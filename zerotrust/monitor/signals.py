# SPDX-License-Identifier: Apache-2.0
"""Risk signals: what detectors found, kept for a cooldown so verifiers can act on it."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from ..exceptions import ConfigurationError
from ..state.base import FailureMode, StateStore, StateUnavailableError, check_failure_mode
from ..state.memory import MemoryStateStore

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

    Detectors `raise_signal` from the event delivery thread; verifiers read signals on the
    request path. By default the signals live in this process, in a `MemoryStateStore`, and
    `active` only reads memory.

    With a shared ``store`` such as a `~zerotrust.state.RedisStateStore`, a signal raised in
    one worker is seen by every worker: `raise_signal` writes it there (and into this
    process's memory), and the `RiskVerifier` reads it with `active_many`, on the event loop,
    in the same round trip as the request's other reads.

    Args:
        store: Where signals are kept; this process's memory when ``None``.
        maxsize: Most signals kept in memory; the least recently used go first.
        clock: Returns the current time in seconds since the epoch.
        on_failure: While a shared store is unavailable, ``fail_closed`` makes `active_many`
            raise `StateUnavailableError`, so the verifier denies with ``state_unavailable``;
            ``degrade`` answers from the signals this process raised itself.

    .. versionchanged:: 0.7 The ``store`` and ``on_failure`` arguments.
    """

    def __init__(
        self,
        store: StateStore | None = None,
        *,
        maxsize: int = 100_000,
        clock: Callable[[], float] = time.time,
        on_failure: FailureMode = "fail_closed",
    ) -> None:
        if isinstance(maxsize, bool) or not isinstance(maxsize, int) or maxsize < 1:
            message = f"maxsize must be a positive number of signals, not {maxsize!r}"
            raise ConfigurationError(message, parameter="maxsize", value=maxsize)
        if store is not None and not isinstance(store, StateStore):
            message = f"store must be a StateStore, not {type(store).__name__}"
            raise ConfigurationError(message, parameter="store", value=store)
        self.clock = clock
        self.on_failure = check_failure_mode(on_failure)
        self.local = MemoryStateStore(max_flags=maxsize, clock=clock)
        self.store: StateStore = store if store is not None else self.local

    @property
    def local_reads(self) -> bool:
        """Whether lookups need no I/O, so `active` may run on the event loop."""
        return self.store.local_reads

    def raise_signal(self, signal: RiskSignal) -> None:
        """
        Record a signal; several signals about one key are kept side by side.

        A newer signal from the same detector replaces the older one.

        Raises:
            StateUnavailableError: when the shared store is unavailable; the signal is still
                kept in this process.
        """
        value = _encode(signal)
        self.local.set_flag(signal.kind, signal.key, signal.detector, value, signal.expires_at)
        if self.store is not self.local:
            self.store.set_flag(signal.kind, signal.key, signal.detector, value, signal.expires_at)

    def active(self, kind: SignalKind, key: str) -> tuple[RiskSignal, ...]:
        """
        Return the signals about ``key`` whose cooldown has not ended.

        With a shared store this blocks on I/O: call `active_many` on the event loop instead.
        """
        return self._decode(self.store.get_flags(kind, key))

    async def active_many(
        self, queries: Sequence[tuple[SignalKind, str]]
    ) -> list[tuple[RiskSignal, ...]]:
        """
        Return the active signals of each ``(kind, key)`` query, in one round trip.

        Raises:
            StateUnavailableError: when the shared store is unavailable and ``on_failure`` is
                ``fail_closed``.
        """
        try:
            found = await self.store.get_flags_many(queries)
        except StateUnavailableError:
            if self.on_failure == "fail_closed":
                raise
            found = await self.local.get_flags_many(queries)

        return [self._decode(fields) for fields in found]

    def clear(self, kind: SignalKind, key: str) -> None:
        """Drop every signal about ``key``, such as after an investigation."""
        self.local.delete_flags(kind, key)
        if self.store is not self.local:
            self.store.delete_flags(kind, key)

    def snapshot(self, limit: int = 10_000) -> list[RiskSignal]:
        """Return at most ``limit`` signals whose cooldown has not ended, for inspection."""
        now = self.clock()
        signals = [_decode(value) for value in self.store.scan_flags(limit)]
        return [signal for signal in signals if signal.expires_at > now]

    def _decode(self, fields: dict[str, str]) -> tuple[RiskSignal, ...]:
        if not fields:
            return ()
        now = self.clock()
        signals = (_decode(value) for value in fields.values())
        return tuple(signal for signal in signals if signal.expires_at > now)

    def __len__(self) -> int:
        return len(self.snapshot())

    def __repr__(self) -> str:
        return f"<RiskSignals active={len(self.snapshot())}>"


def _encode(signal: RiskSignal) -> str:
    return orjson.dumps(
        {
            "kind": signal.kind,
            "key": signal.key,
            "detector": signal.detector,
            "reason": signal.reason,
            "raised_at": signal.raised_at,
            "expires_at": signal.expires_at,
            "anomaly_id": signal.anomaly_id,
            "source_ips": sorted(signal.source_ips),
        }
    ).decode()


def _decode(value: str) -> RiskSignal:
    """Parse a stored signal; anything malformed is an error, so lookups fail closed."""
    try:
        data: Any = orjson.loads(value)
        return RiskSignal(
            kind=data["kind"],
            key=str(data["key"]),
            detector=str(data["detector"]),
            reason=str(data["reason"]),
            raised_at=float(data["raised_at"]),
            expires_at=float(data["expires_at"]),
            anomaly_id=data.get("anomaly_id"),
            source_ips=frozenset(str(ip) for ip in data.get("source_ips") or ()),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as error:
        message = f"a stored risk signal is malformed: {type(error).__name__}: {error}"[:300]
        raise StateUnavailableError(message) from None
