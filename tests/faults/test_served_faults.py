# SPDX-License-Identifier: Apache-2.0
"""
Faults under a served app: each dependency breaks while uvicorn serves real requests.

For every fault the answers stay fail-closed (401 or 403, never 200 or 500), each answer comes
within a bound, the server keeps serving once the fault is gone, and the access events name
what happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from zerotrust import EventEmitter, JWTVerifier, Segment, Verdict, ZeroTrustMiddleware
from zerotrust.events.http import WebhookSink
from zerotrust.events.sinks import MemorySink, Sink
from zerotrust.testing import TokenIssuer, serve
from zerotrust.verifiers.base import VerificationContext, Verifier

pytestmark = pytest.mark.served

# Every response to a faulty request must arrive within this many seconds.
ANSWER_BOUND = 2.5


class KeyServer:
    """A JWKS endpoint whose status, body and delay a test changes while it is served."""

    def __init__(self, issuer: TokenIssuer) -> None:
        self.hits = 0
        self.status = 200
        self.body = json.dumps(issuer.jwks()).encode()
        self.delay = 0.0

    def publish(self, jwks: dict[str, Any]) -> None:
        self.status = 200
        self.body = json.dumps(jwks).encode()

    async def handle(self, _request: Request) -> Response:
        self.hits += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        return Response(
            self.body,
            status_code=self.status,
            media_type="application/json",
            headers={"cache-control": "max-age=1"},
        )


class Chaos(Verifier):
    """A context verifier that passes, raises or hangs, as the test sets `mode`."""

    name = "chaos"
    kind = "context"

    def __init__(self) -> None:
        super().__init__(timeout=0.5)
        self.mode = "pass"

    async def verify(self, request: Any, context: VerificationContext) -> Verdict:
        if self.mode == "raise":
            message = "posture service said: password=hunter2"
            raise RuntimeError(message)
        if self.mode == "hang":
            await asyncio.sleep(3600)
        return Verdict.passed()


class Collector:
    """An event collector on a fixed loopback port that a test starts and stops."""

    def __init__(self) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.events: list[dict[str, Any]] = []
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/events"

    async def receive(self, request: Request) -> Response:
        body = await request.body()
        if request.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        self.events.extend(json.loads(body))
        return PlainTextResponse("ok")

    def start(self) -> None:
        app = Starlette(routes=[Route("/events", self.receive, methods=["POST"])])
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            assert time.monotonic() < deadline, "the collector did not start"
            time.sleep(0.01)

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(10)


class Stack:
    """The protected app, served, with every dependency the tests break."""

    def __init__(self, issuer: TokenIssuer, tmp_path: Path) -> None:
        self.issuer = issuer
        self.keys = KeyServer(issuer)
        self.chaos = Chaos()
        self.memory = MemorySink()
        self.collector = Collector()
        self.spool = tmp_path / "spool"
        self.base_url = ""
        self.jwks_url = ""
        self.cleanup = contextlib.ExitStack()
        self.ship_events = False

    def start(self) -> None:
        """Serve the protected app. Its start-up fetches the keys once."""
        self.base_url = self.cleanup.enter_context(serve(self.app()))

    def app(self) -> ZeroTrustMiddleware:
        async def hello(request: Request) -> JSONResponse:
            return JSONResponse({"ok": True})

        verifier = JWTVerifier(
            issuer=self.issuer.issuer,
            audience="api",
            algorithms=["RS256", "ES256"],
            jwks_url=self.jwks_url,
            cache_size=0,
            jwks_options={
                "timeout": 0.5,
                "refresh_interval": 0.2,
                "min_ttl": 0.2,
                "max_stale": 0.5,
            },
        )
        sinks: list[Sink] = [self.memory]
        if self.ship_events:
            sinks.append(WebhookSink(self.collector.url, retry_timeout=0.5, max_retries=0))
        emitter = EventEmitter(
            sinks,
            flush_interval=0.05,
            spool_dir=self.spool,
            retry_initial=0.1,
            retry_max=0.3,
        )
        self.cleanup.callback(emitter.close, 2.0)
        return ZeroTrustMiddleware(
            Starlette(routes=[Route("/api/hello", hello)]),
            policy=[Segment("api", paths=["/api/"], verifiers=[verifier, self.chaos])],
            events=emitter,
        )

    def get(self, token: str | None = None) -> tuple[httpx.Response, float]:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        started = time.monotonic()
        response = httpx.get(f"{self.base_url}/api/hello", headers=headers, timeout=10)
        return response, time.monotonic() - started


@pytest.fixture(name="stack")
def fixture_stack(issuer: TokenIssuer, tmp_path: Path) -> Iterator[Stack]:
    """Return the stack with its key server running. The test calls `Stack.start` for the app."""
    stack = Stack(issuer, tmp_path)
    key_app = Starlette(routes=[Route("/jwks.json", stack.keys.handle)])
    with contextlib.ExitStack() as cleanup, serve(key_app) as key_base:
        stack.jwks_url = f"{key_base}/jwks.json"
        stack.cleanup = cleanup
        cleanup.callback(stack.collector.stop)
        yield stack


def denial_reasons(stack: Stack, response: httpx.Response) -> list[str]:
    """Return the reason codes of a denied response's access event, waiting for it."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for event in reversed(list(stack.memory.events)):
            if event.get("decision") == "deny" and event.get("status") == response.status_code:
                return list(event["reasons"])
        time.sleep(0.02)
    raise AssertionError("no deny event recorded")


def assert_healthy(stack: Stack, token: str) -> None:
    """Check that the same server returns 200 again once the fault is gone."""
    deadline = time.monotonic() + 5
    while True:
        response, _ = stack.get(token)
        if response.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert 200 == response.status_code


def assert_denied_quickly(response: httpx.Response, elapsed: float, status: int) -> None:
    assert status == response.status_code
    assert elapsed < ANSWER_BOUND
    assert len(response.content) < 200
    assert b"Traceback" not in response.content


class TestVerifierFaults:
    def test_exception_is_a_deny(self, stack: Stack) -> None:
        stack.start()
        token = stack.issuer.token(alg="RS256")
        stack.chaos.mode = "raise"
        response, elapsed = stack.get(token)
        assert_denied_quickly(response, elapsed, 403)
        assert ["verifier_error"] == denial_reasons(stack, response)
        assert "hunter2" not in json.dumps(list(stack.memory.events))

        stack.chaos.mode = "pass"
        assert_healthy(stack, token)

    def test_hang_is_a_timeout(self, stack: Stack) -> None:
        stack.start()
        token = stack.issuer.token(alg="RS256")
        stack.chaos.mode = "hang"
        response, elapsed = stack.get(token)
        assert_denied_quickly(response, elapsed, 403)
        assert 0.4 < elapsed
        assert ["verifier_timeout"] == denial_reasons(stack, response)

        stack.chaos.mode = "pass"
        assert_healthy(stack, token)

    def test_hangs_do_not_hold_other_requests(self, stack: Stack) -> None:
        stack.start()
        token = stack.issuer.token(alg="RS256")
        stack.chaos.mode = "hang"

        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=stack.base_url, timeout=10) as client:
                return list(
                    await asyncio.gather(
                        *(
                            client.get("/api/hello", headers={"authorization": f"Bearer {token}"})
                            for _ in range(20)
                        )
                    )
                )

        started = time.monotonic()
        responses = asyncio.run(burst())
        assert {403} == {response.status_code for response in responses}
        # Twenty concurrent hangs share one timeout window rather than queueing.
        assert time.monotonic() - started < ANSWER_BOUND


class TestKeyServerFaults:
    def test_down_from_the_start(self, stack: Stack) -> None:
        token = stack.issuer.token(alg="RS256")
        stack.keys.status = 503
        stack.start()
        response, elapsed = stack.get(token)
        assert_denied_quickly(response, elapsed, 401)
        assert ["jwks_unavailable"] == denial_reasons(stack, response)

        stack.keys.status = 200
        assert_healthy(stack, token)

    def test_slow(self, stack: Stack) -> None:
        token = stack.issuer.token(alg="RS256")
        stack.keys.delay = 5.0
        stack.start()
        response, elapsed = stack.get(token)
        assert_denied_quickly(response, elapsed, 401)
        assert ["jwks_unavailable"] == denial_reasons(stack, response)

        stack.keys.delay = 0.0
        assert_healthy(stack, token)

    def test_breaks_after_a_good_fetch(self, stack: Stack) -> None:
        stack.start()
        token = stack.issuer.token(alg="RS256")
        assert_healthy(stack, token)
        stack.keys.status = 500
        # The last good keys serve until max_stale (0.5 s here), then every token is refused.
        deadline = time.monotonic() + 10
        while True:
            response, elapsed = stack.get(token)
            if response.status_code != 200 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert_denied_quickly(response, elapsed, 401)
        assert ["jwks_unavailable"] == denial_reasons(stack, response)

        stack.keys.status = 200
        assert_healthy(stack, token)

    @pytest.mark.parametrize(
        "body",
        [b"<html>maintenance</html>", b'{"keys": "none"}', b"[]", b'{"keys": [{"kty": 7}]}'],
        ids=["html", "keys-not-a-list", "array", "broken-key"],
    )
    def test_garbage(self, stack: Stack, body: bytes) -> None:
        token = stack.issuer.token(alg="RS256")
        stack.keys.body = body
        stack.start()
        response, elapsed = stack.get(token)
        assert_denied_quickly(response, elapsed, 401)
        assert denial_reasons(stack, response)[0] in {"jwks_unavailable", "unknown_kid"}

        stack.keys.publish(stack.issuer.jwks())
        assert_healthy(stack, token)

    def test_rotation_mid_run(self, stack: Stack) -> None:
        stack.start()
        old_token = stack.issuer.token(alg="RS256")
        assert_healthy(stack, old_token)

        new_issuer = TokenIssuer(issuer=stack.issuer.issuer, algorithms=("RS256",))
        jwks = new_issuer.jwks()
        jwks["keys"][0]["kid"] = "RS256-2"
        stack.keys.publish(jwks)
        new_token = new_issuer.token(alg="RS256", kid="RS256-2")

        # The unknown kid makes the key set refresh, so the new key works at once.
        assert_healthy(stack, new_token)
        # The retired key is gone from the refreshed set: its tokens are refused.
        response, elapsed = stack.get(old_token)
        assert_denied_quickly(response, elapsed, 401)
        assert ["unknown_kid"] == denial_reasons(stack, response)


class TestSinkFaults:
    def test_collector_down_then_back(self, stack: Stack) -> None:
        stack.ship_events = True
        stack.start()
        token = stack.issuer.token(alg="RS256")
        # The collector is not listening: requests go on and events wait in the spool.
        for _ in range(5):
            response, elapsed = stack.get(token)
            assert 200 == response.status_code
            assert elapsed < ANSWER_BOUND
        deadline = time.monotonic() + 5
        while not any(stack.spool.rglob("*.jsonl")) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert any(stack.spool.rglob("*.jsonl")), "no spooled events while the collector is down"

        stack.collector.start()
        stack.get(token)
        deadline = time.monotonic() + 10
        while len(stack.collector.events) < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
        delivered = [e for e in stack.collector.events if e.get("event") == "access"]
        assert 6 <= len(delivered)
        assert token not in json.dumps(stack.collector.events)
