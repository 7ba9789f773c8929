# SPDX-License-Identifier: Apache-2.0
"""The Flask, Falcon and Django WSGI examples run under gunicorn and enforce their policy."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from jsonschema import Draft202012Validator, FormatChecker

from tests.example_cases import AUDIENCE, ExampleCases, token_for
from tests.gunicorn_server import gunicorn, read_events
from zerotrust.events import access_event_schema
from zerotrust.testing import TokenIssuer

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"
# Each example: the directory gunicorn runs in and the WSGI callable it serves.
EXAMPLES = {
    "flask": (EXAMPLES_DIR, "flask_app:app"),
    "falcon": (EXAMPLES_DIR, "falcon_app:app"),
    "django": (EXAMPLES_DIR / "django_wsgi", "app:application"),
}


def environment(issuer: TokenIssuer, jwks_url: str, events_file: Path) -> dict[str, str]:
    return {
        "ZEROTRUST_ISSUER": issuer.issuer,
        "ZEROTRUST_JWKS_URL": jwks_url,
        "ZEROTRUST_AUDIENCE": AUDIENCE,
        "ZEROTRUST_ALGORITHMS": "RS256,ES256",
        "ZEROTRUST_EVENTS_FILE": str(events_file),
    }


@pytest.fixture(name="client", scope="module", params=sorted(EXAMPLES))
def fixture_client(
    request: pytest.FixtureRequest,
    issuer: TokenIssuer,
    jwks_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[httpx.Client]:
    """An HTTP client for one example, served by gunicorn with two gthread workers."""
    chdir, app = EXAMPLES[request.param]
    events_file = tmp_path_factory.mktemp(request.param) / "events.jsonl"
    env = environment(issuer, jwks_url, events_file)
    with (
        gunicorn(app, chdir=chdir, env=env, worker_class="gthread", workers=2, threads=4) as (
            base_url,
            _,
        ),
        httpx.Client(base_url=base_url, trust_env=False, timeout=10) as client,
    ):
        yield client


@pytest.mark.served
class TestWSGIExamples(ExampleCases):
    def test_invalid_body_422(self, client: httpx.Client, issuer: TokenIssuer) -> None:
        """An allowed request with a bad body reaches the view, which rejects it."""
        response = client.post("/items", headers=token_for(issuer, "items:write"), json=[])

        assert 422 == response.status_code

    def test_profile(self, client: httpx.Client, issuer: TokenIssuer) -> None:
        """Any valid token reads its own profile."""
        response = client.get("/me", headers=token_for(issuer))

        assert 200 == response.status_code
        assert ("alice", issuer.issuer) == (response.json()["subject"], response.json()["issuer"])


@pytest.mark.served
@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_events_written(name: str, issuer: TokenIssuer, jwks_url: str, tmp_path: Path) -> None:
    """Each example writes one valid access event per request, delivered by the time it exits."""
    chdir, app = EXAMPLES[name]
    events_file = tmp_path / "events.jsonl"
    env = environment(issuer, jwks_url, events_file)
    with (
        gunicorn(app, chdir=chdir, env=env) as (base_url, _),
        httpx.Client(base_url=base_url, trust_env=False) as client,
    ):
        client.get("/items", headers=token_for(issuer, "items:read"))
        client.get("/items")
        client.post("/items", headers=token_for(issuer, "items:read"), json={"name": "x"})

    validator = Draft202012Validator(access_event_schema(), format_checker=FormatChecker())
    # Readiness polls on /healthz come first. The file order of the others may differ from the
    # order of the requests, since each event is queued when its response closes.
    events = [event for event in read_events(events_file) if event["path"] != "/healthz"]
    events.sort(key=lambda event: event["timestamp"])
    for event in events:
        assert [] == [error.message for error in validator.iter_errors(event)]
    assert [200, 401, 403] == [event["status"] for event in events]
    assert [[], ["token_missing"], ["insufficient_scope"]] == [event["reasons"] for event in events]


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_missing_variable(name: str, issuer: TokenIssuer, tmp_path: Path) -> None:
    """Importing an example without ZEROTRUST_AUDIENCE fails with the variable's name."""
    chdir, app = EXAMPLES[name]
    env = environment(issuer, "http://127.0.0.1:9/jwks.json", tmp_path / "events.jsonl")
    del env["ZEROTRUST_AUDIENCE"]
    code = f"import {app.partition(':')[0]}"

    result = subprocess.run(  # noqa: S603
        [sys.executable, "-c", code],
        cwd=chdir,
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert 0 != result.returncode
    assert "environment variable ZEROTRUST_AUDIENCE is not set" in result.stderr
