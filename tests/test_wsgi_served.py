# SPDX-License-Identifier: Apache-2.0
"""The WSGI middleware under real gunicorn sync and gthread workers on 127.0.0.1."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.gunicorn_server import gunicorn, raw_get, read_events, wait_for_event
from zerotrust.testing import TokenIssuer

TESTS_DIR = Path(__file__).resolve().parent
APP = "wsgi_served_app:application"

pytestmark = pytest.mark.served


class Server:
    """A running gunicorn and the file its workers append access events to."""

    def __init__(self, base_url: str, events_file: Path) -> None:
        self.base_url = base_url
        self.events_file = events_file
        self.client = httpx.Client(base_url=base_url, trust_env=False, timeout=10)

    def event_for(self, request_id: str) -> dict[str, Any]:
        return wait_for_event(self.events_file, lambda event: event["request_id"] == request_id)


def settings(issuer: TokenIssuer, jwks_url: str, events_file: Path, **extra: str) -> dict[str, str]:
    return {
        "ZT_ISSUER": issuer.issuer,
        "ZT_JWKS_URL": jwks_url,
        "ZT_EVENTS_FILE": str(events_file),
        **extra,
    }


# sync: one request at a time per worker. gthread: four threads per worker, and --preload with
# a JWKS fetch at import, so workers fork from an arbiter that already ran an event loop.
WORKERS = {
    "sync": {"worker_class": "sync", "workers": 2},
    "gthread": {"worker_class": "gthread", "workers": 2, "threads": 4, "preload": True},
}


@pytest.fixture(name="server", scope="module", params=sorted(WORKERS))
def fixture_server(
    request: pytest.FixtureRequest,
    issuer: TokenIssuer,
    jwks_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Server]:
    events_file = tmp_path_factory.mktemp("wsgi") / "events.jsonl"
    env = settings(
        issuer,
        jwks_url,
        events_file,
        ZT_TRUSTED_PROXIES="127.0.0.1",
        ZT_WARM_UP="1" if request.param == "gthread" else "0",
    )
    with gunicorn(APP, chdir=TESTS_DIR, env=env, **WORKERS[request.param]) as (base_url, _):
        server = Server(base_url, events_file)
        try:
            yield server
        finally:
            server.client.close()


def bearer(issuer: TokenIssuer, *scopes: str) -> str:
    return "Bearer " + issuer.token("alice", audience="api", scopes=scopes, alg="RS256")


def request_id() -> str:
    return uuid.uuid4().hex


class TestGunicorn:
    def test_allowed(self, server: Server, issuer: TokenIssuer) -> None:
        """A valid token with the scope reaches the app, which reads the subject."""
        response = server.client.get(
            "/api/items", headers={"authorization": bearer(issuer, "api:read")}
        )

        assert 200 == response.status_code
        assert "alice" == response.json()["subject"]

    def test_no_token_401(self, server: Server) -> None:
        """A request without a token gets 401 and a Bearer challenge."""
        response = server.client.get("/api/items")

        assert 401 == response.status_code
        assert response.headers["www-authenticate"].startswith('Bearer realm="zerotrust"')
        assert "unauthorized" == response.json()["error"]

    def test_missing_scope_403(self, server: Server, issuer: TokenIssuer) -> None:
        """A token without api:write cannot POST."""
        response = server.client.post(
            "/api/items", headers={"authorization": bearer(issuer, "api:read")}
        )

        assert 403 == response.status_code
        assert 'scope="api:write"' in response.headers["www-authenticate"]

    def test_event_final_status(self, server: Server, issuer: TokenIssuer) -> None:
        """The event records the app's own status, 201 here."""
        rid = request_id()

        response = server.client.post(
            "/api/items",
            headers={"authorization": bearer(issuer, "api:write"), "x-request-id": rid},
        )

        assert 201 == response.status_code
        event = server.event_for(rid)
        assert (201, "allow", "api") == (event["status"], event["decision"], event["segment"])

    def test_app_exception_500(self, server: Server) -> None:
        """An app that raises gets a 500 response and an event with status 500."""
        rid = request_id()

        response = server.client.get("/boom", headers={"x-request-id": rid})

        assert 500 == response.status_code
        assert 500 == server.event_for(rid)["status"]

    @pytest.mark.parametrize(
        ("target", "reason"),
        [
            ("/api/%2e%2e/admin", "path_not_normalized"),
            ("/api//items", "path_not_normalized"),
            ("/api/..%2fadmin", "encoded_slash"),
            ("/api/%252e%252e/admin", "double_encoding"),
            ("/api/%00", "control_character_in_path"),
            ("/api/%ff", "invalid_utf8_in_path"),
        ],
    )
    def test_path_trick(self, server: Server, target: str, reason: str) -> None:
        """A path trick sent byte for byte is denied before the app, with its reason."""
        rid = request_id()

        status, _ = raw_get(server.base_url, target, {"x-request-id": rid})

        assert 403 == status
        assert [reason] == server.event_for(rid)["reasons"]

    def test_trusted_proxy(self, server: Server) -> None:
        """X-Forwarded-For from the trusted 127.0.0.1 names the client."""
        response = server.client.get("/whoami", headers={"x-forwarded-for": "203.0.113.9"})

        assert "203.0.113.9" == response.json()["client"]

    def test_one_loop_per_worker(self, server: Server) -> None:
        """Concurrent decisions that must await share one loop thread in each worker."""

        def slow(_: int) -> dict[str, Any]:
            with httpx.Client(base_url=server.base_url, trust_env=False, timeout=10) as client:
                response = client.get("/slow")
                assert 200 == response.status_code
                body: dict[str, Any] = response.json()
                return body

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(slow, range(60)))

        assert {(1, 1)} == {(answer["loops"], answer["loop_threads"]) for answer in answers}


def test_events_flushed_at_exit(issuer: TokenIssuer, jwks_url: str, tmp_path: Path) -> None:
    """Events still queued when gunicorn stops are written by the worker before it exits."""
    events_file = tmp_path / "events.jsonl"
    env = settings(issuer, jwks_url, events_file, ZT_FLUSH_INTERVAL="60")
    with gunicorn(APP, chdir=TESTS_DIR, env=env) as (base_url, _):
        with httpx.Client(base_url=base_url, trust_env=False, timeout=10) as client:
            client.get("/api/items", headers={"authorization": bearer(issuer, "api:read")})
            client.get("/api/items")
            client.get("/nowhere")
        # The writer thread starts with the readiness probe's event and writes it at once.
        # Then it waits up to 60 seconds for a full batch, so the three requests wait in memory.
        before = [event["path"] for event in read_events(events_file)]

    # On a busy machine the readiness probe may poll /healthz more than once.
    requests = [event for event in read_events(events_file) if event["path"] != "/healthz"]
    requests.sort(key=lambda event: event["timestamp"])
    assert {"/healthz"} == set(before)
    assert [200, 401, 403] == [event["status"] for event in requests]
