# SPDX-License-Identifier: Apache-2.0
"""The example apps run under uvicorn and enforce their policy on real HTTP requests."""

from __future__ import annotations

import importlib.util
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
from jsonschema import Draft202012Validator, FormatChecker

from tests.example_cases import AUDIENCE, ExampleCases, token_for
from zerotrust import ConfigurationError
from zerotrust.events import access_event_schema
from zerotrust.testing import TokenIssuer, serve

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"
EXAMPLES = ["starlette_app", "fastapi_app"]


def load_example(name: str) -> ModuleType:
    """Import an example from its file as a fresh module, so it reads the current environment."""
    module_name = f"zerotrust_example_{name}"
    spec = importlib.util.spec_from_file_location(module_name, EXAMPLES_DIR / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Pydantic resolves the FastAPI example's annotations through sys.modules.
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module


@pytest.fixture(name="environment")
def fixture_environment(
    monkeypatch: pytest.MonkeyPatch, issuer: TokenIssuer, jwks_url: str, tmp_path: Path
) -> Path:
    """Point the examples at the local issuer and return the file they append access events to."""
    events_file = tmp_path / "events.jsonl"
    monkeypatch.setenv("ZEROTRUST_ISSUER", issuer.issuer)
    monkeypatch.setenv("ZEROTRUST_JWKS_URL", jwks_url)
    monkeypatch.setenv("ZEROTRUST_AUDIENCE", AUDIENCE)
    monkeypatch.setenv("ZEROTRUST_ALGORITHMS", "RS256,ES256")
    monkeypatch.setenv("ZEROTRUST_EVENTS_FILE", str(events_file))
    return events_file


@pytest.fixture(name="example", params=EXAMPLES)
def fixture_example(request: pytest.FixtureRequest, environment: Path) -> Iterator[ModuleType]:
    """Each example module, loaded with the test environment."""
    module = load_example(request.param)
    yield module
    module.events.close()
    sys.modules.pop(module.__name__, None)


@pytest.fixture(name="base_url")
def fixture_base_url(example: ModuleType) -> Iterator[str]:
    """The example app served by uvicorn on 127.0.0.1."""
    with serve(example.app) as url:
        yield url


@pytest.fixture(name="client")
def fixture_client(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, trust_env=False, timeout=10) as client:
        yield client


@pytest.mark.served
class TestExampleApps(ExampleCases):
    def test_profile(self, client: httpx.Client, issuer: TokenIssuer) -> None:
        """Any valid token reads its own profile."""
        response = client.get("/me", headers=token_for(issuer))

        assert 200 == response.status_code
        assert ("alice", issuer.issuer) == (response.json()["subject"], response.json()["issuer"])


@pytest.mark.served
@pytest.mark.parametrize("name", EXAMPLES)
def test_events_written(name: str, environment: Path, issuer: TokenIssuer) -> None:
    """The example writes one valid access event per request, delivered by shutdown."""
    module = load_example(name)
    try:
        with (
            serve(module.app) as base_url,
            httpx.Client(base_url=base_url, trust_env=False) as client,
        ):
            client.get("/items", headers=token_for(issuer, "items:read"))
            client.get("/items")
            client.post("/items", headers=token_for(issuer, "items:read"), json={"name": "x"})
    finally:
        module.events.close()
        sys.modules.pop(module.__name__, None)

    validator = Draft202012Validator(access_event_schema(), format_checker=FormatChecker())
    events = [orjson.loads(line) for line in environment.read_bytes().splitlines()]
    events.sort(key=lambda event: event["timestamp"])
    for event in events:
        assert [] == [error.message for error in validator.iter_errors(event)]
    assert [200, 401, 403] == [event["status"] for event in events]
    assert [[], ["token_missing"], ["insufficient_scope"]] == [event["reasons"] for event in events]


@pytest.mark.parametrize("name", EXAMPLES)
@pytest.mark.parametrize(
    "variable", ["ZEROTRUST_ISSUER", "ZEROTRUST_JWKS_URL", "ZEROTRUST_AUDIENCE"]
)
def test_missing_variable(
    name: str, variable: str, environment: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Starting an example without a required variable fails with the variable's name."""
    monkeypatch.delenv(variable)

    with pytest.raises(ConfigurationError, match=f"environment variable {variable} is not set"):
        load_example(name)


@pytest.mark.parametrize("name", EXAMPLES)
def test_plain_http_jwks_rejected(
    name: str, environment: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A JWKS URL over plain HTTP to a remote host is rejected at start-up."""
    monkeypatch.setenv("ZEROTRUST_JWKS_URL", "http://login.example.com/.well-known/jwks.json")

    with pytest.raises(ConfigurationError, match="must use https"):
        load_example(name)


def wait_until_serving(url: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, trust_env=False, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            message = f"{url} did not respond within {timeout:g} seconds"
            raise TimeoutError(message)
        time.sleep(0.05)


@pytest.mark.served
def test_local_issuer_script(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The local issuer script prints settings and tokens that the Starlette example accepts."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, str(EXAMPLES_DIR / "local_issuer.py"), "--port", str(port)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)  # noqa: S603
    try:
        assert process.stdout is not None
        exports = dict(
            process.stdout.readline().removeprefix("export ").strip().split("=", 1)
            for _ in range(6)
        )
        for name, value in exports.items():
            monkeypatch.setenv(name, value)
        # The script prints before uvicorn binds; an app started earlier would find no JWKS.
        wait_until_serving(exports["ZEROTRUST_JWKS_URL"])
        monkeypatch.setenv("ZEROTRUST_EVENTS_FILE", str(tmp_path / "events.jsonl"))
        module = load_example("starlette_app")
        try:
            with (
                serve(module.app) as base_url,
                httpx.Client(base_url=base_url, trust_env=False) as client,
            ):
                read = client.get(
                    "/items", headers={"authorization": f"Bearer {exports['READ_TOKEN']}"}
                )
                write = client.post(
                    "/items",
                    headers={"authorization": f"Bearer {exports['READ_TOKEN']}"},
                    json={"name": "x"},
                )
        finally:
            module.events.close()
            sys.modules.pop(module.__name__, None)
    finally:
        process.terminate()
        process.wait(10)
        if process.stdout is not None:
            process.stdout.close()

    assert f"http://127.0.0.1:{port}" == exports["ZEROTRUST_ISSUER"]
    assert 200 == read.status_code
    assert 403 == write.status_code
