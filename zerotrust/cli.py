# SPDX-License-Identifier: Apache-2.0
"""The ``zerotrust`` command line: one subcommand per module, registered in `COMMANDS`."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol

from ._version import __version__
from .exceptions import MissingExtraError

__all__ = [
    "COMMANDS",
    "EXIT_FAILURE",
    "EXIT_OK",
    "EXIT_USAGE",
    "Command",
    "build_parser",
    "main",
    "muted_logger",
]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
# 128 + SIGINT, as shells report a command stopped with Ctrl-C.
EXIT_INTERRUPTED = 130

PROG = "zerotrust"


class CommandModule(Protocol):
    """
    The interface of a subcommand module.

    ``SUMMARY`` is the one-line help in the command list, and ``DESCRIPTION`` the text of the
    subcommand's ``--help``. Importing the module must not import optional dependencies, so
    that ``--help`` works without them. ``run`` imports them and raises `MissingExtraError`
    when one is missing.
    """

    SUMMARY: str
    DESCRIPTION: str

    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


@dataclass(frozen=True, slots=True)
class Command:
    """A subcommand: its name and the import path of the `CommandModule` that implements it."""

    name: str
    module: str


COMMANDS: tuple[Command, ...] = (
    Command("demo", "zerotrust.demo"),
    Command("grant-key", "zerotrust.grants.cli_keygen"),
    Command("grant", "zerotrust.grants.cli_grant"),
    Command("grants", "zerotrust.grants.cli_grants"),
    Command("revoke", "zerotrust.grants.cli_revoke"),
    Command("analyze", "zerotrust.monitor.cli_analyze"),
    Command("report", "zerotrust.monitor.cli_report"),
    Command("check", "zerotrust.cli_check"),
    Command("explain", "zerotrust.cli_explain"),
)
"""The registered subcommands, in the order ``--help`` lists them."""


class ArgumentParser(argparse.ArgumentParser):
    """An argument parser whose usage errors end with a hint to run ``--help``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.subcommand_parsers: dict[str, ArgumentParser] = {}

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        hint = f"Run '{self.prog} --help' to see the valid arguments."
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n{hint}\n")


def build_parser() -> ArgumentParser:
    """Build the parser with one subparser per entry of `COMMANDS`."""
    parser = ArgumentParser(
        prog=PROG,
        description="Zero-trust access control for Python web apps: command line tools.",
        epilog=f"Run '{PROG} COMMAND --help' for the options of one command.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    subparsers = parser.add_subparsers(
        title="commands", dest="command", metavar="COMMAND", required=True
    )

    for command in COMMANDS:
        module: CommandModule = importlib.import_module(command.module)
        subparser = subparsers.add_parser(
            command.name,
            help=module.SUMMARY,
            description=module.DESCRIPTION,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(subparser)
        subparser.set_defaults(run=module.run)
        parser.subcommand_parsers[command.name] = subparser

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """
    Run the ``zerotrust`` command with ``argv`` (``sys.argv[1:]`` by default).

    Returns:
        The exit status: the command's own, `EXIT_USAGE` for invalid arguments, `EXIT_FAILURE`
        when an optional dependency is missing, `EXIT_INTERRUPTED` after Ctrl-C.
    """
    parser = build_parser()
    arguments = list(sys.argv[1:] if argv is None else argv)
    try:
        _check_global_options(parser, arguments)
        args, unknown = parser.parse_known_args(arguments)
        if unknown:
            # Report the error with the usage of the subcommand the options were given to.
            subparser = parser.subcommand_parsers.get(args.command, parser)
            subparser.error(f"unrecognized arguments: {' '.join(unknown)}")
    except SystemExit as exit_request:
        # --help and --version exit with 0, and ArgumentParser.error with EXIT_USAGE.
        code = exit_request.code
        return code if isinstance(code, int) else EXIT_USAGE

    try:
        status: int = args.run(args)
    except MissingExtraError as error:
        print(f"{PROG} {args.command}: error: {error}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED

    return status


def _check_global_options(parser: ArgumentParser, arguments: list[str]) -> None:
    """Name an unknown option given before the command, rather than only the missing command."""
    for argument in arguments:
        if not argument.startswith("-"):
            return
        if argument not in ("-h", "--help", "--version"):
            parser.error(f"unrecognized option {argument!r}")


if __name__ == "__main__":
    sys.exit(main())


@contextlib.contextmanager
def muted_logger(name: str) -> Iterator[None]:
    """Drop the records of logger ``name`` while a command reports the error itself."""

    def drop(record: logging.LogRecord) -> bool:
        return False

    logger = logging.getLogger(name)
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)
