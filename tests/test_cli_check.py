# SPDX-License-Identifier: Apache-2.0
"""Tests of ``zerotrust check``: problems, the segment table, warnings, --strict and --app."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from zerotrust.cli import main
from zerotrust.testing import TokenIssuer

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "policy.toml"

RISKY = """\
[middleware]
trusted_proxies = ["0.0.0.0/0"]

[verifiers.identity]
type = "jwt"
issuer = "https://login.example.com/"
audience = "api"
algorithms = ["HS512"]
keys = { env = "ZT_TEST_CHECK_HMAC" }
leeway = 120

[[segments]]
name = "admin"
paths = ["/admin/"]
verifiers = ["identity"]
mode = "monitor"

[[segments]]
name = "admin-health"
paths = ["/admin/health"]
public = true

[[segments]]
name = "partners"
paths = ["/partners/"]
verifiers = [{ type = "network", allow = ["192.0.2.0/24"] }]
"""


@pytest.fixture(name="risky_policy")
def fixture_risky_policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ZT_TEST_CHECK_HMAC", "h" * 40)
    path = tmp_path / "policy.toml"
    path.write_text(RISKY)
    return path


@pytest.fixture(name="demo_environment")
def fixture_demo_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    issuer = TokenIssuer()
    monkeypatch.setenv("ZT_DEMO_ISSUER", issuer.issuer)
    monkeypatch.setenv("ZT_DEMO_JWKS_URL", "http://127.0.0.1:8/.well-known/jwks.json")
    monkeypatch.setenv("ZT_DEMO_DEVICE_ISSUER", "https://devices.example.com")
    monkeypatch.setenv("ZT_DEMO_DEVICE_KEYS", json.dumps(issuer.jwks()))
    monkeypatch.setenv("ZT_DEMO_GRANT_KEYS", json.dumps(issuer.jwks()))


class TestCheck:
    def test_example_is_valid(
        self, demo_environment: None, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The example policy passes, and the table lists its segments and verifiers."""
        status = main(["check", str(EXAMPLE), "--strict"])
        output = capsys.readouterr().out

        assert 0 == status
        for name in ("public", "api", "admin", "workspace", "internal", "office_hours"):
            assert name in output
        assert "valid, 5 segments, 0 warnings" in output

    def test_invalid_file_fails(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """A problem is printed with its line and key path, and the exit status is 1."""
        path = tmp_path / "policy.toml"
        path.write_text('[[segments]]\nname = "api"\npaths = ["/api/"]\npublik = true\n')

        status = main(["check", str(path)])
        output = capsys.readouterr().out

        assert 1 == status
        assert (
            "policy.toml:4: segments[0].publik: unknown key 'publik'; did you mean 'public'?"
            in output
        )
        assert "invalid, 1 problem" in output

    def test_risky_settings_warn(
        self, risky_policy: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Each risky but legal setting gets a warning with its key path; the file stays valid."""
        status = main(["check", str(risky_policy)])
        output = capsys.readouterr().out

        assert 0 == status
        assert "middleware.trusted_proxies" in output
        assert "policy.toml:16: segments[0].mode: segment 'admin' is in monitor mode" in output
        assert "verifiers.identity.leeway: JWT leeway of 120 s" in output
        assert "HMAC secret has 40 bytes, less than the 64 bytes of the HS512" in output
        assert "public segment 'admin-health' overlaps protected segment 'admin'" in output
        assert "segment 'partners' has no identity verifier" in output

    def test_strict_fails_on_warnings(
        self, risky_policy: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--strict turns warnings into a failing exit status."""
        status = main(["check", str(risky_policy), "--strict"])
        output = capsys.readouterr().out

        assert 1 == status
        assert "--strict makes warnings fail" in output

    def test_sinks_not_opened(self, tmp_path: Path) -> None:
        """Checking a policy with a file sink does not create the file."""
        path = tmp_path / "policy.toml"
        path.write_text(
            '[[events.sinks]]\ntype = "jsonl"\ntarget = "events.jsonl"\n'
            '[[segments]]\nname = "health"\npaths = ["/healthz"]\npublic = true\n'
        )

        assert 0 == main(["check", str(path)])
        assert not (tmp_path / "events.jsonl").exists()

    def test_app_routes_checked(
        self,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """--app fails when a route of the app falls in no segment."""
        (tmp_path / "checked_app.py").write_text(
            textwrap.dedent(
                """
                from starlette.applications import Starlette
                from starlette.responses import PlainTextResponse
                from starlette.routing import Route

                async def ok(request):
                    return PlainTextResponse("ok")

                app = Starlette(routes=[Route("/healthz", ok), Route("/reports", ok)])
                """
            )
        )
        path = tmp_path / "policy.toml"
        path.write_text('[[segments]]\nname = "health"\npaths = ["/healthz"]\npublic = true\n')
        monkeypatch.chdir(tmp_path)
        monkeypatch.syspath_prepend(str(tmp_path))

        status = main(["check", str(path), "--app", "checked_app:app"])
        output = capsys.readouterr().out

        assert 1 == status
        assert "/reports" in output
        assert "no segment matches /reports" in output
        assert "routes outside every segment" in output

    @pytest.mark.parametrize(
        ("middleware", "status"), [('[middleware]\npublic_routes = ["/healthz"]\n', 0), ("", 1)]
    )
    def test_public_routes_pass_strict(
        self,
        middleware: str,
        status: int,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """--strict --app passes when [middleware] public_routes lists the public health route."""
        module = f"public_routes_app_{status}"
        (tmp_path / f"{module}.py").write_text(
            textwrap.dedent(
                """
                from starlette.applications import Starlette
                from starlette.responses import PlainTextResponse
                from starlette.routing import Route

                async def ok(request):
                    return PlainTextResponse("ok")

                app = Starlette(routes=[Route("/healthz", ok), Route("/api/orders", ok)])
                """
            )
        )
        path = tmp_path / "policy.toml"
        path.write_text(
            middleware
            + '[[segments]]\nname = "health"\npaths = ["/healthz"]\npublic = true\n'
            + '[[segments]]\nname = "api"\npaths = ["/api/"]\n'
            + 'verifiers = [{ type = "jwt", issuer = "https://login.example.com/", '
            + 'audience = "api", algorithms = ["RS256"], '
            + 'jwks_url = "https://login.example.com/jwks" }]\n'
        )
        monkeypatch.syspath_prepend(str(tmp_path))

        result = main(["check", str(path), "--strict", "--app", f"{module}:app"])
        output = capsys.readouterr().out

        assert status == result
        assert ("not listed in public_routes" in output) == bool(status)
        assert ("valid, 2 segments, 0 warnings" in output) == (not status)

    def test_one_segment_singular(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """The summary counts one segment in the singular."""
        path = tmp_path / "policy.toml"
        path.write_text('[[segments]]\nname = "health"\npaths = ["/healthz"]\npublic = true\n')

        assert 0 == main(["check", str(path)])
        assert "valid, 1 segment, 0 warnings" in capsys.readouterr().out
