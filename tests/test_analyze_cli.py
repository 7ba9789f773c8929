# SPDX-License-Identifier: Apache-2.0
from __future__ import annotations

import datetime as dt
import json
import re
import uuid
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from zerotrust import Segment, ZeroTrustMiddleware
from zerotrust.cli import main
from zerotrust.events import EventEmitter, JsonLinesSink
from zerotrust.events.sql import POSTGRES_MONITORING_QUERY
from zerotrust.exceptions import InsecureConfigurationWarning
from zerotrust.monitor import cli_analyze, cli_report, offline
from zerotrust.verifiers.base import Principal, Verdict, Verifier

# The client of httpx.ASGITransport is 127.0.0.1, so it may set X-Forwarded-For.
TRUSTED_PROXIES = ["127.0.0.1"]


class HeaderIdentity(Verifier):
    """Authenticate the subject named in X-Test-User, with the country from X-Test-Country."""

    name = "header_identity"
    kind = "identity"

    async def verify(self, request: Any, context: Any) -> Verdict:
        user = request.headers.get("x-test-user")
        if not user:
            return Verdict.failed("token_missing")
        roles = frozenset(filter(None, request.headers.get("x-test-roles", "").split(",")))
        country = request.headers.get("x-test-country")
        facts = {"country": country} if country else {}
        return Verdict.passed(principal=Principal(user, roles=roles), **facts)


async def ok_app(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def write_middleware_events(path: Path) -> None:
    """Send scripted requests through the middleware, writing the events to ``path``."""
    identity = HeaderIdentity()
    policy = [
        Segment("api", paths=["/api/*"], verifiers=[identity], roles=["user"]),
        Segment("admin", paths=["/admin/*"], verifiers=[identity], roles=["admin"]),
    ]
    with pytest.warns(InsecureConfigurationWarning, match="monitor mode"):
        policy.append(
            Segment(
                "reports",
                paths=["/reports/*"],
                verifiers=[identity],
                roles=["admin"],
                mode="monitor",
            )
        )
    emitter = EventEmitter([JsonLinesSink(path)])
    app = ZeroTrustMiddleware(
        ok_app, policy=policy, trusted_proxies=TRUSTED_PROXIES, events=emitter
    )
    transport = httpx.ASGITransport(app=app)

    async with httpx.AsyncClient(transport=transport, base_url="http://app.test") as client:

        async def call(path: str, user: str | None, roles: str, ip: str, country: str) -> None:
            headers = {"x-forwarded-for": ip, "x-test-roles": roles, "x-test-country": country}
            if user is not None:
                headers["x-test-user"] = user
            await client.get(path, headers=headers)

        for _ in range(3):
            await call("/api/items", "alice", "user", "198.51.100.1", "DE")
        for _ in range(2):
            await call("/admin/users", "alice", "user", "198.51.100.1", "DE")
        # A burst of 15 denials for one subject from three addresses in three countries.
        for index in range(15):
            ip, country = [("203.0.113.1", "DE"), ("203.0.113.2", "FR"), ("203.0.113.3", "BR")][
                index % 3
            ]
            await call("/admin/users", "mallory", "user", ip, country)
        for _ in range(4):
            await call("/reports/daily", "bob", "user", "198.51.100.9", "DE")
        await call("/api/items", None, "", "192.0.2.50", "US")

    emitter.close()


@pytest.fixture(name="events_file")
async def fixture_events_file(tmp_path: Path) -> Path:
    path = tmp_path / "events.jsonl"
    await write_middleware_events(path)
    with path.open("a", encoding="utf-8") as handle:
        handle.write('{"event": "grant_issued", "timestamp": "2026-12-04T20:00:00Z"}\n')
        handle.write("not json at all\n")
        handle.write("[1, 2, 3]\n")
        handle.write('{"event": "access", "timestamp": "yesterday"}\n')
        handle.write("\n")
    return path


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def access_event(moment: dt.datetime, **fields: Any) -> dict[str, Any]:
    event = {
        "event": "access",
        "timestamp": moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "event_id": str(uuid.uuid4()),
        "decision": "allow",
        "action": "allow",
        "mode": "enforce",
        "reasons": [],
        "segment": "api",
        "subject": "alice",
        "client_ip": "198.51.100.1",
    }
    event.update(fields)
    return event


def write_lines(path: Path, events: list[Any]) -> Path:
    path.write_text("".join(json.dumps(event) + "\n" for event in events), encoding="utf-8")
    return path


class SvgCounter(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)


# analyze


async def test_analyze_finds_denied_burst(
    events_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = run_cli(capsys, "analyze", str(events_file))

    assert 0 == status
    assert "denied_burst: 1 anomalies" in out
    assert "mallory" in out
    assert "Summary" in out
    assert "Read 25 access events from 1 file" in out
    assert "skipped 1 other events" in out
    assert "skipped 3 unparsable lines" in out


async def test_analyze_json_output(events_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_cli(capsys, "analyze", str(events_file), "--json")
    document = json.loads(out)
    bursts = [a for a in document["anomalies"] if a["detector"] == "denied_burst"]

    assert 0 == status
    assert 25 == document["input"]["access_events"]
    assert 3 == document["input"]["unparsable_lines"]
    assert 1 == document["input"]["other_events"]
    assert ["mallory"] == [anomaly["subject"] for anomaly in bursts]
    assert 11 == bursts[0]["count"]
    assert bursts[0]["time_to_detect_ms"] >= 0
    summary = {row["detector"]: row for row in document["summary"]}
    assert 1 == summary["denied_burst"]["anomalies"]
    assert summary["denied_burst"]["mean_time_to_detect_ms"] is not None


async def test_analyze_preset_denied_burst(
    events_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = run_cli(
        capsys, "analyze", str(events_file), "--preset", "denied-burst", "--json"
    )
    rows = json.loads(out)

    assert 0 == status
    assert [
        {"user_id": "mallory", "denied_attempts": 15, "distinct_ips": 3, "distinct_regions": 3}
    ] == rows


async def test_analyze_preset_table(events_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_cli(capsys, "analyze", str(events_file), "--preset", "denied-burst")

    assert 0 == status
    assert "1 rows" in out
    assert "mallory" in out
    assert "alice" not in out


async def test_analyze_postgres_query_unchanged(
    events_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The middleware wrote the events just now, so the last hour by the wall clock holds them.
    status, out, _ = run_cli(
        capsys, "analyze", str(events_file), "--sql", POSTGRES_MONITORING_QUERY, "--json"
    )

    assert 0 == status
    assert ["mallory"] == [row["user_id"] for row in json.loads(out)]


async def test_analyze_sql_events_view(
    events_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    query = (
        "SELECT segment, count(*) AS n, count(*) FILTER (WHERE facts->>'country' = 'BR') AS br"
        " FROM events GROUP BY segment ORDER BY segment NULLS FIRST"
    )
    status, out, _ = run_cli(capsys, "analyze", str(events_file), "--sql", query, "--json")

    assert 0 == status
    assert [
        {"segment": "admin", "n": 17, "br": 5},
        {"segment": "api", "n": 4, "br": 0},
        {"segment": "reports", "n": 4, "br": 0},
    ] == json.loads(out)


def test_analyze_sql_invalid_query(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_lines(tmp_path / "e.jsonl", [access_event(dt.datetime.now(dt.UTC))])
    status, _, err = run_cli(capsys, "analyze", str(path), "--sql", "SELEC 1")

    assert 2 == status
    assert "invalid SQL query" in err


def test_analyze_sql_unknown_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_lines(tmp_path / "e.jsonl", [access_event(dt.datetime.now(dt.UTC))])
    status, _, err = run_cli(capsys, "analyze", str(path), "--sql", "SELECT * FROM nowhere")

    assert 2 == status
    assert "'events' and 'access_logs'" in err


def test_analyze_sql_missing_duckdb(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_lines(tmp_path / "e.jsonl", [access_event(dt.datetime.now(dt.UTC))])
    monkeypatch.setitem(__import__("sys").modules, "duckdb", None)
    status, _, err = run_cli(capsys, "analyze", str(path), "--preset", "denied-burst")

    assert 1 == status
    assert "pip install 'zerotrust-middleware[analytics]'" in err


def test_analyze_sql_and_preset_exclusive(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_lines(tmp_path / "e.jsonl", [])
    status, _, err = run_cli(
        capsys, "analyze", str(path), "--sql", "SELECT 1", "--preset", "denied-burst"
    )

    assert 2 == status
    assert "not allowed with argument" in err


def test_analyze_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run_cli(capsys, "analyze", str(tmp_path / "absent.jsonl"))

    assert 1 == status
    assert "cannot read" in err
    assert "absent.jsonl" in err


def test_analyze_directory_as_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run_cli(capsys, "analyze", str(tmp_path))

    assert 1 == status
    assert "cannot read" in err


def test_analyze_some_files_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_lines(tmp_path / "e.jsonl", [access_event(dt.datetime.now(dt.UTC))])
    status, out, err = run_cli(capsys, "analyze", str(path), str(tmp_path / "absent.jsonl"))

    assert 0 == status
    assert "absent.jsonl" in err
    assert "No anomalies found." in out


def test_analyze_sql_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run_cli(capsys, "analyze", str(tmp_path / "absent.jsonl"), "--sql", "SELECT 1")

    assert 1 == status
    assert "cannot read" in err


def test_analyze_no_files_usage(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run_cli(capsys, "analyze")

    assert 2 == status
    assert "EVENTS.jsonl" in err


def test_analyze_invalid_since(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_lines(tmp_path / "e.jsonl", [])
    status, _, err = run_cli(capsys, "analyze", str(path), "--since", "yesterday")

    assert 2 == status
    assert "'yesterday'" in err


def test_analyze_invalid_limit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_lines(tmp_path / "e.jsonl", [])
    status, _, err = run_cli(capsys, "analyze", str(path), "--limit", "0")

    assert 2 == status
    assert "positive integer" in err


def test_analyze_since_skips_old_events(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    start = dt.datetime(2026, 12, 4, 10, 0, tzinfo=dt.UTC)
    events = [
        access_event(start + dt.timedelta(seconds=i), decision="deny", action="deny", reasons=["x"])
        for i in range(12)
    ]
    path = write_lines(tmp_path / "e.jsonl", events)
    status, out, _ = run_cli(
        capsys, "analyze", str(path), "--since", "2026-12-04T10:00:05Z", "--json"
    )
    document = json.loads(out)

    assert 0 == status
    assert 7 == document["input"]["access_events"]
    assert 5 == document["input"]["before_since"]
    assert [] == [a for a in document["anomalies"] if a["detector"] == "denied_burst"]


def test_analyze_sql_since(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    start = dt.datetime(2026, 12, 4, 10, 0, tzinfo=dt.UTC)
    events = [access_event(start + dt.timedelta(minutes=i)) for i in range(10)]
    path = write_lines(tmp_path / "e.jsonl", events)
    query = "SELECT count(*) AS n FROM events"
    status, out, _ = run_cli(
        capsys, "analyze", str(path), "--since", "2026-12-04T10:04:00Z", "--sql", query, "--json"
    )

    assert 0 == status
    assert [{"n": 6}] == json.loads(out)


def test_analyze_markup_in_values(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    start = dt.datetime(2026, 12, 4, 10, 0, tzinfo=dt.UTC)
    events = [
        access_event(
            start + dt.timedelta(seconds=i),
            decision="deny",
            action="deny",
            reasons=["x"],
            subject="[bold]eve[/]",
        )
        for i in range(11)
    ]
    path = write_lines(tmp_path / "e.jsonl", events)
    status, out, _ = run_cli(capsys, "analyze", str(path))

    assert 0 == status
    assert "[bold]eve[/]" in out


def test_analyze_stub_detectors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str] = []

    def stub(events: Any) -> list[dict[str, Any]]:
        seen.extend(event["timestamp"] for event in events)
        return [
            {
                "event": "anomaly",
                "timestamp": "2026-12-04T10:02:00Z",
                "detector": "stub",
                "subject": "alice",
                "client_ip": "198.51.100.1",
                "count": 3,
                "first_seen": "2026-12-04T10:00:00Z",
                "last_seen": "2026-12-04T10:02:00Z",
            }
        ]

    monkeypatch.setattr(offline, "detect_anomalies", stub)
    start = dt.datetime(2026, 12, 4, 10, 0, tzinfo=dt.UTC)
    # Written out of order: the replay must see them sorted by time.
    events = [access_event(start + dt.timedelta(seconds=s)) for s in (30, 10, 20)]
    path = write_lines(tmp_path / "e.jsonl", events)
    status, out, _ = run_cli(capsys, "analyze", str(path))

    assert 0 == status
    assert sorted(seen) == seen
    assert "2.0 min" in out
    assert "stub: 1 anomalies" in out


# offline loading


def test_read_merges_files_in_order(tmp_path: Path) -> None:
    start = dt.datetime(2026, 12, 4, 10, 0, tzinfo=dt.UTC)
    first = write_lines(
        tmp_path / "a.jsonl", [access_event(start + dt.timedelta(seconds=s)) for s in (0, 2, 4)]
    )
    second = write_lines(
        tmp_path / "b.jsonl", [access_event(start + dt.timedelta(seconds=s)) for s in (3, 1, 5)]
    )
    stats = offline.LoadStats()
    times = [offline.event_time(e) for e in offline.read_access_events([first, second], stats)]

    assert sorted(times) == times
    assert 6 == stats.access_events
    assert 0 == stats.out_of_order


def test_read_counts_late_events(tmp_path: Path) -> None:
    start = dt.datetime(2026, 12, 4, 10, 0, tzinfo=dt.UTC)
    path = write_lines(
        tmp_path / "a.jsonl", [access_event(start + dt.timedelta(seconds=s)) for s in (5, 6, 7, 1)]
    )
    stats = offline.LoadStats()
    events = list(offline.read_access_events([path], stats, reorder_window=2))

    assert 4 == len(events)
    assert 1 == stats.out_of_order


def test_parse_since_duration() -> None:
    now = dt.datetime(2026, 12, 4, 12, 0, tzinfo=dt.UTC)

    assert dt.datetime(2026, 12, 4, 10, 0, tzinfo=dt.UTC) == offline.parse_since("2h", now)
    assert dt.datetime(2026, 12, 4, 11, 30, tzinfo=dt.UTC) == offline.parse_since("30m", now)
    assert dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC) == offline.parse_since("7d", now)


def test_parse_since_naive_time_is_utc() -> None:
    assert dt.UTC == offline.parse_since("2026-12-04T10:00:00").tzinfo


def test_format_duration_units() -> None:
    assert "850 ms" == cli_analyze.format_duration(850)
    assert "12.5 s" == cli_analyze.format_duration(12_500)
    assert "3.0 min" == cli_analyze.format_duration(180_000)
    assert "1.5 h" == cli_analyze.format_duration(5_400_000)
    assert "-" == cli_analyze.format_duration(None)


# report


async def test_report_tables(events_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_cli(capsys, "report", str(events_file))

    assert 0 == status
    assert "Denials per segment" in out
    assert "Cross-segment attempts per principal" in out
    assert "Time to detect per detector" in out
    assert "Decisions over time" in out
    assert "Monitor mode: 16.0% of traffic" in out
    assert "█" in out


async def test_report_json(events_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_cli(capsys, "report", str(events_file), "--json")
    document = json.loads(out)
    segments = {row["segment"]: row for row in document["segments"]}
    cross = {row["subject"]: row for row in document["cross_segment_attempts"]}

    assert 0 == status
    assert 25 == document["access_events"]
    assert {"requests": 17, "allowed": 0, "denied": 17, "monitor_denied": 0} == {
        key: segments["admin"][key] for key in ("requests", "allowed", "denied", "monitor_denied")
    }
    assert 4 == segments["reports"]["monitor_denied"]
    assert 4 == document["monitor_mode"]["events"]
    assert 4 == document["monitor_mode"]["would_deny"]
    assert {"subject": "mallory", "segments": ["admin"], "blocked": 15, "monitor_only": 0} == cross[
        "mallory"
    ]
    assert {"subject": "alice", "segments": ["admin"], "blocked": 2, "monitor_only": 0} == cross[
        "alice"
    ]
    assert {"subject": "bob", "segments": ["reports"], "blocked": 0, "monitor_only": 4} == cross[
        "bob"
    ]
    # 15 + 2 in enforce mode and 4 in monitor mode.
    assert 21 == document["denials_by_reason"]["insufficient_role"]
    assert ["denied_burst"] == [
        r["detector"] for r in document["detectors"] if r["detector"] == "denied_burst"
    ]
    assert 25 == sum(bucket["requests"] for bucket in document["timeline"]["buckets"])


async def test_report_html(
    events_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "report.html"
    status, out, _ = run_cli(capsys, "report", str(events_file), "--html", str(target))
    page = target.read_text(encoding="utf-8")
    parser = SvgCounter()
    parser.feed(page)

    assert 0 == status
    assert "Wrote the HTML report" in out
    assert page.startswith("<!DOCTYPE html>")
    assert 2 == parser.tags.count("svg")
    for svg in re.findall(r"<svg.*?</svg>", page, re.DOTALL):
        assert "{http://www.w3.org/2000/svg}svg" == ET.fromstring(svg).tag  # noqa: S314
    assert "insufficient_role" in page
    assert "<script" not in page
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")


def test_report_html_escapes_values(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    start = dt.datetime(2026, 12, 4, 10, 0, tzinfo=dt.UTC)
    hostile = "<script>alert(1)</script>"
    events = [
        access_event(start, decision="deny", action="deny", reasons=[hostile], segment=hostile)
    ]
    path = write_lines(tmp_path / "e.jsonl", events)
    target = tmp_path / "report.html"
    status, _, _ = run_cli(capsys, "report", str(path), "--html", str(target), "--json")

    assert 0 == status
    assert "<script>" not in target.read_text(encoding="utf-8")


def test_report_html_unwritable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_lines(tmp_path / "e.jsonl", [access_event(dt.datetime.now(dt.UTC))])
    status, _, err = run_cli(capsys, "report", str(path), "--html", str(tmp_path / "no" / "r.html"))

    assert 1 == status
    assert "cannot write" in err


def test_report_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run_cli(capsys, "report", str(tmp_path / "absent.jsonl"))

    assert 1 == status
    assert "cannot read" in err


def test_report_invalid_since(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_lines(tmp_path / "e.jsonl", [])
    status, _, _ = run_cli(capsys, "report", str(path), "--since", "soon")

    assert 2 == status


def test_report_empty_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_lines(tmp_path / "e.jsonl", [])
    status, out, _ = run_cli(capsys, "report", str(path))

    assert 0 == status
    assert "0 access events" in out


def test_report_timeline_coarsens(tmp_path: Path) -> None:
    report = cli_report.RolloutReport()
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    for day in range(30):
        for hour in range(0, 24, 4):
            report.observe(access_event(start + dt.timedelta(days=day, hours=hour)))
    size, buckets = report.timeline()

    assert 86400 == size
    assert 30 == len(buckets)
    assert 180 == sum(sum(counts.values()) for _, counts in buckets)
    assert len(report.buckets) <= 2000


# demo events


@pytest.fixture(name="demo_events")
def fixture_demo_events(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    path = tmp_path / "demo.jsonl"
    assert 0 == main(["demo", "--quiet", "--events", str(path)])
    capsys.readouterr()
    return path


@pytest.mark.served
def test_demo_events_analyze_and_report(
    demo_events: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = run_cli(capsys, "analyze", str(demo_events), "--json")
    analyzed = json.loads(out)

    assert 0 == status
    assert 0 == analyzed["input"]["unparsable_lines"]
    assert analyzed["input"]["access_events"] > 0
    assert analyzed["input"]["other_events"] > 0

    target = tmp_path / "demo.html"
    status, out, _ = run_cli(capsys, "report", str(demo_events), "--html", str(target))

    assert 0 == status
    assert "Denials per segment" in out
    assert "<svg" in target.read_text(encoding="utf-8")

    status, out, _ = run_cli(
        capsys, "analyze", str(demo_events), "--preset", "denied-burst", "--json"
    )

    assert 0 == status
    assert isinstance(json.loads(out), list)


def test_analyze_counts_recorded_anomalies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Anomaly events a live monitor wrote into the file are counted next to the replay."""
    path = tmp_path / "events.jsonl"
    anomaly = {
        "event": "anomaly",
        "detector": "denied_burst",
        "timestamp": "2026-01-01T00:00:00.000000Z",
    }
    path.write_text(json.dumps(anomaly) + "\n")

    main(["analyze", str(path)])

    assert "1 of them anomaly events that a live monitor recorded" in capsys.readouterr().out
