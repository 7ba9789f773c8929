# SPDX-License-Identifier: Apache-2.0
"""The ``zerotrust report`` command: rollout progress measures from access event files."""

from __future__ import annotations

import argparse
import datetime as dt
import html
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from . import offline
from .cli_analyze import console_for, format_duration, summarize_anomalies
from .rollout import MonitorRollout

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["DESCRIPTION", "SUMMARY", "RolloutReport", "add_arguments", "render_html", "run"]

SUMMARY = "summarize a zero-trust rollout from access event files: denials, detection, monitor mode"
DESCRIPTION = """\
Read access events from JSON lines files and print the measures of a rollout: denials per
segment, cross-segment attempts blocked per principal (denials of a subject in a segment where
the files hold no allowed request of that subject), mean time to detect per detector (from a
replay through the default anomaly detectors), the share of traffic in monitor mode and the
decisions over time. For each segment in monitor mode, the report lists what enforcement would
have denied, by reason, with distinct subjects and first and last seen, and ends with a verdict:
safe to enforce, or how many of its requests it would deny. With --html, also write an HTML
page with inline SVG charts of the decisions over time and the denials by reason. The page
loads nothing from the network.

Exit status: 0 on success, 1 when no file could be read or the HTML file could not be written,
2 on a usage error."""

# Bucket sizes for decisions over time, in seconds: one minute up to one week.
_BUCKET_SIZES = (60, 300, 900, 3600, 6 * 3600, 86400, 7 * 86400)
_MAX_BUCKETS = 2000
_CHART_BUCKETS = 48
_MAX_KEYS = 10_000
_OTHER = "(other)"
_BAR = "█"
_BAR_WIDTH = 40
_SPARK = "▁▂▃▄▅▆▇█"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``zerotrust report``."""
    parser.add_argument("files", nargs="+", metavar="EVENTS.jsonl", help="JSON lines event files")
    parser.add_argument(
        "--since",
        metavar="TIME",
        help="only events at or after TIME: RFC 3339 (2026-12-04T20:00:00Z) or a duration "
        "back from now (30m, 2h, 7d)",
    )
    parser.add_argument(
        "--html", type=Path, metavar="PATH", help="also write an HTML report with SVG charts"
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object instead of tables"
    )


@dataclass(slots=True)
class RolloutReport:
    """
    Counters gathered in one pass over the events, with memory bounded by the number of
    segments, reasons and subject-segment pairs (each capped at 10,000 keys, the rest counted
    under ``(other)``) and at most 2,000 time buckets.
    """

    total: int = 0
    decisions: Counter[str] = field(default_factory=Counter)
    monitor_mode: int = 0
    monitor_denials: int = 0
    segments: dict[str, Counter[str]] = field(default_factory=dict)
    reasons: Counter[str] = field(default_factory=Counter)
    pairs: dict[tuple[str, str], Counter[str]] = field(default_factory=dict)
    bucket_size: int = _BUCKET_SIZES[0]
    buckets: dict[int, Counter[str]] = field(default_factory=dict)
    monitor_rollout: MonitorRollout = field(default_factory=MonitorRollout)

    def observe(self, event: dict[str, Any]) -> dict[str, Any]:
        """Count one access event and return it, so this can tap a stream."""
        denied = event.get("decision") == "deny"
        blocked = event.get("action") == "deny"
        outcome = "allow" if not denied else ("deny" if blocked else "monitor_deny")
        self.total += 1
        self.decisions[outcome] += 1
        if event.get("mode") == "monitor":
            self.monitor_mode += 1
            self.monitor_denials += outcome == "monitor_deny"
            self.monitor_rollout.observe(event)

        segment = event.get("segment")
        segment_name = segment if isinstance(segment, str) else "(no segment)"
        _bounded(self.segments, segment_name)[outcome] += 1
        if denied:
            for reason in event.get("reasons") or ("(none)",):
                key = (
                    str(reason)
                    if len(self.reasons) < _MAX_KEYS or reason in self.reasons
                    else _OTHER
                )
                self.reasons[key] += 1

        subject = event.get("subject")
        if isinstance(subject, str) and isinstance(segment, str):
            _bounded(self.pairs, (subject, segment))[outcome] += 1

        moment = offline.event_time(event)
        if moment is not None:
            self._count_bucket(int(moment), outcome)
        return event

    def _count_bucket(self, second: int, outcome: str) -> None:
        start = second - second % self.bucket_size
        self.buckets.setdefault(start, Counter())[outcome] += 1
        if len(self.buckets) > _MAX_BUCKETS and self.bucket_size < _BUCKET_SIZES[-1]:
            self.bucket_size = next(size for size in _BUCKET_SIZES if size > self.bucket_size)
            self.buckets = _rebucket(self.buckets, self.bucket_size)

    def timeline(
        self, max_buckets: int = _CHART_BUCKETS
    ) -> tuple[int, list[tuple[int, Counter[str]]]]:
        """
        Return the bucket size and every bucket from first to last, empty ones included, in the
        smallest size that gives at most ``max_buckets`` buckets.
        """
        if not self.buckets:
            return self.bucket_size, []
        size = self.bucket_size
        first, last = min(self.buckets), max(self.buckets)
        for candidate in _BUCKET_SIZES:
            if candidate >= size and (last - first) // candidate + 1 <= max_buckets:
                size = candidate
                break
        else:
            size = max(size, _BUCKET_SIZES[-1])
        buckets = _rebucket(self.buckets, size)
        start = first - first % size
        return size, [
            (moment, buckets.get(moment, Counter())) for moment in range(start, last + 1, size)
        ]

    def cross_segment(self) -> list[dict[str, Any]]:
        """Return per subject the denials in segments where that subject was never allowed."""
        by_subject: dict[str, dict[str, Any]] = {}
        for (subject, segment), counts in self.pairs.items():
            if counts["allow"] or not (counts["deny"] or counts["monitor_deny"]):
                continue
            row = by_subject.setdefault(
                subject, {"subject": subject, "segments": [], "blocked": 0, "monitor_only": 0}
            )
            row["segments"].append(segment)
            row["blocked"] += counts["deny"]
            row["monitor_only"] += counts["monitor_deny"]
        rows = sorted(by_subject.values(), key=lambda row: (-row["blocked"], row["subject"]))
        for row in rows:
            row["segments"].sort()
        return rows

    def as_dict(self, anomalies: list[dict[str, Any]]) -> dict[str, Any]:
        """Return every measure as a JSON-ready dict."""
        size, timeline = self.timeline()
        return {
            "access_events": self.total,
            "decisions": dict(self.decisions),
            "monitor_mode": {
                "events": self.monitor_mode,
                "share": self.monitor_mode / self.total if self.total else 0.0,
                "would_deny": self.monitor_denials,
                "segments": self.monitor_rollout.as_list(),
            },
            "segments": [
                {"segment": name, **_outcomes(counts)} for name, counts in self._segment_rows()
            ],
            "denials_by_reason": dict(self.reasons.most_common()),
            "cross_segment_attempts": self.cross_segment(),
            "detectors": summarize_anomalies(anomalies),
            "timeline": {
                "bucket_seconds": size,
                "buckets": [
                    {"start": _iso(moment), **_outcomes(counts)} for moment, counts in timeline
                ],
            },
        }

    def _segment_rows(self) -> list[tuple[str, Counter[str]]]:
        return sorted(
            self.segments.items(),
            key=lambda item: (-(item[1]["deny"] + item[1]["monitor_deny"]), item[0]),
        )


def run(args: argparse.Namespace) -> int:
    """Run ``zerotrust report``; return the exit status."""
    try:
        since = offline.parse_since(args.since) if args.since is not None else None
    except ValueError as error:
        print(f"zerotrust report: error: --since: {error}", file=sys.stderr)
        return 2

    console = None if args.json else console_for("report")
    stats = offline.LoadStats()
    report = RolloutReport()
    events = map(report.observe, offline.read_access_events(args.files, stats, since=since))
    anomalies = offline.detect_anomalies(events)
    for path, reason in stats.unreadable:
        print(
            f"zerotrust report: error: cannot read {path!r}: {reason}. Check the path.",
            file=sys.stderr,
        )
    if not stats.readable_files:
        return 1

    measures = report.as_dict(anomalies)
    if args.html is not None:
        try:
            args.html.write_text(render_html(measures, stats.as_dict()), encoding="utf-8")
        except OSError as error:
            print(
                f"zerotrust report: error: cannot write {str(args.html)!r}: "
                f"{error.strerror or error}. Pass --html with a writable path.",
                file=sys.stderr,
            )
            return 1

    if console is None:
        document = {"input": stats.as_dict(), **measures}
        sys.stdout.write(orjson.dumps(document, default=str, option=orjson.OPT_INDENT_2).decode())
        sys.stdout.write("\n")
    else:
        _print_report(console, report, measures)
        if args.html is not None:
            console.print(f"Wrote the HTML report to {args.html}.")

    return 0


def _print_report(console: Console, report: RolloutReport, measures: dict[str, Any]) -> None:
    from rich.markup import escape
    from rich.table import Table

    total = measures["access_events"]
    monitor = measures["monitor_mode"]
    console.print(
        f"{total} access events: {report.decisions['allow']} allowed, "
        f"{report.decisions['deny']} denied, {report.decisions['monitor_deny']} denied in "
        f"monitor mode (let through). Monitor mode: {monitor['share']:.1%} of traffic."
    )

    table = Table(title="Denials per segment", title_justify="left")
    table.add_column("segment")
    for column in ("requests", "denied", "monitor denied", "denied share"):
        table.add_column(column, justify="right")
    table.add_column("denials")
    widest = max((row["denied"] + row["monitor_denied"] for row in measures["segments"]), default=0)
    for row in measures["segments"]:
        denials = row["denied"] + row["monitor_denied"]
        table.add_row(
            escape(row["segment"]),
            str(row["requests"]),
            str(row["denied"]),
            str(row["monitor_denied"]),
            f"{denials / row['requests']:.0%}" if row["requests"] else "-",
            _bar(denials, widest),
        )
    console.print(table)
    _print_monitor_rollout(console, monitor["segments"])

    table = Table(title="Cross-segment attempts per principal", title_justify="left")
    for column in ("subject", "segments never allowed", "blocked", "monitor only"):
        table.add_column(
            column, justify="right" if column in ("blocked", "monitor only") else "left"
        )
    for row in measures["cross_segment_attempts"]:
        table.add_row(
            escape(row["subject"]),
            escape(", ".join(row["segments"])),
            str(row["blocked"]),
            str(row["monitor_only"]),
        )
    console.print(table if measures["cross_segment_attempts"] else "No cross-segment attempts.")

    table = Table(title="Time to detect per detector", title_justify="left")
    table.add_column("detector")
    for column in ("anomalies", "mean time to detect", "max time to detect"):
        table.add_column(column, justify="right")
    for row in measures["detectors"]:
        table.add_row(
            escape(row["detector"]),
            str(row["anomalies"]),
            format_duration(row["mean_time_to_detect_ms"]),
            format_duration(row["max_time_to_detect_ms"]),
        )
    console.print(table if measures["detectors"] else "No anomalies detected.")

    timeline = measures["timeline"]
    table = Table(
        title=f"Decisions over time ({_describe_size(timeline['bucket_seconds'])} buckets, UTC)",
        title_justify="left",
    )
    for column in ("start", "allowed", "denied", "monitor denied"):
        table.add_column(column, justify="left" if column == "start" else "right")
    table.add_column("denials")
    widest = max((row["denied"] + row["monitor_denied"] for row in timeline["buckets"]), default=0)
    for row in timeline["buckets"]:
        table.add_row(
            row["start"],
            str(row["allowed"]),
            str(row["denied"]),
            str(row["monitor_denied"]),
            _bar(row["denied"] + row["monitor_denied"], widest),
        )
    console.print(table)
    requests = [row["requests"] for row in timeline["buckets"]]
    denials = [row["denied"] + row["monitor_denied"] for row in timeline["buckets"]]
    console.print(f"requests {_sparkline(requests)}")
    console.print(f"denials  {_sparkline(denials)}")


def _print_monitor_rollout(console: Console, segments: list[dict[str, Any]]) -> None:
    """Print what monitor mode let through that enforcement would deny, with segment verdicts."""
    from rich.markup import escape
    from rich.table import Table

    if not segments:
        console.print("No segment in monitor mode.")
        return

    table = Table(title="Monitor mode: would-be denials per segment", title_justify="left")
    table.add_column("segment")
    table.add_column("reason")
    for column in ("count", "distinct subjects", "without subject"):
        table.add_column(column, justify="right")
    table.add_column("first seen")
    table.add_column("last seen")
    for row in segments:
        for reason in row["reasons"]:
            subjects = str(reason["distinct_subjects"])
            table.add_row(
                escape(row["segment"]),
                escape(reason["reason"]),
                str(reason["count"]),
                subjects if reason["distinct_subjects_exact"] else f"≥ {subjects}",
                str(reason["without_subject"]),
                _to_second(reason["first_seen"]),
                _to_second(reason["last_seen"]),
            )
    if table.row_count:
        console.print(table)
    for row in segments:
        style = "green" if row["safe_to_enforce"] else "yellow"
        console.print(f"[{style}]{escape(row['segment'])}: {escape(row['verdict'])}[/]")


def _to_second(moment: str | None) -> str:
    """Shorten an RFC 3339 time with microseconds to whole seconds for a table cell."""
    return f"{moment[:19]}Z" if moment else "-"


def _bounded(table: dict[Any, Counter[str]], key: Any) -> Counter[str]:
    counts = table.get(key)
    if counts is None:
        if len(table) >= _MAX_KEYS:
            key = _OTHER if isinstance(next(iter(table)), str) else (_OTHER, _OTHER)
        counts = table.setdefault(key, Counter())
    return counts


def _rebucket(buckets: dict[int, Counter[str]], size: int) -> dict[int, Counter[str]]:
    merged: dict[int, Counter[str]] = {}
    for moment, counts in buckets.items():
        merged.setdefault(moment - moment % size, Counter()).update(counts)
    return merged


def _outcomes(counts: Counter[str]) -> dict[str, int]:
    return {
        "requests": counts["allow"] + counts["deny"] + counts["monitor_deny"],
        "allowed": counts["allow"],
        "denied": counts["deny"],
        "monitor_denied": counts["monitor_deny"],
    }


def _bar(value: int, widest: int) -> str:
    if not value or not widest:
        return ""
    return _BAR * max(1, round(value / widest * _BAR_WIDTH))


def _sparkline(values: list[int]) -> str:
    highest = max(values, default=0)
    if not highest:
        return _SPARK[0] * len(values)
    return "".join(_SPARK[round(value / highest * (len(_SPARK) - 1))] for value in values)


def _iso(second: int) -> str:
    return dt.datetime.fromtimestamp(second, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _describe_size(seconds: int) -> str:
    if seconds % 86400 == 0:
        return f"{seconds // 86400} d"
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    return f"{seconds // 60} min"


# HTML


# The row of a monitor-mode segment without would-be denials, so its verdict still shows.
_NO_WOULD_DENY = {
    "reason": "-",
    "count": 0,
    "distinct_subjects": 0,
    "first_seen": None,
    "last_seen": None,
}
_COLORS = {"allowed": "#4c9a2a", "denied": "#c0392b", "monitor_denied": "#e67e22"}
_LABELS = {"allowed": "allowed", "denied": "denied", "monitor_denied": "denied in monitor mode"}


def render_html(measures: dict[str, Any], input_stats: dict[str, Any]) -> str:
    """
    Render the measures as a self-contained HTML page.

    The charts are inline SVG and the styles inline CSS, with no script and no external
    resource, so the page opens offline and under a strict Content-Security-Policy.
    """
    monitor = measures["monitor_mode"]
    decisions = measures["decisions"]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>zerotrust rollout report</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:70em}"
        "table{border-collapse:collapse;margin-bottom:1.5em}"
        "td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}"
        "td.n{text-align:right}</style></head><body>",
        "<h1>zerotrust rollout report</h1>",
        f"<p>{measures['access_events']} access events from "
        f"{len(input_stats['files']) - len(input_stats['unreadable'])} files: "
        f"{decisions.get('allow', 0)} allowed, {decisions.get('deny', 0)} denied, "
        f"{decisions.get('monitor_deny', 0)} denied in monitor mode. "
        f"Monitor mode: {monitor['share']:.1%} of traffic.</p>",
        "<h2>Decisions over time</h2>",
        _svg_timeline(measures["timeline"]),
        "<h2>Denials by reason</h2>",
        _svg_reasons(measures["denials_by_reason"]),
        "<h2>Denials per segment</h2>",
        _html_table(
            ("segment", "requests", "denied", "monitor denied"),
            [
                (row["segment"], row["requests"], row["denied"], row["monitor_denied"])
                for row in measures["segments"]
            ],
        ),
        "<h2>Monitor mode: would-be denials per segment</h2>",
        _html_table(
            ("segment", "verdict", "reason", "count", "subjects", "first seen", "last seen"),
            [
                (
                    row["segment"],
                    row["verdict"],
                    reason["reason"],
                    reason["count"],
                    reason["distinct_subjects"],
                    reason["first_seen"] or "-",
                    reason["last_seen"] or "-",
                )
                for row in monitor["segments"]
                for reason in row["reasons"] or [_NO_WOULD_DENY]
            ],
        ),
        "<h2>Cross-segment attempts per principal</h2>",
        _html_table(
            ("subject", "segments never allowed", "blocked", "monitor only"),
            [
                (row["subject"], ", ".join(row["segments"]), row["blocked"], row["monitor_only"])
                for row in measures["cross_segment_attempts"]
            ],
        ),
        "<h2>Time to detect per detector</h2>",
        _html_table(
            ("detector", "anomalies", "mean time to detect", "max time to detect"),
            [
                (
                    row["detector"],
                    row["anomalies"],
                    format_duration(row["mean_time_to_detect_ms"]),
                    format_duration(row["max_time_to_detect_ms"]),
                )
                for row in measures["detectors"]
            ],
        ),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _html_table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> str:
    if not rows:
        return "<p>None.</p>"
    lines = ["<table><tr>" + "".join(f"<th>{html.escape(name)}</th>" for name in header) + "</tr>"]
    for row in rows:
        cells = "".join(
            f'<td class="n">{value}</td>'
            if isinstance(value, int)
            else f"<td>{html.escape(str(value))}</td>"
            for value in row
        )
        lines.append(f"<tr>{cells}</tr>")
    lines.append("</table>")
    return "\n".join(lines)


def _svg_timeline(timeline: dict[str, Any]) -> str:
    """Render stacked bars of allowed, denied and monitor-denied requests per time bucket."""
    buckets = timeline["buckets"]
    if not buckets:
        return "<p>No events.</p>"
    width, height, left, bottom = 900, 260, 50, 40
    plot_width, plot_height = width - left - 10, height - bottom - 10
    highest = max(row["requests"] for row in buckets) or 1
    slot = plot_width / len(buckets)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 20}" '
        f'role="img" aria-label="Decisions per {_describe_size(timeline["bucket_seconds"])}">',
        f'<text x="{left}" y="{height - 10}" font-size="11">'
        f"{html.escape(buckets[0]['start'])}</text>",
        f'<text x="{width - 10}" y="{height - 10}" font-size="11" text-anchor="end">'
        f"{html.escape(buckets[-1]['start'])}</text>",
        f'<text x="{left - 5}" y="20" font-size="11" text-anchor="end">{highest}</text>',
        f'<text x="{left - 5}" y="{10 + plot_height}" font-size="11" text-anchor="end">0</text>',
    ]
    for index, row in enumerate(buckets):
        y = 10 + plot_height
        for key in ("allowed", "denied", "monitor_denied"):
            bar = row[key] / highest * plot_height
            if bar <= 0:
                continue
            y -= bar
            parts.append(
                f'<rect x="{left + index * slot:.1f}" y="{y:.1f}" width="{max(slot - 1, 1):.1f}" '
                f'height="{bar:.1f}" fill="{_COLORS[key]}"><title>{html.escape(row["start"])}: '
                f"{row[key]} {_LABELS[key]}</title></rect>"
            )
    for index, key in enumerate(_COLORS):
        x = left + index * 200
        parts.append(
            f'<rect x="{x}" y="{height + 2}" width="12" height="12" fill="{_COLORS[key]}"/>'
            f'<text x="{x + 16}" y="{height + 12}" font-size="12">{_LABELS[key]}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _svg_reasons(reasons: dict[str, int], limit: int = 20) -> str:
    """Render horizontal bars of the most frequent denial reasons."""
    if not reasons:
        return "<p>No denials.</p>"
    rows = list(reasons.items())[:limit]
    label_width, bar_width, row_height = 260, 560, 22
    highest = max(count for _, count in rows)
    height = row_height * len(rows) + 10
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_width + bar_width + 80}" '
        f'height="{height}" role="img" aria-label="Denials by reason">'
    ]
    for index, (reason, count) in enumerate(rows):
        y = 5 + index * row_height
        length = max(count / highest * bar_width, 1)
        parts.append(
            f'<text x="{label_width - 8}" y="{y + 15}" font-size="12" text-anchor="end">'
            f"{html.escape(reason[:40])}</text>"
            f'<rect x="{label_width}" y="{y + 3}" width="{length:.1f}" height="{row_height - 6}" '
            f'fill="{_COLORS["denied"]}"><title>{html.escape(reason)}: {count}</title></rect>'
            f'<text x="{label_width + length + 6:.1f}" y="{y + 15}" font-size="12">{count}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)
