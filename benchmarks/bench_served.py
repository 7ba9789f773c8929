# SPDX-License-Identifier: Apache-2.0
"""Measure the served throughput of the bare and the protected app under uvicorn on 127.0.0.1."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench_apps import (
    COLD_VARIANTS,
    CREDENTIALS_ENV,
    EVENTS_ENV,
    PATH,
    VARIANT_ENV,
    VARIANTS,
    Credentials,
    request_headers,
)
from bench_machine import machine_info, warn_if_sources_changed
from rich.console import Console
from rich.table import Table

HOST = "127.0.0.1"
BENCHMARKS_DIR = Path(__file__).resolve().parent
STARTUP_TIMEOUT = 90.0
MAX_WORKERS = 8
DEFAULT_DURATION = 5.0
DEFAULT_ROUNDS = 3
DEFAULT_CONNECTIONS = 32
DEFAULT_MAX_REQUESTS = 500_000
_WRK_RATE = re.compile(r"Requests/sec:\s+([\d.]+)")
_WRK_TOTAL = re.compile(r"(\d+) requests in")
_WRK_NON_2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_WRK_SOCKET_ERRORS = re.compile(r"Socket errors:.*")


@dataclass
class Server:
    """One uvicorn server for one variant, and the credential headers its clients send."""

    key: str
    headers: list[tuple[str, str]]
    workers: int = 1
    process: subprocess.Popen[bytes] | None = None
    port: int = 0
    rates: list[float] = field(default_factory=list)
    events: int | None = None

    @property
    def name(self) -> str:
        return VARIANTS[self.key]

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}{PATH}"


@dataclass
class LoadResult:
    """Counts and duration of one load run."""

    requests: int
    errors: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def start(server: Server, env: dict[str, str]) -> None:
    """
    Start uvicorn with ``server.workers`` workers and wait until it answers with a 200.

    ``--no-proxy-headers`` leaves ``X-Forwarded-For`` to zerotrust's `TrustedProxies`, so the
    full chain resolves the client address as it would behind a real proxy.
    """
    server.port = free_port()
    command = [
        sys.executable, "-m", "uvicorn", "bench_apps:served_app", "--factory",
        "--app-dir", str(BENCHMARKS_DIR),
        "--host", HOST, "--port", str(server.port), "--workers", str(server.workers),
        "--no-access-log", "--no-proxy-headers", "--log-level", "warning",
    ]  # fmt: skip
    env = {**env, VARIANT_ENV: server.key}
    # The working directory comes first on sys.path with -m, so it must not hold a zerotrust
    # package other than the one the benchmark means to measure (see PYTHONPATH in the docs).
    server.process = subprocess.Popen(command, env=env, cwd=BENCHMARKS_DIR)  # noqa: S603 -- our own interpreter and arguments
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            message = f"uvicorn for {server.name} exited with code {server.process.returncode}"
            raise RuntimeError(message)
        if answers(server):
            return
        time.sleep(0.1)
    message = f"uvicorn for {server.name} did not accept connections within {STARTUP_TIMEOUT:g} s"
    raise RuntimeError(message)


def answers(server: Server) -> bool:
    """Send one request; tell whether it was allowed (a worker loads the geo data first)."""
    connection = http.client.HTTPConnection(HOST, server.port, timeout=2.0)
    try:
        connection.request("GET", PATH, headers=dict(server.headers))
        response = connection.getresponse()
        response.read()
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()
    if response.status != 200:
        message = f"{server.name} answered {response.status} instead of 200: check the setup"
        raise RuntimeError(message)
    return True


def stop(server: Server) -> None:
    process = server.process
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


@contextlib.contextmanager
def running(servers: list[Server], env: dict[str, str]) -> Iterator[None]:
    try:
        for server in servers:
            start(server, env)
        yield
    finally:
        for server in servers:
            stop(server)


def request_bytes(headers: list[tuple[str, str]]) -> bytes:
    lines = [f"GET {PATH} HTTP/1.1", f"Host: {HOST}", "User-Agent: bench-served/1", "Accept: */*"]
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def _connection(
    port: int, request: bytes, deadline: float, budget: list[int], counts: list[int]
) -> None:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        while budget[0] > 0 and time.monotonic() < deadline:
            budget[0] -= 1
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if length:
                await reader.readexactly(length)
            counts[0 if status == 200 else 1] += 1
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def python_load(
    port: int, headers: list[tuple[str, str]], connections: int, duration: float, max_requests: int
) -> LoadResult:
    """Drive keep-alive connections over raw sockets until the duration or request budget ends."""
    request = request_bytes(headers)
    budget = [max_requests]
    counts = [0, 0]
    started = time.monotonic()
    deadline = started + duration
    await asyncio.gather(
        *(_connection(port, request, deadline, budget, counts) for _ in range(connections))
    )

    return LoadResult(counts[0], counts[1], time.monotonic() - started)


def run_python_load(server: Server, args: argparse.Namespace, duration: float) -> LoadResult:
    """Run the Python load generator in its own process, so it does not share the server's GIL."""
    command = [
        sys.executable, str(Path(__file__).resolve()), "--load-worker",
        "--port", str(server.port), "--connections", str(args.connections),
        "--duration", str(duration), "--max-requests", str(args.max_requests),
    ]  # fmt: skip
    completed = subprocess.run(  # noqa: S603 -- our own interpreter and script
        command,
        input=json.dumps(server.headers).encode(),
        capture_output=True,
        timeout=duration + 60,
        check=True,
    )
    result = json.loads(completed.stdout)
    return LoadResult(result["requests"], result["errors"], result["seconds"])


def run_wrk(wrk: str, server: Server, args: argparse.Namespace, duration: float) -> LoadResult:
    # One wrk thread leaves the second core to the server, as the Python generator does.
    command = [wrk, "-t1", f"-c{args.connections}", f"-d{max(1, round(duration))}s"]
    for name, value in server.headers:
        command += ["-H", f"{name}: {value}"]
    command.append(server.url)
    completed = subprocess.run(  # noqa: S603 -- wrk from PATH with our own arguments
        command, capture_output=True, text=True, timeout=duration + 60, check=True
    )
    output = completed.stdout
    rate = _WRK_RATE.search(output)
    total = _WRK_TOTAL.search(output)
    if rate is None or total is None:
        message = f"cannot read requests/s from wrk output:\n{output}"
        raise RuntimeError(message)
    non_2xx = _WRK_NON_2XX.search(output)
    errors = int(non_2xx[1]) if non_2xx else 0
    if _WRK_SOCKET_ERRORS.search(output):
        print(f"wrk reported socket errors for {server.name}:\n{output}", file=sys.stderr)
    requests = int(total[1])

    return LoadResult(requests - errors, errors, requests / float(rate[1]))


def load(generator: str, server: Server, args: argparse.Namespace, duration: float) -> LoadResult:
    if generator == "python":
        return run_python_load(server, args, duration)
    return run_wrk(generator, server, args, duration)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--duration", type=float, default=DEFAULT_DURATION, help="seconds of load per round"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=DEFAULT_ROUNDS,
        help="load rounds per app; the median is reported",
    )
    parser.add_argument(
        "--connections",
        type=int,
        default=DEFAULT_CONNECTIONS,
        help="concurrent keep-alive connections",
    )
    parser.add_argument(
        "--max-requests",
        type=int,
        default=DEFAULT_MAX_REQUESTS,
        help="max requests the Python generator sends per round (wrk is bounded by time only)",
    )
    parser.add_argument(
        "--generator",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="load generator: wrk if it is on PATH (auto), or the Python asyncio generator",
    )
    parser.add_argument(
        "--workers",
        default="1",
        help=(
            "comma-separated uvicorn worker counts; each count is measured on its own, with "
            f"ratios to bare at the same count (default 1, at most {MAX_WORKERS})"
        ),
    )
    parser.add_argument(
        "--quick", action="store_true", help="one short round per app, for a smoke test"
    )
    parser.add_argument(
        "--variants",
        default=",".join(key for key in VARIANTS if key not in COLD_VARIANTS),
        help=(
            "comma-separated variant keys; ratios are to the first (default: all but the cold "
            "ones, which need new credentials per request; bare first)"
        ),
    )
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    parser.add_argument("--load-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.variants = [key.strip() for key in args.variants.split(",") if key.strip()]
    unknown = [key for key in args.variants if key not in VARIANTS or key in COLD_VARIANTS]
    if unknown or not args.variants:
        parser.error(
            f"--variants: unknown or cold variants {unknown} or none given; choose from "
            f"{', '.join(key for key in VARIANTS if key not in COLD_VARIANTS)}"
        )
    try:
        args.workers = [int(part) for part in args.workers.split(",") if part.strip()]
    except ValueError:
        parser.error(f"--workers must list integers such as 1,2,4, not {args.workers!r}")
    if not args.workers or not all(1 <= count <= MAX_WORKERS for count in args.workers):
        parser.error(f"--workers counts must be from 1 to {MAX_WORKERS}, not {args.workers}")
    if args.quick:
        args.duration = min(args.duration, 2.0)
        args.rounds = 1
    if not 0 < args.duration <= 120 or not 1 <= args.rounds <= 20:
        parser.error(
            f"--duration must be in (0, 120] s and --rounds in [1, 20], "
            f"not {args.duration} and {args.rounds}"
        )
    if args.connections < 1 or args.max_requests < 1:
        parser.error("--connections and --max-requests must be at least 1")

    return args


def choose_generator(choice: str) -> tuple[str, str]:
    """Return the generator to run (``python`` or the wrk path) and its label for the report."""
    wrk = shutil.which("wrk")
    if choice == "wrk" and wrk is None:
        message = "--generator wrk: wrk is not on PATH; install it or use --generator python"
        raise SystemExit(message)
    if choice != "python" and wrk is not None:
        version = subprocess.run(  # noqa: S603 -- wrk from PATH
            [wrk, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout.splitlines()
        # The first line is "wrk <version> Copyright (C) ...": keep the part before the notice.
        return wrk, version[0].split("Copyright")[0].strip() if version else "wrk"
    return "python", "Python asyncio raw-socket generator (bench_served.py)"


def print_table(servers: list[Server], label: str, args: argparse.Namespace) -> None:
    workers = servers[0].workers
    table = Table(
        title=(
            f"Served throughput, uvicorn {workers} worker{'s' if workers > 1 else ''}, "
            f"{args.connections} connections, median of {args.rounds} x {args.duration:g} s "
            f"({label})"
        )
    )
    table.add_column("app", no_wrap=True)
    table.add_column("requests/s", justify="right")
    table.add_column("rounds", justify="right")
    table.add_column("ratio to bare", justify="right")
    table.add_column("events in file", justify="right")
    bare = statistics.median(servers[0].rates)
    for server in servers:
        median = statistics.median(server.rates)
        rounds = ", ".join(f"{rate:.0f}" for rate in server.rates)
        events = "-" if server.events is None else str(server.events)
        table.add_row(server.name, f"{median:.0f}", rounds, f"{median / bare:.1%}", events)
    Console(width=max(Console().width, 140)).print(table)


def measure(servers: list[Server], generator: str, args: argparse.Namespace) -> None:
    for server in servers:
        # Each worker answers once it has loaded the app, so several workers get longer.
        warmup = load(generator, server, args, float(server.workers))
        if warmup.errors or not warmup.requests:
            message = (
                f"{server.name} responded to {warmup.errors} of "
                f"{warmup.requests + warmup.errors} warm-up requests with a status other "
                "than 200: check the benchmark setup"
            )
            raise RuntimeError(message)
    # Rounds alternate between the apps, so a slow phase of the machine hits all of them.
    for _ in range(args.rounds):
        for server in servers:
            result = load(generator, server, args, args.duration)
            if result.errors:
                print(f"{server.name}: {result.errors} responses were not 200", file=sys.stderr)
            server.rates.append(result.rate)


def count_lines(path: Path) -> int | None:
    if not path.exists():
        return None
    with path.open("rb") as file:
        return sum(1 for _ in file)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.load_worker:
        headers = [(name, value) for name, value in json.loads(sys.stdin.read())]
        result = asyncio.run(
            python_load(args.port, headers, args.connections, args.duration, args.max_requests)
        )
        print(json.dumps(asdict(result)))
        return 0

    generator, label = choose_generator(args.generator)
    credentials = Credentials.generate()
    groups = [
        [Server(key, request_headers(key, credentials), workers) for key in args.variants]
        for workers in args.workers
    ]
    machine = machine_info()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="zerotrust-served-") as directory:
        credentials_dir = Path(directory) / "credentials"
        credentials_dir.mkdir()
        credentials.save(credentials_dir)
        # One worker count at a time, so that only its servers hold memory and CPU.
        for servers in groups:
            events_dir = Path(directory) / f"events-{servers[0].workers}"
            events_dir.mkdir()
            env = {
                **os.environ,
                CREDENTIALS_ENV: str(credentials_dir),
                EVENTS_ENV: str(events_dir),
            }
            with running(servers, env):
                measure(servers, generator, args)
            # Stopping uvicorn runs the lifespan shutdown, which flushes the events.
            for server in servers:
                server.events = count_lines(events_dir / f"{server.key}.jsonl")
    elapsed = time.perf_counter() - started
    warn_if_sources_changed(machine)

    for servers in groups:
        print_table(servers, label, args)
    print(f"{elapsed:.1f} s in total; {machine}")
    if args.json:
        document = {
            "benchmark": "served",
            "generator": label,
            "connections": args.connections,
            "duration": args.duration,
            "rounds": args.rounds,
            "machine": machine,
            "load_average_end": [round(value, 2) for value in os.getloadavg()],
            "results": [
                {
                    "name": server.name,
                    "key": server.key,
                    "workers": server.workers,
                    "requests_per_second": round(statistics.median(server.rates), 1),
                    "rounds": [round(rate, 1) for rate in server.rates],
                    "ratio_to_bare": round(
                        statistics.median(server.rates) / statistics.median(servers[0].rates), 4
                    ),
                    "events_written": server.events,
                }
                for servers in groups
                for server in servers
            ],
        }
        Path(args.json).write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")

    return 0


if __name__ == "__main__":
    sys.exit(main())
