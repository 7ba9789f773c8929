# SPDX-License-Identifier: Apache-2.0
"""Replacing the policy of a running middleware: by a call, from a file, and on SIGHUP."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from zerotrust import Policy, Segment, ZeroTrustMiddleware
from zerotrust.asgi import get_access
from zerotrust.config import PolicyFileError
from zerotrust.events import EventEmitter, MemorySink
from zerotrust.exceptions import ConfigurationError, KeySetUnavailableError
from zerotrust.testing import TokenIssuer, capture_events, serve
from zerotrust.verifiers import JWTVerifier
from zerotrust.verifiers.base import Principal, Verdict, VerificationContext, Verifier
from zerotrust.wsgi import ZeroTrustWSGIMiddleware

# Bounds of the load test: requests, requests in flight at once, and policy swaps. The served
# tests keep idle connections open for 60 s, so that uvicorn never closes one that the client
# is about to reuse, which a loaded machine would otherwise turn into a read error.
LOAD_REQUESTS = 300
LOAD_CONCURRENCY = 30
LOAD_SWAPS = 30


class VersionedIdentity(Verifier):
    """
    Authenticate ``user`` with the role ``alpha`` and record which policy version ran.

    It sleeps a little first, so that requests are still deciding while the policy changes.
    """

    name = "versioned_identity"
    kind = "identity"

    def __init__(self, version: str, delay: float = 0.002) -> None:
        super().__init__()
        self.version = version
        self.delay = delay

    async def verify(self, request: Any, context: VerificationContext) -> Verdict:
        await asyncio.sleep(self.delay)
        principal = Principal("user", roles=frozenset({"alpha"}))
        return Verdict.passed(principal=principal, policy_version=self.version)


def versioned_policy(version: str) -> Policy:
    """
    Build policy ``A`` (role ``alpha`` required: allowed) or ``B`` (role ``beta``: denied).

    Each request's segment name and the fact its verifier recorded both name the version, so
    a decision made from parts of both policies would show two different versions.
    """
    role = "alpha" if version == "A" else "beta"
    return Policy(
        [
            Segment(
                f"data-{version}",
                paths=["/data/"],
                verifiers=[VersionedIdentity(version)],
                roles=[role],
            )
        ]
    )


async def versioned_app(scope: Scope, receive: Receive, send: Send) -> None:
    access = get_access(scope)
    assert access is not None
    segment = access.decision.segment
    body = json.dumps(
        {
            "segment": segment.name if segment is not None else None,
            "version": access.decision.facts.get("policy_version"),
        }
    ).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def build_middleware(policy: Policy) -> tuple[ZeroTrustMiddleware, MemorySink]:
    sink = MemorySink()
    middleware = ZeroTrustMiddleware(
        versioned_app, policy=policy, events=EventEmitter([sink], flush_interval=0.01)
    )
    return middleware, sink


def closed_port() -> int:
    """Return a loopback port that nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def wait_for(condition: Any, seconds: float = 5.0) -> None:
    """Wait until ``condition()`` holds, for what another thread or the OS delivers."""
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.01)


def check_consistent(status: int, body: dict[str, Any] | None, event: dict[str, Any]) -> None:
    """Assert that one request was decided by policy A or policy B as a whole."""
    facts = event.get("facts") or {}
    version = facts.get("policy_version")
    assert version in ("A", "B")
    assert f"data-{version}" == event["segment"]
    if version == "A":
        assert 200 == status
        assert body == {"segment": "data-A", "version": "A"}
        assert "allow" == event["decision"]
    else:
        assert 403 == status
        assert ["insufficient_role"] == event["reasons"]


async def test_replace_policy_swaps() -> None:
    middleware, _ = build_middleware(versioned_policy("A"))
    transport = httpx.ASGITransport(app=middleware)

    async with httpx.AsyncClient(transport=transport, base_url="http://app.test") as client:
        before = await client.get("/data/x")
        await middleware.replace_policy(versioned_policy("B"))
        after = await client.get("/data/x")

    assert 200 == before.status_code
    assert 403 == after.status_code
    assert ["data-B"] == [segment.name for segment in middleware.policy.segments]
    assert middleware.engine.policy is middleware.policy


async def test_replace_policy_event() -> None:
    middleware, _ = build_middleware(versioned_policy("A"))
    two_segments = [
        Segment("public", paths=["/healthz"], public=True),
        *versioned_policy("B").segments,
    ]

    with capture_events() as events:
        await middleware.replace_policy(two_segments)

    (event,) = events
    assert "policy_reloaded" == event["event"]
    assert "replace" == event["trigger"]
    assert 1 == event["old_segments"]
    assert 2 == event["new_segments"]
    assert ["public", "data-B"] == event["segments_added"]
    assert ["data-A"] == event["segments_removed"]
    assert event["old_sha256"] is None
    assert event["new_sha256"] is None


async def test_replace_policy_rejects_other_types() -> None:
    middleware, _ = build_middleware(versioned_policy("A"))

    with pytest.raises(ConfigurationError):
        await middleware.replace_policy([])  # type: ignore[list-item]

    assert ["data-A"] == [segment.name for segment in middleware.policy.segments]


async def test_reload_without_file_raises() -> None:
    middleware, _ = build_middleware(versioned_policy("A"))

    with pytest.raises(ConfigurationError, match="not built from a policy file"):
        await middleware.reload()


async def test_replace_under_load_served() -> None:
    """Every decision under concurrent swaps comes from one whole policy; none is a 500."""
    middleware, _ = build_middleware(versioned_policy("A"))
    results: list[tuple[str, int, dict[str, Any] | None]] = []
    swaps_done = 0

    with (
        capture_events() as events,
        serve(middleware, lifespan="off", timeout_keep_alive=60) as base_url,
    ):
        limits = httpx.Limits(max_connections=LOAD_CONCURRENCY)
        async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=10) as client:
            semaphore = asyncio.Semaphore(LOAD_CONCURRENCY)

            async def call(number: int) -> None:
                request_id = f"load-{number}"
                async with semaphore:
                    response = await client.get("/data/x", headers={"x-request-id": request_id})
                body = response.json() if response.status_code == 200 else None
                results.append((request_id, response.status_code, body))

            async def swap() -> None:
                nonlocal swaps_done
                for version in itertools.islice(itertools.cycle("BA"), LOAD_SWAPS):
                    await middleware.replace_policy(versioned_policy(version))
                    swaps_done += 1
                    await asyncio.sleep(0.005)

            await asyncio.gather(swap(), *(call(number) for number in range(LOAD_REQUESTS)))

        # Over a real server an event may be recorded just after the client read the response.
        await wait_for(
            lambda: sum(event.get("event") == "access" for event in events) >= LOAD_REQUESTS
        )

    access = {event["request_id"]: event for event in events if event.get("event") == "access"}
    assert LOAD_SWAPS == swaps_done
    assert LOAD_REQUESTS == len(results)
    assert {200, 403} >= {status for _, status, _ in results}
    for request_id, status, body in results:
        check_consistent(status, body, access[request_id])
    # Both policies decided some of the requests, so the swaps happened under load.
    versions = {event["facts"]["policy_version"] for event in access.values()}
    assert {"A", "B"} == versions
    reloads = [event for event in events if event.get("event") == "policy_reloaded"]
    assert LOAD_SWAPS == len(reloads)


async def test_replace_warms_jwks(issuer: TokenIssuer, jwks_url: str) -> None:
    middleware, _ = build_middleware(versioned_policy("A"))
    identity = JWTVerifier(
        issuer=issuer.issuer, audience="api", algorithms=["RS256"], jwks_url=jwks_url
    )
    segment = Segment("api", paths=["/api/"], verifiers=[identity])

    active = await middleware.replace_policy([segment])

    (key_set,) = active.key_sets
    assert key_set.last_error is None
    assert key_set.lookup_cached(issuer.kid("RS256"), "RS256") is not None


async def test_unreachable_jwks_keeps_old_policy(issuer: TokenIssuer) -> None:
    middleware, _ = build_middleware(versioned_policy("A"))
    identity = JWTVerifier(
        issuer=issuer.issuer,
        audience="api",
        algorithms=["RS256"],
        jwks_url=f"http://127.0.0.1:{closed_port()}/.well-known/jwks.json",
        jwks_options={"timeout": 1.0},
    )

    with capture_events() as events, pytest.raises(KeySetUnavailableError):
        await middleware.replace_policy([Segment("api", paths=["/api/"], verifiers=[identity])])

    assert ["data-A"] == [segment.name for segment in middleware.policy.segments]
    (event,) = events
    assert "policy_reload_failed" == event["event"]
    assert "KeySetUnavailableError" == event["error_type"]
    assert "127.0.0.1" in event["error"]
    assert 1 == event["active_segments"]


# Policy files


def policy_text(version: str) -> str:
    """Return policy ``A`` or ``B`` of `versioned_policy` as a policy file."""
    role = "alpha" if version == "A" else "beta"
    return f"""\
version = 1

[verifiers.identity]
type = "test_reload:VersionedIdentity"
version = "{version}"

[[segments]]
name = "data-{version}"
paths = ["/data/"]
verifiers = ["identity"]
roles = ["{role}"]
"""


INVALID_POLICY = """\
version = 1

[[segments]]
name = "data-C"
paths = ["/data/"]
verifiers = ["nowhere"]
"""


def write_policy(path: Path, text: str) -> str:
    """Replace the file the way editors and deployment tools do, and return its SHA-256."""
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)
    return hashlib.sha256(text.encode()).hexdigest()


def file_middleware(path: Path, **options: Any) -> ZeroTrustMiddleware:
    return ZeroTrustMiddleware.from_policy_file(
        versioned_app, path, events=EventEmitter([], flush_interval=0.01), **options
    )


@pytest.fixture(name="policy_file")
def fixture_policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.toml"
    write_policy(path, policy_text("A"))
    return path


async def test_reload_reads_file(policy_file: Path) -> None:
    first_sha256 = hashlib.sha256(policy_text("A").encode()).hexdigest()
    middleware = file_middleware(policy_file)
    transport = httpx.ASGITransport(app=middleware)

    async with httpx.AsyncClient(transport=transport, base_url="http://app.test") as client:
        before = await client.get("/data/x")
        second_sha256 = write_policy(policy_file, policy_text("B"))
        with capture_events() as events:
            active = await middleware.reload()
        after = await client.get("/data/x")

    assert 200 == before.status_code
    assert 403 == after.status_code
    assert second_sha256 == active.sha256
    assert policy_file == active.source
    (event,) = events
    assert "policy_reloaded" == event["event"]
    assert "call" == event["trigger"]
    assert first_sha256 == event["old_sha256"]
    assert second_sha256 == event["new_sha256"]
    assert 1 == event["old_segments"]
    assert 1 == event["new_segments"]
    assert str(policy_file) == event["source"]


async def test_invalid_file_keeps_old_policy(policy_file: Path) -> None:
    middleware = file_middleware(policy_file)
    first_sha256 = middleware.active_policy.sha256
    invalid_sha256 = write_policy(policy_file, INVALID_POLICY)

    with capture_events() as events, pytest.raises(PolicyFileError, match="nowhere"):
        await middleware.reload()

    assert ["data-A"] == [segment.name for segment in middleware.policy.segments]
    assert first_sha256 == middleware.active_policy.sha256
    (event,) = events
    assert "policy_reload_failed" == event["event"]
    assert "PolicyFileError" == event["error_type"]
    assert "nowhere" in event["error"]
    assert invalid_sha256 == event["sha256"]
    assert first_sha256 == event["active_sha256"]


async def test_missing_file_keeps_old_policy(policy_file: Path) -> None:
    middleware = file_middleware(policy_file)
    os.unlink(policy_file)

    with capture_events() as events, pytest.raises(OSError, match=r"policy\.toml"):
        await middleware.reload()

    assert ["data-A"] == [segment.name for segment in middleware.policy.segments]
    (event,) = events
    assert "policy_reload_failed" == event["event"]
    assert event["sha256"] is None


async def test_reload_file_under_load_served(policy_file: Path) -> None:
    """Reload good and invalid files while requests are in flight: no mix, no 500."""
    middleware = file_middleware(policy_file)
    results: list[tuple[str, int, dict[str, Any] | None]] = []
    outcomes = {"reloaded": 0, "rejected": 0}

    with (
        capture_events() as events,
        serve(middleware, lifespan="off", timeout_keep_alive=60) as base_url,
    ):
        limits = httpx.Limits(max_connections=LOAD_CONCURRENCY)
        async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=10) as client:
            semaphore = asyncio.Semaphore(LOAD_CONCURRENCY)

            async def call(number: int) -> None:
                request_id = f"file-{number}"
                async with semaphore:
                    response = await client.get("/data/x", headers={"x-request-id": request_id})
                body = response.json() if response.status_code == 200 else None
                results.append((request_id, response.status_code, body))

            async def reload_loop() -> None:
                texts = itertools.cycle([policy_text("B"), INVALID_POLICY, policy_text("A")])
                for text in itertools.islice(texts, LOAD_SWAPS):
                    write_policy(policy_file, text)
                    try:
                        await middleware.reload()
                    except PolicyFileError:
                        outcomes["rejected"] += 1
                    else:
                        outcomes["reloaded"] += 1
                    await asyncio.sleep(0.005)

            await asyncio.gather(reload_loop(), *(call(number) for number in range(LOAD_REQUESTS)))

        await wait_for(
            lambda: sum(event.get("event") == "access" for event in events) >= LOAD_REQUESTS
        )

    access = {event["request_id"]: event for event in events if event.get("event") == "access"}
    assert {"reloaded": 20, "rejected": 10} == outcomes
    assert {200, 403} >= {status for _, status, _ in results}
    for request_id, status, body in results:
        check_consistent(status, body, access[request_id])
    assert {"A", "B"} == {event["facts"]["policy_version"] for event in access.values()}
    kinds = [event["event"] for event in events if event.get("event") != "access"]
    assert 20 == kinds.count("policy_reloaded")
    assert 10 == kinds.count("policy_reload_failed")


def test_wsgi_reload(policy_file: Path) -> None:
    def wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("content-type", "text/plain")])
        return [b"ok"]

    middleware = ZeroTrustWSGIMiddleware.from_policy_file(
        wsgi_app, policy_file, events=EventEmitter([])
    )
    try:
        write_policy(policy_file, policy_text("B"))
        active = middleware.reload()
        replaced = middleware.replace_policy(versioned_policy("A"))
    finally:
        middleware.close()

    assert ["data-B"] == [segment.name for segment in active.policy.segments]
    assert ["data-A"] == [segment.name for segment in replaced.policy.segments]
    assert middleware.policy is replaced.policy


RISK_POLICY = """\
version = 1

[detectors.burst]
type = "denied_burst"
threshold = 3
window = 60

[monitor]
detectors = ["burst"]

[verifiers.identity]
type = "test_reload:VersionedIdentity"
version = "{version}"

[verifiers.risk]
type = "risk"

[verifiers.grants]
type = "grant"
keys = {{ env = "ZT_TEST_GRANT_KEYS" }}
store = {{ type = "memory" }}
issuer = "reload-test"
events = true

[[segments]]
name = "data-{version}"
paths = ["/data/"]
verifiers = ["identity", "risk", "grants"]
roles = ["alpha"]
"""


async def test_reload_keeps_running_state(
    policy_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """New verifiers read the running risk signals and grant store, and emit to its events."""
    from zerotrust.grants import generate_signing_key
    from zerotrust.grants.keys import public_jwk

    signing_key = generate_signing_key("EdDSA")
    monkeypatch.setenv("ZT_TEST_GRANT_KEYS", json.dumps({"keys": [public_jwk(signing_key)]}))
    write_policy(policy_file, RISK_POLICY.format(version="A"))
    middleware = ZeroTrustMiddleware.from_policy_file(versioned_app, policy_file)
    first = middleware.active_policy.loaded
    write_policy(policy_file, RISK_POLICY.format(version="B"))

    active = await middleware.reload()

    identity, risk, grants = active.policy.segments[0].verifiers
    assert "B" == identity.version  # type: ignore[attr-defined]
    assert risk.signals is first.verifiers["risk"].signals  # type: ignore[attr-defined]
    assert risk.signals is first.monitor.signals  # type: ignore[attr-defined]
    assert grants.store is first.verifiers["grants"].store  # type: ignore[attr-defined]
    assert grants.events is middleware.events  # type: ignore[attr-defined]
    middleware.events.close()


# SIGHUP


@pytest.fixture(name="restore_sighup")
def fixture_restore_sighup() -> Iterator[None]:
    previous = signal.getsignal(signal.SIGHUP)
    try:
        yield
    finally:
        signal.signal(signal.SIGHUP, previous)


@pytest.mark.usefixtures("restore_sighup")
async def test_sighup_reloads_and_chains(policy_file: Path) -> None:
    calls: list[int] = []

    def previous(signum: int, frame: FrameType | None) -> None:
        calls.append(signum)

    signal.signal(signal.SIGHUP, previous)
    middleware = file_middleware(policy_file, reload_on_sighup=True)
    await middleware.warm_up()
    new_sha256 = write_policy(policy_file, policy_text("B"))

    with capture_events() as events:
        os.kill(os.getpid(), signal.SIGHUP)
        await wait_for(lambda: middleware.active_policy.sha256 == new_sha256)

    assert [signal.SIGHUP] == calls
    assert ["data-B"] == [segment.name for segment in middleware.policy.segments]
    (event,) = events
    assert "policy_reloaded" == event["event"]
    assert "signal" == event["trigger"]


@pytest.mark.usefixtures("restore_sighup")
async def test_sighup_invalid_file_keeps_policy(
    policy_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    middleware = file_middleware(policy_file, reload_on_sighup=True)
    await middleware.warm_up()
    write_policy(policy_file, INVALID_POLICY)

    with capture_events() as events:
        os.kill(os.getpid(), signal.SIGHUP)
        await wait_for(lambda: bool(events))
        await wait_for(lambda: "old policy stays in force" in caplog.text)

    assert ["data-A"] == [segment.name for segment in middleware.policy.segments]
    assert ["policy_reload_failed"] == [event["event"] for event in events]
    assert "old policy stays in force" in caplog.text


@pytest.mark.usefixtures("restore_sighup")
def test_sighup_without_loop_reloads_in_thread(policy_file: Path) -> None:
    middleware = file_middleware(policy_file, reload_on_sighup=True)
    new_sha256 = write_policy(policy_file, policy_text("B"))

    os.kill(os.getpid(), signal.SIGHUP)
    deadline = time.monotonic() + 5
    while middleware.active_policy.sha256 != new_sha256 and time.monotonic() < deadline:
        time.sleep(0.01)

    assert ["data-B"] == [segment.name for segment in middleware.policy.segments]


@pytest.mark.usefixtures("restore_sighup")
def test_sighup_needs_policy_file() -> None:
    with pytest.raises(ConfigurationError, match="built from a policy file"):
        ZeroTrustMiddleware(versioned_app, policy=versioned_policy("A"), reload_on_sighup=True)


@pytest.mark.usefixtures("restore_sighup")
def test_sighup_needs_main_thread(policy_file: Path) -> None:
    errors: list[BaseException] = []

    def build() -> None:
        try:
            file_middleware(policy_file, reload_on_sighup=True)
        except ConfigurationError as error:
            errors.append(error)

    thread = threading.Thread(target=build)
    thread.start()
    thread.join(10)

    assert 1 == len(errors)
    assert "main thread" in str(errors[0])


@pytest.mark.usefixtures("restore_sighup")
def test_no_handler_unless_asked(policy_file: Path) -> None:
    before = signal.getsignal(signal.SIGHUP)

    file_middleware(policy_file)

    assert before == signal.getsignal(signal.SIGHUP)
