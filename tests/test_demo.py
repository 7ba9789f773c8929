# SPDX-License-Identifier: Apache-2.0
from __future__ import annotations

import base64
import contextlib
import dataclasses
import importlib.util
import io
import ipaddress
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
from zerotrust.demo.app import WORKSPACE_COUNTRIES, DemoClock
from zerotrust.demo.client import _parse_response, send_raw_request
from zerotrust.demo.runner import DemoResult
from zerotrust.demo.script import (
    AFTER_HOURS,
    ALLOWED_ADDRESS,
    FOREIGN_ADDRESS,
    IN_OFFICE_HOURS,
    Probe,
    build_script,
)
from zerotrust.geo import GeoIP2FastBackend
from zerotrust.testing import TokenIssuer, serve

pytestmark = pytest.mark.served

# Every JWT starts with the base64url encoding of '{"', whatever its header holds.
JWT_PREFIX = "eyJ"
SCRIPTED_REQUESTS = 27
# The demo aims at under 5 s; the bound leaves room for a busy test machine.
MAX_WALL_SECONDS = 10.0


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


@pytest.fixture(name="device_agent", scope="module")
def fixture_device_agent() -> TokenIssuer:
    """A device agent that signs posture assertions with ES256."""
    return TokenIssuer(issuer="https://device-agent.test", algorithms=("ES256",))


def outcome_for(result: DemoResult, reason: str) -> runner.Outcome:
    """Return the outcome of the scripted request that expects ``reason``."""
    (outcome,) = [outcome for outcome in result.outcomes if outcome.probe.expected_reason == reason]
    return outcome


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

    def test_device_assertions_searched(self, demo_run: DemoRun) -> None:
        """The leak check searched for every device assertion the script sent."""
        (result,) = demo_run.results
        assertions = {
            outcome.probe.device_assertion
            for outcome in result.outcomes
            if outcome.probe.device_assertion is not None
        }

        assert 4 == len(assertions)
        assert assertions <= set(result.secrets)

    def test_table_lists_reasons(self, demo_run: DemoRun) -> None:
        """The printed table shows every scripted reason code."""
        (result,) = demo_run.results
        for outcome in result.outcomes:
            if outcome.probe.expected_reason is not None:
                assert outcome.probe.expected_reason in demo_run.stdout

    def test_report(self, demo_run: DemoRun) -> None:
        """The report gives the totals, the events file, the event count and the checks."""
        output = demo_run.stdout

        assert "6 allow, 21 deny" in output
        assert "Denial reasons" in output
        assert str(demo_run.events_path) in output
        assert "27 events written for 27 requests" in output
        assert "no token in the events file" in output
        assert "no token in the printed output" in output
        assert output.rstrip().splitlines()[-1].startswith("PASS: 27 of 27 requests")

    def test_wall_time(self, demo_run: DemoRun) -> None:
        """The report gives the run's wall time and the time spent loading the geo data."""
        (result,) = demo_run.results

        assert 0 < result.wall_seconds < MAX_WALL_SECONDS
        assert f"Wall time: {result.wall_seconds:.2f} s, including" in demo_run.stdout

    def test_geo_data_loaded_at_start(self, demo_run: DemoRun) -> None:
        """The app loads the geo data at start-up, before the first request."""
        (result,) = demo_run.results

        assert result.geo_load_seconds is not None
        assert f"{result.geo_load_seconds:.2f} s to load the geo data" in demo_run.stdout

    def test_geo_denial_facts(self, demo_run: DemoRun) -> None:
        """The event of the foreign client records its address and country."""
        (result,) = demo_run.results
        event = outcome_for(result, "country_not_allowed").event
        assert event is not None

        assert FOREIGN_ADDRESS == event["client_ip"]
        assert "US" == event["facts"]["country"]

    def test_forwarded_client_from_loopback_proxy(self, demo_run: DemoRun) -> None:
        """Requests with X-Forwarded-For record the forwarded client and the loopback peer."""
        (result,) = demo_run.results
        for outcome in result.outcomes:
            if outcome.probe.forwarded_for is None:
                continue
            assert outcome.event is not None
            assert outcome.probe.forwarded_for == outcome.event["client_ip"]
            assert "127.0.0.1" == outcome.event["peer_ip"]

    def test_workspace_allowed_facts(self, demo_run: DemoRun) -> None:
        """The allowed workspace request records the device, country and office-hours window."""
        (result,) = demo_run.results
        (outcome,) = [
            outcome
            for outcome in result.outcomes
            if outcome.probe.target.startswith("/workspace/") and outcome.status == 200
        ]

        assert {
            "device_id": "mac-0042",
            "device_managed": True,
            "country": "DE",
            "time_window": "mon-fri 08:00-18:00",
            "local_time": "2024-06-12T10:30:00+02:00",
        }.items() <= outcome.facts.items()

    def test_clock_set_per_request(self, demo_run: DemoRun) -> None:
        """The office-hours check judged the instant the script set, not the current time."""
        (result,) = demo_run.results
        outcome = outcome_for(result, "outside_time_window")

        assert AFTER_HOURS.isoformat() == outcome.facts["local_time"]

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

        def wrong_script(issuer: TokenIssuer, device_agent: TokenIssuer) -> list[Probe]:
            probes = build_script(issuer, device_agent)
            probes[0] = dataclasses.replace(probes[0], expected_status=418)
            return probes

        monkeypatch.setattr(runner, "build_script", wrong_script)

        status, stdout, _ = run_main(["demo", "--events", str(tmp_path / "events.jsonl")])

        assert EXIT_FAILURE == status
        assert "✗" in stdout
        assert stdout.rstrip().splitlines()[-1].startswith("FAIL: 26 of 27 requests")

    def test_missing_fact_fails(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """An expected fact that the event does not record makes the request a mismatch."""

        def wrong_script(issuer: TokenIssuer, device_agent: TokenIssuer) -> list[Probe]:
            probes = build_script(issuer, device_agent)
            index = next(
                number
                for number, probe in enumerate(probes)
                if probe.expected_facts.get("country") == "US"
            )
            probes[index] = dataclasses.replace(probes[index], expected_facts={"country": "FR"})
            return probes

        monkeypatch.setattr(runner, "build_script", wrong_script)

        status, stdout, _ = run_main(["demo", "--events", str(tmp_path / "events.jsonl")])

        assert EXIT_FAILURE == status
        assert "FAIL: 26 of 27 requests" in stdout

    def test_mismatch_quiet_names_request(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With --quiet, a request that did not go as scripted is printed with both outcomes."""

        def wrong_script(issuer: TokenIssuer, device_agent: TokenIssuer) -> list[Probe]:
            probes = build_script(issuer, device_agent)
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

        def leaking_script(issuer: TokenIssuer, device_agent: TokenIssuer) -> list[Probe]:
            probes = build_script(issuer, device_agent)
            token = probes[1].token
            assert token is not None
            probes[1] = dataclasses.replace(probes[1], description=f"token {token}")
            return probes

        monkeypatch.setattr(runner, "build_script", leaking_script)

        status, stdout, _ = run_main(["demo", "--events", str(tmp_path / "events.jsonl")])

        assert EXIT_FAILURE == status
        assert "token strings found in the output" in stdout
        assert "FAIL: 27 of 27 requests" in stdout

    def test_device_assertion_in_output_detected(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A device assertion printed in the table fails the run like a bearer token."""

        def leaking_script(issuer: TokenIssuer, device_agent: TokenIssuer) -> list[Probe]:
            probes = build_script(issuer, device_agent)
            index = next(number for number, probe in enumerate(probes) if probe.device_assertion)
            assertion = probes[index].device_assertion
            probes[index] = dataclasses.replace(probes[index], description=f"posture {assertion}")
            return probes

        monkeypatch.setattr(runner, "build_script", leaking_script)

        status, stdout, _ = run_main(["demo", "--events", str(tmp_path / "events.jsonl")])

        assert EXIT_FAILURE == status
        assert "token strings found in the output" in stdout

    def test_append_counts_own_events(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A second run appends to the events file and checks only the lines it wrote."""
        events_path = tmp_path / "events.jsonl"
        with recording_results(monkeypatch) as results:
            first, _, _ = run_main(["demo", "--quiet", "--events", str(events_path)])
            second, _, _ = run_main(["demo", "--quiet", "--events", str(events_path)])

        assert (EXIT_OK, EXIT_OK) == (first, second)
        assert 2 * SCRIPTED_REQUESTS == len(events_path.read_text().splitlines())
        assert SCRIPTED_REQUESTS == len(results[1].events)

    def test_schema_unavailable(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """When the schema cannot be loaded, validation is skipped with a visible message."""

        def missing_schema() -> dict[str, Any]:
            raise FileNotFoundError("access-event.schema.json")

        monkeypatch.setattr(zerotrust.events, "access_event_schema", missing_schema)

        status, stdout, _ = run_main(["demo", "--events", str(tmp_path / "events.jsonl")])

        assert EXIT_OK == status
        assert "schema skipped: the access event schema could not be loaded" in stdout

    def test_missing_geo_extra(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without geoip2fast, the demo names the extra to install and starts nothing."""
        find_spec = importlib.util.find_spec

        def find_spec_without_geo(name: str, *args: Any) -> Any:
            return None if name == "geoip2fast" else find_spec(name, *args)

        monkeypatch.setattr(importlib.util, "find_spec", find_spec_without_geo)
        events_path = tmp_path / "events.jsonl"

        status, _, stderr = run_main(["demo", "--events", str(events_path)])

        assert EXIT_FAILURE == status
        assert "pip install 'zerotrust-middleware[geo]'" in stderr
        assert not events_path.exists()


class TestDemoClock:
    def test_returns_set_instant(self) -> None:
        """The clock returns the instant it was last set to."""
        clock = DemoClock(IN_OFFICE_HOURS)
        clock.now = AFTER_HOURS

        assert AFTER_HOURS == clock()


class TestGeoAddresses:
    @pytest.mark.parametrize(
        ("address", "country"), [(ALLOWED_ADDRESS, "DE"), (FOREIGN_ADDRESS, "US")]
    )
    def test_bundled_country(self, address: str, country: str) -> None:
        """The bundled geoip2fast data places each scripted address in the expected country."""
        result = GeoIP2FastBackend().lookup(ipaddress.ip_address(address))

        assert result is not None
        assert country == result.country

    def test_allowed_country_listed(self) -> None:
        """The address the workspace accepts is in an allowed country, the other one is not."""
        assert "DE" in WORKSPACE_COUNTRIES
        assert "US" not in WORKSPACE_COUNTRIES


class TestScript:
    def test_reason_codes(self, issuer: TokenIssuer, device_agent: TokenIssuer) -> None:
        """The script covers each denial the demo is meant to show."""
        reasons = {probe.expected_reason for probe in build_script(issuer, device_agent)}

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
            "network_not_allowed",
            "device_credential_missing",
            "device_not_managed",
            "device_posture_stale",
            "subject_binding_mismatch",
            "country_not_allowed",
            "outside_time_window",
        } == reasons

    def test_request_count(self, issuer: TokenIssuer, device_agent: TokenIssuer) -> None:
        """The script has the number of requests the report tests count on."""
        assert SCRIPTED_REQUESTS == len(build_script(issuer, device_agent))

    def test_workspace_context(self, issuer: TokenIssuer, device_agent: TokenIssuer) -> None:
        """Every workspace request sets a forwarded client address and a clock instant."""
        probes = [
            probe
            for probe in build_script(issuer, device_agent)
            if probe.target.startswith("/workspace/")
        ]

        assert 7 == len(probes)
        for probe in probes:
            assert probe.forwarded_for in (ALLOWED_ADDRESS, FOREIGN_ADDRESS)
            assert probe.clock in (IN_OFFICE_HOURS, AFTER_HOURS)

    def test_earlier_requests_not_forwarded(
        self, issuer: TokenIssuer, device_agent: TokenIssuer
    ) -> None:
        """Only the network and workspace requests send X-Forwarded-For."""
        forwarded = [
            probe.expected_reason or "allow"
            for probe in build_script(issuer, device_agent)
            if probe.forwarded_for is not None and not probe.target.startswith("/workspace/")
        ]

        assert ["network_not_allowed"] == forwarded

    def test_device_assertion_claims(self, issuer: TokenIssuer, device_agent: TokenIssuer) -> None:
        """Assertions come from the device agent, bound to alice except for bob's device."""
        probes = build_script(issuer, device_agent)
        assertions = {probe.device_assertion for probe in probes if probe.device_assertion}
        claims = [json.loads(decode(assertion.split(".")[1])) for assertion in assertions]

        assert {device_agent.issuer} == {claim["iss"] for claim in claims}
        assert ["alice", "alice", "alice", "bob"] == sorted(claim["user"] for claim in claims)

    def test_path_tricks(self, issuer: TokenIssuer, device_agent: TokenIssuer) -> None:
        """The raw path tricks are in the script exactly as they go on the wire."""
        targets = {probe.target for probe in build_script(issuer, device_agent)}

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
