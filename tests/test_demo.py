# SPDX-License-Identifier: Apache-2.0
from __future__ import annotations

import base64
import contextlib
import dataclasses
import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import zerotrust.events
from zerotrust.cli import EXIT_FAILURE, EXIT_OK, main
from zerotrust.demo import runner, script
from zerotrust.demo.client import _parse_response, send_raw_request
from zerotrust.demo.runner import DemoResult
from zerotrust.demo.script import Probe, build_script
from zerotrust.testing import TokenIssuer, serve

pytestmark = pytest.mark.served

# Every JWT starts with the base64url encoding of '{"', whatever its header holds.
JWT_PREFIX = "eyJ"


@dataclasses.dataclass
class DemoRun:
    status: int
    stdout: str
    stderr: str
    events_path: Path
    results: list[DemoResult]


def run_main(argv: list[str]) -> tuple[int, str, str]:
    """Run ``zerotrust`` in-process and return its exit status, output and error output."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        status = main(argv)
    return status, stdout.getvalue(), stderr.getvalue()


@contextlib.contextmanager
def recording_results(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[DemoResult]]:
    """Record every `DemoResult` that the demo command produces."""
    results: list[DemoResult] = []
    original = runner.run_demo

    def run_and_record(*args: Any, **kwargs: Any) -> DemoResult:
        result = original(*args, **kwargs)
        results.append(result)
        return result

    monkeypatch.setattr(runner, "run_demo", run_and_record)
    yield results


@pytest.fixture(name="demo_run", scope="module")
def fixture_demo_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoRun]:
    """One full run of ``zerotrust demo``, shared by the tests that only read its output."""
    events_path = tmp_path_factory.mktemp("demo") / "events.jsonl"
    with pytest.MonkeyPatch.context() as monkeypatch, recording_results(monkeypatch) as results:
        status, stdout, stderr = run_main(["demo", "--events", str(events_path)])
        yield DemoRun(status, stdout, stderr, events_path, results)


class TestDemoCommand:
    def test_exit_status(self, demo_run: DemoRun) -> None:
        """Every scripted request gets its expected outcome, so the demo exits with 0."""
        assert EXIT_OK == demo_run.status, demo_run.stdout + demo_run.stderr

    def test_every_request_matched(self, demo_run: DemoRun) -> None:
        """Each request's status, decision and reason code are the scripted ones."""
        (result,) = demo_run.results
        for number, outcome in enumerate(result.outcomes, start=1):
            probe = outcome.probe
            expected = (probe.expected_status, probe.expected_decision, probe.expected_reason)
            actual = (outcome.status, outcome.decision, outcome.reason)
            assert expected == actual, f"request {number}: {probe.method} {probe.target}"

    def test_events_file_lines(self, demo_run: DemoRun) -> None:
        """The events file has one JSON object with a decision per request."""
        lines = demo_run.events_path.read_text().splitlines()
        (result,) = demo_run.results

        assert len(result.outcomes) == len(lines)
        for line in lines:
            event = json.loads(line)
            assert isinstance(event, dict)
            assert event["decision"] in ("allow", "deny")

    def test_events_match_requests(self, demo_run: DemoRun) -> None:
        """Each request id the demo sent appears once in the events file."""
        events = [json.loads(line) for line in demo_run.events_path.read_text().splitlines()]
        request_ids = [event["request_id"] for event in events]

        assert len(request_ids) == len(set(request_ids))
        assert all(request_id.startswith("demo-") for request_id in request_ids)

    def test_no_token_in_events_file(self, demo_run: DemoRun) -> None:
        """No minted token or signature appears in the events file."""
        text = demo_run.events_path.read_text()
        (result,) = demo_run.results

        assert [] == [secret for secret in result.secrets if secret in text]
        assert JWT_PREFIX not in text

    def test_no_token_in_output(self, demo_run: DemoRun) -> None:
        """No minted token or signature appears in the printed output."""
        output = demo_run.stdout + demo_run.stderr
        (result,) = demo_run.results

        assert [] == [secret for secret in result.secrets if secret in output]
        assert JWT_PREFIX not in output

    def test_secrets_were_searched(self, demo_run: DemoRun) -> None:
        """The leak check searched for every distinct token the script sent."""
        (result,) = demo_run.results
        tokens = {outcome.probe.token for outcome in result.outcomes if outcome.probe.token}

        assert tokens <= set(result.secrets)

    def test_table_lists_reasons(self, demo_run: DemoRun) -> None:
        """The printed table shows every scripted reason code."""
        (result,) = demo_run.results
        for outcome in result.outcomes:
            if outcome.probe.expected_reason is not None:
                assert outcome.probe.expected_reason in demo_run.stdout

    def test_report(self, demo_run: DemoRun) -> None:
        """The report gives the totals, the events file, the event count and the checks."""
        output = demo_run.stdout

        assert "5 allow, 14 deny" in output
        assert "Denial reasons" in output
        assert str(demo_run.events_path) in output
        assert "19 events written for 19 requests" in output
        assert "no token in the events file" in output
        assert "no token in the printed output" in output
        assert output.rstrip().splitlines()[-1].startswith("PASS: 19 of 19 requests")

    def test_schema_check(self, demo_run: DemoRun) -> None:
        """The events validate against the access event schema, or the report gives the reason."""
        (result,) = demo_run.results

        assert "invalid" != result.schema_check.status, result.schema_check.detail
        assert f"schema {result.schema_check.status}" in demo_run.stdout


class TestDemoRuns:
    def test_console_script_quiet(self, tmp_path: Path) -> None:
        """The installed ``zerotrust`` script runs the demo and prints one line with --quiet."""
        script_path = Path(sys.executable).parent / "zerotrust"
        if not script_path.exists():
            pytest.skip(f"the console script is not installed at {script_path}")

        completed = subprocess.run(  # noqa: S603 -- runs this package's own console script
            [str(script_path), "demo", "--quiet", "--events", str(tmp_path / "events.jsonl")],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

        assert EXIT_OK == completed.returncode, completed.stdout + completed.stderr
        assert 1 == len(completed.stdout.splitlines())
        assert completed.stdout.startswith("PASS: ")
        assert JWT_PREFIX not in completed.stdout + completed.stderr

    def test_mismatch_exits_with_1(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """A request whose outcome differs from the script makes the demo exit with 1."""

        def wrong_script(issuer: TokenIssuer) -> list[Probe]:
            probes = build_script(issuer)
            probes[0] = dataclasses.replace(probes[0], expected_status=418)
            return probes

        monkeypatch.setattr(runner, "build_script", wrong_script)

        status, stdout, _ = run_main(["demo", "--events", str(tmp_path / "events.jsonl")])

        assert EXIT_FAILURE == status
        assert "✗" in stdout
        assert stdout.rstrip().splitlines()[-1].startswith("FAIL: 18 of 19 requests")

    def test_mismatch_quiet_names_request(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With --quiet, a request that did not go as scripted is printed with both outcomes."""

        def wrong_script(issuer: TokenIssuer) -> list[Probe]:
            probes = build_script(issuer)
            probes[5] = dataclasses.replace(probes[5], expected_reason="token_expired")
            return probes

        monkeypatch.setattr(runner, "build_script", wrong_script)

        status, stdout, _ = run_main(
            ["demo", "--quiet", "--events", str(tmp_path / "events.jsonl")]
        )

        assert EXIT_FAILURE == status
        assert (
            "request 6 GET /api/items: expected 401 token_expired, got 401 token_missing" in stdout
        )

    def test_token_in_output_detected(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A token printed in the table, even folded across lines, fails the run."""

        def leaking_script(issuer: TokenIssuer) -> list[Probe]:
            probes = build_script(issuer)
            token = probes[1].token
            assert token is not None
            probes[1] = dataclasses.replace(probes[1], description=f"token {token}")
            return probes

        monkeypatch.setattr(runner, "build_script", leaking_script)

        status, stdout, _ = run_main(["demo", "--events", str(tmp_path / "events.jsonl")])

        assert EXIT_FAILURE == status
        assert "token strings found in the output" in stdout
        assert "FAIL: 19 of 19 requests" in stdout

    def test_append_counts_own_events(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A second run appends to the events file and checks only the lines it wrote."""
        events_path = tmp_path / "events.jsonl"
        with recording_results(monkeypatch) as results:
            first, _, _ = run_main(["demo", "--quiet", "--events", str(events_path)])
            second, _, _ = run_main(["demo", "--quiet", "--events", str(events_path)])

        assert (EXIT_OK, EXIT_OK) == (first, second)
        assert 38 == len(events_path.read_text().splitlines())
        assert 19 == len(results[1].events)

    def test_schema_unavailable(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """When the schema cannot be loaded, validation is skipped with a visible message."""

        def missing_schema() -> dict[str, Any]:
            raise FileNotFoundError("access-event.schema.json")

        monkeypatch.setattr(zerotrust.events, "access_event_schema", missing_schema)

        status, stdout, _ = run_main(["demo", "--events", str(tmp_path / "events.jsonl")])

        assert EXIT_OK == status
        assert "schema skipped: the access event schema could not be loaded" in stdout


class TestScript:
    def test_reason_codes(self, issuer: TokenIssuer) -> None:
        """The script covers each denial the demo is meant to show."""
        reasons = {probe.expected_reason for probe in build_script(issuer)}

        assert {
            None,
            "token_missing",
            "token_expired",
            "invalid_audience",
            "algorithm_not_allowed",
            "invalid_signature",
            "unknown_kid",
            "insufficient_scope",
            "insufficient_role",
            "no_segment",
            "path_not_normalized",
            "encoded_slash",
        } == reasons

    def test_path_tricks(self, issuer: TokenIssuer) -> None:
        """The raw path tricks are in the script exactly as they go on the wire."""
        targets = {probe.target for probe in build_script(issuer)}

        assert {
            "/api/../admin/users",
            "//admin/users",
            "/api/%2e%2e/admin/users",
            "/api%2Fitems",
        } <= targets

    def test_alter_signature(self, issuer: TokenIssuer) -> None:
        """The altered token keeps header and claims but its signature bytes differ."""
        token = issuer.token(alg="RS256")
        altered = script._alter_signature(token)

        assert token.rsplit(".", 1)[0] == altered.rsplit(".", 1)[0]
        assert decode(token.rsplit(".", 1)[1]) != decode(altered.rsplit(".", 1)[1])

    def test_unsigned(self, issuer: TokenIssuer) -> None:
        """The unsigned token has an ``alg: none`` header and an empty signature."""
        header, _, signature = script._unsigned(issuer.token()).split(".")

        assert "none" == json.loads(decode(header))["alg"]
        assert "" == signature

    def test_add_admin_role(self, issuer: TokenIssuer) -> None:
        """The edited token claims the admin role and keeps the original signature."""
        token = issuer.token("reader", scopes=["api:read"])
        _, payload, signature = script._add_admin_role(token).split(".")

        assert ["admin"] == json.loads(decode(payload))["roles"]
        assert token.rsplit(".", 1)[1] == signature

    def test_expected_decision(self) -> None:
        """A probe without an expected reason expects an allow, any other a deny."""
        assert "allow" == Probe("GET", "/", "root", None, 200).expected_decision
        assert "deny" == Probe("GET", "/", "root", None, 403, "no_segment").expected_decision


class TestRawClient:
    async def test_target_sent_unchanged(self) -> None:
        """Dot segments, doubled slashes and percent-encoding reach the server as written."""
        seen: list[bytes] = []

        async def echo_raw_path(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                return
            seen.append(scope["raw_path"])
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})

        targets = ["/api/../admin", "//admin", "/api/%2e%2e/admin", "/api%2Fitems"]
        with serve(echo_raw_path, lifespan="off") as base_url:
            port = int(base_url.rsplit(":", 1)[1])
            statuses = [
                (await send_raw_request("127.0.0.1", port, "GET", target)).status
                for target in targets
            ]

        assert [204] * len(targets) == statuses
        assert [target.encode() for target in targets] == seen

    def test_parse_response(self) -> None:
        """A response is split into status, lower-case headers and body."""
        response = _parse_response(b"HTTP/1.1 403 Forbidden\r\nX-Request-ID: a1\r\n\r\n{}")

        assert 403 == response.status
        assert {"x-request-id": "a1"} == response.headers
        assert b"{}" == response.body

    @pytest.mark.parametrize("data", [b"", b"garbage\r\n\r\n", b"HTTP/1.1 abc\r\n\r\n"])
    def test_parse_rejects_non_http(self, data: bytes) -> None:
        """Anything that is not an HTTP/1.x status line raises ConnectionError."""
        with pytest.raises(ConnectionError, match=r"not an HTTP/1\.x response"):
            _parse_response(data)


def decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
