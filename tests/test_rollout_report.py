# SPDX-License-Identifier: Apache-2.0
"""The monitor-mode rollout view of ``zerotrust report``, on events the middleware wrote."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from zerotrust import Segment, ZeroTrustMiddleware
from zerotrust.cli import main
from zerotrust.events import EventEmitter, JsonLinesSink
from zerotrust.exceptions import InsecureConfigurationWarning
from zerotrust.monitor import rollout
from zerotrust.monitor.rollout import MonitorRollout
from zerotrust.testing import TokenIssuer
from zerotrust.verifiers import JWTVerifier


async def ok_app(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def write_monitor_events(path: Path, issuer: TokenIssuer) -> None:
    """
    Send requests with real signed tokens through a policy with two monitor-mode segments and
    one enforcing segment, writing the access events to ``path``.
    """
    identity = JWTVerifier(
        issuer=issuer.issuer, audience="api", algorithms=["RS256"], keys=issuer.jwks()
    )
    with pytest.warns(InsecureConfigurationWarning, match="monitor mode"):
        reports = Segment(
            "reports", paths=["/reports/"], verifiers=[identity], roles=["admin"], mode="monitor"
        )
    with pytest.warns(InsecureConfigurationWarning, match="monitor mode"):
        beta = Segment(
            "beta",
            paths=["/beta/"],
            verifiers=[identity],
            scopes={"GET": ["beta:read"]},
            mode="monitor",
        )
    api = Segment("api", paths=["/api/"], verifiers=[identity], scopes={"GET": ["api:read"]})
    emitter = EventEmitter([JsonLinesSink(path)])
    app = ZeroTrustMiddleware(ok_app, policy=[reports, beta, api], events=emitter)

    def bearer(subject: str, **claims: Any) -> dict[str, str]:
        return {"authorization": f"Bearer {issuer.token(subject, alg='RS256', **claims)}"}

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app.test") as client:
        for _ in range(3):
            assert 200 == (await client.get("/reports/daily", headers=bearer("bob"))).status_code
        await client.get("/reports/daily", headers=bearer("carol"))
        for _ in range(2):
            await client.get("/reports/daily", headers=bearer("alice", roles=["admin"]))
        for _ in range(2):
            assert 200 == (await client.get("/reports/daily")).status_code
        for _ in range(3):
            await client.get("/beta/feature", headers=bearer("alice", scopes=["beta:read"]))
        # Enforced denials are not would-be denials.
        assert 403 == (await client.get("/api/items", headers=bearer("bob"))).status_code

    emitter.close()


@pytest.fixture(name="events_file")
async def fixture_events_file(tmp_path: Path, issuer: TokenIssuer) -> Path:
    path = tmp_path / "events.jsonl"
    await write_monitor_events(path, issuer)
    return path


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def parse_time(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value)


async def test_json_segments_and_verdicts(
    events_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = run_cli(capsys, "report", str(events_file), "--json")
    segments = {row["segment"]: row for row in json.loads(out)["monitor_mode"]["segments"]}

    assert 0 == status
    assert ["beta", "reports"] == sorted(segments)
    reports = segments["reports"]
    assert 8 == reports["requests"]
    assert 6 == reports["would_deny"]
    assert reports["safe_to_enforce"] is False
    assert "would deny 6 of 8" == reports["verdict"]
    beta = segments["beta"]
    assert 0 == beta["would_deny"]
    assert beta["safe_to_enforce"] is True
    assert "safe to enforce: no would-be denials in 3 requests" == beta["verdict"]
    assert [] == beta["reasons"]
    assert beta["first_seen"] is None


async def test_json_reasons_with_subjects(
    events_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, out, _ = run_cli(capsys, "report", str(events_file), "--json")
    segments = {row["segment"]: row for row in json.loads(out)["monitor_mode"]["segments"]}
    reasons = {row["reason"]: row for row in segments["reports"]["reasons"]}

    assert ["insufficient_role", "token_missing"] == list(reasons)
    role = reasons["insufficient_role"]
    assert 4 == role["count"]
    assert 2 == role["distinct_subjects"]
    assert role["distinct_subjects_exact"] is True
    assert 0 == role["without_subject"]
    missing = reasons["token_missing"]
    assert 2 == missing["count"]
    assert 0 == missing["distinct_subjects"]
    assert 2 == missing["without_subject"]


async def test_json_first_and_last_seen(
    events_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, out, _ = run_cli(capsys, "report", str(events_file), "--json")
    reports = json.loads(out)["monitor_mode"]["segments"][0]
    role, missing = reports["reasons"]

    assert "reports" == reports["segment"]
    assert parse_time(role["first_seen"]) <= parse_time(role["last_seen"])
    # The role denials came first in the script, the missing tokens last.
    assert parse_time(role["last_seen"]) <= parse_time(missing["first_seen"])
    assert reports["first_seen"] == role["first_seen"]
    assert reports["last_seen"] == missing["last_seen"]


async def test_tables_show_verdicts(events_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_cli(capsys, "report", str(events_file))

    assert 0 == status
    assert "Monitor mode: would-be denials per segment" in out
    assert "insufficient_role" in out
    assert "reports: would deny 6 of 8" in out
    assert "beta: safe to enforce: no would-be denials in 3 requests" in out


async def test_html_lists_would_be_denials(
    events_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "report.html"
    status, _, _ = run_cli(capsys, "report", str(events_file), "--html", str(target))
    page = target.read_text(encoding="utf-8")

    assert 0 == status
    assert "Monitor mode: would-be denials per segment" in page
    assert "would deny 6 of 8" in page
    assert "safe to enforce: no would-be denials in 3 requests" in page


def test_no_monitor_segment(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "events.jsonl"
    event = {
        "event": "access",
        "timestamp": "2026-12-04T20:00:00.000000Z",
        "decision": "deny",
        "action": "deny",
        "mode": "enforce",
        "reasons": ["no_segment"],
        "segment": None,
    }
    path.write_text(json.dumps(event) + "\n", encoding="utf-8")

    status, out, _ = run_cli(capsys, "report", str(path))

    assert 0 == status
    assert "No segment in monitor mode." in out


def monitor_denial(subject: str | None, reason: str = "insufficient_role") -> dict[str, Any]:
    return {
        "event": "access",
        "timestamp": "2026-12-04T20:00:00.000000Z",
        "decision": "deny",
        "action": "allow",
        "mode": "monitor",
        "reasons": [reason],
        "segment": "reports",
        "subject": subject,
    }


def test_subject_budget_marks_lower_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rollout, "_MAX_TRACKED_SUBJECTS", 2)
    counters = MonitorRollout()
    for subject in ("alice", "bob", "carol", "alice"):
        counters.observe(monitor_denial(subject))

    (row,) = counters.as_list()[0]["reasons"]

    assert 4 == row["count"]
    assert 2 == row["distinct_subjects"]
    assert row["distinct_subjects_exact"] is False


def test_reason_budget_folds_into_other(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rollout, "_MAX_REASONS", 2)
    counters = MonitorRollout()
    for reason in ("first", "second", "third", "fourth"):
        counters.observe(monitor_denial("alice", reason))

    reasons = {row["reason"]: row["count"] for row in counters.as_list()[0]["reasons"]}

    assert {"first": 1, "second": 1, "(other)": 2} == reasons


def test_repeated_reason_counted_once() -> None:
    counters = MonitorRollout()
    event = monitor_denial("alice")
    event["reasons"] = ["insufficient_role", "insufficient_role", "insufficient_scope"]
    counters.observe(event)

    (segment,) = counters.as_list()

    assert 1 == segment["would_deny"]
    assert [1, 1] == [row["count"] for row in segment["reasons"]]
