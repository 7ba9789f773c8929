# SPDX-License-Identifier: Apache-2.0
from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime as dt
import hashlib
import importlib.util
import io
import ipaddress
import json
import os
import re
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from starlette.types import Receive, Scope, Send

import zerotrust.events
from zerotrust import Segment, ZeroTrustMiddleware
from zerotrust.cli import EXIT_FAILURE, EXIT_OK, main
from zerotrust.config import LoadedPolicy, load_policy
from zerotrust.demo import _render_unwrapped, runner, script
from zerotrust.demo.app import (
    BURST_THRESHOLD,
    GRANT_ISSUER,
    INTERNAL_PATH,
    REPORT_PATH,
    STUFFING_ACCOUNTS,
    WORKSPACE_COUNTRIES,
    DemoClock,
    default_policy_path,
)
from zerotrust.demo.client import _parse_response, send_raw_request
from zerotrust.demo.grants import GrantSteps, StepOutcome, check_grant_events
from zerotrust.demo.monitoring import DetectionOutcome, check_anomaly_events
from zerotrust.demo.runner import DemoResult
from zerotrust.demo.script import (
    AFTER_HOURS,
    ALLOWED_ADDRESS,
    ATTACK_ADDRESS,
    FOREIGN_ADDRESS,
    IN_OFFICE_HOURS,
    STUFFING_ADDRESS,
    AwaitDetection,
    MintGrant,
    Probe,
    RevokeGrant,
    ScriptStep,
    build_script,
    scripted_requests,
)
from zerotrust.demo.workloads import (
    CLIENT_CERTIFICATE_HEADER,
    INTERNAL_CALLERS,
    TRUST_DOMAIN,
    DemoWorkloads,
    WorkloadCertificate,
    generate_workloads,
)
from zerotrust.events import MemorySink
from zerotrust.geo import GeoIP2FastBackend
from zerotrust.grants import GrantBroker, MemoryGrantStore, generate_signing_key
from zerotrust.monitor import run_detectors
from zerotrust.testing import TokenIssuer, capture_events, serve
from zerotrust.verifiers import check_spiffe_id
from zerotrust.verifiers.certificates import parse_certificate

pytestmark = pytest.mark.served

# Every JWT starts with the base64url encoding of '{"', whatever its header holds.
JWT_PREFIX = "eyJ"
SCRIPTED_REQUESTS = 57
# Requests before the attack phase: the grant rows end with request 37.
REQUESTS_BEFORE_ATTACK = 37
# One denied_burst and one credential_stuffing anomaly, both from the attack phase.
ANOMALY_EVENTS = 2
# The mint writes grant_requested, grant_approved and grant_minted, the verifier writes two
# grant_used (see test_grant_used_only_when_allowed), and the revocation writes grant_revoked.
GRANT_EVENTS = 5
GRANT_EVENT_KINDS = {
    "grant_requested",
    "grant_approved",
    "grant_minted",
    "grant_used",
    "grant_revoked",
}
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


def grant_outcome(result: DemoResult, description: str) -> runner.Outcome:
    """Return the outcome of the request that sent the grant, by its description."""
    (outcome,) = [
        outcome
        for outcome in result.outcomes
        if outcome.probe.sends_grant and outcome.probe.description == description
    ]
    return outcome


def read_events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def replaced(step: ScriptStep, **changes: Any) -> ScriptStep:
    """Return a copy of a script step with ``changes``; any step type is accepted."""
    return dataclasses.replace(step, **changes)


def probe_index(steps: list[ScriptStep], condition: Any) -> int:
    """Return the index of the first request in ``steps`` for which ``condition`` is true."""
    return next(
        index for index, step in enumerate(steps) if isinstance(step, Probe) and condition(step)
    )


@pytest.fixture(name="demo_policy", scope="module")
def fixture_demo_policy() -> Iterator[LoadedPolicy]:
    """The demo's policy file, loaded with its defaults and without its own sinks."""
    loaded = load_policy(default_policy_path(), environ={}, build_sinks=False)
    yield loaded
    loaded.events.close()


@pytest.fixture(name="workloads", scope="module")
def fixture_workloads() -> DemoWorkloads:
    """The demo's CA and workload certificates, valid from now."""
    return generate_workloads()


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
        """The events file has one access event per request, the grant and anomaly events."""
        events = read_events(demo_run.events_path)
        (result,) = demo_run.results
        access = [event for event in events if event.get("event") == "access"]
        grants = [event for event in events if event.get("event") in GRANT_EVENT_KINDS]
        anomalies = [event for event in events if event.get("event") == "anomaly"]

        assert len(result.outcomes) == len(access)
        assert GRANT_EVENTS == len(grants)
        assert ANOMALY_EVENTS == len(anomalies)
        assert len(events) == len(access) + len(grants) + len(anomalies)
        for event in access:
            assert event["decision"] in ("allow", "deny")

    def test_events_match_requests(self, demo_run: DemoRun) -> None:
        """Each request id the demo sent appears in exactly one access event."""
        events = read_events(demo_run.events_path)
        request_ids = [event["request_id"] for event in events if event["event"] == "access"]

        assert SCRIPTED_REQUESTS == len(set(request_ids))
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

    def test_grant_token_searched(self, demo_run: DemoRun) -> None:
        """The leak checks searched for the grant token and its signature."""
        (result,) = demo_run.results
        tokens = {outcome.probe.grant_token for outcome in result.outcomes}
        tokens.discard(None)
        (token,) = tokens
        assert token is not None

        assert token in result.secrets
        assert token.rpartition(".")[2] in result.secrets

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

        assert "10 allow, 47 deny" in output
        assert "Denial reasons" in output
        assert str(demo_run.events_path) in output
        assert "57 access events written for 57 requests" in output
        assert "grant events: 5 grant events as expected" in output
        assert "anomaly events: 2 anomaly events from 2 detectors" in output
        assert "no token or private key in the events file" in output
        assert "no token or private key in the printed output" in output
        assert output.rstrip().splitlines()[-1].startswith("PASS: 57 of 57 requests")
        assert "2 of 2 grant steps done" in output
        assert "1 of 1 detection steps done" in output
        assert "57 access, 5 grant and 2 anomaly events written" in output

    def test_report_names_policy(self, demo_run: DemoRun) -> None:
        """The report names the policy file the app was built from, with its SHA-256."""
        (result,) = demo_run.results
        policy = default_policy_path()

        assert policy == result.policy_path
        assert hashlib.sha256(policy.read_bytes()).hexdigest() == result.policy_sha256
        assert f"Policy file: {policy}, SHA-256 {result.policy_sha256}" in demo_run.stdout

    def test_policy_sinks_not_built(self, demo_run: DemoRun) -> None:
        """The policy file's standard error sink writes nothing during the demo."""
        assert "" == demo_run.stderr

    def test_environment_unchanged(self, demo_run: DemoRun) -> None:
        """The run's values reach the policy without being set in the process environment."""
        assert EXIT_OK == demo_run.status

        assert [] == [name for name in os.environ if name.startswith("ZT_DEMO_")]

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

    def test_schema_covers_access_events(self, demo_run: DemoRun) -> None:
        """Only the access events are validated, and every one of them is."""
        (result,) = demo_run.results
        if result.schema_check.status == "skipped":
            pytest.skip(result.schema_check.detail)

        assert "57 access events match the access event schema" == result.schema_check.detail
        assert {"access"} == {event["event"] for event in result.events}


class TestDemoGrant:
    def test_table_order(self, demo_run: DemoRun) -> None:
        """The grant and detection steps appear as rows between the requests they separate."""
        numbers = [
            match.group(1)
            for line in demo_run.stdout.splitlines()
            if (match := re.match(r"\s*(\d+|step)\s{2,}(GET|POST|GRANT|REVOKE|DETECT)\b", line))
        ]

        assert [str(number) for number in range(1, 33)] == numbers[:32]
        assert ["step", "33", "34", "35", "36", "step", "37"] == numbers[32:39]
        assert [str(number) for number in range(38, 54)] == numbers[39:55]
        assert ["step", "54", "55", "56", "57"] == numbers[55:]

    def test_step_rows(self, demo_run: DemoRun) -> None:
        """The mint and revoke rows name the grant id and send no request."""
        (result,) = demo_run.results
        grant = result.steps[0].grant
        assert grant is not None
        lines = _render_unwrapped(result).splitlines()
        (mint_line,) = [line for line in lines if "GRANT reader: GET /admin/reports/daily" in line]
        (revoke_line,) = [line for line in lines if "REVOKE reader's grant" in line]

        for line in (mint_line, revoke_line):
            assert f"grant_id={grant.grant_id}" in line
            assert "no request" in line
            assert line.lstrip().startswith("step")

    def test_steps_succeed(self, demo_run: DemoRun) -> None:
        """The runner minted the grant after request 32 and revoked it after request 36."""
        (result,) = demo_run.results
        mint, revoke = result.steps

        assert (True, True) == (mint.matched, revoke.matched)
        assert (32, 36) == (mint.after_request, revoke.after_request)
        assert isinstance(mint.step, MintGrant)
        assert isinstance(revoke.step, RevokeGrant)

    def test_two_person_rule(self, demo_run: DemoRun) -> None:
        """The reader requested their own grant, and admin approved it."""
        (result,) = demo_run.results
        grant = result.steps[0].grant
        assert grant is not None

        assert "reader" == grant.subject
        assert "reader" == grant.requested_by
        assert "admin" == grant.approved_by
        assert ("GET",) == grant.methods
        assert (REPORT_PATH,) == grant.paths

    def test_revoked_grant(self, demo_run: DemoRun) -> None:
        """The revoke step returned the same grant, revoked by admin."""
        (result,) = demo_run.results
        mint, revoke = result.steps
        assert mint.grant is not None
        assert revoke.grant is not None

        assert mint.grant.grant_id == revoke.grant.grant_id
        assert "admin" == revoke.grant.revoked_by
        assert revoke.grant.revoked_at is not None

    def test_denied_before_grant(self, demo_run: DemoRun) -> None:
        """Without a grant, the reader gets 403 insufficient_role on the report."""
        (result,) = demo_run.results
        (outcome,) = [
            outcome
            for outcome in result.outcomes
            if outcome.probe.target == REPORT_PATH and not outcome.probe.sends_grant
        ]

        assert (403, "insufficient_role") == (outcome.status, outcome.reason)
        assert outcome.probe.grant_token is None

    def test_allowed_with_grant(self, demo_run: DemoRun) -> None:
        """With the grant, the reader reads the report and the event records the grant id."""
        (result,) = demo_run.results
        grant = result.steps[0].grant
        assert grant is not None
        outcome = grant_outcome(result, "reader with the grant")
        assert outcome.event is not None

        assert (200, "allow") == (outcome.status, outcome.decision)
        assert grant.grant_id == outcome.facts["grant_id"]
        assert "reader" == outcome.event["subject"]
        assert "admin" == outcome.event["segment"]

    @pytest.mark.parametrize(
        ("description", "reason"),
        [
            ("reader's grant on a path it does not cover", "grant_path_not_covered"),
            ("reader's grant with a method it does not cover", "grant_method_not_covered"),
            ("writer presents the reader's grant", "subject_binding_mismatch"),
            ("reader with the revoked grant", "grant_revoked"),
        ],
    )
    def test_grant_denials(self, demo_run: DemoRun, description: str, reason: str) -> None:
        """Each misuse of the grant is denied with 403 and the grant's reason code."""
        (result,) = demo_run.results
        grant = result.steps[0].grant
        assert grant is not None
        outcome = grant_outcome(result, description)

        assert (403, "deny", reason) == (outcome.status, outcome.decision, outcome.reason)
        assert grant.grant_id == outcome.facts["grant_id"]

    def test_other_subject_recorded(self, demo_run: DemoRun) -> None:
        """The event of the stolen grant records the writer, who presented it."""
        (result,) = demo_run.results
        event = grant_outcome(result, "writer presents the reader's grant").event
        assert event is not None

        assert "writer" == event["subject"]

    def test_grant_events_in_file(self, demo_run: DemoRun) -> None:
        """The events file has each kind of grant event, all for the minted grant."""
        (result,) = demo_run.results
        grant = result.steps[0].grant
        assert grant is not None
        events = [
            event
            for event in read_events(demo_run.events_path)
            if event["event"] in GRANT_EVENT_KINDS
        ]

        assert GRANT_EVENT_KINDS == {event["event"] for event in events}
        assert {grant.grant_id} == {event["grant_id"] for event in events}
        assert {"reader"} == {event["subject"] for event in events}

    def test_grant_event_order(self, demo_run: DemoRun) -> None:
        """Grant events and access events are written in the order they happened."""
        kinds = [
            event["event"]
            for event in read_events(demo_run.events_path)
            if event["event"] not in ("access", "anomaly")
        ]

        assert [
            "grant_requested",
            "grant_approved",
            "grant_minted",
            "grant_used",
            "grant_revoked",
        ] == kinds

    def test_grant_used_names_request(self, demo_run: DemoRun) -> None:
        """The allowed request with the grant has a grant_used event with its request id."""
        (result,) = demo_run.results
        event = grant_outcome(result, "reader with the grant").event
        assert event is not None
        used = [e for e in result.grant_events if e["event"] == "grant_used"]

        assert event["request_id"] in {e["request_id"] for e in used}

    def test_grant_used_only_when_allowed(self, demo_run: DemoRun) -> None:
        """grant_used events name only requests that the grant let through."""
        (result,) = demo_run.results
        allowed = {
            outcome.event["request_id"]
            for outcome in result.outcomes
            if outcome.probe.sends_grant and outcome.decision == "allow" and outcome.event
        }
        used = {e["request_id"] for e in result.grant_events if e["event"] == "grant_used"}

        assert allowed == used

    def test_minted_event_issuer(self, demo_run: DemoRun) -> None:
        """The grant_minted event names the demo broker as issuer."""
        (result,) = demo_run.results
        (minted,) = [e for e in result.grant_events if e["event"] == "grant_minted"]

        assert GRANT_ISSUER == minted["issuer"]
        assert "read the daily report for the access review" == minted["reason"]

    def test_no_grant_token_in_events(self, demo_run: DemoRun) -> None:
        """No grant event contains the grant token, its signature or any JWT."""
        (result,) = demo_run.results
        (token,) = {o.probe.grant_token for o in result.outcomes if o.probe.grant_token}
        text = demo_run.events_path.read_text()

        assert token not in text
        assert token.rpartition(".")[2] not in text
        assert JWT_PREFIX not in text

    def test_no_grant_token_in_output(self, demo_run: DemoRun) -> None:
        """The grant token is not printed, not even folded across table cells."""
        (result,) = demo_run.results
        (token,) = {o.probe.grant_token for o in result.outcomes if o.probe.grant_token}
        unwrapped = _render_unwrapped(result)

        assert token not in demo_run.stdout + demo_run.stderr
        assert token not in unwrapped
        assert token.rpartition(".")[2] not in unwrapped

    def test_grant_summary(self, demo_run: DemoRun) -> None:
        """The report lists the grant events by kind."""
        output = demo_run.stdout

        assert "Grant events" in output
        for kind in GRANT_EVENT_KINDS:
            assert kind in output
        assert re.search(r"grant_used\s+1", output)


def anomaly_from(result: DemoResult, detector: str) -> dict[str, Any]:
    """Return the one anomaly event that ``detector`` wrote."""
    (anomaly,) = [event for event in result.anomaly_events if event["detector"] == detector]
    return anomaly


def described(result: DemoResult, description: str) -> runner.Outcome:
    """Return the outcome of the scripted request with this description."""
    (outcome,) = [o for o in result.outcomes if o.probe.description == description]
    return outcome


class TestDemoMonitoring:
    def test_two_detectors_fired(self, demo_run: DemoRun) -> None:
        """The attack trips the denied burst and the credential stuffing detectors."""
        (result,) = demo_run.results
        (detection,) = result.detections

        assert detection.matched, detection.error
        assert ["denied_burst", "credential_stuffing"] == detection.detectors
        assert result.anomaly_check.passed, result.anomaly_check.detail
        assert {"denied_burst": 1, "credential_stuffing": 1} == result.anomaly_check.counts

    def test_burst_anomaly(self, demo_run: DemoRun) -> None:
        """The denied burst names carol and only the attacker's address."""
        (result,) = demo_run.results
        anomaly = anomaly_from(result, "denied_burst")

        assert "carol" == anomaly["subject"]
        assert [ATTACK_ADDRESS] == anomaly["distinct_ips"]
        assert BURST_THRESHOLD + 1 == anomaly["count"]

    def test_stuffing_anomaly(self, demo_run: DemoRun) -> None:
        """Credential stuffing names the stuffing address and counts each forged token."""
        (result,) = demo_run.results
        anomaly = anomaly_from(result, "credential_stuffing")

        assert STUFFING_ADDRESS == anomaly["client_ip"]
        assert [STUFFING_ADDRESS] == anomaly["distinct_ips"]
        assert STUFFING_ACCOUNTS == anomaly["count"]
        assert STUFFING_ACCOUNTS == anomaly["distinct_credentials"]

    def test_anomaly_fields(self, demo_run: DemoRun) -> None:
        """Each anomaly event has the documented fields and a time to detect."""
        (result,) = demo_run.results
        for anomaly in result.anomaly_events:
            assert "anomaly" == anomaly["event"]
            for name in ("timestamp", "event_id", "first_seen", "last_seen", "severity"):
                assert anomaly[name], name
            assert anomaly["contributing_event_ids"]
            assert 0 <= anomaly["time_to_detect_ms"] < MAX_WALL_SECONDS * 1000

    def test_anomalies_from_attack_only(self, demo_run: DemoRun) -> None:
        """Every event behind an anomaly comes from a request of the attack phase."""
        (result,) = demo_run.results
        attack_ids = {
            outcome.event["event_id"]
            for outcome in result.outcomes[REQUESTS_BEFORE_ATTACK:]
            if outcome.event is not None
        }
        for anomaly in result.anomaly_events:
            assert set(anomaly["contributing_event_ids"]) <= attack_ids, anomaly["detector"]

    def test_script_before_attack_is_quiet(
        self, demo_run: DemoRun, demo_policy: LoadedPolicy
    ) -> None:
        """The detectors of the demo's policy find nothing in the requests before the attack."""
        (result,) = demo_run.results
        events = [outcome.event for outcome in result.outcomes[:REQUESTS_BEFORE_ATTACK]]
        assert None not in events
        assert demo_policy.monitor is not None

        assert [] == run_detectors(
            [event for event in events if event is not None], demo_policy.monitor.detectors
        )

    def test_subject_flag_denies_attacker(self, demo_run: DemoRun) -> None:
        """Carol from the attacker's address is denied, naming the burst anomaly."""
        (result,) = demo_run.results
        outcome = described(result, "carol reads from the attacker's address")
        anomaly = anomaly_from(result, "denied_burst")

        assert "risk_flagged_subject" == outcome.reason
        assert ["denied_burst"] == outcome.facts["risk_detectors"]
        assert [anomaly["event_id"]] == outcome.facts["risk_anomaly_ids"]

    def test_address_flag_denies_reader(self, demo_run: DemoRun) -> None:
        """A valid reader token from the stuffing address is denied for that address."""
        (result,) = demo_run.results
        outcome = described(result, "reader from the stuffing address")
        anomaly = anomaly_from(result, "credential_stuffing")

        assert "risk_flagged_client_ip" == outcome.reason
        assert "reader" == outcome.subject
        assert [anomaly["event_id"]] == outcome.facts["risk_anomaly_ids"]

    def test_no_lockout_from_loopback(self, demo_run: DemoRun) -> None:
        """Carol and the reader still get in from loopback after the flags."""
        (result,) = demo_run.results
        for description in ("carol reads from loopback", "reader from loopback"):
            outcome = described(result, description)
            assert outcome.event is not None
            assert "allow" == outcome.decision, description
            assert "127.0.0.1" == outcome.event["client_ip"], description

    def test_anomalies_table(self, demo_run: DemoRun) -> None:
        """The report lists each anomaly with what it flagged and its time to detect."""
        (result,) = demo_run.results
        lines = _render_unwrapped(result).splitlines()
        burst = anomaly_from(result, "denied_burst")
        (burst_line,) = [line for line in lines if line.lstrip().startswith("denied_burst")]
        (stuffing_line,) = [
            line for line in lines if line.lstrip().startswith("credential_stuffing")
        ]

        assert "Anomalies" in demo_run.stdout
        assert f"carol / {ATTACK_ADDRESS}" in burst_line
        assert f"{burst['time_to_detect_ms']:.0f} ms" in burst_line
        assert f"- / {STUFFING_ADDRESS}" in stuffing_line

    def test_detection_row(self, demo_run: DemoRun) -> None:
        """The detection step is a row that sends no request and names what fired."""
        (result,) = demo_run.results
        lines = _render_unwrapped(result).splitlines()
        (line,) = [line for line in lines if "DETECT denied_burst, credential_stuffing" in line]

        assert line.lstrip().startswith("step")
        assert "no request" in line
        assert "2 fired" in line


class TestCheckAnomalyEvents:
    STEP = AwaitDetection("wait", detectors=("denied_burst", "credential_stuffing"))

    @staticmethod
    def anomaly(detector: str, event_id: str) -> dict[str, Any]:
        return {"event": "anomaly", "detector": detector, "event_id": event_id}

    def test_two_detectors_pass(self) -> None:
        """Anomalies from two detectors, all written, pass."""
        written = [self.anomaly("denied_burst", "a1"), self.anomaly("credential_stuffing", "a2")]
        seen = DetectionOutcome(self.STEP, 3, tuple(written), 0.01)

        check = check_anomaly_events(written, [seen])

        assert check.passed, check.detail
        assert {"denied_burst": 1, "credential_stuffing": 1} == check.counts

    def test_one_detector_fails(self) -> None:
        """Anomalies from one detector are fewer than the demo requires."""
        written = [self.anomaly("denied_burst", "a1"), self.anomaly("denied_burst", "a2")]

        check = check_anomaly_events(written, [])

        assert not check.passed
        assert "from 1 detectors (denied_burst); expected 2" in check.detail

    def test_unwritten_anomaly_fails(self) -> None:
        """An anomaly the monitor raised but the events file lacks fails the check."""
        written = [self.anomaly("denied_burst", "a1"), self.anomaly("credential_stuffing", "a2")]
        lost = self.anomaly("credential_stuffing", "a3")
        seen = DetectionOutcome(self.STEP, 3, (*written, lost), 0.01)

        check = check_anomaly_events(written, [seen])

        assert not check.passed
        assert "1 anomalies the monitor raised are missing" in check.detail


class TestDemoWorkload:
    @staticmethod
    def internal_outcome(result: DemoResult, description: str) -> runner.Outcome:
        """Return the outcome of the internal segment's request with this description."""
        (outcome,) = [
            outcome
            for outcome in result.outcomes
            if outcome.probe.target == INTERNAL_PATH and outcome.probe.description == description
        ]
        return outcome

    def test_allowed_workload(self, demo_run: DemoRun) -> None:
        """The app tier's certificate opens the internal segment, with its SPIFFE ID as subject."""
        (result,) = demo_run.results
        outcome = self.internal_outcome(result, "app tier calls the database tier")
        event = outcome.event
        assert event is not None
        (web_id,) = INTERNAL_CALLERS

        assert (200, "allow") == (outcome.status, outcome.decision)
        assert "internal" == event["segment"]
        assert web_id == event["subject"]
        assert TRUST_DOMAIN == event["issuer"]
        assert web_id == event["facts"]["workload_id"]
        assert "proxy" == event["facts"]["client_certificate_source"]
        assert "127.0.0.1" == event["peer_ip"]

    @pytest.mark.parametrize(
        ("description", "status", "reason"),
        [
            ("batch job calls the database tier", 403, "workload_not_allowed"),
            ("no client certificate", 401, "client_certificate_missing"),
            ("app tier, certificate expired", 401, "certificate_expired"),
        ],
    )
    def test_denials(self, demo_run: DemoRun, description: str, status: int, reason: str) -> None:
        """Each denied service-to-service call gets its status and the verifier's reason code."""
        (result,) = demo_run.results
        outcome = self.internal_outcome(result, description)
        event = outcome.event
        assert event is not None

        assert (status, "deny", reason) == (outcome.status, outcome.decision, outcome.reason)
        assert [reason] == event["reasons"]
        assert "workload" == event["verifiers"][0]["name"]

    def test_refused_workload_named(self, demo_run: DemoRun) -> None:
        """The refused workload proved who it is, so the event names it as the subject."""
        (result,) = demo_run.results
        outcome = outcome_for(result, "workload_not_allowed")
        assert outcome.event is not None
        assert outcome.probe.workload is not None

        assert "spiffe://demo.test/ns/batch/sa/report" == outcome.event["subject"]
        assert outcome.probe.workload.spiffe_id == outcome.event["subject"]
        assert outcome.probe.workload.spiffe_id not in INTERNAL_CALLERS

    def test_no_subject_without_certificate(self, demo_run: DemoRun) -> None:
        """Without a valid certificate, the event names no subject."""
        (result,) = demo_run.results
        for reason in ("client_certificate_missing", "certificate_expired"):
            event = outcome_for(result, reason).event
            assert event is not None
            assert event["subject"] is None, reason

    def test_no_bearer_token(self, demo_run: DemoRun) -> None:
        """The service-to-service requests carry a certificate and no bearer token."""
        (result,) = demo_run.results
        probes = [o.probe for o in result.outcomes if o.probe.target == INTERNAL_PATH]

        assert 4 == len(probes)
        assert [None] * 4 == [probe.token for probe in probes]
        assert 3 == sum(probe.workload is not None for probe in probes)

    def test_table_shows_spiffe_id(self, demo_run: DemoRun) -> None:
        """The request column names each certificate by its SPIFFE ID, not by its PEM."""
        (result,) = demo_run.results
        unwrapped = _render_unwrapped(result)

        assert 2 == unwrapped.count("client certificate spiffe://demo.test/ns/app/sa/web")
        assert 1 == unwrapped.count("client certificate spiffe://demo.test/ns/batch/sa/report")
        assert "BEGIN CERTIFICATE" not in demo_run.stdout + unwrapped

    def test_private_keys_searched(self, demo_run: DemoRun) -> None:
        """The leak checks searched for the private keys of the CA and of every certificate."""
        (result,) = demo_run.results
        tokens = {
            credential
            for outcome in result.outcomes
            for credential in runner._credentials(outcome.probe)
        }
        signatures = {token.rpartition(".")[2] for token in tokens}
        markers = set(result.secrets) - tokens - signatures

        # Four keys, each with three PEM lines and the joined body. Only the last line carries
        # no private bytes, and it is left out if it also occurs in a certificate.
        assert 12 <= len(markers) <= 16
        assert all(len(marker) >= 56 for marker in markers)

    def test_no_private_key_printed(self, demo_run: DemoRun) -> None:
        """No private key appears in the output, folded or not."""
        (result,) = demo_run.results
        printed = demo_run.stdout + demo_run.stderr + _render_unwrapped(result)

        assert [] == runner.find_secrets(printed, result.secrets)
        assert "PRIVATE KEY" not in printed

    def test_no_private_key_written(self, demo_run: DemoRun) -> None:
        """No private key appears in the events file, and the run wrote no other file."""
        (result,) = demo_run.results
        text = demo_run.events_path.read_text()

        assert [] == runner.find_secrets(text, result.secrets)
        assert "PRIVATE KEY" not in text
        assert ["events.jsonl"] == [path.name for path in demo_run.events_path.parent.iterdir()]


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

        def wrong_script(
            issuer: TokenIssuer, device_agent: TokenIssuer, workloads: DemoWorkloads
        ) -> list[ScriptStep]:
            probes = build_script(issuer, device_agent, workloads)
            probes[0] = replaced(probes[0], expected_status=418)
            return probes

        monkeypatch.setattr(runner, "build_script", wrong_script)

        status, stdout, _ = run_main(["demo", "--events", str(tmp_path / "events.jsonl")])

        assert EXIT_FAILURE == status
        assert "✗" in stdout
        assert stdout.rstrip().splitlines()[-1].startswith("FAIL: 56 of 57 requests")

    def test_missing_fact_fails(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """An expected fact that the event does not record makes the request a mismatch."""

        def wrong_script(
            issuer: TokenIssuer, device_agent: TokenIssuer, workloads: DemoWorkloads
        ) -> list[ScriptStep]:
            probes = build_script(issuer, device_agent, workloads)
            index = probe_index(probes, lambda probe: probe.expected_facts.get("country") == "US")
            probes[index] = replaced(probes[index], expected_facts={"country": "FR"})
            return probes

        monkeypatch.setattr(runner, "build_script", wrong_script)

        status, stdout, _ = run_main(["demo", "--events", str(tmp_path / "events.jsonl")])

        assert EXIT_FAILURE == status
        assert "FAIL: 56 of 57 requests" in stdout

    def test_mismatch_quiet_names_request(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With --quiet, a request that did not go as scripted is printed with both outcomes."""

        def wrong_script(
            issuer: TokenIssuer, device_agent: TokenIssuer, workloads: DemoWorkloads
        ) -> list[ScriptStep]:
            probes = build_script(issuer, device_agent, workloads)
            probes[5] = replaced(probes[5], expected_reason="token_expired")
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

        def leaking_script(
            issuer: TokenIssuer, device_agent: TokenIssuer, workloads: DemoWorkloads
        ) -> list[ScriptStep]:
            probes = build_script(issuer, device_agent, workloads)
            probe = probes[1]
            assert isinstance(probe, Probe)
            assert probe.token is not None
            probes[1] = dataclasses.replace(probe, description=f"token {probe.token}")
            return probes

        monkeypatch.setattr(runner, "build_script", leaking_script)

        status, stdout, _ = run_main(["demo", "--events", str(tmp_path / "events.jsonl")])

        assert EXIT_FAILURE == status
        assert "token or private key strings found in the output" in stdout
        assert "FAIL: 57 of 57 requests" in stdout

    def test_device_assertion_in_output_detected(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A device assertion printed in the table fails the run like a bearer token."""

        def leaking_script(
            issuer: TokenIssuer, device_agent: TokenIssuer, workloads: DemoWorkloads
        ) -> list[ScriptStep]:
            probes = build_script(issuer, device_agent, workloads)
            index = probe_index(probes, lambda probe: probe.device_assertion is not None)
            probe = probes[index]
            assert isinstance(probe, Probe)
            description = f"posture {probe.device_assertion}"
            probes[index] = dataclasses.replace(probe, description=description)
            return probes

        monkeypatch.setattr(runner, "build_script", leaking_script)

        status, stdout, _ = run_main(["demo", "--events", str(tmp_path / "events.jsonl")])

        assert EXIT_FAILURE == status
        assert "token or private key strings found in the output" in stdout

    def test_grant_token_in_output_detected(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A grant token printed in the table fails the run like a bearer token."""
        prepare = GrantSteps.prepare

        def leaking_prepare(self: GrantSteps, probe: Probe) -> Probe:
            prepared = prepare(self, probe)
            if prepared.grant_token is None:
                return prepared
            return dataclasses.replace(prepared, description=f"grant {prepared.grant_token}")

        monkeypatch.setattr(GrantSteps, "prepare", leaking_prepare)

        status, stdout, _ = run_main(["demo", "--events", str(tmp_path / "events.jsonl")])

        assert EXIT_FAILURE == status
        assert "token or private key strings found in the output" in stdout
        assert "FAIL: 57 of 57 requests" in stdout

    def test_failed_mint_exits_with_1(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A mint step the broker rejects fails the run and is printed with --quiet."""

        def self_approved(
            issuer: TokenIssuer, device_agent: TokenIssuer, workloads: DemoWorkloads
        ) -> list[ScriptStep]:
            steps = build_script(issuer, device_agent, workloads)
            index = next(i for i, step in enumerate(steps) if isinstance(step, MintGrant))
            steps[index] = replaced(steps[index], approver="reader")
            return steps

        monkeypatch.setattr(runner, "build_script", self_approved)

        status, stdout, _ = run_main(
            ["demo", "--quiet", "--events", str(tmp_path / "events.jsonl")]
        )

        assert EXIT_FAILURE == status
        assert "self_approval" in stdout
        assert "no grant to send" in stdout
        assert "0 of 2 grant steps done" in stdout

    def test_append_counts_own_events(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A second run appends to the events file and checks only the lines it wrote."""
        events_path = tmp_path / "events.jsonl"
        with recording_results(monkeypatch) as results:
            first, _, _ = run_main(["demo", "--quiet", "--events", str(events_path)])
            second, _, _ = run_main(["demo", "--quiet", "--events", str(events_path)])

        assert (EXIT_OK, EXIT_OK) == (first, second)
        lines = events_path.read_text().splitlines()
        assert 2 * (SCRIPTED_REQUESTS + GRANT_EVENTS + ANOMALY_EVENTS) == len(lines)
        assert SCRIPTED_REQUESTS == len(results[1].events)
        assert GRANT_EVENTS == len(results[1].grant_events)
        assert ANOMALY_EVENTS == len(results[1].anomaly_events)

    def test_private_key_in_output_detected(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A line of a workload's private key printed in the table fails the run."""

        def leaking_script(
            issuer: TokenIssuer, device_agent: TokenIssuer, workloads: DemoWorkloads
        ) -> list[ScriptStep]:
            probes = build_script(issuer, device_agent, workloads)
            index = probe_index(probes, lambda probe: probe.workload is not None)
            description = f"key {workloads.key_markers[0]}"
            probes[index] = replaced(probes[index], description=description)
            return probes

        monkeypatch.setattr(runner, "build_script", leaking_script)

        status, stdout, _ = run_main(["demo", "--events", str(tmp_path / "events.jsonl")])

        assert EXIT_FAILURE == status
        assert "1 token or private key strings found in the output" in stdout
        assert "FAIL: 57 of 57 requests" in stdout

    def test_wrong_subject_fails(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """An expected subject that the event does not record makes the request a mismatch."""

        def wrong_script(
            issuer: TokenIssuer, device_agent: TokenIssuer, workloads: DemoWorkloads
        ) -> list[ScriptStep]:
            probes = build_script(issuer, device_agent, workloads)
            index = probe_index(probes, lambda probe: probe.expected_subject is not None)
            subject = workloads.report.spiffe_id
            probes[index] = replaced(probes[index], expected_subject=subject)
            return probes

        monkeypatch.setattr(runner, "build_script", wrong_script)

        status, stdout, _ = run_main(
            ["demo", "--quiet", "--events", str(tmp_path / "events.jsonl")]
        )

        assert EXIT_FAILURE == status
        assert "FAIL: 56 of 57 requests" in stdout

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

    def test_no_detectors_fails(self, tmp_path: Path) -> None:
        """Without detectors, the detection step, the flagged requests and the check fail."""
        text = default_policy_path().read_text(encoding="utf-8")
        monitor = 'detectors = ["denied_burst", "credential_stuffing"]'
        assert monitor in text
        policy = tmp_path / "no-detectors.toml"
        policy.write_text(text.replace(monitor, "detectors = []"), encoding="utf-8")

        status, stdout, _ = run_main(
            ["demo", "--quiet", "--policy", str(policy), "--events", str(tmp_path / "events.jsonl")]
        )

        assert EXIT_FAILURE == status
        assert "FAIL: 55 of 57 requests" in stdout
        assert "0 of 1 detection steps done" in stdout
        assert "anomaly events differ" in stdout
        assert (
            "detection step 'wait for the monitor to flag the burst and the stuffing': no anomaly "
            "from denied_burst, credential_stuffing after the events were delivered"
        ) in stdout

    def test_unexpected_detector_fails(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A detection step waiting for a detector that never fires fails the run."""

        def waits_for_replay(
            issuer: TokenIssuer, device_agent: TokenIssuer, workloads: DemoWorkloads
        ) -> list[ScriptStep]:
            steps = build_script(issuer, device_agent, workloads)
            index = next(i for i, step in enumerate(steps) if isinstance(step, AwaitDetection))
            steps[index] = replaced(steps[index], detectors=("token_replay",))
            return steps

        monkeypatch.setattr(runner, "build_script", waits_for_replay)

        status, stdout, _ = run_main(
            ["demo", "--quiet", "--events", str(tmp_path / "events.jsonl")]
        )

        assert EXIT_FAILURE == status
        assert "no anomaly from token_replay" in stdout
        assert "57 of 57 requests" in stdout


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


class TestWorkloadCertificates:
    def test_spiffe_ids(self, workloads: DemoWorkloads) -> None:
        """Each certificate contains exactly its workload's SPIFFE ID as its one URI SAN."""
        for workload in (workloads.web, workloads.report, workloads.expired):
            certificate = parse_certificate(workload.pem)
            assert (workload.spiffe_id,) == certificate.uri_sans
            assert check_spiffe_id(workload.spiffe_id) is None

        assert (workloads.web.spiffe_id,) == INTERNAL_CALLERS
        assert workloads.web.spiffe_id == workloads.expired.spiffe_id
        assert workloads.report.spiffe_id not in INTERNAL_CALLERS

    def test_issued_by_ca(self, workloads: DemoWorkloads) -> None:
        """The demo CA signed every workload certificate."""
        ca = x509.load_pem_x509_certificate(workloads.ca_pem.encode())
        for workload in (workloads.web, workloads.report, workloads.expired):
            certificate = x509.load_pem_x509_certificate(workload.pem.encode())
            certificate.verify_directly_issued_by(ca)

    def test_ca_constraints(self, workloads: DemoWorkloads) -> None:
        """The CA may sign certificates, and the workload certificates may not."""
        ca = x509.load_pem_x509_certificate(workloads.ca_pem.encode())
        leaf = x509.load_pem_x509_certificate(workloads.web.pem.encode())

        assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca

    def test_validity(self) -> None:
        """Two certificates are valid at the given instant, and the expired one ended before it."""
        now = dt.datetime(2024, 6, 12, 8, 30, tzinfo=dt.UTC)
        workloads = generate_workloads(now)
        instant = now.timestamp()

        for workload in (workloads.web, workloads.report):
            certificate = parse_certificate(workload.pem)
            assert certificate.not_before < instant < certificate.not_after
        assert parse_certificate(workloads.expired.pem).not_after < instant

    def test_header_value(self, workloads: DemoWorkloads) -> None:
        """The header value is URL-encoded PEM that fits on one header line."""
        value = workloads.web.header_value

        assert workloads.web.pem == urllib.parse.unquote(value)
        assert re.fullmatch(r"[A-Za-z0-9%._~-]+", value)

    def test_keys_not_in_certificates(self, workloads: DemoWorkloads) -> None:
        """No key marker occurs in a certificate, so a printed certificate is not a leak."""
        certificates = [workloads.ca_pem, workloads.web.pem, workloads.report.pem]
        certificates.append(workloads.expired.pem)

        for marker in workloads.key_markers:
            assert not any(marker in pem for pem in certificates)

    def test_key_markers_distinct(self, workloads: DemoWorkloads) -> None:
        """Every key's markers differ, and each is long enough not to match by chance."""
        markers = workloads.key_markers

        # Four keys, each with three PEM lines and the joined body. Only the last line carries
        # no private bytes, and it is left out if it also occurs in a certificate.
        assert len(set(markers)) == len(markers)
        assert 12 <= len(markers) <= 16
        assert min(len(marker) for marker in markers) >= 56

    def test_no_private_key_held(self, workloads: DemoWorkloads) -> None:
        """The result contains certificates and marker strings, and no private key object."""
        values = [getattr(workloads, field.name) for field in dataclasses.fields(workloads)]

        assert all(isinstance(value, str | tuple | WorkloadCertificate) for value in values)
        assert "PRIVATE KEY" not in repr(workloads)

    def test_fresh_per_run(self, workloads: DemoWorkloads) -> None:
        """Each call generates a new CA and new keys."""
        other = generate_workloads()

        assert workloads.ca_pem != other.ca_pem
        assert not set(workloads.key_markers) & set(other.key_markers)


class TestDemoWorkloadVerifier:
    @staticmethod
    async def fetch(
        demo_policy: LoadedPolicy, pem: str | None, peer: str
    ) -> tuple[int, dict[str, Any]]:
        """Call the internal segment in-process from ``peer``; return the status and event."""

        async def orders(scope: Scope, receive: Receive, send: Send) -> None:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"{}"})

        workload = demo_policy.verifiers["workload"]
        segment = Segment("internal", paths=["/internal/"], verifiers=[workload])
        app = ZeroTrustMiddleware(
            orders,
            policy=[segment],
            trusted_proxies=demo_policy.trusted_proxies,
            events=MemorySink(),
        )
        headers = {} if pem is None else {CLIENT_CERTIFICATE_HEADER: urllib.parse.quote(pem)}
        transport = httpx.ASGITransport(app=app, client=(peer, 40000))
        with capture_events() as events:
            async with httpx.AsyncClient(
                transport=transport, base_url="http://demo.test"
            ) as client:
                response = await client.get(INTERNAL_PATH, headers=headers)
        (event,) = events
        return response.status_code, event

    async def test_trusted_proxy(self, demo_policy: LoadedPolicy, workloads: DemoWorkloads) -> None:
        """From loopback, the forwarded certificate of the app tier is accepted."""
        status, event = await self.fetch(demo_policy, workloads.web.pem, "127.0.0.1")

        assert 200 == status
        assert workloads.web.spiffe_id == event["subject"]

    async def test_untrusted_peer(
        self, demo_policy: LoadedPolicy, workloads: DemoWorkloads
    ) -> None:
        """The certificate header from a peer that is not a trusted proxy is rejected."""
        status, event = await self.fetch(demo_policy, workloads.web.pem, "192.0.2.10")

        assert 401 == status
        assert ["client_certificate_from_untrusted_peer"] == event["reasons"]
        assert event["subject"] is None

    async def test_malformed_header(self, demo_policy: LoadedPolicy) -> None:
        """A header that is not one PEM certificate is denied as malformed."""
        status, event = await self.fetch(demo_policy, "not a certificate", "127.0.0.1")

        assert 401 == status
        assert ["malformed_client_certificate"] == event["reasons"]


class TestScript:
    def test_reason_codes(
        self, issuer: TokenIssuer, device_agent: TokenIssuer, workloads: DemoWorkloads
    ) -> None:
        """The script covers each denial the demo is meant to show."""
        probes = scripted_requests(build_script(issuer, device_agent, workloads))
        reasons = {probe.expected_reason for probe in probes}

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
            "grant_path_not_covered",
            "grant_method_not_covered",
            "grant_revoked",
            "workload_not_allowed",
            "client_certificate_missing",
            "certificate_expired",
            "risk_flagged_subject",
            "risk_flagged_client_ip",
        } == reasons

    def test_request_count(
        self, issuer: TokenIssuer, device_agent: TokenIssuer, workloads: DemoWorkloads
    ) -> None:
        """The script has the number of requests the report tests count on."""
        assert SCRIPTED_REQUESTS == len(
            scripted_requests(build_script(issuer, device_agent, workloads))
        )

    def test_grant_steps(
        self, issuer: TokenIssuer, device_agent: TokenIssuer, workloads: DemoWorkloads
    ) -> None:
        """The script mints one grant, revokes it before the attack, then awaits detection."""
        steps = build_script(issuer, device_agent, workloads)
        kinds = [type(step).__name__ for step in steps if not isinstance(step, Probe)]
        revoke = next(i for i, step in enumerate(steps) if isinstance(step, RevokeGrant))

        assert ["MintGrant", "RevokeGrant", "AwaitDetection"] == kinds
        assert isinstance(steps[revoke + 1], Probe)
        assert REQUESTS_BEFORE_ATTACK == len(scripted_requests(steps[: revoke + 2]))

    def test_grant_requests_follow_mint(
        self, issuer: TokenIssuer, device_agent: TokenIssuer, workloads: DemoWorkloads
    ) -> None:
        """Every request that sends the grant comes after the mint step."""
        steps = build_script(issuer, device_agent, workloads)
        mint = next(i for i, step in enumerate(steps) if isinstance(step, MintGrant))
        senders = [
            i for i, step in enumerate(steps) if isinstance(step, Probe) and step.sends_grant
        ]

        assert 5 == len(senders)
        assert all(index > mint for index in senders)

    def test_mint_two_person_rule(
        self, issuer: TokenIssuer, device_agent: TokenIssuer, workloads: DemoWorkloads
    ) -> None:
        """The mint step's approver is neither the requester nor the subject."""
        (mint,) = [
            s for s in build_script(issuer, device_agent, workloads) if isinstance(s, MintGrant)
        ]

        assert mint.approver not in (mint.requested_by, mint.subject)
        assert mint.reason

    def test_workspace_context(
        self, issuer: TokenIssuer, device_agent: TokenIssuer, workloads: DemoWorkloads
    ) -> None:
        """Every workspace request sets a forwarded client address and a clock instant."""
        probes = [
            probe
            for probe in scripted_requests(build_script(issuer, device_agent, workloads))
            if probe.target.startswith("/workspace/")
        ]

        assert 7 == len(probes)
        for probe in probes:
            assert probe.forwarded_for in (ALLOWED_ADDRESS, FOREIGN_ADDRESS)
            assert probe.clock in (IN_OFFICE_HOURS, AFTER_HOURS)

    def test_earlier_requests_not_forwarded(
        self, issuer: TokenIssuer, device_agent: TokenIssuer, workloads: DemoWorkloads
    ) -> None:
        """Before the attack, only the network and workspace requests send X-Forwarded-For."""
        probes = scripted_requests(build_script(issuer, device_agent, workloads))
        forwarded = [
            probe.expected_reason or "allow"
            for probe in probes[:REQUESTS_BEFORE_ATTACK]
            if probe.forwarded_for is not None and not probe.target.startswith("/workspace/")
        ]

        assert ["network_not_allowed"] == forwarded

    def test_device_assertion_claims(
        self, issuer: TokenIssuer, device_agent: TokenIssuer, workloads: DemoWorkloads
    ) -> None:
        """Assertions come from the device agent, bound to alice except for bob's device."""
        probes = scripted_requests(build_script(issuer, device_agent, workloads))
        assertions = {probe.device_assertion for probe in probes if probe.device_assertion}
        claims = [json.loads(decode(assertion.split(".")[1])) for assertion in assertions]

        assert {device_agent.issuer} == {claim["iss"] for claim in claims}
        assert ["alice", "alice", "alice", "bob"] == sorted(claim["user"] for claim in claims)

    def test_path_tricks(
        self, issuer: TokenIssuer, device_agent: TokenIssuer, workloads: DemoWorkloads
    ) -> None:
        """The raw path tricks are in the script exactly as they go on the wire."""
        targets = {
            probe.target
            for probe in scripted_requests(build_script(issuer, device_agent, workloads))
        }

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

    def test_attack_addresses(self) -> None:
        """The attacker's addresses are in documentation ranges, never a real network."""
        documentation = [
            ipaddress.ip_network("192.0.2.0/24"),
            ipaddress.ip_network("198.51.100.0/24"),
            ipaddress.ip_network("203.0.113.0/24"),
        ]
        for address in (ATTACK_ADDRESS, STUFFING_ADDRESS):
            parsed = ipaddress.ip_address(address)
            assert any(parsed in network for network in documentation), address

    def test_attack_sizes(
        self, issuer: TokenIssuer, device_agent: TokenIssuer, workloads: DemoWorkloads
    ) -> None:
        """The burst crosses the threshold and the stuffing tries enough distinct tokens."""
        probes = scripted_requests(build_script(issuer, device_agent, workloads))
        burst = [p for p in probes if p.forwarded_for == ATTACK_ADDRESS and p.method == "POST"]
        stuffing = [p for p in probes if p.expected_reason == "invalid_signature"]
        stuffing = [p for p in stuffing if p.forwarded_for == STUFFING_ADDRESS]

        assert BURST_THRESHOLD + 1 == len(burst)
        assert STUFFING_ACCOUNTS == len({probe.token for probe in stuffing})

    def test_detection_before_feedback(
        self, issuer: TokenIssuer, device_agent: TokenIssuer, workloads: DemoWorkloads
    ) -> None:
        """Every request expecting a risk denial comes after the detection step."""
        steps = build_script(issuer, device_agent, workloads)
        detect = next(i for i, step in enumerate(steps) if isinstance(step, AwaitDetection))
        flagged = [
            i
            for i, step in enumerate(steps)
            if isinstance(step, Probe) and (step.expected_reason or "").startswith("risk_")
        ]

        assert 2 == len(flagged)
        assert all(index > detect for index in flagged)

    def test_expected_decision(self) -> None:
        """A probe without an expected reason expects an allow, any other a deny."""
        assert "allow" == Probe("GET", "/", "root", None, 200).expected_decision
        assert "deny" == Probe("GET", "/", "root", None, 403, "no_segment").expected_decision


class TestGrantSteps:
    @pytest.fixture(name="broker")
    def fixture_broker(self) -> GrantBroker:
        """A broker with the two-person rule, like the demo's, without events."""
        return GrantBroker(
            signing_key=generate_signing_key(),
            store=MemoryGrantStore(),
            issuer=GRANT_ISSUER,
            require_approval=True,
        )

    @staticmethod
    def mint_step(**changes: Any) -> MintGrant:
        step = MintGrant(
            "mint",
            subject="reader",
            segment="admin",
            methods=("GET",),
            paths=(REPORT_PATH,),
            reason="review",
            requested_by="reader",
            approver="admin",
        )
        return dataclasses.replace(step, **changes)

    def test_prepare_sets_grant(self, broker: GrantBroker) -> None:
        """A probe that sends the grant gets its token and expects its id as a fact."""
        steps = GrantSteps(broker)
        outcome = steps.run(self.mint_step(), after_request=3)
        assert outcome.grant is not None
        probe = Probe("GET", REPORT_PATH, "report", "token", 200, sends_grant=True)

        prepared = steps.prepare(probe)

        assert steps.tokens == (prepared.grant_token,)
        assert {"grant_id": outcome.grant.grant_id} == prepared.expected_facts
        assert 3 == outcome.after_request

    def test_prepare_leaves_other_probes(self, broker: GrantBroker) -> None:
        """A probe that sends no grant is returned unchanged."""
        steps = GrantSteps(broker)
        steps.run(self.mint_step(), after_request=0)
        probe = Probe("GET", "/healthz", "health", None, 200)

        assert probe is steps.prepare(probe)

    def test_prepare_without_mint(self, broker: GrantBroker) -> None:
        """A probe that needs a grant before any mint raises LookupError."""
        probe = Probe("GET", REPORT_PATH, "report", "token", 200, sends_grant=True)

        with pytest.raises(LookupError, match="no grant was minted"):
            GrantSteps(broker).prepare(probe)

    def test_self_approval_recorded(self, broker: GrantBroker) -> None:
        """A mint the broker rejects becomes a failed outcome with the reason code."""
        steps = GrantSteps(broker)

        outcome = steps.run(self.mint_step(approver="reader"), after_request=0)

        assert not outcome.matched
        assert outcome.grant is None
        assert outcome.error is not None
        assert outcome.error.startswith("self_approval: ")
        assert () == steps.tokens

    def test_revoke_without_mint(self, broker: GrantBroker) -> None:
        """Revoking before any mint is a failed outcome, not an exception."""
        outcome = GrantSteps(broker).run(RevokeGrant("revoke", "admin", "done"), after_request=0)

        assert not outcome.matched
        assert outcome.error is not None
        assert outcome.error.startswith("grant_not_found: ")

    def test_revoke_twice(self, broker: GrantBroker) -> None:
        """A second revocation of the same grant fails with grant_already_revoked."""
        steps = GrantSteps(broker)
        steps.run(self.mint_step(), after_request=0)
        first = steps.run(RevokeGrant("revoke", "admin", "done"), after_request=1)

        second = steps.run(RevokeGrant("revoke", "admin", "again"), after_request=1)

        assert first.matched
        assert second.error is not None
        assert second.error.startswith("grant_already_revoked: ")


class TestCheckGrantEvents:
    @staticmethod
    def run_steps() -> tuple[list[StepOutcome], list[dict[str, Any]]]:
        """Mint and revoke one grant with a broker that records its events in memory."""
        events: list[dict[str, Any]] = []

        class ListEmitter:
            def emit(self, event: dict[str, Any]) -> None:
                events.append(event)

        broker = GrantBroker(
            signing_key=generate_signing_key(),
            store=MemoryGrantStore(),
            events=ListEmitter(),  # type: ignore[arg-type]
            require_approval=True,
        )
        steps = GrantSteps(broker)
        outcomes = [
            steps.run(TestGrantSteps.mint_step(), after_request=0),
            steps.run(RevokeGrant("revoke", "admin", "done"), after_request=1),
        ]
        used = {"event": "grant_used", "grant_id": events[0]["grant_id"], "request_id": "r1"}
        events.insert(3, used)
        return outcomes, events

    def test_expected_events_pass(self) -> None:
        """The events of one mint, one use and one revocation pass."""
        steps, events = self.run_steps()

        check = check_grant_events(
            events, steps, allowed_request_ids=["r1"], grant_request_ids=["r1", "r2"]
        )

        assert check.passed, check.detail
        assert "5 grant events as expected" == check.detail
        assert 1 == check.counts["grant_revoked"]

    def test_missing_revocation(self) -> None:
        """A missing grant_revoked event fails the check and is named."""
        steps, events = self.run_steps()
        events = [event for event in events if event["event"] != "grant_revoked"]

        check = check_grant_events(
            events, steps, allowed_request_ids=["r1"], grant_request_ids=["r1"]
        )

        assert not check.passed
        assert "grant_revoked: expected 1, got 0" == check.detail

    def test_missing_use(self) -> None:
        """An allowed request without a grant_used event fails the check."""
        steps, events = self.run_steps()

        check = check_grant_events(
            events, steps, allowed_request_ids=["r1", "r9"], grant_request_ids=["r1", "r9"]
        )

        assert not check.passed
        assert "no grant_used event for requests r9" == check.detail

    def test_use_by_other_request(self) -> None:
        """A grant_used event for a request that was not allowed fails the check."""
        steps, events = self.run_steps()

        check = check_grant_events(events, steps, allowed_request_ids=[], grant_request_ids=[])

        assert not check.passed
        assert "grant_used events for requests that were not allowed: r1" == check.detail

    def test_foreign_grant(self) -> None:
        """A grant event for a grant the run did not mint fails the check."""
        steps, events = self.run_steps()
        events[0] = {**events[0], "grant_id": "0" * 32}

        check = check_grant_events(
            events, steps, allowed_request_ids=["r1"], grant_request_ids=["r1"]
        )

        assert not check.passed
        assert "1 grant events name a grant_id that this run did not mint" == check.detail


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
