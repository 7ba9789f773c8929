# SPDX-License-Identifier: Apache-2.0
"""Reading access events back from JSON lines files, streamed, for offline analysis and reports."""

from __future__ import annotations

import datetime as dt
import heapq
import itertools
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from ..exceptions import MissingExtraError

if TYPE_CHECKING:
    import duckdb

__all__ = [
    "DEFAULT_REORDER_WINDOW",
    "DENIED_BURST_QUERY",
    "PRESETS",
    "LoadStats",
    "connect_duckdb",
    "detect_anomalies",
    "event_time",
    "parse_since",
    "read_access_events",
    "time_to_detect_ms",
]

DEFAULT_REORDER_WINDOW = 10_000
"""Events held per file to put them in timestamp order. An emitter writes events in the order
requests end, so a slow request lands a few lines after faster ones that started later."""

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd])\Z")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

# The columns read by DuckDB. An explicit schema, because a file mixes access, grant and anomaly
# events and auto-detection would guess from whichever kind comes first.
_DUCKDB_COLUMNS = {
    "event": "VARCHAR",
    "schema_version": "VARCHAR",
    "timestamp": "TIMESTAMPTZ",
    "event_id": "VARCHAR",
    "request_id": "VARCHAR",
    "decision": "VARCHAR",
    "action": "VARCHAR",
    "mode": "VARCHAR",
    "status": "INTEGER",
    "reasons": "VARCHAR[]",
    "segment": "VARCHAR",
    "subject": "VARCHAR",
    "issuer": "VARCHAR",
    "credential_fingerprint": "VARCHAR",
    "client_ip": "VARCHAR",
    "peer_ip": "VARCHAR",
    "method": "VARCHAR",
    "scheme": "VARCHAR",
    "protocol": "VARCHAR",
    "host": "VARCHAR",
    "path": "VARCHAR",
    "user_agent": "VARCHAR",
    "latency_ms": "DOUBLE",
    "decision_ms": "DOUBLE",
    "missing_scopes": "VARCHAR[]",
    "facts": "JSON",
}

DENIED_BURST_QUERY = """\
SELECT user_id,
       COUNT(*) AS denied_attempts,
       COUNT(DISTINCT ip_address) AS distinct_ips,
       COUNT(DISTINCT geo_location) AS distinct_regions
FROM access_logs
WHERE denied
  AND user_id IS NOT NULL
  AND timestamp >= (SELECT max(timestamp) FROM access_logs) - interval '1 hour'
GROUP BY user_id
HAVING COUNT(*) > 10
ORDER BY denied_attempts DESC, user_id
"""
"""Users with more than 10 denials in the last hour of the files, with distinct IPs and regions.

The PostgreSQL monitoring query with one change: the hour ends at the newest event in the files
instead of ``now()``, so that a file from yesterday still returns rows."""

PRESETS = {"denied-burst": DENIED_BURST_QUERY}
"""Named queries for ``zerotrust analyze --preset``."""


@dataclass(slots=True)
class LoadStats:
    """
    Counts from reading the event files.

    Attributes:
        files: The files given.
        unreadable: Each file that could not be opened or read, with the error.
        access_events: Access events passed on.
        other_events: Lines that are JSON objects but not access events, such as grant events.
        recorded_anomalies: Anomaly events among them: what a live monitor raised, possibly
            with other thresholds than the replay.
        unparsable: Lines that are not JSON objects or lack a valid ``timestamp``.
        before_since: Access events skipped because they are older than ``since``.
        out_of_order: Access events that came later than the reorder window allows, so they
            were passed on after newer ones.
    """

    files: list[str] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    access_events: int = 0
    other_events: int = 0
    recorded_anomalies: int = 0
    unparsable: int = 0
    before_since: int = 0
    out_of_order: int = 0

    @property
    def readable_files(self) -> list[str]:
        """The files that could be read."""
        failed = {path for path, _ in self.unreadable}
        return [path for path in self.files if path not in failed]

    def as_dict(self) -> dict[str, Any]:
        """Return the counts as a JSON-ready dict."""
        return {
            "files": list(self.files),
            "unreadable": [{"path": path, "error": error} for path, error in self.unreadable],
            "access_events": self.access_events,
            "other_events": self.other_events,
            "recorded_anomalies": self.recorded_anomalies,
            "unparsable_lines": self.unparsable,
            "before_since": self.before_since,
            "out_of_order": self.out_of_order,
        }


def parse_since(text: str, now: dt.datetime | None = None) -> dt.datetime:
    """
    Parse a ``--since`` value: an RFC 3339 time, or a duration such as ``90m``, ``2h`` or ``7d``
    counted back from ``now`` (the current time by default).

    Raises:
        ValueError: if ``text`` is neither.
    """
    match = _DURATION.match(text.strip().lower())
    if match is not None:
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        return (now or dt.datetime.now(dt.UTC)) - dt.timedelta(seconds=seconds)

    try:
        moment = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        message = (
            f"invalid time {text!r}: give an RFC 3339 time such as 2026-12-04T20:00:00Z "
            "or a duration such as 30m, 2h or 7d"
        )
        raise ValueError(message) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment


def event_time(event: dict[str, Any], key: str = "timestamp") -> float | None:
    """Return an event's RFC 3339 time (``timestamp`` by default) as seconds since the epoch."""
    value = event.get(key)
    if not isinstance(value, str):
        return None
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()


def time_to_detect_ms(anomaly: dict[str, Any]) -> float | None:
    """Return an anomaly's time to detect: its own field, else its time minus ``first_seen``."""
    recorded = anomaly.get("time_to_detect_ms")
    if isinstance(recorded, int | float) and not isinstance(recorded, bool):
        return float(recorded)
    detected, first = event_time(anomaly), event_time(anomaly, "first_seen")
    if detected is None or first is None:
        return None
    return max(0.0, (detected - first) * 1000)


def read_access_events(
    paths: Sequence[str | Path],
    stats: LoadStats,
    *,
    since: dt.datetime | None = None,
    reorder_window: int = DEFAULT_REORDER_WINDOW,
) -> Iterator[dict[str, Any]]:
    """
    Stream the access events of JSON lines files in timestamp order.

    Each file is read line by line and put in order through a heap of at most
    ``reorder_window`` events, and the files are merged, so memory stays bounded by
    ``reorder_window`` times the number of files, whatever their size.

    Args:
        paths: The files; an unreadable one is recorded in ``stats.unreadable`` and skipped.
        stats: Updated with the counts while the events are read.
        since: Skip access events older than this.
        reorder_window: Events held per file to restore timestamp order.
    """
    cutoff = since.timestamp() if since is not None else None
    streams = []
    for path in paths:
        stats.files.append(str(path))
        streams.append(_ordered(_read_file(Path(path), stats, cutoff), reorder_window, stats))

    for _, _, event in heapq.merge(*streams, key=lambda item: (item[0], item[1])):
        yield event


def _read_file(
    path: Path, stats: LoadStats, cutoff: float | None
) -> Iterator[tuple[float, dict[str, Any]]]:
    try:
        handle = path.open("rb")
    except OSError as error:
        stats.unreadable.append((str(path), error.strerror or str(error)))
        return

    with handle:
        try:
            for line in handle:
                if not line.strip():
                    continue
                try:
                    event = orjson.loads(line)
                except orjson.JSONDecodeError:
                    stats.unparsable += 1
                    continue
                if not isinstance(event, dict):
                    stats.unparsable += 1
                    continue
                if event.get("event") != "access":
                    stats.other_events += 1
                    if event.get("event") == "anomaly":
                        stats.recorded_anomalies += 1
                    continue
                moment = event_time(event)
                if moment is None:
                    stats.unparsable += 1
                    continue
                if cutoff is not None and moment < cutoff:
                    stats.before_since += 1
                    continue
                stats.access_events += 1
                yield moment, event
        except OSError as error:
            # A read error part way, such as a directory given as a file: keep what was read.
            stats.unreadable.append((str(path), error.strerror or str(error)))


def _ordered(
    events: Iterator[tuple[float, dict[str, Any]]], window: int, stats: LoadStats
) -> Iterator[tuple[float, int, dict[str, Any]]]:
    """Sort a nearly sorted stream with a heap of at most ``window`` events."""
    heap: list[tuple[float, int, dict[str, Any]]] = []
    counter = itertools.count()
    last = float("-inf")
    for moment, event in events:
        heapq.heappush(heap, (moment, next(counter), event))
        if len(heap) > window:
            item = heapq.heappop(heap)
            if item[0] < last:
                stats.out_of_order += 1
            last = max(last, item[0])
            yield item
    while heap:
        item = heapq.heappop(heap)
        if item[0] < last:
            stats.out_of_order += 1
        last = max(last, item[0])
        yield item


def detect_anomalies(events: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Replay ``events`` through the default detectors and return the anomaly events."""
    from .detectors import default_detectors, run_detectors

    return run_detectors(events, default_detectors())


def connect_duckdb(
    paths: Sequence[str], *, since: dt.datetime | None = None, command: str = "zerotrust analyze"
) -> duckdb.DuckDBPyConnection:
    """
    Open an in-memory DuckDB database with the files' access events as two views.

    ``events`` has the access event fields (``facts`` as JSON, ``timestamp`` as a UTC
    ``TIMESTAMPTZ``). ``access_logs`` has the columns of the SQL sinks' table (``user_id``,
    ``ip_address``, ``geo_location``, ``denied``...), so their monitoring queries run unchanged.

    Raises:
        MissingExtraError: if DuckDB is not installed.
    """
    try:
        import duckdb
    except ImportError:
        raise MissingExtraError(command, "analytics") from None

    connection = duckdb.connect(":memory:")
    connection.execute("SET TimeZone = 'UTC'")
    files = ", ".join(_sql_string(path) for path in paths)
    columns = ", ".join(
        f"{_sql_string(name)}: {_sql_string(kind)}" for name, kind in _DUCKDB_COLUMNS.items()
    )
    where = "event = 'access' AND timestamp IS NOT NULL"
    if since is not None:
        where += f" AND timestamp >= {_sql_string(since.isoformat())}::TIMESTAMPTZ"
    # Paths and the time are quoted literals, because a view cannot take parameters.
    connection.execute(
        "CREATE VIEW events AS SELECT * FROM read_json("  # noqa: S608
        f"[{files}], format = 'newline_delimited', columns = {{{columns}}}, ignore_errors = true)"
        f" WHERE {where}"
    )
    connection.execute(
        "CREATE VIEW access_logs AS SELECT event_id, timestamp, subject AS user_id,"
        " client_ip AS ip_address, facts ->> 'country' AS geo_location,"
        " decision = 'deny' AS denied, segment, reasons[1] AS reason, method, path, status,"
        " request_id FROM events"
    )

    return connection


def _sql_string(value: str) -> str:
    return "'" + str(value).replace("'", "''") + "'"
