# SPDX-License-Identifier: Apache-2.0
"""The ``zerotrust analyze`` command: replay event files through the detectors, or query them."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import orjson

from ..exceptions import MissingExtraError
from . import offline

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["DESCRIPTION", "SUMMARY", "add_arguments", "run", "summarize_anomalies"]

SUMMARY = "replay access event files through the anomaly detectors, or query them with SQL"
DESCRIPTION = """\
Read access events from JSON lines files (as written by JsonLinesSink or RotatingFileSink),
replay them in timestamp order through the default anomaly detectors, the same ones a
MonitorSink runs live, and print each anomaly with its subject, client address, event count
and time to detect, then a summary per detector. Lines that are not access events (grant or
anomaly events) and lines that are not valid JSON are skipped and counted.

With --sql or --preset, run a DuckDB query over the files instead (extra 'analytics'). The
view 'events' has the access event fields; the view 'access_logs' has the columns of the SQL
sinks' table (user_id, ip_address, geo_location, denied, ...), so the monitoring query for
PostgreSQL runs unchanged. Preset 'denied-burst': users with more than 10 denials in the last
hour of the files, with distinct IPs and regions.

Exit status: 0 on success (anomalies found or not), 1 when no file could be read or the query
failed, 2 on a usage error or an invalid query."""

_PIPED_WIDTH = 120
_DEFAULT_LIMIT = 50


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``zerotrust analyze``."""
    parser.add_argument("files", nargs="+", metavar="EVENTS.jsonl", help="JSON lines event files")
    parser.add_argument(
        "--since",
        metavar="TIME",
        help="only events at or after TIME: RFC 3339 (2026-12-04T20:00:00Z) or a duration "
        "back from now (30m, 2h, 7d)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object instead of tables"
    )
    parser.add_argument(
        "--limit",
        type=_positive_int,
        default=_DEFAULT_LIMIT,
        metavar="N",
        help="rows shown per table; --json always has every row (default: %(default)s)",
    )
    query = parser.add_mutually_exclusive_group()
    query.add_argument(
        "--sql",
        metavar="QUERY",
        help="run a DuckDB SQL query over the views 'events' and 'access_logs' (extra 'analytics')",
    )
    query.add_argument(
        "--preset",
        choices=sorted(offline.PRESETS),
        help="run a named query: denied-burst = users with more than 10 denials in the last hour "
        "of the files, with distinct IPs and regions",
    )


def run(args: argparse.Namespace) -> int:
    """Run ``zerotrust analyze``; return the exit status."""
    try:
        since = offline.parse_since(args.since) if args.since is not None else None
    except ValueError as error:
        return _usage_error(f"--since: {error}")

    if args.sql is not None or args.preset is not None:
        query = args.sql if args.sql is not None else offline.PRESETS[args.preset]
        return _run_query(args, query, since)

    console = None if args.json else console_for("analyze")
    stats = offline.LoadStats()
    events = offline.read_access_events(args.files, stats, since=since)
    anomalies = offline.detect_anomalies(events)
    _report_unreadable(stats, "analyze")
    if not stats.readable_files:
        return 1

    summary = summarize_anomalies(anomalies)
    if console is None:
        document = {"input": stats.as_dict(), "summary": summary, "anomalies": anomalies}
        sys.stdout.write(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        _print_report(console, stats, anomalies, summary, args.limit)

    return 0


def summarize_anomalies(anomalies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return one row per detector: anomalies, distinct subjects and IPs, time to detect."""
    by_detector: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for anomaly in anomalies:
        by_detector[str(anomaly.get("detector"))].append(anomaly)

    rows = []
    for detector, found in sorted(by_detector.items()):
        delays = [delay for delay in map(offline.time_to_detect_ms, found) if delay is not None]
        rows.append(
            {
                "detector": detector,
                "anomalies": len(found),
                "events": sum(_count(anomaly) for anomaly in found),
                "subjects": len({a.get("subject") for a in found if a.get("subject")}),
                "client_ips": len({a.get("client_ip") for a in found if a.get("client_ip")}),
                "mean_time_to_detect_ms": statistics.fmean(delays) if delays else None,
                "max_time_to_detect_ms": max(delays) if delays else None,
            }
        )

    return rows


def console_for(command: str) -> Console:
    """Return a rich console for standard output; raises `MissingExtraError` without rich."""
    try:
        from rich.console import Console
    except ImportError:
        raise MissingExtraError(f"zerotrust {command}", "cli") from None

    console = Console(highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        # Rich assumes 80 columns when writing to a pipe, which wraps most rows.
        console.width = _PIPED_WIDTH
    return console


def format_duration(milliseconds: float | None) -> str:
    """Format a duration for a table: ``850 ms``, ``12.5 s``, ``3.2 min`` or ``1.5 h``."""
    if milliseconds is None:
        return "-"
    if milliseconds < 1000:
        return f"{milliseconds:.0f} ms"
    seconds = milliseconds / 1000
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _print_report(
    console: Console,
    stats: offline.LoadStats,
    anomalies: list[dict[str, Any]],
    summary: list[dict[str, Any]],
    limit: int,
) -> None:
    from rich.table import Table

    console.print(_describe_input(stats))

    if not anomalies:
        console.print("No anomalies found.")
        return

    by_detector: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for anomaly in anomalies:
        by_detector[str(anomaly.get("detector"))].append(anomaly)

    for detector, found in sorted(by_detector.items()):
        title = f"{_text(detector)}: {len(found)} anomalies"
        table = Table(title=title, title_justify="left")
        # Short columns stay on one line; the description takes the remaining width.
        for column in ("detected (UTC)", "severity", "subject", "client IP"):
            table.add_column(column, no_wrap=True)
        table.add_column("events", justify="right", no_wrap=True)
        table.add_column("time to detect", justify="right", no_wrap=True)
        table.add_column("description", ratio=1, overflow="fold")
        for anomaly in found[:limit]:
            table.add_row(
                _text(_short_time(anomaly.get("timestamp"))),
                _text(anomaly.get("severity") or "high"),
                _text(anomaly.get("subject")),
                _text(anomaly.get("client_ip")),
                str(_count(anomaly)),
                format_duration(offline.time_to_detect_ms(anomaly)),
                _text(anomaly.get("description")),
            )
        console.print(table)
        if len(found) > limit:
            console.print(f"... {len(found) - limit} more; use --limit or --json to see them all.")

    table = Table(title="Summary", title_justify="left")
    for column in ("detector", "anomalies", "events", "subjects", "client IPs"):
        table.add_column(column, justify="left" if column == "detector" else "right")
    table.add_column("mean time to detect", justify="right")
    table.add_column("max time to detect", justify="right")
    for row in summary:
        table.add_row(
            row["detector"],
            str(row["anomalies"]),
            str(row["events"]),
            str(row["subjects"]),
            str(row["client_ips"]),
            format_duration(row["mean_time_to_detect_ms"]),
            format_duration(row["max_time_to_detect_ms"]),
        )
    console.print(table)


def _describe_input(stats: offline.LoadStats) -> str:
    readable = len(stats.readable_files)
    files = "file" if readable == 1 else "files"
    parts = [f"Read {stats.access_events} access events from {readable} {files}"]
    if stats.other_events:
        parts.append(f"skipped {stats.other_events} other events")
    if stats.recorded_anomalies:
        # A live monitor may have used other thresholds than this replay's defaults.
        parts.append(
            f"{stats.recorded_anomalies} of them anomaly events that a live monitor recorded "
            "(the replay uses the default thresholds, so its findings may differ)"
        )
    if stats.unparsable:
        parts.append(f"skipped {stats.unparsable} unparsable lines")
    if stats.before_since:
        parts.append(f"skipped {stats.before_since} events before --since")
    if stats.out_of_order:
        parts.append(f"{stats.out_of_order} events too far out of order were replayed late")
    return ", ".join(parts) + "."


def _report_unreadable(stats: offline.LoadStats, command: str) -> None:
    for path, error in stats.unreadable:
        print(
            f"zerotrust {command}: error: cannot read {path!r}: {error}. Check the path.",
            file=sys.stderr,
        )


def _run_query(args: argparse.Namespace, query: str, since: dt.datetime | None) -> int:
    readable, unreadable = _check_readable(args.files)
    for path, error in unreadable:
        print(
            f"zerotrust analyze: error: cannot read {path!r}: {error}. Check the path.",
            file=sys.stderr,
        )
    if not readable:
        return 1

    connection = offline.connect_duckdb(readable, since=since)
    import duckdb

    try:
        result = connection.execute(query)
        columns = [description[0] for description in result.description or ()]
        rows = result.fetchall()
    except (duckdb.ParserException, duckdb.BinderException, duckdb.CatalogException) as error:
        message = f"invalid SQL query: {error}\nThe views are 'events' and 'access_logs'."
        return _usage_error(message)
    except duckdb.Error as error:
        print(f"zerotrust analyze: error: the SQL query failed: {error}", file=sys.stderr)
        return 1
    finally:
        connection.close()

    if args.json:
        records = [dict(zip(columns, row, strict=True)) for row in rows]
        sys.stdout.write(orjson.dumps(records, default=str, option=orjson.OPT_INDENT_2).decode())
        sys.stdout.write("\n")
        return 0

    from rich.table import Table

    console = console_for("analyze")
    table = Table(title=f"{len(rows)} rows", title_justify="left")
    for column in columns:
        table.add_column(column)
    for row in rows[: args.limit]:
        table.add_row(*(_text(value) for value in row))
    console.print(table)
    if len(rows) > args.limit:
        console.print(f"... {len(rows) - args.limit} more; use --limit or --json to see them all.")

    return 0


def _check_readable(paths: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    readable, unreadable = [], []
    for path in paths:
        try:
            with open(path, "rb") as handle:
                handle.read(1)
        except OSError as error:
            unreadable.append((path, error.strerror or str(error)))
        else:
            readable.append(path)
    return readable, unreadable


def _usage_error(message: str) -> int:
    print(f"zerotrust analyze: error: {message}", file=sys.stderr)
    return 2


def _count(anomaly: dict[str, Any]) -> int:
    count = anomaly.get("count")
    return count if isinstance(count, int) and not isinstance(count, bool) else 0


def _short_time(value: Any) -> Any:
    """Cut an RFC 3339 UTC time to whole seconds for a table: ``2026-12-04 20:45:03``."""
    if isinstance(value, str) and len(value) >= 19 and value[10] == "T":
        return f"{value[:10]} {value[11:19]}"
    return value


def _text(value: Any) -> str:
    # Escape rich markup, because event values come from clients.
    from rich.markup import escape

    return "-" if value is None else escape(str(value))


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid number {text!r}: give a positive integer"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}: give a positive integer")
    return value
