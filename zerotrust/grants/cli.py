# SPDX-License-Identifier: Apache-2.0
"""Options, settings, parsing and output helpers shared by the grant commands of the CLI."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import getpass
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..cli import muted_logger

if TYPE_CHECKING:
    from rich.console import Console

    from ..events import EventEmitter
    from .broker import GrantBroker, GrantLimits
    from .keys import SigningKey
    from .model import Grant
    from .store import GrantStore

__all__ = [
    "EVENTS_VARIABLE",
    "KEY_VARIABLE",
    "NAMESPACE_VARIABLE",
    "PASSWORD_VARIABLE",
    "STORE_HELP",
    "STORE_VARIABLE",
    "CommandError",
    "StartTime",
    "add_store_options",
    "clock",
    "describe_delta",
    "describe_time",
    "grant_record",
    "load_signing_key",
    "open_broker",
    "os_user",
    "parse_duration",
    "parse_start",
    "print_error",
    "rich_console",
]

KEY_VARIABLE = "ZEROTRUST_GRANT_KEY"
STORE_VARIABLE = "ZEROTRUST_GRANT_STORE"
EVENTS_VARIABLE = "ZEROTRUST_GRANT_EVENTS"
NAMESPACE_VARIABLE = "ZEROTRUST_GRANT_NAMESPACE"
PASSWORD_VARIABLE = "ZEROTRUST_GRANT_REDIS_PASSWORD"  # noqa: S105 -- a variable name
STORE_HELP = f"""\
The store is a SQLite file, or the Redis server of the app's shared state: give its
redis:// URL and the namespace of the app's [state] table with --namespace or
{NAMESPACE_VARIABLE}. Keep a Redis password out of the command line: put the URL in
{STORE_VARIABLE}, or the password in {PASSWORD_VARIABLE}."""
"""The paragraph of the grant commands' help on the store options."""

clock: Callable[[], float] = time.time
"""The time source of the grant commands and their broker; tests replace it."""

_DURATION = re.compile(r"(?:\d+(?:\.\d+)?[smhd])+")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNIT_SECONDS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PIPED_WIDTH = 120


class CommandError(Exception):
    """A failed grant command; its message names the failure and the next step."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class StartTime:
    """The ``--start`` of a grant: either an absolute timestamp or an offset from now."""

    timestamp: float | None = None
    offset: float | None = None

    def resolve(self, now: float) -> float:
        """Return the start in seconds since the epoch."""
        if self.timestamp is not None:
            return self.timestamp
        return now + (self.offset or 0.0)


# Parsing


def parse_duration(text: str) -> float:
    """Parse a duration such as ``90s``, ``15m``, ``2h`` or ``1h30m`` into seconds."""
    value = text.strip().lower()
    if not _DURATION.fullmatch(value):
        message = (
            f"invalid duration {text!r}: use a number and a unit (s, m, h, d), "
            "such as 90s, 15m, 2h or 1h30m"
        )
        raise argparse.ArgumentTypeError(message)

    seconds = sum(
        float(number) * _UNIT_SECONDS[unit] for number, unit in _DURATION_PART.findall(value)
    )
    if seconds <= 0:
        message = f"invalid duration {text!r}: it must be longer than zero"
        raise argparse.ArgumentTypeError(message)

    return seconds


def parse_start(text: str) -> StartTime:
    """Parse ``--start``: ``now``, ``+DURATION`` from now, or an ISO 8601 time with a UTC offset."""
    value = text.strip()
    if value.lower() == "now":
        return StartTime(offset=0.0)
    if value.startswith("+"):
        return StartTime(offset=parse_duration(value[1:]))

    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        moment = None
    if moment is None:
        message = (
            f"invalid start time {text!r}: use 'now', an offset such as +30m, or an ISO 8601 "
            "time with a UTC offset, such as 2030-01-31T09:00:00Z"
        )
        raise argparse.ArgumentTypeError(message)
    if moment.tzinfo is None:
        # A time without an offset is ambiguous across machines; reading it as local or UTC
        # could shift a grant window by hours.
        message = f"start time {text!r} has no UTC offset: add Z or an offset such as +02:00"
        raise argparse.ArgumentTypeError(message)

    return StartTime(timestamp=moment.timestamp())


# Options and settings


def add_store_options(parser: argparse.ArgumentParser) -> None:
    """
    Add ``--key``, ``--store``, ``--namespace`` and ``--events``, which default to their
    environment variables.
    """
    group = parser.add_argument_group(
        "grant key and store",
        "Each option defaults to its environment variable, so a shell can set them once.",
    )
    group.add_argument(
        "--key",
        type=Path,
        metavar="PATH",
        help=f"PEM file of the private key that signs grant tokens (default: ${KEY_VARIABLE})",
    )
    group.add_argument(
        "--store",
        metavar="PATH_OR_URL",
        help=(
            "SQLite database of the grants, or the redis:// URL of the Redis server that keeps "
            f"the app's shared state (default: ${STORE_VARIABLE}). Keep a Redis password out of "
            f"this option, where other users can see it: put it in ${STORE_VARIABLE} or "
            f"${PASSWORD_VARIABLE}"
        ),
    )
    group.add_argument(
        "--namespace",
        metavar="NAME",
        help=(
            "key namespace of a Redis store: the namespace of the app's [state] table "
            f"(default: ${NAMESPACE_VARIABLE})"
        ),
    )
    group.add_argument(
        "--events",
        type=Path,
        metavar="PATH",
        help=(
            "JSON lines file the grant audit events are appended to "
            f"(default: ${EVENTS_VARIABLE}; no events are written when neither is set)"
        ),
    )


def _setting(value: Path | None, variable: str) -> Path | None:
    if value is not None:
        return value
    from_environment = os.environ.get(variable, "").strip()
    return Path(from_environment).expanduser() if from_environment else None


def _text_setting(value: str | None, variable: str) -> str | None:
    if value is not None:
        return value
    return os.environ.get(variable, "").strip() or None


def os_user() -> str:
    """Return the login name of the user running the command."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        # getpass finds no name in containers without a passwd entry or USER variable.
        message = "cannot find the name of the OS user: pass --requested-by or --revoked-by NAME"
        raise CommandError(message) from None


def load_signing_key(path: Path) -> SigningKey:
    """Load the signing key from a PEM file; errors name the file and never contain the key."""
    from ..exceptions import ConfigurationError
    from . import keys

    try:
        return keys.load_signing_key(path)
    except FileNotFoundError:
        message = (
            f"grant signing key not found: {str(path)!r}. Check --key or {KEY_VARIABLE}, "
            "or create a key with 'zerotrust grant-key --out PATH'"
        )
        raise CommandError(message) from None
    except OSError as error:
        message = f"cannot read the grant signing key {str(path)!r}: {error.strerror}"
        raise CommandError(message) from None
    except ConfigurationError as error:
        # Loose file permissions, an encrypted or damaged file, or an unsupported key type.
        raise CommandError(str(error)) from None


def _open_events(path: Path | None) -> EventEmitter | None:
    if path is None:
        return None
    from ..events import EventEmitter, JsonLinesSink

    try:
        sink = JsonLinesSink(path)
    except OSError as error:
        message = (
            f"cannot open the grant events file {str(path)!r}: {error.strerror}. "
            f"Pass --events or set ${EVENTS_VARIABLE} to a writable path"
        )
        raise CommandError(message) from None

    return EventEmitter([sink])


@contextlib.contextmanager
def open_broker(
    args: argparse.Namespace,
    *,
    store_must_exist: bool,
    default_limits: GrantLimits | None = None,
    signs: bool = True,
    require_approval: bool = False,
) -> Iterator[GrantBroker]:
    """
    Build the broker from ``--key``, ``--store`` and ``--events`` or their environment variables.

    Commands that do not sign (``signs=False``: listing, revoking) need no signing key, so the
    person on call can revoke without being able to mint. On exit, the audit events are
    written and the events file and the store are closed. Raises
    `CommandError` for a missing or unusable setting, a store error, a `GrantError`, or audit
    events that could not be written.
    """
    from ..config._state import hide_password
    from .broker import GrantBroker
    from .errors import GrantError, GrantStoreError

    key_path = _setting(args.key, KEY_VARIABLE)
    if key_path is None and signs:
        message = (
            f"no grant signing key: pass --key PATH or set {KEY_VARIABLE} "
            "(create one with 'zerotrust grant-key --out PATH')"
        )
        raise CommandError(message)
    store_setting = _text_setting(args.store, STORE_VARIABLE)
    if store_setting is None:
        message = (
            f"no grant store: pass --store PATH or set {STORE_VARIABLE} to the SQLite file "
            "of the grants ('zerotrust grant' creates it), or to the redis:// URL of the "
            "app's shared state"
        )
        raise CommandError(message)
    redis_url = _redis_url(args, store_setting)
    namespace = _namespace(args) if redis_url is not None else ""
    store_path = Path(store_setting).expanduser()
    if store_must_exist and redis_url is None and not store_path.exists():
        # Opening a mistyped path would create an empty store and report no grants.
        message = (
            f"grant store not found: {str(store_path)!r}. Check --store or ${STORE_VARIABLE}; "
            "'zerotrust grant' creates the store with the first grant"
        )
        raise CommandError(message)

    if key_path is not None:
        signing_key = load_signing_key(key_path)
    else:
        from .keys import generate_signing_key

        # The broker wants a key, but this command never signs: a throwaway key serves.
        signing_key = generate_signing_key()
    events_path = _setting(args.events, EVENTS_VARIABLE)
    emitter = _open_events(events_path)
    store: GrantStore | None = None
    hint = ""
    options: dict[str, Any] = {}
    if default_limits is not None:
        options["default_limits"] = default_limits
    if require_approval:
        options["require_approval"] = True
    try:
        if redis_url is not None:
            hint = f"Check that the Redis server at {hide_password(redis_url)} is reachable"
            store = _open_redis_store(redis_url, namespace)
        else:
            from .store import SQLiteGrantStore

            hint = f"Check that {str(store_path)!r} is a zerotrust grant store and writable"
            store = SQLiteGrantStore(store_path)
        broker = GrantBroker(
            signing_key=signing_key, store=store, events=emitter, clock=clock, **options
        )
        yield broker
    except GrantError as error:
        raise CommandError(str(error)) from None
    except GrantStoreError as error:
        raise CommandError(f"{error}. {hint}") from None
    finally:
        if emitter is not None:
            emitter.close()
        _close_store(store)

    if emitter is not None and (emitter.failed or emitter.dropped):
        lost = emitter.failed + emitter.dropped
        message = (
            f"{lost} grant audit events were not written to {str(events_path)!r}; "
            "the change itself is saved in the store. Check that the events file is writable"
        )
        raise CommandError(message)


def _redis_url(args: argparse.Namespace, store: str) -> str | None:
    """Return the store setting as a Redis URL with its password, or ``None`` for a SQLite path."""
    from ..config._state import is_redis_url, url_password, with_password

    if not is_redis_url(store):
        return None
    scheme, separator, rest = store.partition("://")
    # RedisStateStore compares the scheme as written, and redis-py takes any case.
    url = scheme.lower() + separator + rest
    if args.store is not None and url_password(url) is not None:
        command = getattr(args, "command", "grant")
        print(
            f"zerotrust {command}: warning: the --store URL contains a password, which "
            f"other users can see in the process list: set ${STORE_VARIABLE} or "
            f"${PASSWORD_VARIABLE} instead",
            file=sys.stderr,
        )
    password = os.environ.get(PASSWORD_VARIABLE, "")
    if password:
        if url_password(url) is not None:
            message = (
                f"the Redis URL has a password and ${PASSWORD_VARIABLE} is set too: give the "
                "password once"
            )
            raise CommandError(message)
        url = with_password(url, password)

    return url


def _namespace(args: argparse.Namespace) -> str:
    namespace = _text_setting(args.namespace, NAMESPACE_VARIABLE)
    if namespace is None:
        message = (
            f"a Redis grant store needs --namespace NAME or ${NAMESPACE_VARIABLE}: the "
            "namespace of the app's [state] table, so the command sees the app's grants"
        )
        raise CommandError(message)
    return namespace


def _open_redis_store(url: str, namespace: str) -> GrantStore:
    """Open the grants of a `RedisStateStore`; errors show the URL without its password."""
    from ..config._state import hide_password
    from ..exceptions import ConfigurationError
    from ..state import StateUnavailableError
    from .store import StateGrantStore

    try:
        from ..state import RedisStateStore

        state = RedisStateStore(url, namespace=namespace)
    except ConfigurationError as error:
        if error.parameter == "url":
            # The message would quote the URL, password included.
            message = f"invalid Redis URL {hide_password(url)!r}"
        else:
            message = str(error)
        raise CommandError(message) from None
    try:
        with muted_logger("zerotrust.state"):
            state.ping()
    except StateUnavailableError as error:
        state.close()
        message = (
            f"cannot reach the Redis grant store at {hide_password(url)}: "
            f"{str(error).rstrip('.')}. Check "
            f"--store or ${STORE_VARIABLE}, and that the server is running"
        )
        raise CommandError(message) from None

    return StateGrantStore(state)


def _close_store(store: GrantStore | None) -> None:
    close_store = getattr(store, "close", None)
    if close_store is not None:
        close_store()
    close_state = getattr(getattr(store, "state", None), "close", None)
    if close_state is not None:
        close_state()


# Output


def print_error(command: str, error: CommandError) -> int:
    """Print ``error`` for ``command`` on standard error and return its exit status."""
    print(f"zerotrust {command}: error: {error}", file=sys.stderr)
    return error.status


def rich_console(command: str, **options: Any) -> Console:
    """Return a rich console; raises `MissingExtraError` when rich is not installed."""
    try:
        from rich.console import Console
    except ImportError:
        from ..exceptions import MissingExtraError

        raise MissingExtraError(f"zerotrust {command}", "cli") from None

    console = Console(highlight=False, **options)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        # Rich assumes 80 columns when writing to a file or pipe, which wraps most rows.
        console.width = _PIPED_WIDTH
    return console


def describe_time(
    timestamp: float, now: float, *, minutes: bool = False, separator: str = " "
) -> str:
    """Format a timestamp in UTC with its distance from now, such as ``… UTC (in 15 min)``."""
    moment = dt.datetime.fromtimestamp(timestamp, tz=dt.UTC)
    clock_format = "%H:%M" if minutes else "%H:%M:%S"
    return f"{moment:%Y-%m-%d {clock_format}} UTC{separator}({describe_delta(timestamp - now)})"


def describe_delta(seconds: float) -> str:
    """Describe a time difference in words, such as ``in 15 min`` or ``2 h ago``."""
    if abs(seconds) < 1:
        return "now"
    magnitude = abs(seconds)
    if magnitude < 60:
        text = f"{int(magnitude)} s"
    elif magnitude < 3600:
        text = f"{round(magnitude / 60)} min"
    elif magnitude < 86400:
        hours, minutes = divmod(round(magnitude / 60), 60)
        text = f"{hours} h {minutes} min" if minutes else f"{hours} h"
    else:
        days, hours = divmod(round(magnitude / 3600), 24)
        text = f"{days} d {hours} h" if hours else f"{days} d"

    return f"in {text}" if seconds > 0 else f"{text} ago"


def grant_record(grant: Grant, now: float) -> dict[str, Any]:
    """Return the fields of a grant and its status at ``now``, ready for JSON."""
    record = dataclasses.asdict(grant)
    record["status"] = grant.status(now)
    return record
