# SPDX-License-Identifier: Apache-2.0
from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import zerotrust
from zerotrust.cli import COMMANDS, EXIT_FAILURE, EXIT_OK, EXIT_USAGE, Command, build_parser, main


class TestHelp:
    def test_top_level_help(self, capsys: pytest.CaptureFixture[str]) -> None:
        """``--help`` lists every registered command and exits with 0."""
        status = main(["--help"])
        output = capsys.readouterr().out

        assert EXIT_OK == status
        assert "usage: zerotrust" in output
        for command in COMMANDS:
            assert command.name in output

    def test_demo_help(self, capsys: pytest.CaptureFixture[str]) -> None:
        """``demo --help`` documents every option and the exit statuses."""
        status = main(["demo", "--help"])
        output = capsys.readouterr().out

        assert EXIT_OK == status
        for option in ("--events", "--port", "--host", "--quiet"):
            assert option in output
        assert "Exit status" in output

    @pytest.mark.parametrize("command", [command.name for command in COMMANDS])
    def test_every_command_has_help(self, command: str, capsys: pytest.CaptureFixture[str]) -> None:
        """Each registered command prints its own usage line for ``--help``."""
        status = main([command, "--help"])

        assert EXIT_OK == status
        assert f"usage: zerotrust {command}" in capsys.readouterr().out

    def test_version(self, capsys: pytest.CaptureFixture[str]) -> None:
        """``--version`` prints the package version."""
        status = main(["--version"])

        assert EXIT_OK == status
        assert f"zerotrust {zerotrust.__version__}\n" == capsys.readouterr().out


class TestUsageErrors:
    @pytest.mark.parametrize(
        ("argv", "message"),
        [
            # Commands
            ([], "the following arguments are required: COMMAND"),
            (["dmeo"], "invalid choice: 'dmeo'"),
            (["--bogus"], "unrecognized option '--bogus'"),
            (["demo", "--bogus"], "zerotrust demo: error: unrecognized arguments: --bogus"),
            # Options of demo
            (["demo", "--bogus"], "unrecognized arguments: --bogus"),
            (["demo", "--port", "99999"], "port must be a whole number from 0 to 65535"),
            (["demo", "--port", "http"], "not 'http'"),
            (["demo", "--host", "10.0.0.1"], "must be a loopback IP address"),
            (["demo", "--host", "example.com"], "must be a loopback IP address"),
            (["demo", "--events"], "expected one argument"),
        ],
    )
    def test_exit_status_and_hint(
        self, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Invalid arguments exit with 2, name the problem and print the help hint."""
        status = main(argv)
        error = capsys.readouterr().err

        assert EXIT_USAGE == status
        assert message in error
        assert "--help' to see the valid arguments" in error

    def test_unwritable_events_path(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """An events path in a missing directory is a usage error that names the path."""
        path = tmp_path / "missing" / "events.jsonl"

        status = main(["demo", "--events", str(path)])
        error = capsys.readouterr().err

        assert EXIT_USAGE == status
        assert "cannot open the events file" in error
        assert "Pass --events with a writable path" in error


class TestMissingExtra:
    @pytest.mark.parametrize("module", ["rich", "uvicorn"])
    def test_demo_names_the_extra(
        self,
        module: str,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """Without rich or uvicorn, ``demo`` fails with the pip command that installs them."""
        monkeypatch.setitem(sys.modules, module, None)
        events = tmp_path / "events.jsonl"

        status = main(["demo", "--events", str(events)])
        error = capsys.readouterr().err

        assert EXIT_FAILURE == status
        assert "pip install 'zerotrust-middleware[cli]'" in error
        assert not events.exists()

    def test_help_without_extras(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """``--help`` works without the optional dependencies."""
        monkeypatch.setitem(sys.modules, "rich", None)
        monkeypatch.setitem(sys.modules, "uvicorn", None)

        status = main(["demo", "--help"])

        assert EXIT_OK == status
        assert "--events" in capsys.readouterr().out


class TestRegistry:
    @pytest.mark.parametrize("command", COMMANDS, ids=lambda command: command.name)
    def test_module_interface(self, command: Command) -> None:
        """Every registered module provides the attributes the parser builder needs."""
        module = importlib.import_module(command.module)

        assert isinstance(module.SUMMARY, str)
        assert isinstance(module.DESCRIPTION, str)
        assert callable(module.add_arguments)
        assert callable(module.run)

    def test_parser_sets_runner(self) -> None:
        """Parsing a command stores that command's ``run`` function in the namespace."""
        args = build_parser().parse_args(["demo", "--port", "8080", "--host", "::1"])

        assert "demo" == args.command
        assert 8080 == args.port
        assert "::1" == args.host
        assert callable(args.run)

    def test_demo_defaults(self) -> None:
        """The demo defaults to a free port on 127.0.0.1 and an events file in the cwd."""
        args = build_parser().parse_args(["demo"])

        assert Path("zerotrust-demo-events.jsonl") == args.events
        assert 0 == args.port
        assert "127.0.0.1" == args.host
        assert args.quiet is False

    def test_bracketed_ipv6_host(self) -> None:
        """A bracketed IPv6 loopback address is accepted and stored without brackets."""
        args = build_parser().parse_args(["demo", "--host", "[::1]"])

        assert "::1" == args.host


class TestEntryPoint:
    def test_module_version(self) -> None:
        """``python -m zerotrust.cli --version`` prints the version and exits with 0."""
        completed = subprocess.run(
            [sys.executable, "-m", "zerotrust.cli", "--version"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

        assert EXIT_OK == completed.returncode
        assert f"zerotrust {zerotrust.__version__}" == completed.stdout.strip()

    def test_module_usage_error(self) -> None:
        """The process exit status of a usage error is 2."""
        completed = subprocess.run(
            [sys.executable, "-m", "zerotrust.cli", "demo", "--port", "-1"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

        assert EXIT_USAGE == completed.returncode
        assert "port must be a whole number" in completed.stderr
