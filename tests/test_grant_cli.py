# SPDX-License-Identifier: Apache-2.0
from __future__ import annotations

import argparse
import json
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
from redis_helpers import REDIS_URL, delete_namespace, free_port, new_namespace, redis_or_skip

from zerotrust.cli import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, main
from zerotrust.grants import cli as grant_cli
from zerotrust.grants.cli import parse_duration, parse_start

GRANT_ARGS = [
    "grant",
    "--subject",
    "alice",
    "--segment",
    "admin",
    "--method",
    "GET",
    "--path",
    "/admin/reports/**",
    "--reason",
    "INC-1234 export the quarterly report",
    "--requested-by",
    "carol",
]


@dataclass
class Result:
    status: int
    out: str
    err: str


@dataclass
class Setup:
    """Paths of the key, store and events file, set in the environment variables."""

    key: Path
    store: Path
    events: Path
    jwks: dict[str, Any]
    outputs: list[Result]

    def run(self, capsys: pytest.CaptureFixture[str], *argv: str) -> Result:
        status = main(list(argv))
        captured = capsys.readouterr()
        result = Result(status, captured.out, captured.err)
        self.outputs.append(result)
        return result

    def events_of(self) -> list[dict[str, Any]]:
        if not self.events.exists():
            return []
        return [json.loads(line) for line in self.events.read_text().splitlines()]

    def grants_json(self, capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
        result = self.run(capsys, "grants", "--all", "--json")
        assert EXIT_OK == result.status, result.err
        records: list[dict[str, Any]] = json.loads(result.out)
        return records


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_900_000_000.0

    def __call__(self) -> float:
        return self.now


def _clear_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in (
        grant_cli.KEY_VARIABLE,
        grant_cli.STORE_VARIABLE,
        grant_cli.EVENTS_VARIABLE,
        grant_cli.NAMESPACE_VARIABLE,
        grant_cli.PASSWORD_VARIABLE,
    ):
        monkeypatch.delenv(variable, raising=False)


@pytest.fixture(name="setup")
def fixture_setup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Setup:
    """A key made by ``grant-key``, and the key, store and events paths in the environment."""
    _clear_environment(monkeypatch)
    key = tmp_path / "grant-key.pem"
    status = main(["grant-key", "--out", str(key)])
    captured = capsys.readouterr()
    assert EXIT_OK == status, captured.err

    monkeypatch.setenv(grant_cli.KEY_VARIABLE, str(key))
    monkeypatch.setenv(grant_cli.STORE_VARIABLE, str(tmp_path / "grants.db"))
    monkeypatch.setenv(grant_cli.EVENTS_VARIABLE, str(tmp_path / "grant-events.jsonl"))
    return Setup(
        key=key,
        store=tmp_path / "grants.db",
        events=tmp_path / "grant-events.jsonl",
        jwks=json.loads(captured.out),
        outputs=[Result(status, captured.out, captured.err)],
    )


@pytest.fixture(name="clock")
def fixture_clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """A settable clock for the grant commands and their broker."""
    clock = FakeClock()
    monkeypatch.setattr(grant_cli, "clock", clock)
    return clock


def _token_claims(token: str, jwks: dict[str, Any], segment: str = "admin") -> dict[str, Any]:
    key_set = jwt.PyJWKSet.from_dict(jwks)
    header = jwt.get_unverified_header(token)
    signing_key = next(key for key in key_set.keys if key.key_id == header["kid"])
    claims: dict[str, Any] = jwt.decode(
        token,
        signing_key.key,
        algorithms=[signing_key.algorithm_name],
        audience=f"urn:zerotrust:grant:{segment}",
    )
    return claims


def _token_line(output: str) -> str:
    """Return the line after the token label of ``zerotrust grant``."""
    lines = output.splitlines()
    label = next(number for number, line in enumerate(lines) if line.startswith("Grant token"))
    return lines[label + 1].strip()


class TestGrantKey:
    def test_file_mode(self, setup: Setup) -> None:
        """The key file is readable and writable by its owner only."""
        mode = stat.S_IMODE(setup.key.stat().st_mode)

        assert 0o600 == mode

    def test_pem_is_ed25519(self, setup: Setup) -> None:
        """The file is an Ed25519 private key in PKCS #8 PEM."""
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        key = load_pem_private_key(setup.key.read_bytes(), password=None)

        assert isinstance(key, Ed25519PrivateKey)

    def test_prints_public_jwks(self, setup: Setup) -> None:
        """Standard output is the public JWKS, without the private part ``d``."""
        (jwk,) = setup.jwks["keys"]

        assert "OKP" == jwk["kty"]
        assert "EdDSA" == jwk["alg"]
        assert jwk["kid"]
        assert "d" not in jwk

    def test_names_the_path(self, setup: Setup) -> None:
        """The message on standard error says where the key is."""
        assert str(setup.key) in setup.outputs[0].err

    def test_rejects_overwrite(self, setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
        """An existing key file is kept unless --force is given."""
        before = setup.key.read_bytes()

        result = setup.run(capsys, "grant-key", "--out", str(setup.key))

        assert EXIT_FAILURE == result.status
        assert "already exists" in result.err
        assert "--force" in result.err
        assert "" == result.out
        assert before == setup.key.read_bytes()

    def test_force_replaces(self, setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
        """--force writes a new key, still with mode 0600, and prints its JWKS."""
        before = setup.key.read_bytes()

        result = setup.run(capsys, "grant-key", "--out", str(setup.key), "--force")

        assert EXIT_OK == result.status
        assert before != setup.key.read_bytes()
        assert 0o600 == stat.S_IMODE(setup.key.stat().st_mode)
        assert setup.jwks != json.loads(result.out)
        assert [] == [name for name in os.listdir(setup.key.parent) if name.endswith(".tmp")]

    def test_es256(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """--algorithm ES256 writes a P-256 key."""
        status = main(["grant-key", "--out", str(tmp_path / "p256.pem"), "--algorithm", "ES256"])
        (jwk,) = json.loads(capsys.readouterr().out)["keys"]

        assert EXIT_OK == status
        assert "EC" == jwk["kty"]
        assert "P-256" == jwk["crv"]

    def test_missing_directory(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """A path in a missing directory fails with the path in the message."""
        target = tmp_path / "missing" / "key.pem"

        status = main(["grant-key", "--out", str(target)])
        error = capsys.readouterr().err

        assert EXIT_FAILURE == status
        assert "cannot create the key file" in error
        assert str(target) in error

    def test_directory_as_out(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """A directory given to --out is rejected."""
        status = main(["grant-key", "--out", str(tmp_path)])

        assert EXIT_FAILURE == status
        assert "is a directory" in capsys.readouterr().err

    def test_out_required(self, capsys: pytest.CaptureFixture[str]) -> None:
        """--out is a required option."""
        status = main(["grant-key"])

        assert EXIT_USAGE == status
        assert "--out" in capsys.readouterr().err


class TestGrant:
    def test_token_printed_once(self, setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
        """The token appears exactly once, on standard output, after its label."""
        result = setup.run(capsys, *GRANT_ARGS)
        token = _token_line(result.out)

        assert EXIT_OK == result.status, result.err
        assert 1 == result.out.count(token)
        assert token not in result.err
        assert "shown only now" in result.out

    def test_token_verifies(self, setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
        """The token verifies against the JWKS that grant-key printed, and names the grant."""
        result = setup.run(capsys, *GRANT_ARGS)
        claims = _token_claims(_token_line(result.out), setup.jwks)
        (record,) = setup.grants_json(capsys)

        assert "alice" == claims["sub"]
        assert record["grant_id"] == claims["jti"]
        assert ["GET"] == claims["methods"]
        assert ["/admin/reports/**"] == claims["paths"]

    def test_table(
        self, setup: Setup, clock: FakeClock, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The table shows the grant's fields, with the expiry in UTC and relative to now."""
        result = setup.run(capsys, *GRANT_ARGS, "--duration", "15m", "--approver", "dave")
        (record,) = setup.grants_json(capsys)

        assert EXIT_OK == result.status, result.err
        for value in (
            record["grant_id"],
            "alice",
            "admin",
            "GET",
            "/admin/reports/**",
            "INC-1234 export the quarterly report",
            "carol",
            "dave",
            "2030-03-17 17:46:40 UTC (now)",
            "2030-03-17 18:01:40 UTC (in 15 min)",
        ):
            assert value in result.out

    def test_markup_printed_as_text(self, setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
        """Square brackets in a reason are printed, not read as rich markup."""
        argv = [*GRANT_ARGS[:-4], "--reason", "[bold]INC-1[/bold]"]

        result = setup.run(capsys, *argv)

        assert EXIT_OK == result.status, result.err
        assert "[bold]INC-1[/bold]" in result.out

    def test_token_only(self, setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
        """--token-only prints the token and nothing else on standard output."""
        result = setup.run(capsys, *GRANT_ARGS, "--token-only")
        token = result.out.strip()

        assert EXIT_OK == result.status, result.err
        assert f"{token}\n" == result.out
        assert "alice" == _token_claims(token, setup.jwks)["sub"]

    def test_requested_by_default(
        self, setup: Setup, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Without --requested-by, the requester is the OS user name."""
        monkeypatch.setattr("getpass.getuser", lambda: "erin")

        result = setup.run(capsys, *GRANT_ARGS[:-2], "--token-only")
        (record,) = setup.grants_json(capsys)

        assert EXIT_OK == result.status, result.err
        assert "erin" == record["requested_by"]

    def test_several_methods_and_paths(
        self, setup: Setup, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--method and --path may be repeated."""
        argv = [*GRANT_ARGS, "--method", "POST", "--path", "/admin/exports"]

        result = setup.run(capsys, *argv, "--token-only")
        (record,) = setup.grants_json(capsys)

        assert EXIT_OK == result.status, result.err
        assert ["GET", "POST"] == record["methods"]
        assert ["/admin/reports/**", "/admin/exports"] == record["paths"]

    def test_default_duration(
        self, setup: Setup, clock: FakeClock, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Without --duration, a grant lasts 15 minutes."""
        setup.run(capsys, *GRANT_ARGS, "--token-only")
        (record,) = setup.grants_json(capsys)

        assert 900 == record["expires_at"] - record["not_before"]

    @pytest.mark.parametrize(("duration", "seconds"), [("90s", 90), ("2h", 7200), ("1h30m", 5400)])
    def test_duration(
        self,
        setup: Setup,
        clock: FakeClock,
        duration: str,
        seconds: int,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """--duration sets the window from the start to the expiry."""
        argv = [*GRANT_ARGS, "--duration", duration, "--max-duration", "2h", "--token-only"]

        result = setup.run(capsys, *argv)
        (record,) = setup.grants_json(capsys)

        assert EXIT_OK == result.status, result.err
        assert seconds == record["expires_at"] - record["not_before"]

    def test_duration_above_maximum(self, setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
        """A duration above the default maximum of 1h is rejected and nothing is stored."""
        result = setup.run(capsys, *GRANT_ARGS, "--duration", "2h")

        assert EXIT_FAILURE == result.status
        assert "longer than the maximum 1h" in result.err
        assert "--max-duration" in result.err
        assert "" == result.out
        assert not setup.store.exists()

    def test_max_duration_lowers_default(
        self, setup: Setup, clock: FakeClock, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A --max-duration below 15m also caps the default duration."""
        result = setup.run(capsys, *GRANT_ARGS, "--max-duration", "10m", "--token-only")
        (record,) = setup.grants_json(capsys)

        assert EXIT_OK == result.status, result.err
        assert 600 == record["expires_at"] - record["not_before"]

    def test_start_offset(
        self, setup: Setup, clock: FakeClock, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--start +30m schedules the grant 30 minutes ahead."""
        result = setup.run(capsys, *GRANT_ARGS, "--start", "+30m", "--token-only")
        (record,) = setup.grants_json(capsys)

        assert EXIT_OK == result.status, result.err
        assert clock.now + 1800 == record["not_before"]
        assert "scheduled" == record["status"]

    def test_start_timestamp(
        self, setup: Setup, clock: FakeClock, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--start takes an ISO 8601 time with a UTC offset."""
        argv = [*GRANT_ARGS, "--start", "2030-03-17T20:46:40+02:00", "--token-only"]

        result = setup.run(capsys, *argv)
        (record,) = setup.grants_json(capsys)

        assert EXIT_OK == result.status, result.err
        assert clock.now + 3600 == record["not_before"]

    def test_start_in_past(
        self, setup: Setup, clock: FakeClock, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A start in the past is rejected by the broker with its reason."""
        result = setup.run(capsys, *GRANT_ARGS, "--start", "2020-01-01T00:00:00Z")

        assert EXIT_FAILURE == result.status
        assert "zerotrust grant: error: start" in result.err
        assert "in the past" in result.err

    def test_self_approval(self, setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
        """The approver must differ from the subject."""
        result = setup.run(capsys, *GRANT_ARGS, "--approver", "alice")

        assert EXIT_FAILURE == result.status
        assert "another person must approve it" in result.err

    def test_invalid_method(self, setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
        """The broker's validation error reaches the user with its hint."""
        argv = [*GRANT_ARGS]
        argv[argv.index("GET")] = "get"

        result = setup.run(capsys, *argv)

        assert EXIT_FAILURE == result.status
        assert "use 'GET'" in result.err

    @pytest.mark.parametrize(
        ("argv", "message"),
        [
            (["--duration", "15"], "invalid duration '15'"),
            (["--duration", "0m"], "must be longer than zero"),
            (["--duration", "15 minutes"], "such as 90s, 15m, 2h"),
            (["--max-duration", "x"], "invalid duration 'x'"),
            (["--start", "tomorrow"], "invalid start time 'tomorrow'"),
            (["--start", "2030-01-31T09:00:00"], "has no UTC offset"),
        ],
    )
    def test_usage_errors(
        self, setup: Setup, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Malformed durations and start times are usage errors."""
        result = setup.run(capsys, *GRANT_ARGS, *argv)

        assert EXIT_USAGE == result.status
        assert message in result.err

    @pytest.mark.parametrize("option", ["--subject", "--segment", "--method", "--path", "--reason"])
    def test_required_options(self, option: str, capsys: pytest.CaptureFixture[str]) -> None:
        """Each grant field without a default is required."""
        index = GRANT_ARGS.index(option)
        argv = GRANT_ARGS[:index] + GRANT_ARGS[index + 2 :]

        status = main(argv)

        assert EXIT_USAGE == status
        assert option in capsys.readouterr().err


class TestParsing:
    @pytest.mark.parametrize(
        ("text", "seconds"),
        [("90s", 90), ("15m", 900), ("2h", 7200), ("1d", 86400), ("1h30m", 5400), ("1.5h", 5400)],
    )
    def test_duration(self, text: str, seconds: float) -> None:
        assert seconds == parse_duration(text)

    @pytest.mark.parametrize("text", ["", "15", "m", "-5m", "5x", "0s", "1h 30m"])
    def test_invalid_duration(self, text: str) -> None:
        with pytest.raises(argparse.ArgumentTypeError):
            parse_duration(text)

    def test_start_now(self) -> None:
        assert 100.0 == parse_start("now").resolve(100.0)

    def test_start_offset(self) -> None:
        assert 190.0 == parse_start("+90s").resolve(100.0)

    def test_start_utc(self) -> None:
        assert 0.0 == parse_start("1970-01-01T00:00:00Z").resolve(100.0)


class TestSettings:
    def test_missing_key(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Without --key or its variable, the error names both and how to create a key."""
        _clear_environment(monkeypatch)

        status = main([*GRANT_ARGS, "--store", str(tmp_path / "grants.db")])
        error = capsys.readouterr().err

        assert EXIT_FAILURE == status
        assert "no grant signing key" in error
        assert "--key PATH" in error
        assert "ZEROTRUST_GRANT_KEY" in error
        assert "zerotrust grant-key --out PATH" in error

    def test_missing_store(
        self, setup: Setup, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Without --store or its variable, the error names both."""
        monkeypatch.delenv(grant_cli.STORE_VARIABLE)

        result = setup.run(capsys, *GRANT_ARGS)

        assert EXIT_FAILURE == result.status
        assert "no grant store" in result.err
        assert "--store PATH" in result.err
        assert "ZEROTRUST_GRANT_STORE" in result.err

    @pytest.mark.parametrize("command", [["grants"], ["revoke", "0123"]])
    def test_store_not_found(
        self, setup: Setup, command: list[str], capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Listing and revoking never create a store at a mistyped path."""
        result = setup.run(capsys, *command)

        assert EXIT_FAILURE == result.status
        assert "grant store not found" in result.err
        assert not setup.store.exists()

    def test_key_not_found(self, setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
        """A key path that does not exist is named in the error."""
        missing = setup.key.with_name("other.pem")

        result = setup.run(capsys, *GRANT_ARGS, "--key", str(missing))

        assert EXIT_FAILURE == result.status
        assert f"grant signing key not found: {str(missing)!r}" in result.err

    def test_key_readable_by_others(self, setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
        """A key file that other users can read is rejected with the chmod fix."""
        setup.key.chmod(0o644)

        result = setup.run(capsys, *GRANT_ARGS)

        assert EXIT_FAILURE == result.status
        assert f"chmod 600 {setup.key}" in result.err

    def test_key_not_pem(self, setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
        """A file that is not a PEM private key is rejected."""
        setup.key.write_text("not a key\n")

        result = setup.run(capsys, *GRANT_ARGS)

        assert EXIT_FAILURE == result.status
        assert str(setup.key) in result.err

    def test_options_override_environment(
        self, setup: Setup, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--store and --events take precedence over the environment variables."""
        store = tmp_path / "other.db"
        events = tmp_path / "other.jsonl"

        result = setup.run(
            capsys, *GRANT_ARGS, "--store", str(store), "--events", str(events), "--token-only"
        )

        assert EXIT_OK == result.status, result.err
        assert store.exists()
        assert events.exists()
        assert not setup.store.exists()
        assert not setup.events.exists()

    def test_events_optional(
        self, setup: Setup, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Without --events or its variable, the grant is minted and no events file is written."""
        monkeypatch.delenv(grant_cli.EVENTS_VARIABLE)

        result = setup.run(capsys, *GRANT_ARGS, "--token-only")

        assert EXIT_OK == result.status, result.err
        assert not setup.events.exists()

    def test_events_unwritable(
        self, setup: Setup, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """An events path that cannot be opened fails before a grant is minted."""
        result = setup.run(capsys, *GRANT_ARGS, "--events", str(tmp_path))

        assert EXIT_FAILURE == result.status
        assert "cannot open the grant events file" in result.err
        assert "" == result.out

    def test_store_not_sqlite(self, setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
        """A store path that is not an SQLite database fails with the path in the message."""
        setup.store.write_text("not a database " * 100)

        result = setup.run(capsys, *GRANT_ARGS)

        assert EXIT_FAILURE == result.status
        assert str(setup.store) in result.err


class TestGrantsList:
    def test_table(self, setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
        """The table lists active grants with their status."""
        setup.run(capsys, *GRANT_ARGS, "--approver", "dave", "--token-only")
        (record,) = setup.grants_json(capsys)

        result = setup.run(capsys, "grants")

        assert EXIT_OK == result.status, result.err
        assert "Active grants (1)" in result.out
        assert record["grant_id"] in result.out
        assert "alice" in result.out
        assert "admin: GET" in result.out
        assert "active" in result.out
        assert "carol" in result.out
        assert "dave" in result.out

    def test_scheduled(
        self,
        setup: Setup,
        clock: FakeClock,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """A grant that starts later is listed as scheduled, with when it starts."""
        monkeypatch.setenv("COLUMNS", "200")
        setup.run(capsys, *GRANT_ARGS, "--start", "+30m", "--token-only")

        result = setup.run(capsys, "grants")

        assert EXIT_OK == result.status, result.err
        assert "scheduled" in result.out
        assert "starts in 30 min" in result.out

    def test_empty(self, setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
        """An empty list points to --all for inactive grants."""
        setup.run(capsys, *GRANT_ARGS, "--token-only")
        (record,) = setup.grants_json(capsys)
        setup.run(capsys, "revoke", record["grant_id"])

        result = setup.run(capsys, "grants")

        assert EXIT_OK == result.status, result.err
        assert "No active grants" in result.out
        assert "zerotrust grants --all" in result.out

    def test_json(self, setup: Setup, clock: FakeClock, capsys: pytest.CaptureFixture[str]) -> None:
        """--json prints a JSON array of the grants' fields and status."""
        setup.run(capsys, *GRANT_ARGS, "--approver", "dave", "--token-only")

        result = setup.run(capsys, "grants", "--json")
        (record,) = json.loads(result.out)

        assert EXIT_OK == result.status, result.err
        assert "active" == record["status"]
        assert "alice" == record["subject"]
        assert "admin" == record["segment"]
        assert ["GET"] == record["methods"]
        assert "carol" == record["requested_by"]
        assert "dave" == record["approved_by"]
        assert clock.now + 900 == record["expires_at"]
        assert "token" not in record

    def test_expired(
        self, setup: Setup, clock: FakeClock, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """An expired grant leaves the default list, stays in --all and gets its event."""
        setup.run(capsys, *GRANT_ARGS, "--duration", "15m", "--token-only")
        clock.now += 16 * 60

        active = setup.run(capsys, "grants", "--json")
        (record,) = setup.grants_json(capsys)

        assert [] == json.loads(active.out)
        assert "expired" == record["status"]
        assert ["grant_expired"] == [
            event["event"] for event in setup.events_of() if event["event"] == "grant_expired"
        ]

    def test_all_table(
        self, setup: Setup, clock: FakeClock, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--all lists revoked grants with who revoked them."""
        setup.run(capsys, *GRANT_ARGS, "--token-only")
        (record,) = setup.grants_json(capsys)
        setup.run(capsys, "revoke", record["grant_id"], "--revoked-by", "frank")

        result = setup.run(capsys, "grants", "--all")

        assert EXIT_OK == result.status, result.err
        assert "All grants (1)" in result.out
        assert "revoked" in result.out
        assert "by frank" in result.out


class TestRevoke:
    def test_revoke(self, setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
        """A revoked grant is listed as revoked, with who revoked it and why."""
        setup.run(capsys, *GRANT_ARGS, "--token-only")
        (record,) = setup.grants_json(capsys)
        grant_id = record["grant_id"]

        result = setup.run(
            capsys, "revoke", grant_id, "--reason", "task finished", "--revoked-by", "frank"
        )
        (revoked,) = setup.grants_json(capsys)

        assert EXIT_OK == result.status, result.err
        assert f"Revoked grant {grant_id}" in result.out
        assert "revoked" == revoked["status"]
        assert "frank" == revoked["revoked_by"]
        assert "task finished" == revoked["revocation_reason"]

    def test_revoked_by_default(
        self, setup: Setup, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Without --revoked-by, the OS user name is recorded."""
        monkeypatch.setattr("getpass.getuser", lambda: "gina")
        setup.run(capsys, *GRANT_ARGS, "--token-only")
        (record,) = setup.grants_json(capsys)

        setup.run(capsys, "revoke", record["grant_id"])
        (revoked,) = setup.grants_json(capsys)

        assert "gina" == revoked["revoked_by"]

    def test_unknown_id(self, setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
        """An unknown id fails with a hint to list the grants."""
        setup.run(capsys, *GRANT_ARGS, "--token-only")

        result = setup.run(capsys, "revoke", "no-such-grant")

        assert EXIT_FAILURE == result.status
        assert "grant not found: 'no-such-grant'" in result.err
        assert "zerotrust grants" in result.err

    def test_already_revoked(self, setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
        """Revoking twice succeeds, keeps the first revocation and writes one event."""
        setup.run(capsys, *GRANT_ARGS, "--token-only")
        (record,) = setup.grants_json(capsys)
        setup.run(capsys, "revoke", record["grant_id"], "--revoked-by", "frank")

        result = setup.run(capsys, "revoke", record["grant_id"], "--revoked-by", "gina")
        (revoked,) = setup.grants_json(capsys)

        assert EXIT_OK == result.status, result.err
        assert "already revoked" in result.out
        assert "frank" == revoked["revoked_by"]
        assert 1 == [event["event"] for event in setup.events_of()].count("grant_revoked")

    def test_grant_id_required(self, capsys: pytest.CaptureFixture[str]) -> None:
        status = main(["revoke"])

        assert EXIT_USAGE == status
        assert "GRANT_ID" in capsys.readouterr().err


class TestAuditEvents:
    def test_grant_events(self, setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
        """An approved grant writes requested, approved and minted events before the exit."""
        result = setup.run(capsys, *GRANT_ARGS, "--approver", "dave", "--token-only")
        (record,) = setup.grants_json(capsys)
        events = setup.events_of()

        assert ["grant_requested", "grant_approved", "grant_minted"] == [
            event["event"] for event in events
        ]
        for event in events:
            assert record["grant_id"] == event["grant_id"]
            assert result.out.strip() not in json.dumps(event)

    def test_revoke_event(self, setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
        """Revoking writes a grant_revoked event with who revoked and why."""
        setup.run(capsys, *GRANT_ARGS, "--token-only")
        (record,) = setup.grants_json(capsys)

        setup.run(capsys, "revoke", record["grant_id"], "--revoked-by", "frank", "--reason", "done")
        event = setup.events_of()[-1]

        assert "grant_revoked" == event["event"]
        assert record["grant_id"] == event["grant_id"]
        assert "frank" == event["revoked_by"]
        assert "done" == event["revocation_reason"]

    def test_no_private_key_in_output(
        self, setup: Setup, clock: FakeClock, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """No command prints the private key, and only grant prints a token."""
        pem_lines = setup.key.read_text().splitlines()
        key_body = "".join(line for line in pem_lines if not line.startswith("-----"))
        grant = setup.run(capsys, *GRANT_ARGS, "--approver", "dave")
        token = _token_line(grant.out)
        (record,) = setup.grants_json(capsys)
        setup.run(capsys, "grants")
        setup.run(capsys, "revoke", record["grant_id"])
        clock.now += 7200
        setup.run(capsys, "grants", "--all")
        setup.run(capsys, "grant-key", "--out", str(setup.key), "--force")

        outputs = [text for result in setup.outputs for text in (result.out, result.err)]
        outputs.append(setup.events.read_text())
        for text in outputs:
            assert "PRIVATE KEY" not in text
            assert key_body not in text
        assert 1 == sum(text.count(token) for text in outputs)


class TestHelp:
    @pytest.mark.parametrize("command", ["grant", "grants", "revoke"])
    def test_names_variables(self, command: str, capsys: pytest.CaptureFixture[str]) -> None:
        """The help of each store command names the options and environment variables."""
        status = main([command, "--help"])
        output = capsys.readouterr().out

        assert EXIT_OK == status
        for text in ("--key", "--store", "--events", "ZEROTRUST_GRANT_KEY", "Exit status"):
            assert text in output

    def test_grant_key(self, capsys: pytest.CaptureFixture[str]) -> None:
        status = main(["grant-key", "--help"])
        output = capsys.readouterr().out

        assert EXIT_OK == status
        assert "--force" in output
        assert "0600" in output


class TestOnCallAndApproval:
    def test_revoke_without_signing_key(
        self, setup: Setup, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Listing and revoking need only the store, so revoking does not require minting power."""
        setup.run(capsys, *GRANT_ARGS, "--token-only")
        (record,) = setup.grants_json(capsys)
        monkeypatch.delenv("ZEROTRUST_GRANT_KEY")

        listed = setup.run(capsys, "grants", "--json")
        revoked = setup.run(capsys, "revoke", record["grant_id"])
        minted = setup.run(capsys, *GRANT_ARGS)

        assert EXIT_OK == listed.status, listed.err
        assert EXIT_OK == revoked.status, revoked.err
        assert EXIT_OK != minted.status
        assert "no grant signing key" in minted.err

    def test_require_approval(self, setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
        """With --require-approval, a grant without an approver is refused."""
        result = setup.run(capsys, *GRANT_ARGS, "--require-approval")

        assert EXIT_OK != result.status
        assert "requires approval" in result.err

    def test_require_approval_from_environment(
        self, setup: Setup, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """ZEROTRUST_GRANT_REQUIRE_APPROVAL=1 turns the two-person rule on for every grant."""
        monkeypatch.setenv("ZEROTRUST_GRANT_REQUIRE_APPROVAL", "1")

        result = setup.run(capsys, *GRANT_ARGS)

        assert EXIT_OK != result.status
        assert "requires approval" in result.err

    def test_approver_case_insensitive(
        self, setup: Setup, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A subject cannot approve their own grant by changing the case of their name."""
        result = setup.run(capsys, *GRANT_ARGS, "--approver", "ALICE")

        assert EXIT_OK != result.status
        assert "another person must approve it" in result.err


@pytest.fixture(name="redis_namespace")
def fixture_redis_namespace() -> Iterator[str]:
    """A fresh namespace on the Redis at 127.0.0.1:6379, whose keys are deleted afterwards."""
    redis_or_skip()
    namespace = new_namespace()
    yield namespace
    delete_namespace(namespace)


class TestRedisStore:
    def test_grant_list_revoke(
        self, setup: Setup, redis_namespace: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--store with a redis:// URL and --namespace mint, list and revoke in that namespace."""
        store = ["--store", REDIS_URL, "--namespace", redis_namespace]
        minted = setup.run(capsys, *GRANT_ARGS, "--token-only", *store)
        assert EXIT_OK == minted.status, minted.err
        listed = setup.run(capsys, "grants", "--json", *store)
        grant_id = json.loads(listed.out)[0]["grant_id"]

        revoked = setup.run(capsys, "revoke", grant_id, "--revoked-by", "dave", *store)
        records = json.loads(setup.run(capsys, "grants", "--all", "--json", *store).out)

        assert EXIT_OK == revoked.status, revoked.err
        assert not setup.store.exists()
        assert [("revoked", "dave")] == [(r["status"], r["revoked_by"]) for r in records]
        assert delete_namespace(redis_namespace), "the grant was not written to the namespace"

    def test_revocation_seen_by_app_store(
        self, setup: Setup, redis_namespace: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A grant revoked from the command line is revoked in the app's StateGrantStore."""
        from zerotrust.grants.store import StateGrantStore
        from zerotrust.state import RedisStateStore

        store = ["--store", REDIS_URL, "--namespace", redis_namespace]
        setup.run(capsys, *GRANT_ARGS, "--token-only", *store)
        grant_id = json.loads(setup.run(capsys, "grants", "--json", *store).out)[0]["grant_id"]
        setup.run(capsys, "revoke", grant_id, "--revoked-by", "dave", *store)
        state = RedisStateStore(REDIS_URL, namespace=redis_namespace)
        try:
            grant = StateGrantStore(state).get(grant_id)
        finally:
            state.close()

        assert grant is not None
        assert "dave" == grant.revoked_by

    def test_namespace_from_environment(
        self,
        setup: Setup,
        redis_namespace: str,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """The store URL and namespace can both come from environment variables."""
        monkeypatch.setenv(grant_cli.STORE_VARIABLE, REDIS_URL)
        monkeypatch.setenv(grant_cli.NAMESPACE_VARIABLE, redis_namespace)

        minted = setup.run(capsys, *GRANT_ARGS, "--token-only")
        listed = setup.run(capsys, "grants", "--json")

        assert EXIT_OK == minted.status, minted.err
        assert 1 == len(json.loads(listed.out))

    def test_namespace_required(self, setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
        """A Redis store without a namespace fails and names the option and variable."""
        result = setup.run(capsys, "grants", "--store", REDIS_URL)

        assert EXIT_FAILURE == result.status
        assert "needs --namespace NAME or $ZEROTRUST_GRANT_NAMESPACE" in result.err

    def test_password_never_printed(
        self, setup: Setup, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Errors about a Redis store show its URL with the password hidden."""
        url = f"redis://:hunter2-secret@127.0.0.1:{free_port()}/0"
        monkeypatch.setenv(grant_cli.STORE_VARIABLE, url)

        result = setup.run(capsys, "grants", "--namespace", "orders-api")

        assert EXIT_FAILURE == result.status
        assert f"redis://:***@127.0.0.1:{url.rsplit(':', 1)[1]}" in result.err
        assert "hunter2" not in result.err + result.out

    def test_password_on_command_line_warns(
        self, setup: Setup, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A password in --store, where the process list shows it, gets a warning."""
        url = f"redis://:hunter2-secret@127.0.0.1:{free_port()}/0"

        result = setup.run(capsys, "grants", "--store", url, "--namespace", "orders-api")

        assert "other users can see in the process list" in result.err
        assert "hunter2" not in result.err + result.out

    def test_password_variable_added(
        self, setup: Setup, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The password variable is added to the URL, and a second password is rejected."""
        monkeypatch.setenv(grant_cli.PASSWORD_VARIABLE, "hunter2-secret")
        port = free_port()

        unreachable = setup.run(
            capsys, "grants", "--store", f"redis://127.0.0.1:{port}/0", "--namespace", "a"
        )
        twice = setup.run(
            capsys, "grants", "--store", f"redis://:other@127.0.0.1:{port}/0", "--namespace", "a"
        )

        assert f"redis://:***@127.0.0.1:{port}/0" in unreachable.err
        assert "give the password once" in twice.err
        assert "hunter2" not in unreachable.err + twice.err
