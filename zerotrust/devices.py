# SPDX-License-Identifier: Apache-2.0
"""The device registry: enrolled devices, their owners, certificates and last known posture."""

from __future__ import annotations

import abc
import dataclasses
import datetime
import enum
import json
import re
import threading
import time
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import orjson
from cachetools import LRUCache

from .exceptions import ConfigurationError, InfrastructureError
from .state.base import FailureMode, StateStore, StateUnavailableError, check_failure_mode

__all__ = [
    "NOT_CACHED",
    "DeviceRecord",
    "DeviceRegistry",
    "DeviceRegistryError",
    "FileDeviceRegistry",
    "MemoryDeviceRegistry",
    "StateDeviceRegistry",
    "normalize_fingerprint",
]

_FINGERPRINT = re.compile(r"[0-9a-f]{64}")
_DEVICE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/+\-]{0,127}")
_MAX_FILE_BYTES = 64 * 1024 * 1024
_DEVICE_TABLE = "device"


class _CacheMiss(enum.Enum):
    NOT_CACHED = "not_cached"


NOT_CACHED: Final = _CacheMiss.NOT_CACHED
"""Returned by `DeviceRegistry.get_cached` when the lookup needs I/O: await `get` instead."""


class DeviceRegistryError(InfrastructureError):
    """A device registry backend failed or timed out; the verifier denies the request."""


def normalize_fingerprint(value: str) -> str:
    """
    Return a SHA-256 certificate fingerprint as 64 lower-case hex digits without colons.

    Raises:
        ValueError: if ``value`` is not 32 bytes of hex, with or without ``:`` separators.
    """
    if not isinstance(value, str):
        raise ValueError(f"fingerprint must be a string, not {type(value).__name__}")
    normalized = value.strip().replace(":", "").lower()
    if not _FINGERPRINT.fullmatch(normalized):
        raise ValueError(f"{value[:100]!r} is not a SHA-256 fingerprint (64 hex digits)")

    return normalized


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    """
    One enrolled device as the registry stores it.

    Times are seconds since the epoch. Posture fields set to ``None`` are unknown, which fails
    any requirement that depends on them.

    Attributes:
        device_id: The stable device identifier, such as the MDM device id or a serial number.
        owner: The subject the device is assigned to; ``None`` for a device without an owner.
        certificate_fingerprints: SHA-256 fingerprints (lower-case hex) of the device's client
            certificates.
        managed: Whether the device is enrolled in device management and compliant.
        os: Lower-case operating system name, such as ``macos`` or ``windows``.
        os_version: Dotted numeric version, such as ``14.4.1``.
        disk_encrypted: Whether full-disk encryption is on.
        screen_lock: Whether a screen lock is enforced.
        posture_checked_at: When the posture fields above were last collected.
        revoked: Whether the device is revoked.
        revoked_at: When the device is or was revoked; a time in the future schedules it.
        enrolled_at: When the device was enrolled.
    """

    device_id: str
    owner: str | None = None
    certificate_fingerprints: frozenset[str] = frozenset()
    managed: bool = False
    os: str | None = None
    os_version: str | None = None
    disk_encrypted: bool | None = None
    screen_lock: bool | None = None
    posture_checked_at: float | None = None
    revoked: bool = False
    revoked_at: float | None = None
    enrolled_at: float | None = None

    def is_revoked(self, now: float) -> bool:
        """Return whether the device is revoked at ``now``."""
        return self.revoked or (self.revoked_at is not None and self.revoked_at <= now)


class DeviceRegistry(abc.ABC):
    """
    The store a `DeviceVerifier` looks up devices in, by device id or certificate fingerprint.

    Implement `get` for a shared store (a database, an MDM API). Override `get_cached` too when
    some records can be returned without I/O, so the verifier can skip the async path.
    """

    @abc.abstractmethod
    async def get(self, key: str) -> DeviceRecord | None:
        """
        Return the device whose id or certificate fingerprint is ``key``, or ``None``.

        A fingerprint is 64 lower-case hex digits. Device ids and fingerprints share one key
        space; a registry must never let a device id equal another device's fingerprint.

        Raises:
            DeviceRegistryError: when the backend fails; the request is denied with
                ``device_registry_unavailable``.
        """

    def get_cached(self, key: str) -> DeviceRecord | Literal[_CacheMiss.NOT_CACHED] | None:
        """
        Return what `get` would return, without I/O, or `NOT_CACHED` when that needs I/O.

        Runs on the event loop without a timeout, so it must not block.
        """
        return NOT_CACHED


class MemoryDeviceRegistry(DeviceRegistry):
    """
    Devices held in memory, looked up without I/O.

    Args:
        records: The devices. Device ids and fingerprints must be unique across all of them.

    Raises:
        ConfigurationError: for a duplicate device id or fingerprint, or a device id that is
            also some device's certificate fingerprint.
    """

    def __init__(self, records: Iterable[DeviceRecord] = ()) -> None:
        self._index: dict[str, DeviceRecord] = _build_index(records, "records")

    async def get(self, key: str) -> DeviceRecord | None:
        return self._index.get(key)

    def get_cached(self, key: str) -> DeviceRecord | None:
        return self._index.get(key)

    def replace(self, records: Iterable[DeviceRecord]) -> None:
        """Replace every device at once; lookups see either the old or the new set."""
        self._index = _build_index(records, "records")

    @property
    def records(self) -> tuple[DeviceRecord, ...]:
        """Every device, in no particular order."""
        return tuple({id(record): record for record in self._index.values()}.values())

    def __len__(self) -> int:
        return len(self.records)


class FileDeviceRegistry(MemoryDeviceRegistry):
    """
    Devices loaded from a JSON or TOML file at construction, held in memory.

    The file has a ``devices`` list of tables; each has ``device_id`` and any of ``owner``,
    ``certificate_fingerprints``, ``managed``, ``os``, ``os_version``, ``disk_encrypted``,
    ``screen_lock``, ``posture_checked_at``, ``revoked``, ``revoked_at`` and ``enrolled_at``.
    Times are seconds since the epoch, RFC 3339 strings with a UTC offset, or TOML offset
    date-times. Unknown keys are errors, so a misspelt ``revoked`` cannot go unnoticed.

    Args:
        path: The file; ``.json`` or ``.toml`` unless ``format`` is given.
        format: ``json`` or ``toml``, overriding the suffix.

    Raises:
        ConfigurationError: when the file cannot be read or parsed, or an entry is invalid.
            The message names the file, the entry and the key.
    """

    def __init__(self, path: str | Path, *, format: Literal["json", "toml"] | None = None) -> None:
        self.path = Path(path)
        if format is None:
            suffix = self.path.suffix.lower()
            if suffix == ".toml":
                format = "toml"
            elif suffix == ".json":
                format = "json"
        if format not in ("json", "toml"):
            message = (
                f"device registry file {str(path)!r} needs a .json or .toml suffix, "
                "or pass format='json' or format='toml'"
            )
            raise ConfigurationError(message, parameter="format", value=format)

        self.format: Literal["json", "toml"] = format
        self._lock = threading.Lock()
        super().__init__(self._load())

    def reload(self) -> None:
        """
        Read the file again and swap in its devices atomically.

        Raises:
            ConfigurationError: if the file is now invalid; the devices loaded before stay.
        """
        with self._lock:
            self.replace(self._load())

    def _load(self) -> list[DeviceRecord]:
        where = str(self.path)
        try:
            with self.path.open("rb") as file:
                data = file.read(_MAX_FILE_BYTES + 1)
        except OSError as error:
            message = f"cannot read device registry file {where!r}: {error.strerror or error}"
            raise ConfigurationError(message, parameter="path", value=where) from None
        if len(data) > _MAX_FILE_BYTES:
            message = f"device registry file {where!r} is larger than {_MAX_FILE_BYTES} bytes"
            raise ConfigurationError(message, parameter="path", value=where)

        document = _parse_document(data, self.format, where)
        entries = document.get("devices")
        if not isinstance(entries, list):
            message = f"{where}: the top level needs a 'devices' list of tables"
            raise ConfigurationError(message, parameter="devices", value=type(entries).__name__)
        extra = sorted(set(document) - {"devices"})
        if extra:
            message = f"{where}: unknown top-level keys {extra}; only 'devices' is read"
            raise ConfigurationError(message, parameter=extra[0], value=extra)

        records = [_parse_entry(entry, index, where) for index, entry in enumerate(entries)]
        _build_index(records, where)

        return records


def _parse_document(data: bytes, format: str, where: str) -> dict[str, Any]:
    try:
        text = data.decode("utf-8")
        document = tomllib.loads(text) if format == "toml" else json.loads(text)
    except UnicodeDecodeError as error:
        message = f"{where}: not UTF-8 text ({error.reason} at byte {error.start})"
        raise ConfigurationError(message, parameter="path", value=where) from None
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, RecursionError) as error:
        message = f"{where}: invalid {format.upper()}: {error}"
        raise ConfigurationError(message, parameter="path", value=where) from None
    if not isinstance(document, dict):
        message = f"{where}: the top level must be a table with a 'devices' list"
        raise ConfigurationError(message, parameter="devices", value=type(document).__name__)

    return document


_BOOLEAN_KEYS = ("managed", "revoked")
_OPTIONAL_BOOLEAN_KEYS = ("disk_encrypted", "screen_lock")
_TIME_KEYS = ("posture_checked_at", "revoked_at", "enrolled_at")
_KNOWN_KEYS = frozenset(
    {
        "device_id",
        "owner",
        "certificate_fingerprints",
        "os",
        "os_version",
        *_BOOLEAN_KEYS,
        *_OPTIONAL_BOOLEAN_KEYS,
        *_TIME_KEYS,
    }
)


def _parse_entry(entry: Any, index: int, where: str) -> DeviceRecord:
    """Validate one ``devices`` table and build its record."""
    label = f"{where}: devices[{index}]"
    if not isinstance(entry, Mapping):
        message = f"{label} must be a table, not {type(entry).__name__}"
        raise ConfigurationError(message, parameter=f"devices[{index}]", value=entry)
    device_id = entry.get("device_id")
    if not isinstance(device_id, str) or not _DEVICE_ID.fullmatch(device_id):
        message = (
            f"{label}: key 'device_id' must be 1 to 128 letters, digits or ._:@/+- "
            f"starting with a letter or digit, not {device_id!r}"
        )
        raise ConfigurationError(message, parameter=f"devices[{index}].device_id", value=device_id)
    label = f"{label} (device_id {device_id!r})"

    def fail(key: str, expected: str) -> ConfigurationError:
        value = entry.get(key)
        message = f"{label}: key {key!r} must be {expected}, not {value!r}"
        return ConfigurationError(message, parameter=f"devices[{index}].{key}", value=value)

    unknown = sorted(set(entry) - _KNOWN_KEYS)
    if unknown:
        message = f"{label}: unknown key {unknown[0]!r}; known keys are {sorted(_KNOWN_KEYS)}"
        raise ConfigurationError(message, parameter=f"devices[{index}].{unknown[0]}", value=None)

    fields: dict[str, Any] = {"device_id": device_id}
    for key in ("owner", "os", "os_version"):
        value = entry.get(key)
        if value is None:
            continue
        if not isinstance(value, str) or not value.strip():
            raise fail(key, "a non-empty string")
        fields[key] = value.strip().lower() if key == "os" else value.strip()
    for key in (*_BOOLEAN_KEYS, *_OPTIONAL_BOOLEAN_KEYS):
        value = entry.get(key)
        if value is None:
            continue
        if not isinstance(value, bool):
            raise fail(key, "true or false")
        fields[key] = value
    for key in _TIME_KEYS:
        if entry.get(key) is None:
            continue
        timestamp = _parse_time(entry[key])
        if timestamp is None:
            raise fail(key, "seconds since the epoch or a date-time with a UTC offset")
        fields[key] = timestamp

    fingerprints = entry.get("certificate_fingerprints", [])
    if not isinstance(fingerprints, list):
        raise fail("certificate_fingerprints", "a list of SHA-256 fingerprints")
    normalized = set()
    for fingerprint in fingerprints:
        try:
            normalized.add(normalize_fingerprint(fingerprint))
        except ValueError as error:
            expected = f"a list of SHA-256 fingerprints ({error})"
            raise fail("certificate_fingerprints", expected) from None
    fields["certificate_fingerprints"] = frozenset(normalized)

    return DeviceRecord(**fields)


def _parse_time(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if 0 <= value < 1e11 else None
    if isinstance(value, str):
        try:
            value = datetime.datetime.fromisoformat(value)
        except ValueError:
            return None
    if isinstance(value, datetime.datetime) and value.tzinfo is not None:
        return value.timestamp()

    return None


def _build_index(records: Iterable[DeviceRecord], where: str) -> dict[str, DeviceRecord]:
    """Index records by device id and by fingerprint, rejecting any key used twice."""
    index: dict[str, DeviceRecord] = {}
    for record in records:
        if not isinstance(record, DeviceRecord):
            message = f"{where}: expected DeviceRecord objects, got {type(record).__name__}"
            raise ConfigurationError(message, parameter="records", value=record)
        bad = [fp for fp in record.certificate_fingerprints if not _FINGERPRINT.fullmatch(fp)]
        if bad:
            message = (
                f"{where}: device {record.device_id!r} has fingerprint {bad[0]!r}; use 64 "
                "lower-case hex digits without colons (see normalize_fingerprint)"
            )
            raise ConfigurationError(message, parameter="certificate_fingerprints", value=bad[0])
        for key in (record.device_id, *sorted(record.certificate_fingerprints)):
            other = index.get(key)
            if other is not None:
                message = (
                    f"{where}: {key!r} belongs to both device {other.device_id!r} and device "
                    f"{record.device_id!r}; device ids and fingerprints must be unique"
                )
                raise ConfigurationError(message, parameter="device_id", value=key)
            index[key] = record

    return index


class StateDeviceRegistry(DeviceRegistry):
    """
    Devices in a `StateStore`, such as a `~zerotrust.state.RedisStateStore` that every worker
    and host shares, so a device revoked in one place is refused everywhere on its next
    request.

    Each device is stored under its id and under each certificate fingerprint, so a lookup
    by either key is one read, in the same round trip as the other verifiers' reads. Entries
    expire ``ttl`` seconds after they were last written: let the job that syncs your device
    management write them again well within that time. An expired device is unknown, and
    unknown devices are denied.

    While the store is unavailable, `get` raises `DeviceRegistryError` (the verifier denies
    with ``device_registry_unavailable``), unless ``on_failure`` is ``degrade``: then it
    returns the record this process read last for that key, and still raises for a key it
    never read.

    .. warning:: With ``on_failure="degrade"``, a device revoked during an outage stays
        accepted by the workers that saw it enrolled until the store responds again.

    Args:
        state: Where the devices are kept.
        ttl: Seconds an entry lives after it was written.
        on_failure: ``fail_closed`` or ``degrade``.
        max_known: Most records remembered in this process for ``degrade``.

    .. versionadded:: 0.7
    """

    def __init__(
        self,
        state: StateStore,
        *,
        ttl: float = 30 * 86400.0,
        on_failure: FailureMode = "fail_closed",
        max_known: int = 10_000,
    ) -> None:
        if not isinstance(state, StateStore):
            message = f"state must be a StateStore, not {type(state).__name__}"
            raise ConfigurationError(message, parameter="state", value=state)
        if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 0 < ttl < 1e9:
            message = f"ttl must be a positive number of seconds, not {ttl!r}"
            raise ConfigurationError(message, parameter="ttl", value=ttl)
        self.state = state
        self.ttl = float(ttl)
        self.on_failure = check_failure_mode(on_failure)
        self._known: LRUCache[str, DeviceRecord | None] = LRUCache(maxsize=max_known)

    async def get(self, key: str) -> DeviceRecord | None:
        try:
            (value,) = await self.state.get_records(_DEVICE_TABLE, [key])
        except StateUnavailableError as error:
            return self._fallback(key, error)
        return self._remember(key, value)

    def get_cached(self, key: str) -> DeviceRecord | Literal[_CacheMiss.NOT_CACHED] | None:
        if not self.state.local_reads:
            return NOT_CACHED
        try:
            value = self.state.get_record(_DEVICE_TABLE, key)
        except StateUnavailableError as error:
            return self._fallback(key, error)
        return self._remember(key, value)

    def put(self, record: DeviceRecord) -> None:
        """
        Enrol or update a device; blocks on I/O, so call it from a thread or a script.

        Raises:
            ConfigurationError: for an invalid record, or a fingerprint or id that belongs to
                another device.
            DeviceRegistryError: when the store is unavailable.
        """
        _build_index([record], "record")
        try:
            previous = self._read(record.device_id)
            for key in sorted(record.certificate_fingerprints):
                owner = self._read(key)
                if owner is not None and owner.device_id != record.device_id:
                    message = (
                        f"fingerprint {key!r} belongs to device {owner.device_id!r}, not "
                        f"{record.device_id!r}"
                    )
                    raise ConfigurationError(
                        message, parameter="certificate_fingerprints", value=key
                    )
            if previous is not None:
                stale = sorted(previous.certificate_fingerprints - record.certificate_fingerprints)
                self.state.delete_records(_DEVICE_TABLE, stale)
            self._write(record)
        except StateUnavailableError as error:
            raise DeviceRegistryError(f"device registry unavailable: {error}") from error

    def revoke(self, device_id: str, at: float | None = None) -> DeviceRecord | None:
        """
        Revoke a device everywhere and return its record; ``None`` when it is not enrolled.

        Raises:
            DeviceRegistryError: when the store is unavailable.
        """
        try:
            record = self._read(device_id)
            if record is None or record.device_id != device_id:
                return None
            revoked = dataclasses.replace(
                record, revoked=True, revoked_at=time.time() if at is None else at
            )
            self._write(revoked)
        except StateUnavailableError as error:
            raise DeviceRegistryError(f"device registry unavailable: {error}") from error
        return revoked

    def remove(self, device_id: str) -> None:
        """Delete a device and its fingerprints; a missing device is ignored."""
        try:
            record = self._read(device_id)
            keys = [device_id]
            if record is not None and record.device_id == device_id:
                keys.extend(sorted(record.certificate_fingerprints))
            self.state.delete_records(_DEVICE_TABLE, keys)
        except StateUnavailableError as error:
            raise DeviceRegistryError(f"device registry unavailable: {error}") from error

    def _read(self, key: str) -> DeviceRecord | None:
        value = self.state.get_record(_DEVICE_TABLE, key)
        return _decode_device(value) if value is not None else None

    def _write(self, record: DeviceRecord) -> None:
        value = _encode_device(record)
        keys = [record.device_id, *sorted(record.certificate_fingerprints)]
        self.state.put_records(_DEVICE_TABLE, dict.fromkeys(keys, value), self.ttl)

    def _remember(self, key: str, value: str | None) -> DeviceRecord | None:
        record = _decode_device(value) if value is not None else None
        if self.on_failure == "degrade":
            self._known[key] = record
        return record

    def _fallback(self, key: str, error: StateUnavailableError) -> DeviceRecord | None:
        if self.on_failure == "degrade" and key in self._known:
            return self._known[key]
        raise DeviceRegistryError(f"device registry unavailable: {error}") from error


def _encode_device(record: DeviceRecord) -> str:
    data = dataclasses.asdict(record)
    data["certificate_fingerprints"] = sorted(record.certificate_fingerprints)
    return orjson.dumps(data).decode()


def _decode_device(value: str) -> DeviceRecord:
    try:
        data = orjson.loads(value)
        data["certificate_fingerprints"] = frozenset(data["certificate_fingerprints"])
        return DeviceRecord(**data)
    except (orjson.JSONDecodeError, KeyError, TypeError) as error:
        message = f"a stored device record is malformed: {type(error).__name__}: {error}"[:300]
        raise DeviceRegistryError(message) from None
