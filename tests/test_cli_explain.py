# SPDX-License-Identifier: Apache-2.0
"""Tests of ``zerotrust explain``: the decision trace of one request, with a served JWKS."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from zerotrust.cli import main
from zerotrust.testing import TokenIssuer

POLICY = """\
[verifiers.identity]
type = "jwt"
issuer = "{issuer}"
audience = "api"
algorithms = ["RS256", "ES256", "EdDSA"]
jwks_url = "{jwks_url}"

[[segments]]
name = "health"
paths = ["/healthz"]
public = true

[[segments]]
name = "api"
paths = ["/api/"]
verifiers = ["identity"]
scopes = {{ GET = ["orders:read"], POST = ["orders:write"] }}

[[segments]]
name = "api-admin"
paths = ["/api/admin/"]
verifiers = ["identity", {{ type = "network", allow = ["127.0.0.0/8"] }}]
roles = ["admin"]
"""


def write_policy(directory: Path, issuer: TokenIssuer, jwks_url: str) -> Path:
    path = directory / "policy.toml"
    path.write_text(POLICY.format(issuer=issuer.issuer, jwks_url=jwks_url))
    return path


def write_token(directory: Path, token: str) -> Path:
    path = directory / "token"
    path.write_text(token + "\n")
    return path


def closed_port() -> int:
    """Return a loopback port with no listener (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


class TestExplain:
    def test_allowed_trace(
        self, tmp_path: Path, issuer: TokenIssuer, jwks_url: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """An allowed request shows the segment, the rule, the verdict and status 200."""
        token = issuer.token(scopes=["orders:read"])
        policy = write_policy(tmp_path, issuer, jwks_url)
        status = main(
            [
                "explain",
                str(policy),
                "--path",
                "/api/orders",
                "--token-file",
                str(write_token(tmp_path, token)),
            ]
        )
        output = capsys.readouterr().out

        assert 0 == status
        assert "Segment api" in output
        assert "rule '/api/' (prefix) is the most specific match" in output
        assert "Outcome allow, status 200" in output
        assert token not in output

    def test_json_trace_of_denial(
        self, tmp_path: Path, issuer: TokenIssuer, jwks_url: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--json gives the candidates, each verdict, the requirements and the outcome."""
        token = issuer.token(scopes=["orders:read"])
        policy = write_policy(tmp_path, issuer, jwks_url)
        status = main(
            [
                "explain",
                str(policy),
                "--method",
                "GET",
                "--path",
                "/api/admin/users",
                "--client-ip",
                "192.0.2.9",
                "--token-file",
                str(write_token(tmp_path, token)),
                "--json",
            ]
        )
        output = capsys.readouterr().out
        trace = json.loads(output)

        assert 1 == status
        assert "api-admin" == trace["segment"]["chosen"]
        matching = [c["segment"] for c in trace["segment"]["candidates"] if c["matches"]]
        assert ["api-admin", "api"] == matching
        assert "more specific than the rules of api" in trace["segment"]["why"]
        outcomes = {v["verifier"]: (v["outcome"], v["reason"]) for v in trace["verdicts"]}
        assert ("pass", None) == outcomes["identity"]
        assert ("fail", "network_not_allowed") == outcomes["network"]
        assert ["admin"] == trace["requirements"]["roles_any_of"]
        assert "alice" == trace["requirements"]["principal"]["subject"]
        assert 403 == trace["outcome"]["status"]
        assert ["network_not_allowed", "insufficient_role"] == trace["outcome"]["reasons"]
        assert token not in output

    def test_token_from_standard_input(
        self,
        tmp_path: Path,
        issuer: TokenIssuer,
        jwks_url: str,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """--token - reads the token from standard input, and only its fingerprint is printed."""
        token = issuer.token(scopes=["orders:write"])
        monkeypatch.setattr("sys.stdin", io.StringIO(token + "\n"))
        policy = write_policy(tmp_path, issuer, jwks_url)

        status = main(
            ["explain", str(policy), "--method", "POST", "--path", "/api/orders", "--token", "-"]
        )
        output = capsys.readouterr().out

        assert 0 == status
        assert "authorization: Bearer sha256:" in output
        assert token not in output

    def test_unreachable_jwks(
        self, tmp_path: Path, issuer: TokenIssuer, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """An unreachable key server is a clear error, and the identity check fails."""
        url = f"http://127.0.0.1:{closed_port()}/jwks.json"
        policy = write_policy(tmp_path, issuer, url)
        token_file = write_token(tmp_path, issuer.token(scopes=["orders:read"]))

        status = main(
            ["explain", str(policy), "--path", "/api/orders", "--token-file", str(token_file)]
        )
        captured = capsys.readouterr()

        assert 1 == status
        assert f"fetching the JWKS from {url} failed" in captured.err
        assert "jwks_unavailable" in captured.out

    @pytest.mark.parametrize(
        ("path", "reason"),
        [
            ("/api%2Fadmin/users", "encoded_slash"),
            ("/api/../admin", "path_not_normalized"),
            ("/elsewhere", "no_segment"),
        ],
    )
    def test_denied_before_verifiers(
        self,
        tmp_path: Path,
        issuer: TokenIssuer,
        jwks_url: str,
        capsys: pytest.CaptureFixture[str],
        path: str,
        reason: str,
    ) -> None:
        """Path tricks and unmatched paths are denied as a served request would be."""
        policy = write_policy(tmp_path, issuer, jwks_url)

        status = main(["explain", str(policy), "--path", path, "--json"])
        trace = json.loads(capsys.readouterr().out)

        assert 1 == status
        assert [reason] == trace["outcome"]["reasons"]
        assert [] == trace["verdicts"]

    def test_usage_errors(self, tmp_path: Path, issuer: TokenIssuer, jwks_url: str) -> None:
        """A malformed header, an invalid address or two token sources are usage errors."""
        policy = str(write_policy(tmp_path, issuer, jwks_url))
        token_file = str(write_token(tmp_path, "abc"))

        assert 2 == main(["explain", policy, "--path", "/api/x", "--header", "no colon"])
        assert 2 == main(["explain", policy, "--path", "/api/x", "--client-ip", "300.1.1.1"])
        assert 2 == main(
            ["explain", policy, "--path", "/x", "--token", "a", "--token-file", token_file]
        )

    def test_help_warns_about_process_list(self, capsys: pytest.CaptureFixture[str]) -> None:
        """--help warns that a token on the command line is visible in the process list."""
        assert 0 == main(["explain", "--help"])
        output = " ".join(capsys.readouterr().out.split())

        assert "visible to other users in the process list" in output
        assert "--token-file" in output

    def test_key_server_error_printed_once(self, tmp_path: Path, issuer: TokenIssuer) -> None:
        """With the key server down, the command prints the fetch error once, not a log line too."""
        url = f"http://127.0.0.1:{closed_port()}/jwks.json"
        policy = write_policy(tmp_path, issuer, url)

        completed = subprocess.run(  # noqa: S603 -- the interpreter running this test
            [sys.executable, "-m", "zerotrust.cli", "explain", str(policy), "--path", "/api/x"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

        assert 1 == completed.returncode
        assert 1 == completed.stderr.count(url), completed.stderr
        assert "zerotrust explain: error: fetching the JWKS" in completed.stderr
