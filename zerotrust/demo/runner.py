# SPDX-License-Identifier: Apache-2.0
"""Running the demo: start the issuer and the app, send the scripted requests, check the events."""

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
from ..testing import TokenIssuer
from .app import DemoClock, build_demo_app
from .client import send_raw_request
from .script import IN_OFFICE_HOURS, Probe, build_script
from .servers import serve_in_thread

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
    """

    events_path: Path
    host: str = "127.0.0.1"
    port: int = 0


@dataclass(frozen=True, slots=True)
class Outcome:
    """
    The result of one scripted request.

    Attributes:
        probe: The scripted request.
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
    def matched(self) -> bool:
        probe = self.probe
        return (
            self.status == probe.expected_status
            and self.decision == probe.expected_decision
            and self.reason == probe.expected_reason
            and all(self.facts.get(key) == value for key, value in probe.expected_facts.items())
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
        secrets: Every token and device assertion minted for the run, and each one's signature.
        events_path: The events file.
        events: The events this run appended to the file, parsed; invalid lines are skipped.
        invalid_lines: Appended lines that are not JSON objects with a ``decision``.
        schema_check: The JSON Schema validation of the appended events.
        leaked_into_events: Secrets found in the appended part of the events file.
        app_url: Where the sample app was served.
        wall_seconds: How long the run took, from generating keys to checking the events file.
        geo_load_seconds: How long the app took to load the geo data at start-up.
    """

    outcomes: list[Outcome]
    secrets: tuple[str, ...]
    events_path: Path
    events: list[dict[str, Any]] = field(default_factory=list)
    invalid_lines: int = 0
    schema_check: SchemaCheck = SchemaCheck("skipped", "not run")
    leaked_into_events: list[str] = field(default_factory=list)
    app_url: str = ""
    wall_seconds: float = 0.0
    geo_load_seconds: float | None = None

    @property
    def all_matched(self) -> bool:
        return all(outcome.matched for outcome in self.outcomes)

    @property
    def passed(self) -> bool:
        """Whether every request matched and the events file passed every check."""
        return (
            self.all_matched
            and self.invalid_lines == 0
            and len(self.events) == len(self.outcomes)
            and self.schema_check.status != "invalid"
            and not self.leaked_into_events
        )


def run_demo(
    options: DemoOptions,
    events_sink: JsonLinesSink,
    *,
    progress: Callable[[str], object] = lambda _message: None,
) -> DemoResult:
    """
    Start the token issuer and the sample app, send every scripted request, then check the events.

    ``events_sink`` writes to ``options.events_path``; the caller opens it so that a bad path
    is reported before any server starts. It is closed when the run ends.

    Raises:
        ServerStartError: if a server does not start.
    """
    started = perf_counter()
    start_offset = _file_size(options.events_path)
    run_id = os.urandom(3).hex()

    progress("Generating signing keys for the token issuer and the device agent")
    issuer = TokenIssuer(algorithms=("RS256", "ES256"))
    device_agent = TokenIssuer(issuer=_DEVICE_AGENT_ISSUER, algorithms=("ES256",))
    probes = build_script(issuer, device_agent)
    memory = MemorySink()
    clock = DemoClock(IN_OFFICE_HOURS)

    progress("Starting the token issuer and its JWKS endpoint")
    with serve_in_thread(issuer.jwks_app(), name="issuer", host=options.host) as issuer_app:
        demo = build_demo_app(
            issuer=issuer.issuer,
            jwks_url=f"{issuer_app.url}/.well-known/jwks.json",
            device_issuer=device_agent.issuer,
            device_keys=device_agent.jwks(),
            clock=clock,
            sinks=[events_sink, memory],
        )
        try:
            progress("Loading the geo data and starting the sample app behind ZeroTrustMiddleware")
            with serve_in_thread(
                demo.middleware, name="app", host=options.host, port=options.port
            ) as served:
                progress(f"Sending {len(probes)} requests to {served.url}")
                responses = asyncio.run(_send_all(served.host, served.port, probes, run_id, clock))
        finally:
            # Closing flushes the queue, so both sinks contain every event before they are read.
            demo.events.close()

    events_by_id = {event.get("request_id"): event for event in memory.events}
    outcomes = [
        Outcome(probe, status, events_by_id.get(_request_id(run_id, index)), error)
        for index, (probe, (status, error)) in enumerate(zip(probes, responses, strict=True))
    ]
    credentials = [credential for probe in probes for credential in _credentials(probe)]
    result = DemoResult(outcomes, _secrets(credentials), options.events_path)
    result.app_url = served.url
    result.geo_load_seconds = demo.geo_load_seconds

    progress("Checking the events file")
    _check_events_file(result, start_offset)
    result.wall_seconds = perf_counter() - started

    return result


def find_secrets(text: str, secrets: Iterable[str]) -> list[str]:
    """Return the secrets that occur in ``text``."""
    return [secret for secret in secrets if secret in text]


async def _send_all(
    host: str, port: int, probes: Sequence[Probe], run_id: str, clock: DemoClock
) -> list[tuple[int | None, str | None]]:
    """
    Send the probes one after another; return each status or the error that stopped it.

    Before each request, ``clock`` is set to the probe's instant. Each request waits for its
    response or its timeout before the next one sets the clock again.
    """
    responses: list[tuple[int | None, str | None]] = []
    for index, probe in enumerate(probes):
        headers = {"User-Agent": _USER_AGENT, "X-Request-ID": _request_id(run_id, index)}
        if probe.token is not None:
            headers["Authorization"] = f"Bearer {probe.token}"
        if probe.device_assertion is not None:
            headers["X-Device-Assertion"] = probe.device_assertion
        if probe.forwarded_for is not None:
            headers["X-Forwarded-For"] = probe.forwarded_for
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
            responses.append((None, f"no response within {_REQUEST_TIMEOUT:g} s"))
        except OSError as error:
            responses.append((None, f"{type(error).__name__}: {error}"))
        else:
            responses.append((response.status, None))

    return responses


def _request_id(run_id: str, index: int) -> str:
    return f"demo-{run_id}-{index + 1:02d}"


def _credentials(probe: Probe) -> list[str]:
    """Return the bearer token and the device assertion that the probe sends, if any."""
    return [value for value in (probe.token, probe.device_assertion) if value]


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
    """Parse the lines this run appended, validate them and search them for tokens."""
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
        if not isinstance(event, dict) or "decision" not in event:
            result.invalid_lines += 1
            continue
        result.events.append(event)

    result.schema_check = _validate(result.events)
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

    return SchemaCheck("valid", f"{len(events)} events match the access event schema")
