# SPDX-License-Identifier: Apache-2.0
"""The ``zerotrust revoke`` command: revoke a grant before it expires."""

from __future__ import annotations

import argparse

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
    print_error,
)

__all__ = ["DESCRIPTION", "SUMMARY", "add_arguments", "run"]

SUMMARY = "revoke a grant before it expires"
DESCRIPTION = f"""\
Revoke the grant GRANT_ID: the grant store records who revoked it, when and why, and the
broker appends a grant_revoked audit event to the events file. Grant verifiers that read
the same store reject the grant's token from then on. Revoking a grant that is already
revoked changes nothing.

Find grant ids with 'zerotrust grants'. The key, store and events file come from --key,
--store and --events or from {KEY_VARIABLE}, {STORE_VARIABLE} and {EVENTS_VARIABLE}.
{STORE_HELP}

Exit status: 0 when the grant is revoked, 1 when it was not found or could not be revoked,
2 on a usage error."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of ``zerotrust revoke``."""
    parser.add_argument("grant_id", metavar="GRANT_ID", help="id of the grant to revoke")
    parser.add_argument("--reason", metavar="TEXT", help="why the grant is revoked")
    parser.add_argument(
        "--revoked-by", metavar="NAME", help="who revokes the grant (default: the OS user name)"
    )
    add_store_options(parser)


def run(args: argparse.Namespace) -> int:
    """Revoke the grant and print the result; return the exit status."""
    try:
        revoked_by = args.revoked_by or os_user()
        with open_broker(args, store_must_exist=True, signs=False) as broker:
            grant = broker.get(args.grant_id)
            if grant is None:
                message = (
                    f"grant not found: {args.grant_id!r}. Run 'zerotrust grants --all' to list "
                    "the grant ids in the store"
                )
                raise CommandError(message)
            if grant.revoked_at is not None:
                print(
                    f"Grant {grant.grant_id} was already revoked at "
                    f"{describe_time(grant.revoked_at, cli.clock())} by {grant.revoked_by}."
                )
                return 0
            grant = broker.revoke(args.grant_id, revoked_by=revoked_by, reason=args.reason)
    except CommandError as error:
        return print_error("revoke", error)

    print(
        f"Revoked grant {grant.grant_id} of subject {grant.subject!r} on segment "
        f"{grant.segment!r} (it was to expire {describe_time(grant.expires_at, cli.clock())})."
    )
    return 0
