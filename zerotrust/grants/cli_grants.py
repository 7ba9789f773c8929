# SPDX-License-Identifier: Apache-2.0
"""The ``zerotrust grants`` command: list the grants in the grant store."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

from . import cli
from .cli import (
    EVENTS_VARIABLE,
    KEY_VARIABLE,
    STORE_HELP,
    STORE_VARIABLE,
    CommandError,
    add_store_options,
    describe_delta,
    describe_time,
    grant_record,
    open_broker,
    print_error,
    rich_console,
)

if TYPE_CHECKING:
    from rich.console import Console

    from .model import Grant

__all__ = ["DESCRIPTION", "SUMMARY", "add_arguments", "run"]

SUMMARY = "list the active grants, or all grants with --all"
DESCRIPTION = f"""\
List the grants that are active, scheduled or waiting for approval, as a table. With --all,
expired and revoked grants are listed too. Each row shows the grant's status at the time of
the listing. Before listing, grants that expired since the last check get their grant_expired
audit event in the events file.

--json prints a JSON array instead, one object per grant with the fields of the grant store
(times in seconds since the epoch) and its status, for scripts. No output contains a token.

The key, store and events file come from --key, --store and --events or from {KEY_VARIABLE},
{STORE_VARIABLE} and {EVENTS_VARIABLE}. {STORE_HELP}

Exit status: 0 when the grants were listed, 1 when the store could not be read, 2 on a usage
error."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``zerotrust grants``."""
    parser.add_argument("--all", action="store_true", help="include expired and revoked grants")
    parser.add_argument("--json", action="store_true", help="print a JSON array instead of a table")
    add_store_options(parser)


def run(args: argparse.Namespace) -> int:
    """List the grants; return the exit status."""
    console = None if args.json else rich_console("grants")
    try:
        with open_broker(args, store_must_exist=True, signs=False) as broker:
            broker.reap()
            grants = broker.list(include_inactive=args.all)
    except CommandError as error:
        return print_error("grants", error)

    now = cli.clock()
    if console is None:
        print(json.dumps([grant_record(grant, now) for grant in grants], indent=2))
    elif grants:
        _print_table(console, grants, now, include_inactive=args.all)
    elif args.all:
        console.print("No grants in the store. Mint one with 'zerotrust grant'.")
    else:
        console.print(
            "No active grants. Run 'zerotrust grants --all' to include expired and revoked ones."
        )

    return 0


def _print_table(
    console: Console, grants: Sequence[Grant], now: float, *, include_inactive: bool
) -> None:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    title = "All grants" if include_inactive else "Active grants"
    table = Table(title=f"{title} ({len(grants)})", title_justify="left", box=box.SIMPLE_HEAD)
    # The id is copied into 'zerotrust revoke', so it is never folded.
    table.add_column("id", no_wrap=True)
    for column in ("subject", "access", "expires", "status", "reason"):
        table.add_column(column, overflow="fold")
    table.add_column("requester\napprover", overflow="fold")

    for grant in grants:
        status = grant.status(now)
        access = f"{grant.segment}: {' '.join(grant.methods)}"
        cells = (
            grant.grant_id,
            grant.subject,
            "\n".join((access, *grant.paths)),
            describe_time(grant.expires_at, now, minutes=True, separator="\n"),
            _status_text(grant, status, now),
            grant.reason,
            f"{grant.requested_by}\n{grant.approved_by or '-'}",
        )
        # Text, not markup: a reason or subject may contain square brackets.
        table.add_row(*(Text(cell) for cell in cells), style=_ROW_STYLES.get(status, "dim"))

    console.print(table)


_ROW_STYLES = {"active": "", "scheduled": "cyan", "pending": "yellow"}


def _status_text(grant: Grant, status: str, now: float) -> str:
    if status == "scheduled":
        return f"scheduled\nstarts {describe_delta(grant.not_before - now)}"
    if status == "revoked" and grant.revoked_by:
        return f"revoked\nby {grant.revoked_by}"
    return status
