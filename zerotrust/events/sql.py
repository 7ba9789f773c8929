# SPDX-License-Identifier: Apache-2.0
"""Sinks that insert events into an ``access_logs`` table in SQLite or PostgreSQL."""

from __future__ import annotations

import abc
import datetime as dt
import ipaddress
import os
import re
import sqlite3
import threading
from collections.abc import Sequence
from typing import Any, NamedTuple

import orjson

from ..exceptions import ConfigurationError, InfrastructureError, MissingExtraError
from .access import new_event_id
from .sinks import Sink
from .sinks_file import EventFormat, format_event

__all__ = [
    "POSTGRES_MONITORING_QUERY",
    "SQLITE_MONITORING_QUERY",
    "DeniedUser",
    "PostgresSink",
    "SQLiteSink",
    "iso_timestamp",
    "monitoring_query",
]

# A table name, optionally schema-qualified; never taken from events, but still checked because
# identifiers cannot be passed as SQL parameters.
_TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62})?\Z")
_COLUMNS = (
    "event_id",
    "timestamp",
    "user_id",
    "ip_address",
    "geo_location",
    "denied",
    "segment",
    "reason",
    "method",
    "path",
    "status",
    "request_id",
    "event",
)
_MAX_TEXT = 4096

SQLITE_MONITORING_QUERY = """\
SELECT user_id,
       COUNT(*) AS denied_attempts,
       COUNT(DISTINCT ip_address) AS distinct_ips,
       COUNT(DISTINCT geo_location) AS distinct_regions
FROM access_logs
WHERE denied = 1
  AND user_id IS NOT NULL
  AND timestamp >= strftime('%Y-%m-%dT%H:%M:%f000Z', 'now', '-1 hour')
GROUP BY user_id
HAVING COUNT(*) > 10
ORDER BY denied_attempts DESC, user_id
"""
"""Users with more than 10 denied attempts in the last hour, with distinct IPs and regions."""

POSTGRES_MONITORING_QUERY = """\
SELECT user_id,
       COUNT(*) AS denied_attempts,
       COUNT(DISTINCT ip_address) AS distinct_ips,
       COUNT(DISTINCT geo_location) AS distinct_regions
FROM access_logs
WHERE denied
  AND user_id IS NOT NULL
  AND timestamp >= now() - interval '1 hour'
GROUP BY user_id
HAVING COUNT(*) > 10
ORDER BY denied_attempts DESC, user_id
"""
"""The PostgreSQL version of `SQLITE_MONITORING_QUERY`."""


class DeniedUser(NamedTuple):
    """One row of the monitoring query."""

    user_id: str
    denied_attempts: int
    distinct_ips: int
    distinct_regions: int


def monitoring_query(dialect: str, table: str = "access_logs") -> str:
    """
    Return the monitoring query for ``"sqlite"`` or ``"postgres"`` with parameters.

    The query takes ``since`` (the window start, an aware datetime for PostgreSQL and
    an ISO text from `iso_timestamp` for SQLite) and ``threshold`` (a count that must be
    exceeded), in the placeholder style of the driver: ``:name`` or ``%(name)s``.
    """
    table_sql = _quote_table(table)
    if dialect == "sqlite":
        denied, since, threshold = "denied = 1", ":since", ":threshold"
    elif dialect == "postgres":
        denied, since, threshold = "denied", "%(since)s", "%(threshold)s"
    else:
        message = f"dialect must be 'sqlite' or 'postgres', not {dialect!r}"
        raise ConfigurationError(message, parameter="dialect", value=dialect)

    # The table name passed _TABLE_NAME and is quoted; values are placeholders.
    return (
        "SELECT user_id, COUNT(*) AS denied_attempts,"  # noqa: S608
        " COUNT(DISTINCT ip_address) AS distinct_ips,"
        " COUNT(DISTINCT geo_location) AS distinct_regions"
        f" FROM {table_sql} WHERE {denied} AND user_id IS NOT NULL AND timestamp >= {since}"
        f" GROUP BY user_id HAVING COUNT(*) > {threshold}"
        " ORDER BY denied_attempts DESC, user_id"
    )


def iso_timestamp(moment: dt.datetime) -> str:
    """Format an aware datetime the way the SQLite table stores it: UTC, microseconds, ``Z``."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class _SQLSink(Sink):
    """Row mapping, batching and the monitoring query shared by both databases."""

    dialect = ""

    def __init__(self, table: str, event_format: EventFormat | None) -> None:
        if not _TABLE_NAME.match(table):
            message = (
                f"table {table!r} is not a plain SQL identifier; use letters, digits and _ "
                "with an optional 'schema.' prefix"
            )
            raise ConfigurationError(message, parameter="table", value=table)
        self.table = table
        self.format = event_format
        self._lock = threading.Lock()
        self._connection: Any = None

    def write(self, events: Sequence[dict[str, Any]]) -> None:
        rows = []
        for event in events:
            result = format_event(event, self.format)
            if result is not None:
                rows.append(self._row(*result))
        if not rows:
            return

        with self._lock:
            self._insert(rows)

    def denied_attempts(
        self,
        threshold: int = 10,
        window: dt.timedelta = dt.timedelta(hours=1),
        now: dt.datetime | None = None,
    ) -> list[DeniedUser]:
        """Run the monitoring query: users with more than ``threshold`` denials in ``window``."""
        since = (now or dt.datetime.now(dt.UTC)) - window
        with self._lock:
            rows = self._query(since, threshold)

        return [DeniedUser(*row) for row in rows]

    def _row(self, event: dict[str, Any], rendered: bytes) -> tuple[Any, ...]:
        reasons = event.get("reasons")
        facts = event.get("facts")
        country = facts.get("country") if isinstance(facts, dict) else None
        status = event.get("status")
        return (
            _text(event.get("event_id")) or new_event_id(),
            self._timestamp(_parse_timestamp(event.get("timestamp"))),
            _text(event.get("subject")),
            _ip(event.get("client_ip")),
            _text(country),
            event.get("decision") == "deny",
            _text(event.get("segment")),
            _text(reasons[0]) if isinstance(reasons, list) and reasons else None,
            _text(event.get("method")),
            _text(event.get("path")),
            status if isinstance(status, int) and not isinstance(status, bool) else None,
            _text(event.get("request_id")),
            self._event_document(rendered),
        )

    @abc.abstractmethod
    def _timestamp(self, moment: dt.datetime) -> Any: ...

    @abc.abstractmethod
    def _event_document(self, rendered: bytes) -> Any: ...

    @abc.abstractmethod
    def _insert(self, rows: list[tuple[Any, ...]]) -> None: ...

    @abc.abstractmethod
    def _query(self, since: dt.datetime, threshold: int) -> list[tuple[Any, ...]]: ...


class SQLiteSink(_SQLSink):
    """
    Insert events into an ``access_logs`` table of an SQLite database file.

    The table and its indexes are created on first use. Each batch is one transaction, and an
    event whose ``event_id`` is already stored is skipped, so writing a batch twice is
    harmless. ``timestamp`` is ISO 8601 text in UTC with microseconds and a ``Z`` suffix, which
    sorts and compares like the time itself. ``denied`` is 0 or 1. A new database file gets
    mode 0600, because events carry personal data.

    Args:
        path: The database file.
        table: The table name.
        format: Renders the ``event`` column from the redacted event; compact JSON by default.
        timeout: Seconds to wait for another connection's lock before the write fails.

    .. versionadded:: 0.2.0
    """

    name = "sqlite"
    dialect = "sqlite"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        table: str = "access_logs",
        format: EventFormat | None = None,
        timeout: float = 5.0,
    ) -> None:
        if "." in table:
            message = f"table {table!r} must not have a schema prefix in SQLite"
            raise ConfigurationError(message, parameter="table", value=table)
        super().__init__(table, format)
        self.path = os.fspath(path)
        self.timeout = timeout

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    def _connect(self) -> sqlite3.Connection:
        if self._connection is not None:
            return self._connection  # type: ignore[no-any-return]
        if self.path != ":memory:" and not os.path.exists(self.path):
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
        # The writer thread inserts and `close` may run on another thread, under self._lock.
        connection = sqlite3.connect(self.path, timeout=self.timeout, check_same_thread=False)
        table = _quote_table(self.table)
        with connection:
            connection.execute(
                f"CREATE TABLE IF NOT EXISTS {table} ("
                " id INTEGER PRIMARY KEY,"
                " event_id TEXT NOT NULL UNIQUE,"
                " timestamp TEXT NOT NULL,"
                " user_id TEXT, ip_address TEXT, geo_location TEXT,"
                " denied INTEGER NOT NULL CHECK (denied IN (0, 1)),"
                " segment TEXT, reason TEXT, method TEXT, path TEXT, status INTEGER,"
                " request_id TEXT, event TEXT NOT NULL)"
            )
            for column in ("timestamp", "user_id"):
                index = _quote(f"{self.table}_{column}_idx")
                connection.execute(f"CREATE INDEX IF NOT EXISTS {index} ON {table} ({column})")
        self._connection = connection

        return connection

    def _timestamp(self, moment: dt.datetime) -> str:
        return iso_timestamp(moment)

    def _event_document(self, rendered: bytes) -> str:
        return rendered.decode("utf-8", "replace")

    def _insert(self, rows: list[tuple[Any, ...]]) -> None:
        placeholders = ", ".join("?" for _ in _COLUMNS)
        statement = (
            f"INSERT INTO {_quote_table(self.table)} ({', '.join(_COLUMNS)})"  # noqa: S608
            f" VALUES ({placeholders}) ON CONFLICT (event_id) DO NOTHING"
        )
        try:
            connection = self._connect()
            with connection:
                connection.executemany(statement, rows)
        except sqlite3.Error as error:
            message = f"inserting {len(rows)} events into {self.path} failed: {error}"
            raise InfrastructureError(message) from error

    def _query(self, since: dt.datetime, threshold: int) -> list[tuple[Any, ...]]:
        connection = self._connect()
        parameters = {"since": iso_timestamp(since), "threshold": threshold}
        cursor = connection.execute(monitoring_query("sqlite", self.table), parameters)
        return cursor.fetchall()


class PostgresSink(_SQLSink):
    """
    Insert events into an ``access_logs`` table in PostgreSQL, with psycopg 3.

    The table and its indexes are created on first use. Each batch is one transaction, and an
    event whose ``event_id`` is already stored is skipped. ``timestamp`` is ``timestamptz``,
    ``ip_address`` ``inet`` and ``event`` ``jsonb``. The connection opens on the first write,
    is kept, and is replaced after an error.

    Args:
        dsn: A libpq connection string or URI, such as ``postgresql://user@db/zerotrust``.
        table: The table name, optionally schema-qualified.
        format: Renders the ``event`` column from the redacted event; compact JSON by
            default. The column is ``jsonb``, so the format must produce JSON.
        connect_timeout: Seconds to wait for the connection (libpq counts anything below 2 as 2).
        statement_timeout: Seconds each statement may run before the server cancels it.

    Raises:
        MissingExtraError: If psycopg is not installed (``pip install
            'zerotrust-middleware[postgres]'``).

    .. versionadded:: 0.2.0
    """

    name = "postgres"
    dialect = "postgres"

    def __init__(
        self,
        dsn: str,
        *,
        table: str = "access_logs",
        format: EventFormat | None = None,
        connect_timeout: float = 5.0,
        statement_timeout: float = 10.0,
    ) -> None:
        try:
            import psycopg
            from psycopg import sql
        except ImportError:
            raise MissingExtraError("PostgresSink", "postgres") from None
        if not connect_timeout > 0 or not statement_timeout > 0:
            message = (
                "connect_timeout and statement_timeout must be positive seconds, not "
                f"{connect_timeout!r} and {statement_timeout!r}"
            )
            raise ConfigurationError(message, parameter="connect_timeout", value=connect_timeout)
        super().__init__(table, format)
        self.dsn = dsn
        self.connect_timeout = connect_timeout
        self.statement_timeout = statement_timeout
        self._psycopg = psycopg
        self._sql = sql
        self._table_sql = sql.Identifier(*table.split("."))

    def close(self) -> None:
        with self._lock:
            self._disconnect()

    def _disconnect(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _connect(self) -> Any:
        if self._connection is not None and not self._connection.closed:
            return self._connection
        sql = self._sql
        connection = self._psycopg.connect(
            self.dsn, connect_timeout=max(1, round(self.connect_timeout)), autocommit=True
        )
        try:
            connection.execute(
                "SELECT set_config('statement_timeout', %s, false)",
                (f"{round(self.statement_timeout * 1000)}ms",),
            )
            table = self._table_sql
            name = self.table.rsplit(".", 1)[-1]
            # NOTE: two processes creating the table at the same moment can both pass IF NOT
            # EXISTS; the loser's first batch fails and its next batch finds the table.
            with connection.transaction():
                connection.execute(
                    sql.SQL(
                        "CREATE TABLE IF NOT EXISTS {} ("
                        " id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
                        " event_id TEXT NOT NULL UNIQUE,"
                        " timestamp TIMESTAMPTZ NOT NULL,"
                        " user_id TEXT, ip_address INET, geo_location TEXT,"
                        " denied BOOLEAN NOT NULL,"
                        " segment TEXT, reason TEXT, method TEXT, path TEXT, status INTEGER,"
                        " request_id TEXT, event JSONB NOT NULL)"
                    ).format(table)
                )
                for column in ("timestamp", "user_id"):
                    connection.execute(
                        sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} ({})").format(
                            sql.Identifier(f"{name}_{column}_idx"), table, sql.Identifier(column)
                        )
                    )
        except BaseException:
            connection.close()
            raise
        self._connection = connection

        return connection

    def _timestamp(self, moment: dt.datetime) -> dt.datetime:
        return moment

    def _event_document(self, rendered: bytes) -> str:
        # jsonb rejects the escaped NUL character, which only a hostile client could put in an
        # event. It becomes U+FFFD, like NUL characters in the text columns.
        if b"\\u0000" in rendered:
            rendered = orjson.dumps(_without_nul(orjson.loads(rendered)))
        return rendered.decode("utf-8", "replace")

    def _row(self, event: dict[str, Any], rendered: bytes) -> tuple[Any, ...]:
        return tuple(
            value.replace("\x00", "\ufffd") if isinstance(value, str) else value
            for value in super()._row(event, rendered)
        )

    def _insert(self, rows: list[tuple[Any, ...]]) -> None:
        reused = self._connection is not None
        try:
            self._insert_once(rows)
            return
        except self._psycopg.Error as error:
            broken = self._disconnect_if_broken()
            if not (reused and broken):
                raise self._failure(rows, error) from error

        # The kept connection died, for example because the server restarted. The transaction
        # rolled back, so one retry on a new connection cannot insert a row twice.
        try:
            self._insert_once(rows)
        except self._psycopg.Error as error:
            self._disconnect_if_broken()
            raise self._failure(rows, error) from error

    def _insert_once(self, rows: list[tuple[Any, ...]]) -> None:
        sql = self._sql
        placeholders = [sql.Placeholder() for _ in _COLUMNS[:-1]]
        # The event document arrives as JSON text; the server parses it into jsonb.
        placeholders.append(sql.SQL("%s::jsonb"))
        statement = sql.SQL(
            "INSERT INTO {} ({}) VALUES ({}) ON CONFLICT (event_id) DO NOTHING"
        ).format(
            self._table_sql,
            sql.SQL(", ").join(sql.Identifier(column) for column in _COLUMNS),
            sql.SQL(", ").join(placeholders),
        )
        connection = self._connect()
        with connection.transaction(), connection.cursor() as cursor:
            cursor.executemany(statement, rows)

    def _failure(self, rows: list[tuple[Any, ...]], error: Exception) -> InfrastructureError:
        message = f"inserting {len(rows)} events into PostgreSQL table {self.table} failed: {error}"
        return InfrastructureError(message)

    def _query(self, since: dt.datetime, threshold: int) -> list[tuple[Any, ...]]:
        connection = self._connect()
        query = monitoring_query("postgres", self.table)
        cursor = connection.execute(query, {"since": since, "threshold": threshold})
        return cursor.fetchall()  # type: ignore[no-any-return]

    def _disconnect_if_broken(self) -> bool:
        connection = self._connection
        if connection is not None and (connection.closed or connection.broken):
            self._disconnect()
            return True
        return False


def _quote(identifier: str) -> str:
    return '"' + identifier + '"'


def _quote_table(table: str) -> str:
    if not _TABLE_NAME.match(table):
        message = f"table {table!r} is not a plain SQL identifier"
        raise ConfigurationError(message, parameter="table", value=table)
    return ".".join(_quote(part) for part in table.split("."))


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    return text[:_MAX_TEXT]


def _ip(value: Any) -> str | None:
    """Return a valid IP address text or ``None``, so one bad value cannot fail an inet batch."""
    if not isinstance(value, str):
        return None
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return None


def _parse_timestamp(value: Any) -> dt.datetime:
    """Parse the event's RFC 3339 timestamp; an event without a valid one gets the current time."""
    if isinstance(value, str):
        try:
            moment = dt.datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=dt.UTC)
            return moment.astimezone(dt.UTC)
    return dt.datetime.now(dt.UTC)


def _without_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_without_nul(key): _without_nul(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_without_nul(item) for item in value]
    return value
