# SPDX-License-Identifier: Apache-2.0
"""The state-store contract that risk flags, detector windows, grants and devices share."""

from __future__ import annotations

import abc
import hashlib
import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from ..events.access import format_timestamp, new_event_id
from ..exceptions import ConfigurationError, InfrastructureError

if TYPE_CHECKING:
    from ..events.emitter import EventEmitter

__all__ = [
    "FailureMode",
    "StateHealth",
    "StateStore",
    "StateUnavailableError",
    "check_failure_mode",
    "key_digest",
]

FailureMode = Literal["fail_closed", "degrade"]
"""The behaviour of a use of shared state while the store is unreachable: deny the request with
``state_unavailable`` (``fail_closed``), or fall back to this process's own state (``degrade``)."""

RecordUpdate = Callable[[str | None], tuple[str, float] | None]
"""Receives a record's current value (or ``None``) and returns its new value and time to live
in seconds, or ``None`` to leave the record as it is."""

logger = logging.getLogger("zerotrust.state")

_NAMESPACE = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")


class StateUnavailableError(InfrastructureError):
    """
    The state store could not be reached or did not respond within its timeout.

    .. versionadded:: 0.7
    """


def check_failure_mode(value: object, parameter: str = "on_failure") -> FailureMode:
    """Return ``value`` as a `FailureMode`, or raise `ConfigurationError`."""
    if value not in ("fail_closed", "degrade"):
        message = f"{parameter} must be 'fail_closed' or 'degrade', not {value!r}"
        raise ConfigurationError(message, parameter=parameter, value=value)
    return value


def check_namespace(namespace: object) -> str:
    """Return ``namespace`` unchanged, or raise `ConfigurationError` for an unusable one."""
    if not isinstance(namespace, str) or not _NAMESPACE.fullmatch(namespace):
        message = (
            f"namespace must be 1 to 64 letters, digits or '_.:-', such as 'zerotrust', "
            f"not {namespace!r}"
        )
        raise ConfigurationError(message, parameter="namespace", value=namespace)
    return namespace


def key_digest(key: str) -> str:
    """
    Return a fixed-length hex digest of a key chosen by clients, such as a subject.

    Store keys embed the digest rather than the text, so a long or odd subject can neither
    grow a key nor add a separator or a Redis Cluster hash tag to it.
    """
    return hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


class StateStore(abc.ABC):
    """
    Base class of state stores: the state that every worker of an application shares.

    A store keeps five kinds of state, each bounded and each expiring:

    - risk flags: per ``(kind, key)`` a small map of field to value, kept until ``expires_at``;
    - records: text values per ``(table, key)``, such as grants and device entries;
    - marks: keys set once, such as a single-use token id or a detector that already fired;
    - event windows and distinct windows: the recent entries of one detector key;
    - latest values: one value per key, replaced by each write.

    Values are text, usually JSON, so the same code serves every backend.

    Synchronous methods may block on I/O. Call them from threads, such as the event writer
    thread, and never on the event loop. The ``async`` methods are for the request path.
    Every method raises `StateUnavailableError` when the backend cannot be reached.

    Attributes:
        shared: Whether other processes see this state.
        local_reads: Whether reads need no I/O, so verifiers may decide in `verify_cached`.

    .. versionadded:: 0.7
    """

    shared: ClassVar[bool] = False
    local_reads: ClassVar[bool] = True

    # Risk flags ---------------------------------------------------------------------------------

    @abc.abstractmethod
    def set_flag(self, kind: str, key: str, field: str, value: str, expires_at: float) -> None:
        """Set one field of a flag; the flag lives until its latest ``expires_at``."""

    @abc.abstractmethod
    def get_flags(self, kind: str, key: str) -> dict[str, str]:
        """Return the fields of a flag, empty when there is none."""

    @abc.abstractmethod
    async def get_flags_many(self, items: Sequence[tuple[str, str]]) -> list[dict[str, str]]:
        """Return the fields of several flags in one round trip, in the order of ``items``."""

    @abc.abstractmethod
    def delete_flags(self, kind: str, key: str) -> None:
        """Delete a flag with every field."""

    @abc.abstractmethod
    def scan_flags(self, limit: int = 10_000) -> list[str]:
        """Return the field values of at most ``limit`` flags, for inspection."""

    # Records ------------------------------------------------------------------------------------

    @abc.abstractmethod
    def get_record(self, table: str, key: str) -> str | None:
        """Return a record, or ``None``."""

    @abc.abstractmethod
    async def get_records(self, table: str, keys: Sequence[str]) -> list[str | None]:
        """Return several records of one table in one round trip, in the order of ``keys``."""

    @abc.abstractmethod
    def update_record(self, table: str, key: str, update: RecordUpdate) -> str | None:
        """
        Read, change and write one record atomically, and return its value afterwards.

        ``update`` may run more than once when another process changes the record meanwhile,
        so it must not have side effects.
        """

    @abc.abstractmethod
    def put_records(self, table: str, values: dict[str, str], ttl: float) -> None:
        """Write several records of one table at once, each living ``ttl`` seconds."""

    @abc.abstractmethod
    def delete_records(self, table: str, keys: Sequence[str]) -> None:
        """Delete records; missing keys are ignored."""

    @abc.abstractmethod
    def list_records(self, table: str, limit: int = 100_000) -> list[str]:
        """Return at most ``limit`` live records of a table, in no particular order."""

    # Marks --------------------------------------------------------------------------------------

    @abc.abstractmethod
    def claim(self, table: str, key: str, ttl: float) -> bool:
        """Set a mark for ``ttl`` seconds; ``True`` when no live mark existed before."""

    @abc.abstractmethod
    async def claim_async(self, table: str, key: str, ttl: float) -> bool:
        """Claim a mark like `claim`, from the event loop and in the round trip of other reads."""

    # Windows ------------------------------------------------------------------------------------

    @abc.abstractmethod
    def add_event(
        self, name: str, key: str, at: float, member: str, *, window: float, maxlen: int
    ) -> list[tuple[float, str]]:
        """
        Add ``member`` at time ``at`` to an event window and return the window, oldest first.

        Entries older than ``at - window`` are dropped first, and only the latest ``maxlen``
        entries are kept. ``member`` must be unique, such as a JSON text with an event id.
        """

    @abc.abstractmethod
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
        """
        Record a sighting of ``member`` in a distinct window and return the window.

        Returns ``(member, latest sighting, info)`` entries, the oldest sighting first. Members
        last seen before ``at - window`` are dropped, and a new member beyond ``max_values``
        pushes out the one seen longest ago. With ``member`` ``None`` nothing is added.
        """

    @abc.abstractmethod
    def swap(self, name: str, key: str, value: str, ttl: float) -> str | None:
        """Store the latest value of a key for ``ttl`` seconds and return the previous one."""

    def close(self) -> None:  # noqa: B027 -- stores without resources need no cleanup
        """Release connections; the store must not be used afterwards."""


class StateHealth:
    """
    The availability of a store, with an event at each change and a pause between tries.

    After a failure, calls fail at once for ``retry_interval`` seconds instead of each waiting
    for a timeout; the first call after that tries the backend again. The first failure after
    a success emits ``state_degraded`` and the first success after a failure emits
    ``state_recovered``, so an outage produces two events, not one per request.

    Args:
        backend: The backend name in events, such as ``redis``.
        namespace: The store's key namespace, in events.
        events: Where the two events go; they are only logged without an emitter.
        retry_interval: Seconds between tries while the backend is failing.
    """

    def __init__(
        self,
        backend: str,
        namespace: str,
        *,
        events: EventEmitter | None = None,
        retry_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend = backend
        self.namespace = namespace
        self.events = events
        self.retry_interval = retry_interval
        self.failures = 0
        self._clock = clock
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._retry_at = 0.0

    @property
    def available(self) -> bool:
        """Whether the last call succeeded."""
        return self._down_since is None

    def check(self) -> None:
        """Raise `StateUnavailableError` while failing calls pause; otherwise return."""
        if self._down_since is None:
            return
        if self._clock() < self._retry_at:
            message = f"{self.backend} state store is unavailable; retrying shortly"
            raise StateUnavailableError(message)

    def succeeded(self) -> None:
        if self._down_since is None:
            return
        with self._lock:
            if self._down_since is None:
                return
            outage = self._clock() - self._down_since
            self._down_since = None
        logger.warning("%s state store %r recovered after %.3f s", *self._names(), outage)
        self._emit("state_recovered", outage_s=round(outage, 3))

    def failed(self, error: BaseException) -> StateUnavailableError:
        """Record a failure and return the error to raise."""
        detail = f"{type(error).__name__}: {error}"[:300]
        self.failures += 1
        with self._lock:
            now = self._clock()
            self._retry_at = now + self.retry_interval
            first = self._down_since is None
            if first:
                self._down_since = now
        if first:
            logger.warning("%s state store %r is unavailable: %s", *self._names(), detail)
            self._emit("state_degraded", error=detail)
        message = f"{self.backend} state store {self.namespace!r} failed: {detail}"
        return StateUnavailableError(message)

    def _names(self) -> tuple[str, str]:
        return self.backend, self.namespace

    def _emit(self, kind: str, **fields: Any) -> None:
        if self.events is None:
            return
        now = time.time()
        event: dict[str, Any] = {
            "event": kind,
            "timestamp": format_timestamp(now),
            "event_id": new_event_id(now),
            "backend": self.backend,
            "namespace": self.namespace,
        }
        event.update(fields)
        self.events.emit(event)
