# SPDX-License-Identifier: Apache-2.0
"""The ``zerotrust demo`` command: a local issuer, a protected app and scripted requests."""

from __future__ import annotations

import argparse
import importlib.util
import io
import ipaddress
import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..exceptions import MissingExtraError

if TYPE_CHECKING:
    from .runner import DemoResult

__all__ = ["DESCRIPTION", "SUMMARY", "add_arguments", "run"]

SUMMARY = "serve a protected sample app on loopback and send it allowed and denied requests"
DESCRIPTION = """\
Start a local token issuer with a JWKS endpoint and a sample Starlette app protected by
ZeroTrustMiddleware, both on a loopback address. The app's policy comes from the policy file
examples/policy.toml (a copy ships with the package), or from the file given with --policy; the
demo passes the issuer's URL and the keys it generates through ZT_DEMO_* variables. Then send a
scripted set of HTTP requests (valid, expired, forged and unsigned tokens, missing scopes and
roles, path tricks) and compare each decision with the expected one. A workspace segment also
checks a signed device posture assertion, the client's country (from X-Forwarded-For, which the
app trusts from loopback) and office hours, judged on a clock the demo sets for each request.
An internal segment lets only the app tier's workload call it. For that, the demo generates a
CA and client certificates with SPIFFE IDs in memory. The client forwards a certificate in the
X-SSL-Client-Cert header, as a TLS-terminating proxy on loopback would. Finally, the demo mints
a just-in-time grant that lets a user without the admin role read one admin report, shows where
the grant does not reach, and revokes it. Last comes an attack from documentation-range
addresses: a burst of denied writes with a stolen token, then forged tokens for many accounts.
A monitor on the event stream detects both, and the API then denies the flagged subject and
address, while the same users still get in from loopback. The access, grant and anomaly events
are appended to one JSON lines file. The access events are checked against the access event
JSON Schema, the grant events are counted by kind, and the anomaly events are compared with
what the monitor raised. The file is also searched for leaked tokens, device assertions, grant
tokens and the private keys of the workload certificates.

Exit status: 0 when every request got the expected status and reason, every grant and
detection step succeeded and the events file passed every check, 1 otherwise, 2 on a usage
error or a policy file the demo cannot load."""

DEFAULT_EVENTS_PATH = Path("zerotrust-demo-events.jsonl")
_PIPED_WIDTH = 120
_UNWRAPPED_WIDTH = 10_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``zerotrust demo``."""
    parser.add_argument(
        "--events",
        type=Path,
        default=DEFAULT_EVENTS_PATH,
        metavar="PATH",
        help=(
            "JSON lines file the access, grant and anomaly events are appended to "
            "(default: %(default)s)"
        ),
    )
    parser.add_argument(
        "--port",
        type=_port,
        default=0,
        metavar="N",
        help="TCP port of the sample app; 0 picks a free port (default: %(default)s)",
    )
    parser.add_argument(
        "--host",
        type=_loopback_host,
        default="127.0.0.1",
        help="loopback address both servers listen on (default: %(default)s)",
    )
    parser.add_argument(
        "--policy",
        type=Path,
        default=None,
        metavar="FILE",
        help=(
            "TOML policy file of the sample app, which must declare the "
            "[verifiers.office_hours] and [verifiers.grants] that the demo drives "
            "(default: examples/policy.toml)"
        ),
    )
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="print only the one-line result and any request that did not go as expected",
    )


def run(args: argparse.Namespace) -> int:
    """Run the demo and print the report; return the exit status."""
    try:
        import rich  # noqa: F401 -- checked here so a missing extra fails before any work
        import uvicorn  # noqa: F401
    except ImportError:
        raise MissingExtraError("zerotrust demo", "cli") from None
    # Only looked up: importing geoip2fast changes os.environ, which the geo backend undoes.
    if importlib.util.find_spec("geoip2fast") is None:
        raise MissingExtraError("zerotrust demo", "geo")

    from rich.console import Console

    from ..cli import EXIT_FAILURE, EXIT_OK, EXIT_USAGE
    from ..events import JsonLinesSink
    from ..exceptions import ConfigurationError
    from .report import print_outcomes, print_summary, summary_line
    from .runner import DemoOptions, find_secrets, run_demo
    from .servers import ServerStartError

    console = Console(record=True, highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        # Rich assumes 80 columns when writing to a file or pipe, which wraps every row.
        console.width = _PIPED_WIDTH
    error_console = Console(stderr=True, highlight=False, soft_wrap=True)
    options = DemoOptions(
        events_path=args.events, host=args.host, port=args.port, policy_path=args.policy
    )
    try:
        events_sink = JsonLinesSink(options.events_path)
    except OSError as error:
        error_console.print(
            f"zerotrust demo: error: cannot open the events file {str(args.events)!r}: "
            f"{error.strerror}. Pass --events with a writable path.",
            markup=False,
        )
        return EXIT_USAGE

    try:
        if args.quiet:
            result = run_demo(options, events_sink)
        else:
            with console.status("Starting the demo") as status:
                result = run_demo(options, events_sink, progress=status.update)
    except ServerStartError as error:
        error_console.print(f"zerotrust demo: error: {error}", markup=False)
        return EXIT_FAILURE
    except ConfigurationError as error:
        # PolicyFileError lists every problem of the file, one per line.
        error_console.print(f"zerotrust demo: error: {error}", markup=False)
        return EXIT_USAGE
    finally:
        # The emitter closes the sink on success; this covers a failure before it existed.
        events_sink.close()

    if args.quiet:
        for number, outcome in enumerate(result.outcomes, start=1):
            if not outcome.matched:
                probe = outcome.probe
                console.print(
                    f"request {number} {probe.method} {probe.target}: expected "
                    f"{probe.expected_status} {probe.expected_reason or 'allow'}, got "
                    f"{outcome.status} {outcome.reason or outcome.decision or outcome.error}",
                    markup=False,
                    soft_wrap=True,
                )
        for step in result.steps:
            if not step.matched:
                console.print(
                    f"grant step {step.step.description!r}: {step.error}",
                    markup=False,
                    soft_wrap=True,
                )
        for detection in result.detections:
            if not detection.matched:
                console.print(
                    f"detection step {detection.step.description!r}: {detection.error}",
                    markup=False,
                    soft_wrap=True,
                )
    else:
        print_outcomes(console, result)
        print_summary(console, result)

    # Everything printed so far went through the recording console, so it can be searched.
    # Table cells fold long values across lines, so the report is also rendered unwrapped.
    printed = console.export_text(clear=False) + _render_unwrapped(result)
    leaked_into_output = find_secrets(printed, result.secrets)
    if not args.quiet:
        if leaked_into_output:
            found = len(leaked_into_output)
            console.print(f"  [red]{found} token or private key strings found in the output[/]")
        else:
            console.print("  [green]no token or private key in the printed output[/]")
    console.print(summary_line(result, len(leaked_into_output)), markup=False, soft_wrap=True)

    return EXIT_OK if result.passed and not leaked_into_output else EXIT_FAILURE


def _render_unwrapped(result: DemoResult) -> str:
    """Render the table and summary on a console wide enough that no cell wraps."""
    from rich.console import Console

    from .report import print_outcomes, print_summary

    console = Console(file=io.StringIO(), record=True, width=_UNWRAPPED_WIDTH)
    print_outcomes(console, result)
    print_summary(console, result)

    return console.export_text()


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        message = f"port must be a whole number from 0 to 65535, not {value!r}"
        raise argparse.ArgumentTypeError(message)

    return port


def _loopback_host(value: str) -> str:
    try:
        address = ipaddress.ip_address(value.strip("[]"))
    except ValueError:
        address = None
    if address is None or not address.is_loopback:
        message = (
            f"host must be a loopback IP address such as 127.0.0.1 or ::1, not {value!r}: "
            "the demo serves its issuer and app only to this machine"
        )
        raise argparse.ArgumentTypeError(message)

    return str(address)
