# SPDX-License-Identifier: Apache-2.0
"""The policy file of ``zerotrust demo``: its defaults, its packaging and the demo's use of it."""

from __future__ import annotations

import contextlib
import io
import ipaddress
import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from zerotrust import ZeroTrustMiddleware
from zerotrust.cli import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, main
from zerotrust.config import LoadedPolicy, PolicyFileError, load_policy
from zerotrust.demo.app import (
    AUDIENCE,
    BURST_THRESHOLD,
    DEVICE_AUDIENCE,
    GRANT_ISSUER,
    INTERNAL_PATH,
    OFFICE_TIME_ZONE,
    POLICY_VARIABLES,
    REPORT_PATH,
    STUFFING_ACCOUNTS,
    TRUSTED_PROXIES,
    WORKSPACE_COUNTRIES,
    default_policy_path,
    policy_environ,
)
from zerotrust.demo.monitoring import await_detection
from zerotrust.demo.script import AwaitDetection
from zerotrust.demo.workloads import CLIENT_CERTIFICATE_HEADER, INTERNAL_CALLERS
from zerotrust.events import EventEmitter, MemorySink
from zerotrust.grants import GrantVerifier
from zerotrust.monitor import CredentialStuffingDetector, DeniedBurstDetector
from zerotrust.testing import TokenIssuer
from zerotrust.verifiers import (
    DeviceVerifier,
    GeoVerifier,
    JWTVerifier,
    TimeWindowVerifier,
    WorkloadVerifier,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_POLICY = REPO_ROOT / "examples" / "policy.toml"
PACKAGED_POLICY = "zerotrust/demo/policy.toml"
# A command quoted in the file's header comment, such as `zerotrust check examples/policy.toml`.
DOCUMENTED_COMMAND = re.compile(r"`zerotrust ((?:check|explain) [^`]+)`")
# pip's messages when the package index cannot be reached, as opposed to a broken build.
OFFLINE_MARKERS = (
    "Failed to establish a new connection",
    "Temporary failure in name resolution",
    "No matching distribution found",
)
WHEEL_BUILD_TIMEOUT = 300
RUN_MAIN = "import sys; from zerotrust.cli import main; sys.exit(main(sys.argv[1:]))"


def run_main(argv: list[str]) -> tuple[int, str, str]:
    """Run ``zerotrust`` in-process and return its exit status, output and error output."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        status = main(argv)
    return status, stdout.getvalue(), stderr.getvalue()


def documented_commands() -> dict[str, list[str]]:
    """Return the commands that the header comment of the policy file quotes, by subcommand."""
    header = []
    for line in EXAMPLE_POLICY.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        header.append(line.removeprefix("#").strip())
    commands = [shlex.split(match) for match in DOCUMENTED_COMMAND.findall(" ".join(header))]
    return {command[0]: command for command in commands}


@pytest.fixture(name="unset_demo_variables")
def fixture_unset_demo_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run from the checkout's root with none of the demo's variables set."""
    monkeypatch.chdir(REPO_ROOT)
    for name in POLICY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(name="defaults", scope="module")
def fixture_defaults() -> Iterator[LoadedPolicy]:
    """The example policy with every variable unset, so each reference takes its default."""
    loaded = load_policy(EXAMPLE_POLICY, environ={}, build_sinks=False)
    yield loaded
    loaded.events.close()


class TestDocumentedCommands:
    def test_both_commands_quoted(self) -> None:
        """The header comment quotes a check and an explain command for this file."""
        commands = documented_commands()

        assert ["check", "examples/policy.toml"] == commands["check"]
        assert "explain" in commands
        assert "examples/policy.toml" == commands["explain"][1]

    @pytest.mark.usefixtures("unset_demo_variables")
    def test_check_passes(self) -> None:
        """The check command of the header comment passes without any variable set."""
        status, stdout, stderr = run_main(documented_commands()["check"])

        assert EXIT_OK == status, stdout + stderr
        assert "examples/policy.toml: valid, 5 segments, 0 warnings" in stdout

    @pytest.mark.usefixtures("unset_demo_variables")
    def test_explain_denies_without_token(self) -> None:
        """The explain command of the header comment denies the request, which has no token."""
        command = documented_commands()["explain"]

        status, stdout, _ = run_main(command)

        assert ["--method", "GET", "--path", "/admin/users"] == command[2:]
        assert EXIT_FAILURE == status
        assert "Segment admin" in stdout
        assert "Outcome deny, status 401" in stdout
        assert "token_missing" in stdout


class TestPolicyMatchesScript:
    """The values the scripted requests rely on are the ones the policy file sets."""

    def test_identity(self, defaults: LoadedPolicy) -> None:
        identity = defaults.verifiers["identity"]
        assert isinstance(identity, JWTVerifier)

        assert [AUDIENCE] == identity.audience
        for address in TRUSTED_PROXIES:
            assert ipaddress.ip_address(address) in defaults.trusted_proxies

    def test_workspace(self, defaults: LoadedPolicy) -> None:
        device = defaults.verifiers["device"]
        geo = defaults.verifiers["geo"]
        office_hours = defaults.verifiers["office_hours"]
        assert isinstance(device, DeviceVerifier)
        assert isinstance(geo, GeoVerifier)
        assert isinstance(office_hours, TimeWindowVerifier)

        assert [DEVICE_AUDIENCE] == device.audience
        assert geo.allow_countries is not None
        assert set(WORKSPACE_COUNTRIES) == set(geo.allow_countries)
        assert OFFICE_TIME_ZONE.key == office_hours.time_zone

    def test_grants(self, defaults: LoadedPolicy) -> None:
        grants = defaults.verifiers["grants"]
        assert isinstance(grants, GrantVerifier)

        assert GRANT_ISSUER == grants.issuer
        admin = defaults.policy.match(REPORT_PATH)
        assert admin is not None
        assert grants in admin.verifiers

    def test_workload(self, defaults: LoadedPolicy) -> None:
        workload = defaults.verifiers["workload"]
        assert isinstance(workload, WorkloadVerifier)
        internal = defaults.policy.match(INTERNAL_PATH)
        assert internal is not None

        assert frozenset(INTERNAL_CALLERS) == workload.allowed_ids
        assert CLIENT_CERTIFICATE_HEADER.lower() == workload.proxy_header
        assert (workload,) == internal.verifiers

    def test_detectors(self, defaults: LoadedPolicy) -> None:
        assert defaults.monitor is not None
        detectors = {type(detector): detector for detector in defaults.monitor.detectors}
        burst = detectors[DeniedBurstDetector]
        stuffing = detectors[CredentialStuffingDetector]
        assert isinstance(burst, DeniedBurstDetector)
        assert isinstance(stuffing, CredentialStuffingDetector)

        assert BURST_THRESHOLD == burst.threshold
        assert STUFFING_ACCOUNTS == stuffing.subjects


class TestDemoVariables:
    def test_names(self) -> None:
        """The demo sets exactly the variables it documents, and keeps the base ones."""
        environ = policy_environ(
            issuer="https://issuer.test",
            jwks_url="http://127.0.0.1:9/jwks.json",
            device_issuer="https://device-agent.test",
            device_keys={"keys": []},
            grant_keys={"keys": []},
            base={"HOME": "/home/demo"},
        )

        assert {"HOME", *POLICY_VARIABLES} == set(environ)
        assert "/home/demo" == environ["HOME"]
        assert {"keys": []} == json.loads(environ["ZT_DEMO_GRANT_KEYS"])

    def test_grant_keys_from_variable(self) -> None:
        """A grant key set in the variable replaces the default, so an empty one fails there."""
        device_agent = TokenIssuer(issuer="https://devices.example", algorithms=("ES256",))
        environ = policy_environ(
            issuer="https://login.example",
            jwks_url="http://127.0.0.1:9/jwks.json",
            device_issuer=device_agent.issuer,
            device_keys=device_agent.jwks(),
            grant_keys={"keys": []},
            base={},
        )
        # A grant key set with no key is invalid, so the policy reports that one value.
        with pytest.raises(PolicyFileError) as raised:
            load_policy(EXAMPLE_POLICY, environ=environ, build_sinks=False)

        (problem,) = raised.value.problems
        assert "verifiers.grants.keys" == problem.key_path

    def test_issuer_and_device(self) -> None:
        """The issuer, JWKS URL and device issuer come from the variables when they are set."""
        device_agent = TokenIssuer(issuer="https://devices.example", algorithms=("ES256",))
        grant_agent = TokenIssuer(algorithms=("EdDSA",))
        environ = policy_environ(
            issuer="https://login.example",
            jwks_url="http://127.0.0.1:9/jwks.json",
            device_issuer=device_agent.issuer,
            device_keys=device_agent.jwks(),
            grant_keys=grant_agent.jwks(),
            base={},
        )
        loaded = load_policy(EXAMPLE_POLICY, environ=environ, build_sinks=False)
        loaded.events.close()
        identity = loaded.verifiers["identity"]
        device = loaded.verifiers["device"]
        assert isinstance(identity, JWTVerifier)
        assert isinstance(device, DeviceVerifier)

        assert "https://login.example" == identity.issuer
        assert "https://devices.example" == device.issuer


class TestPublicKeyDefault:
    """A ``keys`` reference may fall back to public keys written in the file, and only to those."""

    @staticmethod
    def policy(tmp_path: Path, default: str) -> Path:
        path = tmp_path / "policy.toml"
        text = f"""
            [verifiers.identity]
            type = "jwt"
            issuer = "https://issuer.test"
            audience = "api"
            algorithms = ["ES256"]
            keys = {{ env = "ZT_TEST_KEYS", default = '{default}' }}

            [[segments]]
            name = "api"
            paths = ["/api/"]
            verifiers = ["identity"]
        """
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    @staticmethod
    async def status(loaded: LoadedPolicy, token: str) -> int:
        """Send one request with ``token`` through the loaded policy; return its status."""

        async def ok(scope: Scope, receive: Receive, send: Send) -> None:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"{}"})

        options = {**loaded.middleware_options(), "events": MemorySink()}
        transport = httpx.ASGITransport(app=ZeroTrustMiddleware(ok, **options))
        async with httpx.AsyncClient(transport=transport, base_url="http://app.test") as client:
            response = await client.get("/api/items", headers={"Authorization": f"Bearer {token}"})
        return response.status_code

    async def test_default_used(self, tmp_path: Path, issuer: TokenIssuer) -> None:
        """Without the variable, a token signed by the default public keys is accepted."""
        path = self.policy(tmp_path, json.dumps(issuer.jwks()))
        loaded = load_policy(path, environ={}, build_sinks=False)
        loaded.events.close()

        assert 200 == await self.status(loaded, issuer.token(alg="ES256"))

    async def test_variable_wins(self, tmp_path: Path, issuer: TokenIssuer) -> None:
        """A set variable replaces the default keys, so the default's tokens are rejected."""
        other = TokenIssuer(algorithms=("ES256",))
        path = self.policy(tmp_path, json.dumps(issuer.jwks()))
        environ = {"ZT_TEST_KEYS": json.dumps(other.jwks())}
        loaded = load_policy(path, environ=environ, build_sinks=False)
        loaded.events.close()

        assert 401 == await self.status(loaded, issuer.token(alg="ES256"))
        assert 200 == await self.status(loaded, other.token(alg="ES256"))

    @pytest.mark.parametrize(
        ("default", "message"),
        [
            ('{"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA", "d": "AA"}', "private"),
            ('{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}', "secret JWK"),
            ("kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk", "HMAC secret"),
            ("{not json", "not valid JSON"),
        ],
        ids=["private-jwk", "secret-jwk", "hmac-text", "bad-json"],
    )
    def test_secret_default_rejected(self, tmp_path: Path, default: str, message: str) -> None:
        """A default holding a private key, an HMAC secret or broken JSON is an error."""
        path = self.policy(tmp_path, default)
        environ = {"ZT_TEST_KEYS": "{}"}

        with pytest.raises(PolicyFileError) as raised:
            load_policy(path, environ=environ, build_sinks=False)

        keys_problems = [
            problem.message
            for problem in raised.value.problems
            if problem.key_path.startswith("verifiers.identity.keys")
        ]
        assert 1 == len(keys_problems), raised.value.problems
        assert message in keys_problems[0]


class TestDemoPolicyOption:
    def test_missing_driven_verifier(self, tmp_path: Path) -> None:
        """A policy without the office-hours verifier the demo drives is a usage error."""
        text = EXAMPLE_POLICY.read_text(encoding="utf-8")
        renamed = text.replace("[verifiers.office_hours]", "[verifiers.hours]").replace(
            '"office_hours"]', '"hours"]'
        )
        assert "office_hours" not in renamed
        policy = tmp_path / "policy.toml"
        policy.write_text(renamed, encoding="utf-8")
        events = tmp_path / "events.jsonl"

        status, _, stderr = run_main(
            ["demo", "--quiet", "--policy", str(policy), "--events", str(events)]
        )

        assert EXIT_USAGE == status
        assert "needs a [verifiers.office_hours] table of type 'time_window'" in stderr
        assert "" == events.read_text(encoding="utf-8")

    def test_invalid_policy(self, tmp_path: Path) -> None:
        """Every problem of an invalid policy file is printed, and nothing is sent."""
        text = EXAMPLE_POLICY.read_text(encoding="utf-8")
        policy = tmp_path / "policy.toml"
        policy.write_text(text.replace('audience = "api"', 'audiance = "api"'), encoding="utf-8")
        events = tmp_path / "events.jsonl"

        status, stdout, stderr = run_main(
            ["demo", "--quiet", "--policy", str(policy), "--events", str(events)]
        )

        assert EXIT_USAGE == status
        assert "verifiers.identity.audiance: unknown key 'audiance'" in stderr
        assert "verifiers.identity: missing required key 'audience'" in stderr
        assert "" == stdout

    def test_missing_file(self, tmp_path: Path) -> None:
        """A policy path that does not exist is a usage error naming the file."""
        policy = tmp_path / "absent.toml"

        status, _, stderr = run_main(
            ["demo", "--quiet", "--policy", str(policy), "--events", str(tmp_path / "events.jsonl")]
        )

        assert EXIT_USAGE == status
        assert f"policy file {policy} has 1 problem" in stderr
        assert "cannot read" in stderr

    def test_no_monitor_fails_step(self) -> None:
        """Without a monitor, a detection step fails at once with the reason."""
        step = AwaitDetection("wait for the monitor", detectors=("denied_burst",))
        emitter = EventEmitter([MemorySink()])
        try:
            outcome = await_detection(step, after_request=3, monitor=None, emitter=emitter)
        finally:
            emitter.close()

        assert not outcome.matched
        assert "no [monitor] table" in (outcome.error or "")
        assert () == outcome.anomalies


@pytest.fixture(name="wheel", scope="module")
def fixture_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from this checkout, as pip builds it for an install."""
    directory = tmp_path_factory.mktemp("wheel")
    command = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--quiet",
        "--wheel-dir",
        str(directory),
        str(REPO_ROOT),
    ]
    result = subprocess.run(  # noqa: S603 -- a fixed pip command line
        command, capture_output=True, text=True, timeout=WHEEL_BUILD_TIMEOUT, check=False
    )
    output = (result.stdout + result.stderr)[-4000:]
    if result.returncode != 0:
        offline = any(marker in output for marker in OFFLINE_MARKERS)
        if offline and os.environ.get("CI") != "true":
            pytest.skip(
                f"the package index is unreachable, so the build backend is missing:\n{output}"
            )
        pytest.fail(f"pip wheel failed with exit code {result.returncode}:\n{output}")
    (wheel,) = directory.glob("zerotrust_middleware-*.whl")
    return wheel


class TestPackaging:
    def test_checkout_reads_examples(self) -> None:
        """In a checkout, the demo runs examples/policy.toml itself, not a copy."""
        assert EXAMPLE_POLICY == default_policy_path()

    def test_wheel_holds_policy(self, wheel: Path) -> None:
        """The wheel contains the example policy, byte for byte, next to the demo's modules."""
        with zipfile.ZipFile(wheel) as archive:
            packaged = archive.read(PACKAGED_POLICY)

        assert EXAMPLE_POLICY.read_bytes() == packaged

    def test_installed_demo_finds_policy(self, wheel: Path, tmp_path: Path) -> None:
        """From the installed wheel, the demo defaults to the packaged copy, which checks."""
        site = tmp_path / "site"
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(site)
        environ = {**os.environ, "PYTHONPATH": str(site)}
        for name in POLICY_VARIABLES:
            environ.pop(name, None)
        find = "from zerotrust.demo.app import default_policy_path; print(default_policy_path())"

        found = subprocess.run(  # noqa: S603 -- a fixed interpreter command line
            [sys.executable, "-c", find],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=environ,
            timeout=60,
            check=True,
        )
        checked = subprocess.run(  # noqa: S603 -- a fixed interpreter command line
            [sys.executable, "-c", RUN_MAIN, "check", found.stdout.strip()],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=environ,
            timeout=60,
            check=False,
        )

        assert site / PACKAGED_POLICY == Path(found.stdout.strip())
        assert EXIT_OK == checked.returncode, checked.stdout + checked.stderr
