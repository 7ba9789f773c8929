# SPDX-License-Identifier: Apache-2.0
"""The ``zerotrust grant`` command: mint a just-in-time grant and print its token once."""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

from . import cli
from .cli import (
    EVENTS_VARIABLE,
    KEY_VARIABLE,
    STORE_HELP,
    STORE_VARIABLE,
    CommandError,
    add_store_options,
    describe_time,
    open_broker,
    os_user,
    parse_duration,
    parse_start,
    print_error,
    rich_console,
)

if TYPE_CHECKING:
    from rich.console import Console

    from .broker import IssuedGrant

__all__ = ["DESCRIPTION", "SUMMARY", "add_arguments", "run"]

DEFAULT_MAX_DURATION = 3600.0
DEFAULT_DURATION = 900.0

SUMMARY = "mint a short-lived grant for one subject and print its token once"
DESCRIPTION = f"""\
Mint a just-in-time grant: the subject may call the given methods on the given paths of one
segment, from --start (now by default) for --duration. The grant is recorded in the grant
store, and the broker appends the grant_requested and grant_minted audit events (and
grant_approved, when --approver is given) to the events file.

The grant table goes to standard output, followed by the signed grant token. The token is
shown only this once: it is neither stored nor written to the events. With --token-only,
standard output is just the token, for a pipe or a variable:

  TOKEN=$(zerotrust grant --subject alice --segment admin --method GET \\
      --path '/admin/reports/**' --duration 15m --reason 'INC-1234 report export' --token-only)

Durations are a number and a unit: 90s, 15m, 2h or 1h30m. The key, store and events file
come from --key, --store and --events or from {KEY_VARIABLE}, {STORE_VARIABLE} and
{EVENTS_VARIABLE}. {STORE_HELP}

Exit status: 0 when the grant was minted, 1 when it was not, 2 on a usage error."""


APPROVAL_VARIABLE = "ZEROTRUST_GRANT_REQUIRE_APPROVAL"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``zerotrust grant``."""
    grant = parser.add_argument_group("grant")
    grant.add_argument(
        "--subject", required=True, help="the subject (user or workload) the grant is for"
    )
    grant.add_argument("--segment", required=True, help="the policy segment the grant applies to")
    grant.add_argument(
        "--method",
        dest="methods",
        action="append",
        required=True,
        metavar="METHOD",
        help="HTTP method the grant allows, such as GET; repeat for more",
    )
    grant.add_argument(
        "--path",
        dest="paths",
        action="append",
        required=True,
        metavar="RULE",
        help="path rule inside the segment, such as '/admin/reports/**'; repeat for more",
    )

    grant.add_argument(
        "--duration",
        type=parse_duration,
        metavar="DURATION",
        help=(
            f"how long the grant lasts, such as 15m (default: {DEFAULT_DURATION / 60:g}m, "
            "at most --max-duration)"
        ),
    )
    grant.add_argument(
        "--start",
        type=parse_start,
        metavar="TIME",
        help="when the grant starts: 'now', an offset such as +30m, or an ISO 8601 time "
        "with a UTC offset such as 2030-01-31T09:00:00Z (default: now)",
    )

    grant.add_argument(
        "--reason",
        required=True,
        metavar="TEXT",
        help="why the grant is needed, such as a ticket and task",
    )
    grant.add_argument(
        "--approver",
        metavar="NAME",
        help="who approved the grant; must differ from the requester and the subject",
    )
    grant.add_argument(
        "--require-approval",
        action="store_true",
        default=os.environ.get(APPROVAL_VARIABLE, "").lower() in ("1", "true", "yes"),
        help=(
            "refuse to mint without an --approver (two-person rule); also set by "
            f"{APPROVAL_VARIABLE}=1"
        ),
    )
    grant.add_argument(
        "--requested-by", metavar="NAME", help="who requests the grant (default: the OS user name)"
    )
    grant.add_argument(
        "--max-duration",
        type=parse_duration,
        default=DEFAULT_MAX_DURATION,
        metavar="DURATION",
        help="the broker's maximum grant duration; longer grants are rejected (default: 1h)",
    )

    output = parser.add_argument_group("output")
    output.add_argument(
        "--token-only", action="store_true", help="print only the token on standard output"
    )

    add_store_options(parser)


def run(args: argparse.Namespace) -> int:
    """Mint the grant and print it; return the exit status."""
    console = None if args.token_only else rich_console("grant")
    try:
        issued = _mint(args)
    except CommandError as error:
        return print_error("grant", error)

    if console is None:
        print(issued.token)
    else:
        _print_issued(console, issued)

    return 0


def _mint(args: argparse.Namespace) -> IssuedGrant:
    from .broker import GrantLimits

    maximum = args.max_duration
    if args.duration is not None and args.duration > maximum:
        message = (
            f"duration {_seconds(args.duration)} is longer than the maximum {_seconds(maximum)}: "
            "pass a shorter --duration, or raise --max-duration if policy allows"
        )
        raise CommandError(message)

    limits = GrantLimits(default=min(DEFAULT_DURATION, maximum), maximum=maximum)
    requested_by = args.requested_by or os_user()
    with open_broker(
        args,
        store_must_exist=False,
        default_limits=limits,
        require_approval=args.require_approval,
    ) as broker:
        start = None if args.start is None else args.start.resolve(cli.clock())
        return broker.mint(
            subject=args.subject,
            segment=args.segment,
            methods=args.methods,
            paths=args.paths,
            reason=args.reason,
            requested_by=requested_by,
            duration=args.duration,
            start=start,
            approver=args.approver,
        )


def _print_issued(console: Console, issued: IssuedGrant) -> None:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    grant = issued.grant
    now = cli.clock()
    table = Table(title="Grant minted", title_justify="left", box=box.SIMPLE, show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    rows = {
        "id": grant.grant_id,
        "subject": grant.subject,
        "segment": grant.segment,
        "methods": " ".join(grant.methods),
        "paths": "\n".join(grant.paths),
        "starts": describe_time(grant.not_before, now),
        "expires": describe_time(grant.expires_at, now),
        "reason": grant.reason,
        "requested by": grant.requested_by,
        "approved by": grant.approved_by or "-",
    }
    for field, value in rows.items():
        # Text, not markup: a reason or subject may contain square brackets.
        table.add_row(field, Text(value))
    console.print(table)

    console.print(
        "[bold]Grant token[/] (shown only now; it is not stored, so copy it to the subject):"
    )
    # Plain print: rich would wrap a long token across lines.
    print(issued.token)


def _seconds(seconds: float) -> str:
    if seconds % 3600 == 0:
        return f"{seconds / 3600:g}h"
    if seconds % 60 == 0:
        return f"{seconds / 60:g}m"
    return f"{seconds:g}s"
