# SPDX-License-Identifier: Apache-2.0
"""Bounded sliding windows and per-key state tables that detectors keep their memory in."""

from __future__ import annotations

import collections
import datetime
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

from cachetools import LRUCache

from ..exceptions import ConfigurationError

__all__ = ["DistinctWindow", "EventWindow", "KeyedState", "event_time"]

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
