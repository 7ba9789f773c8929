# SPDX-License-Identifier: Apache-2.0
"""Running the demo: start the issuer and the app, run the script, check the events."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter
from typing import Any, Literal

from ..events import JsonLinesSink, MemorySink
from ..grants import GrantBroker, generate_signing_key
from ..grants.keys import public_jwk
from ..testing import TokenIssuer
from .app import GRANT_ISSUER, DemoClock, build_demo_app, default_policy_path, policy_environ
from .client import send_raw_request
from .grants import (
    GRANT_EVENT_KINDS,
    GrantEventCheck,
    GrantSteps,
    StepOutcome,
    check_grant_events,
)
from .monitoring import AnomalyCheck, DetectionOutcome, await_detection, check_anomaly_events
from .script import (
    IN_OFFICE_HOURS,
    AwaitDetection,
    Probe,
    ScriptStep,
    build_script,
    scripted_requests,
)
from .servers import serve_in_thread
from .workloads import CLIENT_CERTIFICATE_HEADER, generate_workloads

__all__ = [
    "DemoOptions",
    "DemoResult",
    "Outcome",
    "SchemaCheck",
    "find_secrets",
    "run_demo",
]

_REQUEST_TIMEOUT = 5.0
_USER_AGENT = "zerotrust-demo"
_GRANT_HEADER = "X-Zerotrust-Grant"
_DEVICE_AGENT_ISSUER = "https://device-agent.test"
# The shortest signature worth searching for; shorter strings could match by chance.
_MIN_SECRET_LENGTH = 16


@dataclass(frozen=True, slots=True)
class DemoOptions:
    """
    Settings of one demo run.

    Attributes:
        events_path: The JSON lines file that access events are appended to.
        host: The loopback address both servers listen on.
        port: The app's port; 0 picks a free one. The issuer always uses a free port.
        policy_path: The policy file of the app; `default_policy_path` when ``None``.
    """

    events_path: Path
    host: str = "127.0.0.1"
    port: int = 0
    policy_path: Path | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """
    The result of one scripted request.

    Attributes:
        probe: The scripted request, with the grant token it sent.
        status: The HTTP status received, or ``None`` when the request failed.
        event: The access event with this request's id, or ``None`` if none was recorded.
        error: Why the request failed, when it did.
    """

    probe: Probe
    status: int | None
    event: dict[str, Any] | None
    error: str | None = None

    @property
    def decision(self) -> str | None:
        return self.event.get("decision") if self.event is not None else None

    @property
    def facts(self) -> dict[str, Any]:
        """The ``facts`` of the access event; empty when it has none."""
        facts = self.event.get("facts") if self.event is not None else None
        return facts if isinstance(facts, dict) else {}

    @property
    def reason(self) -> str | None:
        """The first reason code of the access event, or ``None``."""
        reasons = self.event.get("reasons") if self.event is not None else None
        return reasons[0] if reasons else None

    @property
    def subject(self) -> str | None:
        """The ``subject`` of the access event, or ``None``."""
        return self.event.get("subject") if self.event is not None else None

    @property
    def matched(self) -> bool:
        probe = self.probe
        return (
            self.status == probe.expected_status
            and self.decision == probe.expected_decision
            and self.reason == probe.expected_reason
            and all(self.facts.get(key) == value for key, value in probe.expected_facts.items())
            and (probe.expected_subject is None or self.subject == probe.expected_subject)
        )


@dataclass(frozen=True, slots=True)
class SchemaCheck:
    """The result of validating the events file against the access event JSON Schema."""

    status: Literal["valid", "invalid", "skipped"]
    detail: str


@dataclass(slots=True)
class DemoResult:
    """
    Everything the report needs about one demo run.

    Attributes:
        outcomes: One entry per scripted request, in order.
        secrets: Every token, device assertion and grant token minted for the run, each one's
            signature, and the base64 lines of the private keys behind the workload CA and
            certificates.
        events_path: The events file.
        steps: One entry per grant step, in order.
        detections: One entry per detection step, in order.
        events: The access events this run appended to the file, parsed.
        grant_events: The grant events this run appended to the file, parsed.
        anomaly_events: The anomaly events this run appended to the file, parsed.
        invalid_lines: Appended lines that are neither access events with a ``decision``,
            grant events nor anomaly events.
        schema_check: The JSON Schema validation of the appended access events.
        grant_check: The comparison of the appended grant events with the expected ones.
        anomaly_check: The comparison of the appended anomaly events with those the monitor
            raised.
        leaked_into_events: Secrets found in the appended part of the events file.
        app_url: Where the sample app was served.
        wall_seconds: How long the run took, from generating keys to checking the events file.
        geo_load_seconds: How long the app took to load the geo data at start-up.
        policy_path: The policy file the app was built from.
        policy_sha256: The SHA-256 of that file's bytes, as hex.
    """

    outcomes: list[Outcome]
    secrets: tuple[str, ...]
    events_path: Path
    steps: list[StepOutcome] = field(default_factory=list)
    detections: list[DetectionOutcome] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    grant_events: list[dict[str, Any]] = field(default_factory=list)
    anomaly_events: list[dict[str, Any]] = field(default_factory=list)
    invalid_lines: int = 0
    schema_check: SchemaCheck = SchemaCheck("skipped", "not run")
    grant_check: GrantEventCheck = field(
        default_factory=lambda: GrantEventCheck(passed=False, detail="not run")
    )
    anomaly_check: AnomalyCheck = field(
        default_factory=lambda: AnomalyCheck(passed=False, detail="not run")
    )
    leaked_into_events: list[str] = field(default_factory=list)
    app_url: str = ""
    wall_seconds: float = 0.0
    geo_load_seconds: float | None = None
    policy_path: Path | None = None
    policy_sha256: str = ""

    @property
    def all_matched(self) -> bool:
        """Whether every request got its expected outcome and every step succeeded."""
        return (
            all(outcome.matched for outcome in self.outcomes)
            and all(step.matched for step in self.steps)
            and all(detection.matched for detection in self.detections)
        )

    @property
    def passed(self) -> bool:
        """Whether every request and step matched and the events file passed every check."""
        return (
            self.all_matched
            and self.invalid_lines == 0
            and len(self.events) == len(self.outcomes)
            and self.schema_check.status != "invalid"
            and self.grant_check.passed
            and self.anomaly_check.passed
            and not self.leaked_into_events
        )


def run_demo(
    options: DemoOptions,
    events_sink: JsonLinesSink,
    *,
    progress: Callable[[str], object] = lambda _message: None,
) -> DemoResult:
    """
    Start the token issuer and the sample app, run the script, then check the events.

    The script's requests go to the app. Its grant steps go to a grant broker that the runner
    holds, as an administrator's tool would. The app gets only the public key of the broker,
    so it can verify grants but never mint them.
    ``events_sink`` writes to ``options.events_path``; the caller opens it so that a bad path
    is reported before any server starts. It is closed when the run ends.

    Raises:
        ServerStartError: if a server does not start.
        ConfigurationError: if the policy file is invalid or lacks a verifier the demo drives.
    """
    started = perf_counter()
    start_offset = _file_size(options.events_path)
    run_id = os.urandom(3).hex()

    progress("Generating signing keys, and a CA with certificates for the workloads")
    issuer = TokenIssuer(algorithms=("RS256", "ES256"))
    device_agent = TokenIssuer(issuer=_DEVICE_AGENT_ISSUER, algorithms=("ES256",))
    grant_key = generate_signing_key()
    workloads = generate_workloads()
    script = build_script(issuer, device_agent, workloads)
    request_count = len(scripted_requests(script))
    memory = MemorySink()
    clock = DemoClock(IN_OFFICE_HOURS)

    progress("Starting the token issuer and its JWKS endpoint")
    with serve_in_thread(issuer.jwks_app(), name="issuer", host=options.host) as issuer_app:
        environ = policy_environ(
            issuer=issuer.issuer,
            jwks_url=f"{issuer_app.url}/.well-known/jwks.json",
            device_issuer=device_agent.issuer,
            device_keys=device_agent.jwks(),
            grant_keys={"keys": [public_jwk(grant_key)]},
            base=os.environ,
        )
        policy_path = options.policy_path or default_policy_path()
        progress(f"Loading the policy file {policy_path}")
        demo = build_demo_app(
            policy_path,
            environ=environ,
            clock=clock,
            sinks=[events_sink, memory],
        )
        # Grant events go through the app's emitter, so they land in the same events file.
        # The broker records in the app's grant store, so a revocation reaches the app at once.
        broker = GrantBroker(
            signing_key=grant_key,
            store=demo.grant_store,
            issuer=GRANT_ISSUER,
            events=demo.events,
            require_approval=True,
        )
        grant_steps = GrantSteps(broker)
        try:
            progress("Loading the geo data and starting the sample app behind ZeroTrustMiddleware")
            with serve_in_thread(
                demo.middleware, name="app", host=options.host, port=options.port
            ) as served:
                progress(f"Sending {request_count} requests to {served.url}")
                sent, steps, detections = asyncio.run(
                    _run_script(
                        served.host,
                        served.port,
                        script,
                        run_id,
                        clock,
                        grant_steps,
                        lambda step, count: await_detection(
                            step, after_request=count, monitor=demo.monitor, emitter=demo.events
                        ),
                    )
                )
        finally:
            # Closing flushes the queue, so both sinks contain every event before they are read.
            demo.events.close()

    access_events = (event for event in memory.events if event.get("event") == "access")
    events_by_id = {event.get("request_id"): event for event in access_events}
    outcomes = [
        Outcome(probe, status, events_by_id.get(_request_id(run_id, index)), error)
        for index, (probe, status, error) in enumerate(sent)
    ]
    credentials = [credential for probe, _, _ in sent for credential in _credentials(probe)]
    credentials.extend(grant_steps.tokens)
    secrets = (*_secrets(credentials), *workloads.key_markers)
    result = DemoResult(outcomes, secrets, options.events_path, steps, detections)
    result.app_url = served.url
    result.geo_load_seconds = demo.geo_load_seconds
    result.policy_path = demo.policy.path
    result.policy_sha256 = demo.policy.sha256

    progress("Checking the events file")
    _check_events_file(result, start_offset)
    result.wall_seconds = perf_counter() - started

    return result


def find_secrets(text: str, secrets: Iterable[str]) -> list[str]:
    """Return the secrets that occur in ``text``."""
    return [secret for secret in secrets if secret in text]


async def _run_script(
    host: str,
    port: int,
    script: Sequence[ScriptStep],
    run_id: str,
    clock: DemoClock,
    grant_steps: GrantSteps,
    detect: Callable[[AwaitDetection, int], DetectionOutcome],
) -> tuple[list[tuple[Probe, int | None, str | None]], list[StepOutcome], list[DetectionOutcome]]:
    """
    Run the script in order: send each request, and run each step between them.

    Returns each request as sent, with its status or the error that stopped it, the outcome
    of each grant step and of each detection step. A request that needs a grant when none was
    minted is not sent. ``detect`` runs a detection step, given the number of requests sent.
    """
    sent: list[tuple[Probe, int | None, str | None]] = []
    steps: list[StepOutcome] = []
    detections: list[DetectionOutcome] = []
    for step in script:
        if isinstance(step, AwaitDetection):
            # The flush blocks this loop only; the app is served from another thread.
            detections.append(detect(step, len(sent)))
            continue
        if not isinstance(step, Probe):
            # The broker and its memory store do no network I/O, so they run on the loop.
            steps.append(grant_steps.run(step, after_request=len(sent)))
            continue
        try:
            probe = grant_steps.prepare(step)
        except LookupError as error:
            sent.append((step, None, str(error)))
            continue
        status, failure = await _send(host, port, probe, _request_id(run_id, len(sent)), clock)
        sent.append((probe, status, failure))

    return sent, steps, detections


async def _send(
    host: str, port: int, probe: Probe, request_id: str, clock: DemoClock
) -> tuple[int | None, str | None]:
    """
    Send one probe; return its status, or the error that stopped it.

    Before the request, ``clock`` is set to the probe's instant. The request waits for its
    response or its timeout, so the next one cannot set the clock while it is judged.
    """
    headers = {"User-Agent": _USER_AGENT, "X-Request-ID": request_id}
    if probe.token is not None:
        headers["Authorization"] = f"Bearer {probe.token}"
    if probe.grant_token is not None:
        headers[_GRANT_HEADER] = probe.grant_token
    if probe.device_assertion is not None:
        headers["X-Device-Assertion"] = probe.device_assertion
    if probe.forwarded_for is not None:
        headers["X-Forwarded-For"] = probe.forwarded_for
    if probe.workload is not None:
        headers[CLIENT_CERTIFICATE_HEADER] = probe.workload.header_value
    body = b'{"name": "gamma"}' if probe.method == "POST" else b""
    if body:
        headers["Content-Type"] = "application/json"
    clock.now = probe.clock or IN_OFFICE_HOURS
    try:
        async with asyncio.timeout(_REQUEST_TIMEOUT):
            response = await send_raw_request(
                host, port, probe.method, probe.target, headers=headers, body=body
            )
    except TimeoutError:
        return None, f"no response within {_REQUEST_TIMEOUT:g} s"
    except OSError as error:
        return None, f"{type(error).__name__}: {error}"

    return response.status, None


def _request_id(run_id: str, index: int) -> str:
    return f"demo-{run_id}-{index + 1:02d}"


def _credentials(probe: Probe) -> list[str]:
    """Return the bearer token, device assertion and grant token that the probe sends."""
    return [value for value in (probe.token, probe.device_assertion, probe.grant_token) if value]


def _secrets(tokens: Iterable[str | None]) -> tuple[str, ...]:
    found: dict[str, None] = {}
    for token in tokens:
        if not token:
            continue
        found[token] = None
        signature = token.rpartition(".")[2]
        if len(signature) >= _MIN_SECRET_LENGTH:
            found[signature] = None

    return tuple(found)


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _check_events_file(result: DemoResult, start_offset: int) -> None:
    """
    Parse the lines this run appended, check them and search them for tokens.

    Access events are validated against the access event schema, which covers only them.
    Grant events are counted by kind and compared with what the grant steps should cause.
    Anomaly events are counted by detector and compared with what the monitor raised.
    """
    with result.events_path.open("rb") as file:
        file.seek(start_offset)
        appended = file.read().decode("utf-8", "replace")

    for line in appended.splitlines():
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            result.invalid_lines += 1
            continue
        if not isinstance(event, dict):
            result.invalid_lines += 1
        elif event.get("event") == "access" and "decision" in event:
            result.events.append(event)
        elif event.get("event") in GRANT_EVENT_KINDS:
            result.grant_events.append(event)
        elif event.get("event") == "anomaly":
            result.anomaly_events.append(event)
        else:
            result.invalid_lines += 1

    result.schema_check = _validate(result.events)
    allowed_ids: list[str] = []
    grant_ids: list[str] = []
    for outcome in result.outcomes:
        if outcome.probe.grant_token is None or outcome.event is None:
            continue
        grant_ids.append(outcome.event["request_id"])
        if outcome.decision == "allow":
            allowed_ids.append(outcome.event["request_id"])
    result.grant_check = check_grant_events(
        result.grant_events,
        result.steps,
        allowed_request_ids=allowed_ids,
        grant_request_ids=grant_ids,
    )
    result.anomaly_check = check_anomaly_events(result.anomaly_events, result.detections)
    result.leaked_into_events = find_secrets(appended, result.secrets)


def _validate(events: Sequence[dict[str, Any]]) -> SchemaCheck:
    try:
        import jsonschema  # type: ignore[import-untyped, unused-ignore]
    except ImportError:
        return SchemaCheck("skipped", "jsonschema is not installed: pip install jsonschema")

    from ..events import access_event_schema

    try:
        schema = access_event_schema()
    except (OSError, ValueError) as error:
        return SchemaCheck("skipped", f"the access event schema could not be loaded: {error}")

    validator_class = jsonschema.validators.validator_for(schema)
    try:
        validator_class.check_schema(schema)
    except jsonschema.SchemaError as error:
        return SchemaCheck("invalid", f"the access event schema is not valid: {error.message}")

    validator = validator_class(schema)
    for number, event in enumerate(events, start=1):
        failure = jsonschema.exceptions.best_match(validator.iter_errors(event))
        if failure is not None:
            location = "/".join(str(part) for part in failure.absolute_path) or "(root)"
            detail = f"event {number} fails the schema at {location}: {failure.message}"
            return SchemaCheck("invalid", detail)

    return SchemaCheck("valid", f"{len(events)} access events match the access event schema")
