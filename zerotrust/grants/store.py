# SPDX-License-Identifier: Apache-2.0
"""Grant stores: where grants are recorded so they can be listed, revoked and checked."""

from __future__ import annotations

import abc
import asyncio
import dataclasses
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import orjson
from cachetools import LRUCache

from ..exceptions import ConfigurationError
from ..state.base import FailureMode, StateStore, StateUnavailableError, check_failure_mode
from .errors import GrantError, GrantStoreError
from .model import Grant

__all__ = [
    "GrantStore",
    "MemoryGrantStore",
    "RevocationState",
    "SQLiteGrantStore",
    "StateGrantStore",
]

RevocationState = Literal["valid", "revoked", "unknown"]

# Expired records are kept this long so `reap` can report them and `list` can show them.
_DEFAULT_RETENTION = 7 * 86400.0
# A verifier tolerates at most 300 s of clock skew, so an evicted grant is always expired.
_MIN_RETENTION = 300.0
_SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS grants (
    grant_id TEXT PRIMARY KEY,
    subject TEXT NOT NULL,
    segment TEXT NOT NULL,
    methods TEXT NOT NULL,
    paths TEXT NOT NULL,
    not_before REAL NOT NULL,
    expires_at REAL NOT NULL,
    reason TEXT NOT NULL,
    requested_by TEXT NOT NULL,
    approved_by TEXT,
    created_at REAL NOT NULL,
    revoked_at REAL,
    revoked_by TEXT,
    pending INTEGER NOT NULL DEFAULT 0,
    issued_at REAL,
    revocation_reason TEXT,
    reaped_at REAL
);
CREATE INDEX IF NOT EXISTS grants_expires_at ON grants (expires_at);
CREATE INDEX IF NOT EXISTS grants_subject ON grants (subject, expires_at);
CREATE INDEX IF NOT EXISTS grants_segment ON grants (segment, expires_at);
"""
_COLUMNS = tuple(field.name for field in dataclasses.fields(Grant))
# An upsert never clears a revocation or a reaping mark, so a concurrent save (such as an
# approval) cannot undo a revocation that committed first.
_UPSERT = f"""
INSERT INTO grants ({", ".join(_COLUMNS)}) VALUES ({", ".join("?" for _ in _COLUMNS)})
ON CONFLICT (grant_id) DO UPDATE SET
    subject = excluded.subject,
    segment = excluded.segment,
    methods = excluded.methods,
    paths = excluded.paths,
    not_before = excluded.not_before,
    expires_at = excluded.expires_at,
    reason = excluded.reason,
    requested_by = excluded.requested_by,
    approved_by = excluded.approved_by,
    created_at = excluded.created_at,
    revoked_at = COALESCE(grants.revoked_at, excluded.revoked_at),
    revoked_by = COALESCE(grants.revoked_by, excluded.revoked_by),
    pending = excluded.pending,
    issued_at = excluded.issued_at,
    revocation_reason = COALESCE(grants.revocation_reason, excluded.revocation_reason),
    reaped_at = COALESCE(grants.reaped_at, excluded.reaped_at)
"""  # noqa: S608 -- the column names come from the Grant dataclass, and values are bound
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM grants"  # noqa: S608 -- fixed column names


class GrantStore(abc.ABC):
    """
    Base class of grant stores: the record of every grant, and the source of revocations.

    Every method is synchronous and may block on I/O; the grant verifier calls
    `revocation_state` through `asyncio.to_thread` unless `revocation_state_cached` answers.
    Implementations must be safe to call from several threads at once.

    .. versionadded:: 0.1.0
    """

    @abc.abstractmethod
    def save(self, grant: Grant) -> None:
        """Insert or update a grant. An update never clears a revocation or a reaping mark."""

    @abc.abstractmethod
    def get(self, grant_id: str) -> Grant | None:
        """Return the grant with this id, or ``None``."""

    @abc.abstractmethod
    def revoke(self, grant_id: str, at: float, by: str, reason: str | None = None) -> Grant | None:
        """
        Revoke a grant and return it; ``None`` when there is no such grant.

        A grant that is already revoked keeps its first revocation.
        """

    @abc.abstractmethod
    def list(
        self,
        *,
        include_inactive: bool = False,
        now: float | None = None,
        subject: str | None = None,
        segment: str | None = None,
    ) -> list[Grant]:
        """
        Return grants ordered by creation time.

        Without ``include_inactive``, only grants that are pending, scheduled or active at
        ``now`` (default: the current time): revoked and expired grants are left out.
        """

    @abc.abstractmethod
    def mark_reaped(self, grant_id: str, at: float) -> bool:
        """Set the grant's ``reaped_at`` unless it is set; ``True`` when this call set it."""

    def revocation_state(self, grant_id: str) -> RevocationState:
        """Return ``revoked``, ``valid``, or ``unknown`` when the store has no such grant."""
        grant = self.get(grant_id)
        if grant is None:
            return "unknown"
        return "revoked" if grant.revoked_at is not None else "valid"

    def revocation_state_cached(self, grant_id: str) -> RevocationState | None:
        """Return `revocation_state` without blocking, or ``None`` when that needs I/O."""
        return None

    async def revocation_state_async(self, grant_id: str) -> RevocationState:
        """
        Return `revocation_state` from the event loop.

        The default runs `revocation_state` in a worker thread; stores with an asynchronous
        client override it.

        .. versionadded:: 0.7
        """
        return await asyncio.to_thread(self.revocation_state, grant_id)

    def is_revoked(self, grant_id: str) -> bool:
        """Return whether the grant is revoked; a grant missing from the store counts as revoked."""
        return self.revocation_state(grant_id) != "valid"

    def close(self) -> None:  # noqa: B027 -- stores without resources need no cleanup
        """Release the store's resources."""


class MemoryGrantStore(GrantStore):
    """
    Grants in a dict, for tests and single-process deployments.

    Grants disappear with the process, so use `SQLiteGrantStore` when the broker and the
    application run in different processes. Records are evicted ``retention`` seconds after
    they expire, and `save` raises once ``max_grants`` records are live.

    .. versionadded:: 0.1.0
    """

    def __init__(
        self,
        *,
        retention: float = _DEFAULT_RETENTION,
        max_grants: int = 100_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not _MIN_RETENTION <= retention < float("inf"):
            message = f"retention must be at least {_MIN_RETENTION:g} seconds, not {retention!r}"
            raise ConfigurationError(message, parameter="retention", value=retention)
        if max_grants < 1:
            message = f"max_grants must be at least 1, not {max_grants!r}"
            raise ConfigurationError(message, parameter="max_grants", value=max_grants)

        self.retention = float(retention)
        self.max_grants = max_grants
        self._clock = clock
        self._grants: dict[str, Grant] = {}
        self._lock = threading.Lock()

    def save(self, grant: Grant) -> None:
        with self._lock:
            stored = self._grants.get(grant.grant_id)
            if stored is None and len(self._grants) >= self.max_grants:
                self._evict(self._clock())
                if len(self._grants) >= self.max_grants:
                    message = (
                        f"the memory grant store holds {self.max_grants} grants; raise "
                        "max_grants or lower retention"
                    )
                    raise GrantError("grant_store_full", message, grant_id=grant.grant_id)
            self._grants[grant.grant_id] = _merge(stored, grant)

    def get(self, grant_id: str) -> Grant | None:
        with self._lock:
            return self._grants.get(grant_id)

    def revoke(self, grant_id: str, at: float, by: str, reason: str | None = None) -> Grant | None:
        with self._lock:
            grant = self._grants.get(grant_id)
            if grant is None or grant.revoked_at is not None:
                return grant
            revoked = dataclasses.replace(
                grant, revoked_at=at, revoked_by=by, revocation_reason=reason
            )
            self._grants[grant_id] = revoked
            return revoked

    def list(
        self,
        *,
        include_inactive: bool = False,
        now: float | None = None,
        subject: str | None = None,
        segment: str | None = None,
    ) -> list[Grant]:
        moment = self._clock() if now is None else now
        with self._lock:
            self._evict(moment)
            grants = list(self._grants.values())
        selected = [
            grant
            for grant in grants
            if (subject is None or grant.subject == subject)
            and (segment is None or grant.segment == segment)
            and (include_inactive or (grant.revoked_at is None and grant.expires_at > moment))
        ]

        return sorted(selected, key=lambda grant: (grant.created_at, grant.grant_id))

    def mark_reaped(self, grant_id: str, at: float) -> bool:
        with self._lock:
            grant = self._grants.get(grant_id)
            if grant is None or grant.reaped_at is not None:
                return False
            self._grants[grant_id] = dataclasses.replace(grant, reaped_at=at)
            return True

    def revocation_state_cached(self, grant_id: str) -> RevocationState | None:
        return self.revocation_state(grant_id)

    def __len__(self) -> int:
        return len(self._grants)

    def _evict(self, now: float) -> None:
        cutoff = now - self.retention
        stale = [key for key, grant in self._grants.items() if grant.expires_at < cutoff]
        for key in stale:
            del self._grants[key]


def _merge(stored: Grant | None, grant: Grant) -> Grant:
    """Apply the upsert rule: a stored revocation or reaping mark survives an update."""
    if stored is None:
        return grant
    changes: dict[str, object] = {}
    if stored.revoked_at is not None:
        changes.update(
            revoked_at=stored.revoked_at,
            revoked_by=stored.revoked_by,
            revocation_reason=stored.revocation_reason,
        )
    if stored.reaped_at is not None:
        changes["reaped_at"] = stored.reaped_at

    return dataclasses.replace(grant, **changes) if changes else grant  # type: ignore[arg-type]


class SQLiteGrantStore(GrantStore):
    """
    Grants in an SQLite database file, shared by the broker, the CLI and the application.

    The database runs in WAL mode, so readers do not wait for a writer, and each thread gets
    its own connection. A revocation is committed before `revoke` returns, so every
    later `revocation_state` call, from any process, returns ``revoked``.

    Args:
        path: The database file; created with its tables when missing.
        timeout: Seconds to wait for another writer's lock before raising `GrantStoreError`.
        retention: Seconds after expiry after which `purge` deletes a record.

    .. versionadded:: 0.1.0
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        timeout: float = 5.0,
        retention: float = _DEFAULT_RETENTION,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not 0 < timeout < float("inf"):
            message = f"timeout must be a positive number of seconds, not {timeout!r}"
            raise ConfigurationError(message, parameter="timeout", value=timeout)
        if not _MIN_RETENTION <= retention < float("inf"):
            message = f"retention must be at least {_MIN_RETENTION:g} seconds, not {retention!r}"
            raise ConfigurationError(message, parameter="retention", value=retention)

        self.path = Path(path)
        self.timeout = float(timeout)
        self.retention = float(retention)
        self._clock = clock
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        with self._transaction() as connection:
            connection.executescript(_SCHEMA)
            connection.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")

    def save(self, grant: Grant) -> None:
        with self._transaction() as connection:
            connection.execute(_UPSERT, _to_row(grant))

    def get(self, grant_id: str) -> Grant | None:
        with self._transaction() as connection:
            row = connection.execute(f"{_SELECT} WHERE grant_id = ?", (grant_id,)).fetchone()
        return _from_row(row) if row is not None else None

    def revoke(self, grant_id: str, at: float, by: str, reason: str | None = None) -> Grant | None:
        with self._transaction() as connection:
            connection.execute(
                "UPDATE grants SET revoked_at = ?, revoked_by = ?, revocation_reason = ? "
                "WHERE grant_id = ? AND revoked_at IS NULL",
                (at, by, reason, grant_id),
            )
            row = connection.execute(f"{_SELECT} WHERE grant_id = ?", (grant_id,)).fetchone()
        return _from_row(row) if row is not None else None

    def list(
        self,
        *,
        include_inactive: bool = False,
        now: float | None = None,
        subject: str | None = None,
        segment: str | None = None,
    ) -> list[Grant]:
        conditions: list[str] = []
        parameters: list[object] = []
        if not include_inactive:
            conditions.append("revoked_at IS NULL AND expires_at > ?")
            parameters.append(self._clock() if now is None else now)
        if subject is not None:
            conditions.append("subject = ?")
            parameters.append(subject)
        if segment is not None:
            conditions.append("segment = ?")
            parameters.append(segment)
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        query = f"{_SELECT}{where} ORDER BY created_at, grant_id"
        with self._transaction() as connection:
            rows = connection.execute(query, parameters).fetchall()

        return [_from_row(row) for row in rows]

    def mark_reaped(self, grant_id: str, at: float) -> bool:
        with self._transaction() as connection:
            cursor = connection.execute(
                "UPDATE grants SET reaped_at = ? WHERE grant_id = ? AND reaped_at IS NULL",
                (at, grant_id),
            )
        return cursor.rowcount == 1

    def revocation_state(self, grant_id: str) -> RevocationState:
        with self._transaction() as connection:
            row = connection.execute(
                "SELECT revoked_at FROM grants WHERE grant_id = ?", (grant_id,)
            ).fetchone()
        if row is None:
            return "unknown"
        return "revoked" if row[0] is not None else "valid"

    def purge(self, now: float | None = None) -> int:
        """Delete records that expired more than ``retention`` seconds ago; return how many."""
        cutoff = (self._clock() if now is None else now) - self.retention
        with self._transaction() as connection:
            cursor = connection.execute("DELETE FROM grants WHERE expires_at < ?", (cutoff,))
        return cursor.rowcount

    def close(self) -> None:
        """Close every thread's connection; later calls raise `GrantStoreError`."""
        with self._lock:
            self._closed = True
            connections, self._connections = self._connections, []
        for connection in connections:
            connection.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        connection = self._connection()
        try:
            with connection:
                yield connection
        except sqlite3.Error as error:
            message = f"grant store {self.path} failed: {type(error).__name__}: {error}"
            raise GrantStoreError(message) from error

    def _connection(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is not None and not self._closed:
            return connection
        with self._lock:
            if self._closed:
                message = f"grant store {self.path} is closed"
                raise GrantStoreError(message)
            try:
                if not self.path.exists():
                    # The store names who may do what: readable by its owner only.
                    os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
                # Each thread queries only its own connection; the check is off so that
                # close() may close every connection from one thread.
                connection = sqlite3.connect(
                    self.path, timeout=self.timeout, check_same_thread=False
                )
                connection.execute("PRAGMA journal_mode = WAL")
                connection.execute("PRAGMA synchronous = NORMAL")
            except sqlite3.Error as error:
                message = f"opening grant store {self.path} failed: {error}"
                raise GrantStoreError(message) from error
            # NOTE: a connection lives until close(), even after its thread ends; the worker
            # threads of asyncio.to_thread are reused, so their number stays bounded.
            self._connections.append(connection)
        self._local.connection = connection

        return connection


def _to_row(grant: Grant) -> tuple[object, ...]:
    values = dataclasses.astuple(grant)
    row = list(values)
    row[_COLUMNS.index("methods")] = json.dumps(list(grant.methods))
    row[_COLUMNS.index("paths")] = json.dumps(list(grant.paths))
    row[_COLUMNS.index("pending")] = int(grant.pending)

    return tuple(row)


def _from_row(row: tuple[object, ...]) -> Grant:
    values = dict(zip(_COLUMNS, row, strict=True))
    values["methods"] = tuple(json.loads(str(values["methods"])))
    values["paths"] = tuple(json.loads(str(values["paths"])))
    values["pending"] = bool(values["pending"])

    return Grant(**values)  # type: ignore[arg-type]


_GRANT_TABLE = "grant"


class StateGrantStore(GrantStore):
    """
    Grants in a `StateStore`, such as a `~zerotrust.state.RedisStateStore` shared by every
    worker and host.

    A grant revoked through any process, the broker or ``zerotrust revoke`` included, is
    refused by every worker on its next request, because the verifier reads the revocation
    from the shared store on each request, in the same round trip as the other verifiers.
    Each record expires ``retention`` seconds after the grant does.

    While the store is unavailable, `revocation_state` raises `GrantStoreError` (the verifier
    denies with ``grant_store_unavailable``) unless ``on_failure`` is ``degrade``. Then it
    answers from the last state this process read for the grant, and still raises for a
    grant it never read.

    .. warning:: With ``on_failure="degrade"``, a grant revoked during an outage stays usable
        in the workers that saw it valid until the store responds again.

    Args:
        state: Where the grants are kept.
        retention: Seconds after expiry that a record is kept; at least 300.
        on_failure: ``fail_closed`` or ``degrade``, for revocation checks.
        max_known: Most grant states remembered in this process for ``degrade``.

    .. versionadded:: 0.7
    """

    def __init__(
        self,
        state: StateStore,
        *,
        retention: float = _DEFAULT_RETENTION,
        on_failure: FailureMode = "fail_closed",
        max_known: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not isinstance(state, StateStore):
            message = f"state must be a StateStore, not {type(state).__name__}"
            raise ConfigurationError(message, parameter="state", value=state)
        if not _MIN_RETENTION <= retention < float("inf"):
            message = f"retention must be at least {_MIN_RETENTION:g} seconds, not {retention!r}"
            raise ConfigurationError(message, parameter="retention", value=retention)

        self.state = state
        self.retention = float(retention)
        self.on_failure = check_failure_mode(on_failure)
        self._clock = clock
        self._known: LRUCache[str, RevocationState] = LRUCache(maxsize=max_known)

    def save(self, grant: Grant) -> None:
        def merge(current: str | None) -> tuple[str, float]:
            stored = _decode_grant(current) if current is not None else None
            merged = _merge(stored, grant)
            return _encode_grant(merged), self._ttl(merged)

        self._write(grant.grant_id, merge)

    def get(self, grant_id: str) -> Grant | None:
        value = self._read(lambda: self.state.get_record(_GRANT_TABLE, grant_id))
        return _decode_grant(value) if value is not None else None

    def revoke(self, grant_id: str, at: float, by: str, reason: str | None = None) -> Grant | None:
        def revoke(current: str | None) -> tuple[str, float] | None:
            if current is None:
                return None
            grant = _decode_grant(current)
            if grant.revoked_at is not None:
                return None
            revoked = dataclasses.replace(
                grant, revoked_at=at, revoked_by=by, revocation_reason=reason
            )
            return _encode_grant(revoked), self._ttl(revoked)

        value = self._write(grant_id, revoke)
        if value is None:
            return None
        self._known[grant_id] = "revoked"
        return _decode_grant(value)

    def list(
        self,
        *,
        include_inactive: bool = False,
        now: float | None = None,
        subject: str | None = None,
        segment: str | None = None,
    ) -> list[Grant]:
        moment = self._clock() if now is None else now
        values = self._read(lambda: self.state.list_records(_GRANT_TABLE))
        selected = [
            grant
            for grant in map(_decode_grant, values)
            if (subject is None or grant.subject == subject)
            and (segment is None or grant.segment == segment)
            and (include_inactive or (grant.revoked_at is None and grant.expires_at > moment))
        ]

        return sorted(selected, key=lambda grant: (grant.created_at, grant.grant_id))

    def mark_reaped(self, grant_id: str, at: float) -> bool:
        marked: list[bool] = []

        def mark(current: str | None) -> tuple[str, float] | None:
            marked.clear()
            if current is None:
                return None
            grant = _decode_grant(current)
            if grant.reaped_at is not None:
                return None
            marked.append(True)
            reaped = dataclasses.replace(grant, reaped_at=at)
            return _encode_grant(reaped), self._ttl(reaped)

        self._write(grant_id, mark)
        return bool(marked)

    def revocation_state(self, grant_id: str) -> RevocationState:
        try:
            value = self.state.get_record(_GRANT_TABLE, grant_id)
        except StateUnavailableError as error:
            return self._fallback(grant_id, error)
        return self._remember(grant_id, value)

    def revocation_state_cached(self, grant_id: str) -> RevocationState | None:
        if not self.state.local_reads:
            return None
        return self.revocation_state(grant_id)

    async def revocation_state_async(self, grant_id: str) -> RevocationState:
        try:
            (value,) = await self.state.get_records(_GRANT_TABLE, [grant_id])
        except StateUnavailableError as error:
            return self._fallback(grant_id, error)
        return self._remember(grant_id, value)

    def close(self) -> None:
        self.state.close()

    def _ttl(self, grant: Grant) -> float:
        return max(1.0, grant.expires_at + self.retention - self._clock())

    def _remember(self, grant_id: str, value: str | None) -> RevocationState:
        if value is None:
            return "unknown"
        state: RevocationState = (
            "revoked" if _decode_grant(value).revoked_at is not None else "valid"
        )
        if self.on_failure == "degrade":
            self._known[grant_id] = state
        return state

    def _fallback(self, grant_id: str, error: StateUnavailableError) -> RevocationState:
        known = self._known.get(grant_id) if self.on_failure == "degrade" else None
        if known is None:
            raise GrantStoreError(f"grant store unavailable: {error}") from error
        return known

    def _read(self, read: Callable[[], Any]) -> Any:
        try:
            return read()
        except StateUnavailableError as error:
            raise GrantStoreError(f"grant store unavailable: {error}") from error

    def _write(
        self, grant_id: str, update: Callable[[str | None], tuple[str, float] | None]
    ) -> str | None:
        try:
            return self.state.update_record(_GRANT_TABLE, grant_id, update)
        except StateUnavailableError as error:
            raise GrantStoreError(f"grant store unavailable: {error}") from error


def _encode_grant(grant: Grant) -> str:
    return orjson.dumps(dataclasses.asdict(grant)).decode()


def _decode_grant(value: str) -> Grant:
    try:
        data = orjson.loads(value)
        data["methods"] = tuple(data["methods"])
        data["paths"] = tuple(data["paths"])
        return Grant(**data)
    except (orjson.JSONDecodeError, KeyError, TypeError) as error:
        message = f"a stored grant is malformed: {type(error).__name__}: {error}"[:300]
        raise GrantStoreError(message) from None
