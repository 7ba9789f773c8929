# SPDX-License-Identifier: Apache-2.0
"""The ``zerotrust check`` command: validate a policy file and review its risky settings."""

from __future__ import annotations

import argparse
import importlib.util
import warnings
from typing import TYPE_CHECKING, Any

from .exceptions import MissingExtraError

if TYPE_CHECKING:
    from rich.console import Console

    from .config import LoadedPolicy

_PIPE_WIDTH = 160

__all__ = ["DESCRIPTION", "SUMMARY", "add_arguments", "run"]

SUMMARY = "validate a policy file and warn about risky settings"
DESCRIPTION = """\
Load the TOML policy file POLICY the way the middleware does, print every problem with its
line and key path, a table of the segments, and warnings about settings that are legal but
risky: a public segment that overlaps a protected one, monitor mode (which does not enforce),
a leeway over a minute, a short HMAC secret, trusting every address as a proxy, a segment
without an identity verifier.

Sinks are checked but not opened, so checking writes no event file. Environment variables
that the file references must be set.

With --app module:attr, also check that every route of that app falls in a segment. A route
in a public segment is a warning unless a rule of public_routes under [middleware] matches it.

Exit status: 0 when the file is valid (and, with --strict, has no warnings), 1 otherwise,
2 on a usage error."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of ``zerotrust check``."""
    parser.add_argument("policy", metavar="POLICY", help="the TOML policy file to check")
    parser.add_argument(
        "--strict", action="store_true", help="fail (exit status 1) on warnings too"
    )
    parser.add_argument(
        "--app",
        metavar="MODULE:ATTR",
        help="an importable app whose routes must all fall in a segment, such as main:app",
    )


def run(args: argparse.Namespace) -> int:
    """Check the policy file and print the result; return the exit status."""
    if importlib.util.find_spec("rich") is None:
        raise MissingExtraError("zerotrust check", "cli")
    from .config import PolicyFileError, load_policy, review_policy

    console = _console()
    try:
        with warnings.catch_warnings():
            # The loader returns the warnings with their key paths; print those instead.
            warnings.simplefilter("ignore")
            loaded = load_policy(args.policy, build_sinks=False)
    except PolicyFileError as error:
        _print_findings(console, "error", [str(problem) for problem in error.problems])
        _print_findings(console, "warning", [str(warning) for warning in error.warnings])
        count = len(error.problems)
        console.print(f"{args.policy}: invalid, {count} problem{'s' if count != 1 else ''}")
        return 1

    found = [*loaded.warnings, *review_policy(loaded)]
    _print_segments(console, loaded)
    coverage_ok = True
    messages = [str(warning) for warning in found]
    if args.app:
        coverage_ok, route_warnings = _check_app(console, args.app, loaded)
        messages += route_warnings
    _print_findings(console, "warning", messages)

    failed = not coverage_ok or (args.strict and bool(messages))
    verdict = "invalid" if failed else "valid"
    segments = len(loaded.policy)
    summary = (
        f"{args.policy}: {verdict}, {segments} segment{'s' if segments != 1 else ''}, "
        f"{_count(messages)}"
    )
    if not coverage_ok:
        summary += ", routes outside every segment"
    if args.strict and messages:
        summary += " (--strict makes warnings fail)"
    console.print(summary)

    return 1 if failed else 0


def _count(found: list[str]) -> str:
    return f"{len(found)} warning{'s' if len(found) != 1 else ''}"


def _console() -> Console:
    from rich.console import Console

    console = Console(highlight=False, soft_wrap=True)
    if not console.is_terminal:
        # Rich assumes 80 columns for a pipe or file; a wider table keeps names on one line.
        console.width = _PIPE_WIDTH
    return console


def _print_findings(console: Console, label: str, lines: list[str]) -> None:
    from rich.markup import escape

    style = "bold red" if label == "error" else "yellow"
    for line in lines:
        console.print(f"[{style}]{label}[/{style}]: {escape(line)}")


def _print_segments(console: Console, loaded: LoadedPolicy) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"Segments of {escape(str(loaded.path))}", title_justify="left")
    for column in ("segment", "paths", "hosts", "methods", "mode", "verifiers", "requirements"):
        table.add_column(column, overflow="fold")

    names = {id(verifier): name for name, verifier in loaded.verifiers.items()}
    for segment in loaded.policy.segments:
        verifiers = [names.get(id(verifier), verifier.name) for verifier in segment.verifiers]
        table.add_row(
            escape(segment.name),
            escape("\n".join(pattern.pattern for pattern in segment.paths)),
            escape(", ".join(sorted(segment.hosts)) if segment.hosts else "any"),
            ", ".join(sorted(segment.methods)) if segment.methods else "any",
            segment.mode if segment.mode == "enforce" else "[yellow]monitor[/yellow]",
            escape(", ".join(verifiers) or "-"),
            escape(_requirements(segment)),
        )
    console.print(table)


def _requirements(segment: Any) -> str:
    if segment.public:
        return "public: no identity needed"
    parts = []
    for method, scopes in sorted(segment.scopes.items()):
        if scopes:
            parts.append(f"{method} scopes: {' '.join(sorted(scopes))}")
    if segment.roles:
        parts.append(f"one role of: {', '.join(sorted(segment.roles))}")
    if segment.max_auth_age is not None:
        parts.append(f"login within {segment.max_auth_age:g} s")
    if segment.acr_values:
        parts.append(f"acr one of: {', '.join(sorted(segment.acr_values))}")
    if segment.amr:
        parts.append(f"amr all of: {', '.join(sorted(segment.amr))}")

    return "\n".join(parts) or "an identity"


def _check_app(console: Console, reference: str, loaded: LoadedPolicy) -> tuple[bool, list[str]]:
    """Print the app's routes and their segments; return whether all are covered, and warnings."""
    from rich.markup import escape
    from rich.table import Table

    from .coverage import check_routes, load_app

    try:
        app = load_app(reference)
    except Exception as error:  # noqa: BLE001 -- any failure to import the user's app is reported
        message = f"cannot load app {reference!r}: {error}"
        _print_findings(console, "error", [message])
        return False, []
    report = check_routes(app, loaded.policy, public_routes=loaded.public_routes)

    table = Table(title=f"Routes of {escape(reference)}", title_justify="left")
    for column in ("methods", "path", "endpoint", "segment", "status"):
        table.add_column(column, overflow="fold")
    for row in report.rows:
        table.add_row(
            escape(" ".join(row.methods) or "any"),
            escape(row.path),
            escape(row.endpoint),
            escape(row.segment or "-"),
            row.status if not row.failed else f"[bold]{row.status}[/bold]",
        )
    console.print(table)

    uncovered = [row.describe() for row in report.rows if row.status == "uncovered"]
    # A route in a public segment that public_routes does not list is reported, not failed,
    # because the file declares its public segments.
    public = [row.describe() for row in report.rows if row.status == "undeclared_public"]
    _print_findings(console, "error", uncovered)

    return not uncovered, public
