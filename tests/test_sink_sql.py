# SPDX-License-Identifier: Apache-2.0
from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
import sqlite3
import stat
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from zerotrust.events import EventEmitter, format_timestamp
from zerotrust.events.sql import (
    POSTGRES_MONITORING_QUERY,
    SQLITE_MONITORING_QUERY,
    DeniedUser,
    PostgresSink,
    SQLiteSink,
    monitoring_query,
)
from zerotrust.exceptions import ConfigurationError, InfrastructureError, MissingExtraError

POSTGRES_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=test"
NOW = dt.datetime(2026, 12, 4, 20, 0, 0, tzinfo=dt.UTC)
# The users the monitoring query must return for `crafted_events`, ordered by count.
EXPECTED = [
    DeniedUser("bob", 15, 1, 1),
    DeniedUser("alice", 12, 3, 2),
    DeniedUser("erin", 11, 2, 1),
]


def make_event(
    subject: str | None,
    minutes_ago: float,
    *,
    now: dt.datetime = NOW,
    ip: str | None = "198.51.100.1",
    country: str | None = "DE",
    decision: str = "deny",
    **changes: Any,
) -> dict[str, Any]:
    moment = now - dt.timedelta(minutes=minutes_ago)
    event: dict[str, Any] = {
        "event": "access",
        "schema_version": "1",
        "timestamp": format_timestamp(moment.timestamp()),
        "event_id": str(uuid.uuid4()),
        "request_id": uuid.uuid4().hex,
        "decision": decision,
        "action": decision,
        "mode": "enforce",
        "status": 403 if decision == "deny" else 200,
        "reasons": ["geo_blocked", "insufficient_scope"] if decision == "deny" else [],
        "segment": "items",
        "subject": subject,
        "client_ip": ip,
        "method": "GET",
        "path": "/items",
    }
    if country is not None:
        event["facts"] = {"country": country}
    event.update(changes)
    return event


def crafted_events(now: dt.datetime = NOW) -> list[dict[str, Any]]:
    """Users over and under the threshold, inside and outside the last hour."""
    events = []
    # alice: 12 denials in the hour from 3 addresses in 2 countries.
    for index in range(12):
        address, region = [("198.51.100.1", "DE"), ("198.51.100.2", "DE"), ("203.0.113.9", "FR")][
            index % 3
        ]
        events.append(make_event("alice", 2 + index * 4, now=now, ip=address, country=region))
    # bob: 15 denials from one address, plus allowed requests that do not count.
    events += [make_event("bob", 1 + index, now=now) for index in range(15)]
    events += [make_event("bob", 5, now=now, decision="allow") for _ in range(20)]
    # carol: exactly 10 denials, which is not more than 10.
    events += [make_event("carol", 10 + index, now=now) for index in range(10)]
    # dave: 5 denials in the hour and 20 that are older than an hour.
    events += [make_event("dave", 30, now=now) for _ in range(5)]
    events += [make_event("dave", 61 + index, now=now) for index in range(20)]
    # erin: 11 denials over IPv4 and IPv6, some with no known country.
    for index in range(11):
        ip = "2001:db8::1" if index % 2 else "192.0.2.44"
        country = "US" if index < 4 else None
        events.append(make_event("erin", 59, now=now, ip=ip, country=country))
    # Anonymous denials (no subject) are not attributed to anyone.
    events += [make_event(None, 3, now=now) for _ in range(30)]
    # frank: many allowed requests only.
    events += [make_event("frank", 3, now=now, decision="allow") for _ in range(12)]
    return events


def postgres_or_skip() -> None:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=2):
            pass
    except OSError as error:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL at 127.0.0.1:5432 is unreachable in CI: {error}")
        pytest.skip(f"PostgreSQL at 127.0.0.1:5432 is unreachable: {error}")


@pytest.fixture(name="pg_schema")
def fixture_pg_schema() -> Iterator[str]:
    """A fresh PostgreSQL schema, dropped with everything in it after the test."""
    postgres_or_skip()
    import psycopg
    from psycopg import sql

    schema = f"zt_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_DSN, autocommit=True, connect_timeout=5) as connection:
        connection.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    try:
        yield schema
    finally:
        with psycopg.connect(POSTGRES_DSN, autocommit=True, connect_timeout=5) as connection:
            connection.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


def pg_rows(schema: str, query: str, params: Any = None) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(POSTGRES_DSN, autocommit=True, connect_timeout=5) as connection:
        connection.execute(f'SET search_path TO "{schema}"')
        return connection.execute(query, params).fetchall()


class TestMonitoringQuery:
    def test_sqlite(self, tmp_path: Path) -> None:
        """The SQLite query returns exactly the users over the threshold, with counts."""
        sink = SQLiteSink(tmp_path / "events.db")
        sink.write(crafted_events())

        assert EXPECTED == sink.denied_attempts(now=NOW)
        sink.close()

    def test_postgres(self, pg_schema: str) -> None:
        """The PostgreSQL query returns the same users and counts."""
        sink = PostgresSink(POSTGRES_DSN, table=f"{pg_schema}.access_logs")
        sink.write(crafted_events())

        assert EXPECTED == sink.denied_attempts(now=NOW)
        sink.close()

    def test_sqlite_constant(self, tmp_path: Path) -> None:
        """SQLITE_MONITORING_QUERY, run as is, finds the users of the last hour."""
        path = tmp_path / "events.db"
        sink = SQLiteSink(path)
        sink.write(crafted_events(dt.datetime.now(dt.UTC)))
        sink.close()

        with sqlite3.connect(path) as connection:
            rows = connection.execute(SQLITE_MONITORING_QUERY).fetchall()
        connection.close()
        assert [tuple(user) for user in EXPECTED] == rows

    def test_postgres_constant(self, pg_schema: str) -> None:
        """POSTGRES_MONITORING_QUERY, run as is, finds the users of the last hour."""
        sink = PostgresSink(POSTGRES_DSN, table=f"{pg_schema}.access_logs")
        sink.write(crafted_events(dt.datetime.now(dt.UTC)))
        sink.close()

        assert [tuple(user) for user in EXPECTED] == pg_rows(pg_schema, POSTGRES_MONITORING_QUERY)

    def test_threshold_and_window(self, tmp_path: Path) -> None:
        """threshold and window change which users are reported."""
        sink = SQLiteSink(tmp_path / "events.db")
        sink.write(crafted_events())

        users = sink.denied_attempts(threshold=9, window=dt.timedelta(hours=2), now=NOW)
        assert ["dave", "bob", "alice", "erin", "carol"] == [user.user_id for user in users]
        assert DeniedUser("dave", 25, 1, 1) == users[0]
        sink.close()

    def test_rejects_unknown_dialect(self) -> None:
        """monitoring_query accepts only sqlite and postgres."""
        with pytest.raises(ConfigurationError, match="dialect"):
            monitoring_query("mysql")


class TestSQLiteSink:
    def test_columns(self, tmp_path: Path) -> None:
        """Each column contains its event field, and event contains the redacted JSON."""
        sink = SQLiteSink(tmp_path / "events.db")
        event = make_event("alice", 0, authorization="Bearer abc.def")
        sink.write([event])
        sink.close()

        with sqlite3.connect(tmp_path / "events.db") as connection:
            connection.row_factory = sqlite3.Row
            row = dict(connection.execute("SELECT * FROM access_logs").fetchone())
        connection.close()
        assert 1 == row["id"]
        assert event["event_id"] == row["event_id"]
        assert "2026-12-04T20:00:00.000000Z" == row["timestamp"]
        assert "alice" == row["user_id"]
        assert "198.51.100.1" == row["ip_address"]
        assert "DE" == row["geo_location"]
        assert 1 == row["denied"]
        assert "items" == row["segment"]
        assert "geo_blocked" == row["reason"]
        assert "GET" == row["method"]
        assert "/items" == row["path"]
        assert 403 == row["status"]
        assert event["request_id"] == row["request_id"]
        stored = orjson.loads(row["event"])
        assert "[redacted]" == stored["authorization"]
        assert event["event_id"] == stored["event_id"]

    def test_other_events(self, tmp_path: Path) -> None:
        """An event without access fields is stored with nulls and denied 0."""
        sink = SQLiteSink(tmp_path / "events.db")
        sink.write([{"event": "grant_minted", "event_id": "g-1", "subject": "bob"}])
        sink.close()

        with sqlite3.connect(tmp_path / "events.db") as connection:
            row = connection.execute(
                "SELECT user_id, ip_address, denied, reason, status FROM access_logs"
            ).fetchone()
        connection.close()
        assert ("bob", None, 0, None, None) == row

    def test_invalid_ip_stored_as_null(self, tmp_path: Path) -> None:
        """A client_ip that is not an IP address is stored as NULL."""
        sink = SQLiteSink(tmp_path / "events.db")
        sink.write([make_event("alice", 0, ip="not-an-ip")])
        sink.close()

        with sqlite3.connect(tmp_path / "events.db") as connection:
            value = connection.execute("SELECT ip_address FROM access_logs").fetchone()[0]
        connection.close()
        assert value is None

    def test_idempotent(self, tmp_path: Path) -> None:
        """Writing the same events twice stores each event_id once."""
        sink = SQLiteSink(tmp_path / "events.db")
        events = crafted_events()
        sink.write(events)
        sink.write(events[:50])

        assert EXPECTED == sink.denied_attempts(now=NOW)
        sink.close()
        with sqlite3.connect(tmp_path / "events.db") as connection:
            count = connection.execute("SELECT COUNT(*) FROM access_logs").fetchone()[0]
        connection.close()
        assert len(events) == count

    def test_batch_is_one_transaction(self, tmp_path: Path) -> None:
        """When one row of a batch fails, no row of that batch is stored."""
        path = tmp_path / "events.db"
        sink = SQLiteSink(path)
        sink.write([make_event("setup", 0)])
        with sqlite3.connect(path) as connection:
            connection.execute(
                "CREATE TRIGGER reject_mallory BEFORE INSERT ON access_logs"
                " WHEN NEW.user_id = 'mallory' BEGIN SELECT RAISE(ABORT, 'rejected'); END"
            )
        connection.close()

        batch = [make_event("alice", 0), make_event("mallory", 0), make_event("bob", 0)]
        with pytest.raises(InfrastructureError, match="inserting 3 events"):
            sink.write(batch)
        sink.write([make_event("carol", 0)])
        sink.close()

        with sqlite3.connect(path) as connection:
            users = [
                row[0] for row in connection.execute("SELECT user_id FROM access_logs ORDER BY id")
            ]
        connection.close()
        assert ["setup", "carol"] == users

    def test_new_file_mode_0600(self, tmp_path: Path) -> None:
        """A new database file is readable by the owner only."""
        path = tmp_path / "events.db"
        sink = SQLiteSink(path)
        sink.write([make_event("alice", 0)])
        sink.close()

        assert 0o600 == stat.S_IMODE(path.stat().st_mode)

    def test_indexes(self, tmp_path: Path) -> None:
        """Indexes on timestamp and user_id exist."""
        sink = SQLiteSink(tmp_path / "events.db", table="audit")
        sink.write([make_event("alice", 0)])
        sink.close()

        with sqlite3.connect(tmp_path / "events.db") as connection:
            names = {
                row[0]
                for row in connection.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'audit'"
                )
            }
        connection.close()
        assert {"audit_timestamp_idx", "audit_user_id_idx"} <= names

    def test_with_emitter(self, tmp_path: Path) -> None:
        """Events emitted through an EventEmitter are stored."""
        sink = SQLiteSink(tmp_path / "events.db")
        emitter = EventEmitter([sink], batch_size=7)
        for event in crafted_events():
            emitter.emit(event)
        emitter.flush()

        assert EXPECTED == sink.denied_attempts(now=NOW)
        emitter.close()
        assert 0 == emitter.failed

    @pytest.mark.parametrize("table", ["access logs", "x;drop", "1abc", "main.access_logs", ""])
    def test_rejects_bad_table(self, tmp_path: Path, table: str) -> None:
        """Table names must be plain identifiers without a schema."""
        with pytest.raises(ConfigurationError):
            SQLiteSink(tmp_path / "events.db", table=table)


class TestPostgresSink:
    def test_columns(self, pg_schema: str) -> None:
        """Columns use timestamptz, inet, boolean and jsonb."""
        sink = PostgresSink(POSTGRES_DSN, table=f"{pg_schema}.access_logs")
        event = make_event("alice", 0, ip="2001:db8::7", authorization="Bearer abc.def")
        sink.write([event])
        sink.close()

        row = pg_rows(
            pg_schema,
            "SELECT event_id, timestamp, user_id, ip_address, geo_location, denied, segment,"
            " reason, method, path, status, request_id, event FROM access_logs",
        )[0]
        assert event["event_id"] == row[0]
        assert NOW == row[1]
        assert "alice" == row[2]
        assert ipaddress.ip_address("2001:db8::7") == row[3]
        assert "DE" == row[4]
        assert row[5] is True
        assert ("items", "geo_blocked", "GET", "/items", 403) == row[6:11]
        assert event["request_id"] == row[11]
        assert "[redacted]" == row[12]["authorization"]

    def test_column_types(self, pg_schema: str) -> None:
        """The table is created with the documented PostgreSQL types."""
        sink = PostgresSink(POSTGRES_DSN, table=f"{pg_schema}.access_logs")
        sink.write([make_event("alice", 0)])
        sink.close()

        types = dict(
            pg_rows(
                pg_schema,
                "SELECT column_name, data_type FROM information_schema.columns"
                " WHERE table_schema = %s AND table_name = 'access_logs'",
                (pg_schema,),
            )
        )
        assert "timestamp with time zone" == types["timestamp"]
        assert "inet" == types["ip_address"]
        assert "boolean" == types["denied"]
        assert "jsonb" == types["event"]
        assert "bigint" == types["id"]

    def test_indexes(self, pg_schema: str) -> None:
        """Indexes on timestamp and user_id exist."""
        sink = PostgresSink(POSTGRES_DSN, table=f"{pg_schema}.access_logs")
        sink.write([make_event("alice", 0)])
        sink.close()

        names = {
            row[0]
            for row in pg_rows(
                pg_schema, "SELECT indexname FROM pg_indexes WHERE schemaname = %s", (pg_schema,)
            )
        }
        assert {"access_logs_timestamp_idx", "access_logs_user_id_idx"} <= names

    def test_idempotent(self, pg_schema: str) -> None:
        """Writing the same events twice stores each event_id once."""
        sink = PostgresSink(POSTGRES_DSN, table=f"{pg_schema}.access_logs")
        events = crafted_events()
        sink.write(events)
        sink.write(events[:50])

        assert EXPECTED == sink.denied_attempts(now=NOW)
        sink.close()
        assert [(len(events),)] == pg_rows(pg_schema, "SELECT COUNT(*) FROM access_logs")

    def test_batch_is_one_transaction(self, pg_schema: str) -> None:
        """A batch with a row that the server rejects stores nothing, and later batches work."""

        def poison(event: dict[str, Any]) -> bytes:
            return b"not json" if event["subject"] == "mallory" else orjson.dumps(event)

        sink = PostgresSink(POSTGRES_DSN, table=f"{pg_schema}.access_logs", format=poison)
        batch = [make_event("alice", 0), make_event("mallory", 0), make_event("bob", 0)]
        sink.write([make_event("setup", 0)])
        with pytest.raises(InfrastructureError, match="inserting 3 events"):
            sink.write(batch)
        sink.write([make_event("carol", 0)])
        sink.close()

        assert [("setup",), ("carol",)] == pg_rows(
            pg_schema, "SELECT user_id FROM access_logs ORDER BY id"
        )

    def test_nul_characters(self, pg_schema: str) -> None:
        """NUL characters, which PostgreSQL text and jsonb reject, become U+FFFD."""
        sink = PostgresSink(POSTGRES_DSN, table=f"{pg_schema}.access_logs")
        sink.write([make_event("al\x00ice", 0, user_agent="x\x00y")])
        sink.close()

        row = pg_rows(pg_schema, "SELECT user_id, event FROM access_logs")[0]
        assert "al\ufffdice" == row[0]
        assert "x\ufffdy" == row[1]["user_agent"]

    def test_statement_timeout(self, pg_schema: str) -> None:
        """The session's statement_timeout is the configured one."""
        sink = PostgresSink(POSTGRES_DSN, table=f"{pg_schema}.access_logs", statement_timeout=1.5)
        sink.write([make_event("alice", 0)])

        assert "1500ms" == sink._connection.execute("SHOW statement_timeout").fetchone()[0]
        sink.close()

    def test_reconnects_after_termination(self, pg_schema: str) -> None:
        """A connection the server terminated is replaced and the batch is not lost."""
        sink = PostgresSink(POSTGRES_DSN, table=f"{pg_schema}.access_logs")
        sink.write([make_event("alice", 0)])
        backend = sink._connection.info.backend_pid
        pg_rows(pg_schema, "SELECT pg_terminate_backend(%s)", (backend,))

        sink.write([make_event("bob", 0)])
        sink.close()

        assert [("alice",), ("bob",)] == pg_rows(
            pg_schema, "SELECT user_id FROM access_logs ORDER BY id"
        )

    def test_unreachable_server(self) -> None:
        """A server that refuses connections fails the write with InfrastructureError."""
        with socket.socket() as placeholder:
            placeholder.bind(("127.0.0.1", 0))
            port = placeholder.getsockname()[1]
        sink = PostgresSink(f"host=127.0.0.1 port={port} user=postgres dbname=test")
        with pytest.raises(InfrastructureError, match="inserting 1 events"):
            sink.write([make_event("alice", 0)])
        sink.close()

    def test_missing_extra(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without psycopg the sink raises MissingExtraError naming the extra."""
        monkeypatch.setitem(sys.modules, "psycopg", None)
        with pytest.raises(MissingExtraError, match=r"zerotrust-middleware\[postgres\]"):
            PostgresSink(POSTGRES_DSN)

    @pytest.mark.parametrize(
        "options",
        [
            {"table": "a.b.c"},
            {"table": 'x"; drop table y; --'},
            {"connect_timeout": 0},
            {"statement_timeout": -1},
        ],
    )
    def test_rejects(self, options: dict[str, Any]) -> None:
        """Invalid table names and timeouts raise ConfigurationError."""
        with pytest.raises(ConfigurationError):
            PostgresSink(POSTGRES_DSN, **options)
