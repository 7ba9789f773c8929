# SPDX-License-Identifier: Apache-2.0
"""The in-memory state store: bounded caches inside one process."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from cachetools import LRUCache, TLRUCache

from ..exceptions import ConfigurationError
from .base import RecordUpdate, StateStore

__all__ = ["MemoryStateStore"]


class MemoryStateStore(StateStore):
    """
    State kept in bounded caches of this process, for one worker or for tests.

    Every table is a `cachetools` cache with a maximum size: when one is full, the entry used
    longest ago goes first, so a flood of keys costs old entries but never grows memory.
    Entries with a time to live expire on ``clock``.

    Args:
        max_flags: Most flags kept.
        max_records: Most records kept, all tables together.
        max_marks: Most marks kept.
        max_windows: Most detector windows and latest values kept.
        clock: Returns the current time in seconds since the epoch.

    .. versionadded:: 0.7
    """

    def __init__(
        self,
        *,
        max_flags: int = 100_000,
        max_records: int = 100_000,
        max_marks: int = 100_000,
        max_windows: int = 100_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        for name, value in (
            ("max_flags", max_flags),
            ("max_records", max_records),
            ("max_marks", max_marks),
            ("max_windows", max_windows),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                message = f"{name} must be a positive number of entries, not {value!r}"
                raise ConfigurationError(message, parameter=name, value=value)
        self.clock = clock
        self._lock = threading.Lock()
        self._flags: TLRUCache[tuple[str, str], dict[str, tuple[str, float]]] = TLRUCache(
            maxsize=max_flags, ttu=_flag_expiry, timer=clock
        )
        self._records: TLRUCache[tuple[str, str], tuple[str, float]] = TLRUCache(
            maxsize=max_records, ttu=_entry_expiry, timer=clock
        )
        self._marks: TLRUCache[tuple[str, str], float] = TLRUCache(
            maxsize=max_marks, ttu=_mark_expiry, timer=clock
        )
        self._windows: LRUCache[tuple[str, str], Any] = LRUCache(maxsize=max_windows)
        self._latest: TLRUCache[tuple[str, str], tuple[str, float]] = TLRUCache(
            maxsize=max_windows, ttu=_entry_expiry, timer=clock
        )

    # Risk flags ---------------------------------------------------------------------------------

    def set_flag(self, kind: str, key: str, field: str, value: str, expires_at: float) -> None:
        with self._lock:
            now = self.clock()
            current = self._flags.get((kind, key), {})
            fields = {name: entry for name, entry in current.items() if entry[1] > now}
            fields[field] = (value, expires_at)
            self._flags[(kind, key)] = fields

    def get_flags(self, kind: str, key: str) -> dict[str, str]:
        with self._lock:
            fields = self._flags.get((kind, key))
            if not fields:
                return {}
            now = self.clock()
            return {name: value for name, (value, expires) in fields.items() if expires > now}

    async def get_flags_many(self, items: Sequence[tuple[str, str]]) -> list[dict[str, str]]:
        return [self.get_flags(kind, key) for kind, key in items]

    def delete_flags(self, kind: str, key: str) -> None:
        with self._lock:
            self._flags.pop((kind, key), None)

    def scan_flags(self, limit: int = 10_000) -> list[str]:
        with self._lock:
            now = self.clock()
            values: list[str] = []
            for fields in self._flags.values():
                values.extend(value for value, expires in fields.values() if expires > now)
                if len(values) >= limit:
                    break
            return values[:limit]

    # Records ------------------------------------------------------------------------------------

    def get_record(self, table: str, key: str) -> str | None:
        with self._lock:
            entry = self._records.get((table, key))
        return entry[0] if entry is not None else None

    async def get_records(self, table: str, keys: Sequence[str]) -> list[str | None]:
        return [self.get_record(table, key) for key in keys]

    def update_record(self, table: str, key: str, update: RecordUpdate) -> str | None:
        with self._lock:
            entry = self._records.get((table, key))
            current = entry[0] if entry is not None else None
            change = update(current)
            if change is None:
                return current
            value, ttl = change
            self._records[(table, key)] = (value, self.clock() + ttl)
            return value

    def put_records(self, table: str, values: dict[str, str], ttl: float) -> None:
        with self._lock:
            expires = self.clock() + ttl
            for key, value in values.items():
                self._records[(table, key)] = (value, expires)

    def delete_records(self, table: str, keys: Sequence[str]) -> None:
        with self._lock:
            for key in keys:
                self._records.pop((table, key), None)

    def list_records(self, table: str, limit: int = 100_000) -> list[str]:
        with self._lock:
            self._records.expire()
            values = [value for (name, _), (value, _) in self._records.items() if name == table]
        return values[:limit]

    # Marks --------------------------------------------------------------------------------------

    def claim(self, table: str, key: str, ttl: float) -> bool:
        with self._lock:
            if (table, key) in self._marks:
                return False
            self._marks[(table, key)] = self.clock() + ttl
            return True

    async def claim_async(self, table: str, key: str, ttl: float) -> bool:
        return self.claim(table, key, ttl)

    # Windows ------------------------------------------------------------------------------------

    def add_event(
        self, name: str, key: str, at: float, member: str, *, window: float, maxlen: int
    ) -> list[tuple[float, str]]:
        with self._lock:
            entries: list[tuple[float, str]] = self._windows.get((name, key), [])
            cutoff = at - window
            entries = [entry for entry in entries if entry[0] >= cutoff]
            entries.append((at, member))
            entries.sort()
            entries = entries[-maxlen:]
            self._windows[(name, key)] = entries
            return list(entries)

    def add_distinct(
        self,
        name: str,
        key: str,
        at: float,
        member: str | None,
        info: str,
        *,
        window: float,
        max_values: int,
    ) -> list[tuple[str, float, str]]:
        with self._lock:
            values: dict[str, tuple[float, str]] = self._windows.get((name, key), {})
            cutoff = at - window
            kept = {value: entry for value, entry in values.items() if entry[0] >= cutoff}
            if member is not None:
                kept[member] = (at, info)
            ordered = sorted(kept.items(), key=lambda item: (item[1][0], item[0]))
            ordered = ordered[-max_values:]
            self._windows[(name, key)] = dict(ordered)
            return [(value, seen, text) for value, (seen, text) in ordered]

    def swap(self, name: str, key: str, value: str, ttl: float) -> str | None:
        with self._lock:
            previous = self._latest.get((name, key))
            self._latest[(name, key)] = (value, self.clock() + ttl)
        return previous[0] if previous is not None else None

    def __repr__(self) -> str:
        return f"<MemoryStateStore flags={len(self._flags)} records={len(self._records)}>"


def _flag_expiry(_key: object, fields: dict[str, tuple[str, float]], _now: float) -> float:
    return max((expires for _, expires in fields.values()), default=0.0)


def _entry_expiry(_key: object, entry: tuple[str, float], _now: float) -> float:
    return entry[1]


def _mark_expiry(_key: object, expires: float, _now: float) -> float:
    return expires
