# SPDX-License-Identifier: Apache-2.0
"""The documented quickstart apps work for a new user: fresh venv, real servers, real tokens."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import venv
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson
import pytest

from zerotrust.testing import TokenIssuer

pytestmark = pytest.mark.quickstart

REPO_ROOT = Path(__file__).resolve().parent.parent
QUICKSTART_DIR = REPO_ROOT / "docs" / "quickstart"
AUDIENCE = "orders-api"
# A Python block that a test runs is the fenced block right after this comment in the page.
MARKED_BLOCK = re.compile(
    r"^<!-- quickstart-test: (?P<name>[\w-]+) -->\n```python[^\n]*\n(?P<code>.*?)^```$",
    re.MULTILINE | re.DOTALL,
)
# pip's messages when the package index cannot be reached, as opposed to a broken project.
OFFLINE_MARKERS = (
    "Failed to establish a new connection",
    "Temporary failure in name resolution",
    "No matching distribution found",
)
PIP_TIMEOUT = 240
SERVER_START_TIMEOUT = 30.0
EVENTS_TIMEOUT = 10.0


def marked_blocks(page: Path) -> dict[str, str]:
    """Return the marked Python blocks of a docs page by marker name."""
    text = page.read_text(encoding="utf-8")
    return {match["name"]: match["code"] for match in MARKED_BLOCK.finditer(text)}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def install_or_skip(command: list[str]) -> None:
    """Run a pip command; fail on errors, except an unreachable package index outside CI."""
    result = subprocess.run(  # noqa: S603 -- a fixed pip command line built by this module
        command, capture_output=True, text=True, timeout=PIP_TIMEOUT, check=False
    )
    if result.returncode == 0:
        return
    output = (result.stdout + result.stderr)[-4000:]
    offline = any(marker in output for marker in OFFLINE_MARKERS)
    if offline and os.environ.get("CI") != "true":
        pytest.skip(f"the package index is unreachable, so no fresh install is possible:\n{output}")
    pytest.fail(f"pip install failed with exit code {result.returncode}:\n{output}")


@pytest.fixture(name="quickstart_python", scope="module")
def fixture_quickstart_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with the project from this checkout, FastAPI and Flask."""
    environment = tmp_path_factory.mktemp("quickstart-venv")
    venv.create(environment, with_pip=True)
    python = environment / ("Scripts" if sys.platform == "win32" else "bin") / "python"
    # The project installs from this checkout; pip's cache supplies the rest when it can.
    install_or_skip(
        [str(python), "-m", "pip", "install", "--quiet", f"{REPO_ROOT}[cli]", "fastapi", "flask"]
    )
    return python


@dataclass(frozen=True)
class RunningApp:
    base_url: str
    log: Path

    def events(self, expected: int) -> list[dict[str, object]]:
        """Wait until the app has written ``expected`` access events, and return them."""
        deadline = time.monotonic() + EVENTS_TIMEOUT
        while True:
            lines = self.log.read_text(encoding="utf-8", errors="replace").splitlines()
            events = [orjson.loads(line) for line in lines if line.startswith('{"event":')]
            if len(events) >= expected or time.monotonic() > deadline:
                return events
            time.sleep(0.05)


@contextlib.contextmanager
def run_app(
    command: list[str], directory: Path, jwks_url: str, issuer: str
) -> Iterator[RunningApp]:
    """Start a server for the app in ``directory`` and stop it when the block ends."""
    port = free_port()
    log = directory / "server.log"
    environment = {
        **os.environ,
        "ZEROTRUST_ISSUER": issuer,
        "ZEROTRUST_JWKS_URL": jwks_url,
        "ZEROTRUST_AUDIENCE": AUDIENCE,
        "PYTHONUNBUFFERED": "1",
    }
    arguments = [part.replace("{port}", str(port)) for part in command]
    with log.open("wb") as output:
        server = subprocess.Popen(  # noqa: S603 -- the documented server command
            arguments, cwd=directory, env=environment, stdout=output, stderr=subprocess.STDOUT
        )
    try:
        base_url = f"http://127.0.0.1:{port}"
        wait_until_serving(server, base_url, log)
        yield RunningApp(base_url, log)
    finally:
        # SIGINT stops uvicorn and Flask's server the way Ctrl+C does, so exit handlers run.
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)


def wait_until_serving(server: subprocess.Popen[bytes], base_url: str, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"the server exited with {server.returncode}:\n{log.read_text()[-4000:]}")
        try:
            httpx.get(f"{base_url}/healthz", timeout=1.0)
        except httpx.TransportError:
            time.sleep(0.1)
            continue
        return
    pytest.fail(f"the server did not respond within {SERVER_START_TIMEOUT:g} s:\n{log.read_text()}")


@dataclass(frozen=True)
class Case:
    """One request of a new user and the response the quickstart page documents."""

    method: str
    path: str
    token: str | None = field(repr=False)
    status: int
    reason: str | None


def cases(issuer: TokenIssuer) -> list[Case]:
    reader = issuer.token("alice", audience=AUDIENCE, scopes=["orders:read"])
    writer = issuer.token("alice", audience=AUDIENCE, scopes=["orders:read", "orders:write"])
    stranger = TokenIssuer(
        issuer=issuer.issuer, algorithms=("RS256",), kid_suffix=issuer.kid_suffix
    )
    return [
        # The public segment needs no token.
        Case("GET", "/healthz", None, 200, None),
        # The orders segment: identity first, then the scope of each method.
        Case("GET", "/orders", None, 401, "token_missing"),
        Case("GET", "/orders", reader, 200, None),
        Case("POST", "/orders", reader, 403, "insufficient_scope"),
        Case("POST", "/orders", writer, 201, None),
        Case("DELETE", "/orders", writer, 403, "method_not_permitted"),
        # Tokens that must not pass.
        Case(
            "GET", "/orders", stranger.token("alice", audience=AUDIENCE), 401, "invalid_signature"
        ),
        Case(
            "GET", "/orders", issuer.token("alice", audience="other-api"), 401, "invalid_audience"
        ),
        Case(
            "GET",
            "/orders",
            issuer.token("alice", audience=AUDIENCE, lifetime=-60),
            401,
            "token_expired",
        ),
        # Anything outside the segments, or trying to reach outside them, is denied.
        Case("GET", "/admin", writer, 403, "no_segment"),
        Case("GET", "/orders/%2e%2e/admin", writer, 403, "path_not_normalized"),
    ]


def check_app(app: RunningApp, issuer: TokenIssuer) -> None:
    """Send every case to the app, then check the responses and one access event per request."""
    expected = cases(issuer)
    responses = []
    with httpx.Client(base_url=app.base_url, timeout=10.0) as client:
        for index, case in enumerate(expected):
            headers = {"x-request-id": f"quickstart-{index}"}
            if case.token is not None:
                headers["authorization"] = f"Bearer {case.token}"
            responses.append(client.request(case.method, case.path, headers=headers))

    assert [(case.method, case.path, case.status) for case in expected] == [
        (case.method, case.path, response.status_code)
        for case, response in zip(expected, responses, strict=True)
    ]
    assert {"user": "alice", "orders": []} == responses[2].json()
    assert {"created_by": "alice"} == responses[4].json()
    assert 'Bearer realm="zerotrust"' == responses[1].headers["www-authenticate"]
    assert 'error="insufficient_scope"' in responses[3].headers["www-authenticate"]

    events = {event["request_id"]: event for event in app.events(len(expected))}
    for index, case in enumerate(expected):
        event = events[f"quickstart-{index}"]
        assert case.status == event["status"]
        assert ("allow" if case.status < 400 else "deny") == event["decision"]
        if case.reason is not None:
            assert case.reason in event["reasons"]
    # A token never appears in the events, only its fingerprint.
    assert all(case.token not in app.log.read_text() for case in expected if case.token)


class TestQuickstartPages:
    def test_every_page_marks_a_block_that_compiles(self) -> None:
        """Each framework page marks its app for extraction, and every marked block compiles."""
        pages = sorted(page for page in QUICKSTART_DIR.glob("*.md") if page.name != "index.md")
        marked = {page.name: marked_blocks(page) for page in pages}

        assert [] == [name for name, blocks in marked.items() if not blocks]
        for name, blocks in marked.items():
            for block_name, code in blocks.items():
                compile(code, f"{name}:{block_name}", "exec")


class TestQuickstartServed:
    def test_fastapi_app_under_uvicorn(
        self, quickstart_python: Path, tmp_path: Path, issuer: TokenIssuer, jwks_url: str
    ) -> None:
        """The FastAPI quickstart under uvicorn allows and denies as its page documents."""
        code = marked_blocks(QUICKSTART_DIR / "fastapi.md")["fastapi"]
        (tmp_path / "app.py").write_text(code, encoding="utf-8")
        command = [
            str(quickstart_python), "-m", "uvicorn", "app:app", "--no-proxy-headers",
            "--host", "127.0.0.1", "--port", "{port}",
        ]  # fmt: skip

        with run_app(command, tmp_path, jwks_url, issuer.issuer) as app:
            check_app(app, issuer)

    def test_flask_app_under_the_flask_server(
        self, quickstart_python: Path, tmp_path: Path, issuer: TokenIssuer, jwks_url: str
    ) -> None:
        """The Flask quickstart under ``flask run`` allows and denies as its page documents."""
        code = marked_blocks(QUICKSTART_DIR / "flask.md")["flask"]
        (tmp_path / "app.py").write_text(code, encoding="utf-8")
        command = [
            str(quickstart_python), "-m", "flask", "--app", "app", "run",
            "--host", "127.0.0.1", "--port", "{port}",
        ]  # fmt: skip

        with run_app(command, tmp_path, jwks_url, issuer.issuer) as app:
            check_app(app, issuer)
