# SPDX-License-Identifier: Apache-2.0
"""Bounded sliding windows and per-key state tables that detectors keep their memory in."""

from __future__ import annotations

import collections
import datetime
import secrets
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

import orjson
from cachetools import LRUCache

from ..exceptions import ConfigurationError
from ..state.base import StateStore, StateUnavailableError

__all__ = [
    "DistinctWindow",
    "EventWindow",
    "KeyState",
    "KeyedState",
    "LocalWindows",
    "SharedWindows",
    "event_time",
]

State = TypeVar("State")


def event_time(event: dict[str, Any]) -> float | None:
    """
    Return an event's ``timestamp`` as seconds since the epoch, or ``None`` when it is unusable.

    Accepts RFC 3339 strings (``Z`` or an offset; a naive time counts as UTC) and numbers.
    """
    value = event.get("timestamp")
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.UTC)

    return parsed.timestamp()


def check_positive(name: str, value: float) -> None:
    """Raise `ConfigurationError` unless ``value`` is a positive number."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        message = f"{name} must be a positive number, not {value!r}"
        raise ConfigurationError(message, parameter=name, value=value)


class EventWindow:
    """
    The last ``maxlen`` events of one key as ``(time, event_id, value)`` entries, oldest first.

    Memory is bounded by ``maxlen`` entries whatever the traffic; when more events arrive
    within the window, the oldest are forgotten, so counts saturate at ``maxlen``.
    """

    __slots__ = ("entries",)

    def __init__(self, maxlen: int) -> None:
        self.entries: collections.deque[tuple[float, str | None, Any]] = collections.deque(
            maxlen=maxlen
        )

    def add(self, time: float, event_id: str | None, value: Any = None) -> None:
        self.entries.append((time, event_id, value))

    def prune(self, cutoff: float) -> None:
        """Drop the entries older than ``cutoff``."""
        entries = self.entries
        while entries and entries[0][0] < cutoff:
            entries.popleft()

    def __len__(self) -> int:
        return len(self.entries)


class DistinctWindow:
    """
    The distinct values one key showed within a window, each with its latest sighting.

    Each value keeps ``(time, event_id, extra)`` of that sighting, where ``extra`` is whatever
    the detector wants to report with it, such as the client address.

    Keeps at most ``max_values`` values; a new value beyond that pushes out the one seen
    longest ago. Values are ordered by their latest sighting, so pruning stops at the first
    value still inside the window.

    NOTE: an event that arrives out of order (older than the latest one) still counts as the
    latest sighting of its value, so it may stay in the window slightly longer than it should.
    """

    __slots__ = ("max_values", "values")

    def __init__(self, max_values: int) -> None:
        self.max_values = max_values
        self.values: collections.OrderedDict[Hashable, tuple[float, str | None, Any]] = (
            collections.OrderedDict()
        )

    def add(self, value: Hashable, time: float, event_id: str | None, extra: Any = None) -> None:
        values = self.values
        values[value] = (time, event_id, extra)
        values.move_to_end(value)
        while len(values) > self.max_values:
            values.popitem(last=False)

    def prune(self, cutoff: float) -> None:
        """Drop the values whose latest sighting is older than ``cutoff``."""
        values = self.values
        while values:
            oldest = next(iter(values.values()))
            if oldest[0] >= cutoff:
                break
            values.popitem(last=False)

    def first_seen(self) -> float:
        return min(entry[0] for entry in self.values.values())

    def event_ids(self) -> list[str]:
        return [entry[1] for entry in self.values.values() if entry[1] is not None]

    def extras(self) -> list[Any]:
        return [entry[2] for entry in self.values.values()]

    def __len__(self) -> int:
        return len(self.values)


class KeyedState(Generic[State]):
    """
    Per-key detector state in an LRU table of at most ``max_keys`` keys.

    When a new key arrives at a full table, the key used longest ago is forgotten, so a flood
    of distinct subjects or addresses costs old keys their history but never grows memory.
    """

    def __init__(self, max_keys: int, factory: Callable[[], State]) -> None:
        if isinstance(max_keys, bool) or not isinstance(max_keys, int) or max_keys < 1:
            message = f"max_keys must be a positive integer, not {max_keys!r}"
            raise ConfigurationError(message, parameter="max_keys", value=max_keys)
        self.max_keys = max_keys
        self._factory = factory
        self._table: LRUCache[Hashable, State] = LRUCache(maxsize=max_keys)

    def get(self, key: Hashable) -> State:
        """Return the state of ``key``, creating it when the key is new or was forgotten."""
        try:
            return self._table[key]
        except KeyError:
            state = self._factory()
            self._table[key] = state
            return state

    def pop(self, key: Hashable) -> None:
        self._table.pop(key, None)

    def __len__(self) -> int:
        return len(self._table)

    def __contains__(self, key: object) -> bool:
        return key in self._table


class KeyState:
    """Per-key detector state: a window, and the time until which the key stays quiet."""

    __slots__ = ("quiet_until", "window")

    def __init__(self, window: Any) -> None:
        self.window = window
        self.quiet_until = float("-inf")


class LocalWindows:
    """
    The windows of one detector in this process: a `KeyedState` table of `KeyState` entries.

    Quiet periods count in event time, so replaying a log finds what live monitoring found.
    """

    def __init__(self, max_keys: int, factory: Callable[[], KeyState]) -> None:
        self.state: KeyedState[KeyState] = KeyedState(max_keys, factory)

    def events(
        self, key: str, now: float, event_id: str | None, value: Any, *, window: float, maxlen: int
    ) -> EventWindow:
        """Add an entry to ``key``'s event window, drop entries older than ``window``, return it."""
        events: EventWindow = self.state.get(key).window
        events.prune(now - window)
        events.add(now, event_id, value)
        return events

    def distinct(
        self,
        key: Hashable,
        value: Hashable | None,
        now: float,
        event_id: str | None,
        extra: Any = None,
        *,
        window: float,
        max_values: int,
        slot: int | None = None,
    ) -> DistinctWindow:
        """Record a sighting of ``value`` (none when ``None``) and return the pruned window."""
        state = self.state.get(key)
        values: DistinctWindow = state.window if slot is None else state.window[slot]
        values.prune(now - window)
        if value is not None:
            values.add(value, now, event_id, extra)
        return values

    def swap(self, key: str, value: Any, ttl: float) -> Any:
        """Store ``key``'s latest value and return the previous one, or ``None``."""
        state = self.state.get(key)
        previous = state.window
        state.window = value
        return previous

    def claim(self, key: Hashable, now: float, quiet: float) -> bool:
        """Start a quiet period of ``quiet`` seconds unless one is running; ``True`` if started."""
        state = self.state.get(key)
        if now < state.quiet_until:
            return False
        state.quiet_until = now + quiet
        return True


class SharedWindows:
    """
    The windows of one detector in a `StateStore`, so detectors in every worker share them.

    Entries travel as JSON: lists come back as tuples. Quiet periods are marks with a time to
    live, so exactly one worker fires for an attack spread over several. While the store is
    unavailable, the detector uses ``local``, the windows of this process, and catches up
    with the shared windows once the store responds again.
    """

    def __init__(self, store: StateStore, name: str, local: LocalWindows) -> None:
        self.store = store
        self.name = name
        self.local = local

    def events(
        self, key: str, now: float, event_id: str | None, value: Any, *, window: float, maxlen: int
    ) -> EventWindow:
        # The nonce keeps two entries with the same event id and value apart.
        member = orjson.dumps([event_id, value, secrets.token_hex(4)]).decode()
        try:
            entries = self.store.add_event(
                self.name, key, now, member, window=window, maxlen=maxlen
            )
        except StateUnavailableError:
            return self.local.events(key, now, event_id, value, window=window, maxlen=maxlen)

        events = EventWindow(maxlen)
        for at, text in entries:
            stored_id, stored_value, _ = orjson.loads(text)
            events.add(at, stored_id, _freeze(stored_value))
        return events

    def distinct(
        self,
        key: Hashable,
        value: Hashable | None,
        now: float,
        event_id: str | None,
        extra: Any = None,
        *,
        window: float,
        max_values: int,
        slot: int | None = None,
    ) -> DistinctWindow:
        name = self.name if slot is None else f"{self.name}.{slot}"
        member = None if value is None else orjson.dumps(value).decode()
        info = orjson.dumps([event_id, extra]).decode()
        try:
            entries = self.store.add_distinct(
                name, _text_key(key), now, member, info, window=window, max_values=max_values
            )
        except StateUnavailableError:
            return self.local.distinct(
                key, value, now, event_id, extra, window=window, max_values=max_values, slot=slot
            )

        values = DistinctWindow(max_values)
        for text, seen, stored in entries:
            stored_id, stored_extra = orjson.loads(stored) if stored else (None, None)
            values.values[_freeze(orjson.loads(text))] = (seen, stored_id, _freeze(stored_extra))
        return values

    def swap(self, key: str, value: Any, ttl: float) -> Any:
        try:
            previous = self.store.swap(self.name, key, orjson.dumps(value).decode(), ttl)
        except StateUnavailableError:
            return self.local.swap(key, value, ttl)
        return None if previous is None else _freeze(orjson.loads(previous))

    def claim(self, key: Hashable, now: float, quiet: float) -> bool:
        try:
            return self.store.claim(f"quiet:{self.name}", _text_key(key), quiet)
        except StateUnavailableError:
            return self.local.claim(key, now, quiet)


def _text_key(key: Hashable) -> str:
    return key if isinstance(key, str) else orjson.dumps(key).decode()


def _freeze(value: Any) -> Any:
    """Turn JSON lists back into tuples, so values are hashable as they were before."""
    if isinstance(value, list):
        return tuple(_freeze(item) for item in value)
    return value
