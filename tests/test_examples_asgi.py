# SPDX-License-Identifier: Apache-2.0
"""The Litestar, Quart, Falcon and Django examples run under uvicorn and enforce their policy."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import httpx
import orjson
import pytest

from tests.example_cases import AUDIENCE, ExampleCases, token_for
from zerotrust.coverage import check_routes
from zerotrust.testing import TokenIssuer, serve

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"
# Django can be configured once per process, so its example runs in a uvicorn subprocess.
IN_PROCESS = ["litestar_app", "quart_app", "falcon_asgi_app"]
EXAMPLES = [*IN_PROCESS, "django_asgi"]
PUBLIC_ROUTES = ["/healthz", "/schema/"]


def load_example(name: str) -> ModuleType:
    """Import an example from its file as a fresh module, so it reads the current environment."""
    module_name = f"zerotrust_example_{name}"
    spec = importlib.util.spec_from_file_location(module_name, EXAMPLES_DIR / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Quart looks up its root folder, and Litestar resolves annotations, through sys.modules.
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module


def example_environment(issuer: TokenIssuer, jwks_url: str, events_file: Path) -> dict[str, str]:
    return {
        "ZEROTRUST_ISSUER": issuer.issuer,
        "ZEROTRUST_JWKS_URL": jwks_url,
        "ZEROTRUST_AUDIENCE": AUDIENCE,
        "ZEROTRUST_ALGORITHMS": "RS256,ES256",
        "ZEROTRUST_EVENTS_FILE": str(events_file),
    }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def wait_until_healthy(base_url: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{base_url}/healthz", trust_env=False, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if process.poll() is not None:
            message = f"the example server exited with code {process.returncode}"
            raise RuntimeError(message)
        if time.monotonic() > deadline:
            message = f"{base_url} did not answer within {timeout:g} seconds"
            raise TimeoutError(message)
        time.sleep(0.1)


@contextlib.contextmanager
def serve_django(environment: dict[str, str]) -> Iterator[str]:
    """Run the Django example with the uvicorn command line on a free port of 127.0.0.1."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "app:application",
        "--app-dir",
        str(EXAMPLES_DIR / "django_asgi"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-proxy-headers",
        "--log-level",
        "warning",
    ]
    process = subprocess.Popen(  # noqa: S603
        command, env={**os.environ, **environment}, stdout=subprocess.DEVNULL
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(base_url, process, timeout=30)
        yield base_url
    finally:
        process.terminate()
        process.wait(10)


@contextlib.contextmanager
def run_example(name: str, environment: dict[str, str]) -> Iterator[str]:
    """Serve one example with uvicorn on 127.0.0.1 and yield its base URL."""
    if name == "django_asgi":
        with serve_django(environment) as base_url:
            yield base_url
        return

    with pytest.MonkeyPatch.context() as patch:
        for variable, value in environment.items():
            patch.setenv(variable, value)
        module = load_example(name)
    try:
        with serve(module.app) as base_url:
            yield base_url
    finally:
        module.events.close()
        sys.modules.pop(module.__name__, None)


@pytest.fixture(name="base_url", scope="module", params=EXAMPLES)
def fixture_base_url(
    request: pytest.FixtureRequest,
    issuer: TokenIssuer,
    jwks_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    """Each example, served for the tests of this module."""
    events_file = tmp_path_factory.mktemp(request.param) / "events.jsonl"
    with run_example(request.param, example_environment(issuer, jwks_url, events_file)) as url:
        yield url


@pytest.fixture(name="client")
def fixture_client(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, trust_env=False, timeout=10) as client:
        yield client


@pytest.mark.served
class TestAsgiExamples(ExampleCases):
    def test_profile_shows_principal(self, client: httpx.Client, issuer: TokenIssuer) -> None:
        """The view reads subject, issuer and scopes from zerotrust.get_access(request)."""
        response = client.get("/me", headers=token_for(issuer, "items:read"))

        assert 200 == response.status_code
        assert "alice" == response.json()["subject"]
        assert issuer.issuer == response.json()["issuer"]
        assert ["items:read"] == response.json()["scopes"]


@pytest.mark.served
@pytest.mark.parametrize("name", EXAMPLES)
def test_events_written(name: str, issuer: TokenIssuer, jwks_url: str, tmp_path: Path) -> None:
    """The example writes one access event per request, delivered by the time it stops."""
    events_file = tmp_path / "events.jsonl"
    environment = example_environment(issuer, jwks_url, events_file)

    with (
        run_example(name, environment) as base_url,
        httpx.Client(base_url=base_url, trust_env=False, timeout=10) as client,
    ):
        client.get("/items", headers=token_for(issuer, "items:read"))
        client.get("/items")
        client.post("/items", headers=token_for(issuer, "items:read"), json={"name": "x"})

    events = [orjson.loads(line) for line in events_file.read_bytes().splitlines()]
    # The Django example is polled on /healthz until it answers; those events come first.
    events = [event for event in events if event["path"] != "/healthz"]
    # An allowed request's event is queued when the app returns, which can be after the client
    # has its response and sent the next request, so the file order may differ from theirs.
    events.sort(key=lambda event: event["timestamp"])
    assert [200, 401, 403] == [event["status"] for event in events]
    assert [[], ["token_missing"], ["insufficient_scope"]] == [event["reasons"] for event in events]


@pytest.mark.parametrize("name", IN_PROCESS)
def test_example_routes_covered(
    name: str, issuer: TokenIssuer, jwks_url: str, tmp_path: Path
) -> None:
    """Every route of the example falls in a segment of its policy."""
    environment = example_environment(issuer, jwks_url, tmp_path / "events.jsonl")
    with pytest.MonkeyPatch.context() as patch:
        for variable, value in environment.items():
            patch.setenv(variable, value)
        module = load_example(name)
    try:
        report = check_routes(module.app, public_routes=PUBLIC_ROUTES)
    finally:
        module.events.close()
        sys.modules.pop(module.__name__, None)

    assert () == report.problems
    assert {"health", "profile", "items"} <= {row.segment for row in report.rows}
