# SPDX-License-Identifier: Apache-2.0
"""Count the CPU instructions per request of each variant under callgrind, as a ratio to bare."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench_apps import (
    COLD_VARIANTS,
    VARIANTS,
    BenchApp,
    Credentials,
    build_variant,
    cold_request_headers,
    request_headers,
)
from bench_inprocess import build_scope, discard, receive
from bench_machine import machine_info, source_digest, warn_if_sources_changed
from rich.console import Console
from rich.table import Table
from starlette.types import Message, Scope

DEFAULT_COUNTS = (300, 1300)
QUICK_COUNTS = (50, 250)
# Requests before the counted ones, equal in both runs: they fill the caches and run the
# first-call paths, so the difference between the runs holds only steady-state requests.
WARMUP = 50
RUN_TIMEOUT = 600.0
_COLLECTED = re.compile(r"Collected\s*:\s*(\d+)")


@dataclass
class Result:
    """Instruction counts of one variant: whole runs and the derived cost per request."""

    key: str
    name: str
    counts: tuple[int, int]
    instructions: tuple[int, int]
    full_collections: tuple[int, int]
    per_request: float
    ratio: float = 0.0


async def run_requests(bench: BenchApp, scopes: list[Scope], count: int, *, freeze: bool) -> int:
    """
    Serve the warm-up, then ``count`` requests; return the full collections during those.

    With one scope, every request uses it. A cold variant passes one scope per request.
    """
    statuses: list[int] = []
    cold = len(scopes) > 1
    scope = scopes[0]

    async def record(message: Message) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    await bench.app(dict(scope), receive, record)
    if statuses != [200]:
        message = f"{bench.label} responded with {statuses} instead of [200]: check the setup"
        raise RuntimeError(message)
    for index in range(1, 1 + WARMUP):
        await bench.app(dict(scopes[index] if cold else scope), receive, discard)
    flush(bench)
    if freeze:
        # A full collection traverses every tracked object, the 110 MiB of geoip2fast tables
        # included. One landing in the counted requests of one run but not the other would
        # swamp the difference, so the objects from setup are moved out of the collector's way.
        gc.collect()
        gc.freeze()
    full_collections = gc.get_stats()[2]["collections"]

    if cold:
        for scope in scopes[1 + WARMUP : 1 + WARMUP + count]:
            await bench.app(dict(scope), receive, discard)
    else:
        for _ in range(count):
            await bench.app(dict(scope), receive, discard)
    flush(bench)

    return int(gc.get_stats()[2]["collections"]) - int(full_collections)


def flush(bench: BenchApp) -> None:
    # The writer thread's rendering and writing count too, so wait for it.
    if bench.emitter is not None and not bench.emitter.flush(timeout=RUN_TIMEOUT):
        message = f"{bench.label}: events were not written within {RUN_TIMEOUT:g} s"
        raise RuntimeError(message)


def run_child(
    key: str, count: int, credentials_dir: Path, events_dir: Path, *, freeze: bool
) -> int:
    """Serve ``count`` requests after the fixed warm-up; this is what runs under callgrind."""
    credentials = Credentials.load(credentials_dir)
    bench = build_variant(key, credentials, events_dir=events_dir, max_queue=4 * (count + WARMUP))
    if key in COLD_VARIANTS:
        # Both runs load and parse every credential set, so that setup cancels out.
        scopes = [build_scope(headers) for headers in cold_request_headers(credentials)]
    else:
        scopes = [build_scope(request_headers(key, credentials))]
    full_collections = asyncio.run(run_requests(bench, scopes, count, freeze=freeze))
    if bench.emitter is not None:
        bench.emitter.close()
    # The parent compares the digests of all runs, because the working tree may change meanwhile.
    print(json.dumps({"digest": source_digest(), "full_collections": full_collections}))

    return 0


def count_instructions(
    valgrind: str, key: str, count: int, credentials_dir: Path, work_dir: Path, *, freeze: bool
) -> tuple[int, dict[str, Any]]:
    """
    Run one child under callgrind; return the instructions it executed in all its threads.

    Also returns the child's report: the digest of the zerotrust sources it imported and the
    number of full (generation 2) garbage collections during the counted requests.
    """
    events_dir = work_dir / f"{key}-{count}"
    events_dir.mkdir()
    command = [
        valgrind, "--tool=callgrind", "--callgrind-out-file=/dev/null",
        sys.executable, str(Path(__file__).resolve()), "--child", key,
        "--count", str(count), "--credentials", str(credentials_dir),
        "--events", str(events_dir), *(() if freeze else ("--no-freeze",)),
    ]  # fmt: skip
    # A fixed hash seed makes dict and set layouts, and so the instruction counts, repeatable.
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    completed = subprocess.run(  # noqa: S603 -- valgrind from PATH, our own interpreter and script
        command, capture_output=True, text=True, timeout=RUN_TIMEOUT, env=env, check=False
    )
    collected = _COLLECTED.findall(completed.stderr)
    if completed.returncode != 0 or not collected:
        message = (
            f"callgrind run of {key} with {count} requests failed with exit code "
            f"{completed.returncode}:\n{completed.stderr[-4000:]}"
        )
        raise RuntimeError(message)
    # Only the interpreter process reports here, since valgrind does not trace child processes.
    return int(collected[-1]), json.loads(completed.stdout.splitlines()[-1])


def measure(
    valgrind: str,
    keys: list[str],
    counts: tuple[int, int],
    jobs: int,
    directory: Path,
    *,
    freeze: bool,
) -> list[Result]:
    credentials_dir = directory / "credentials"
    credentials_dir.mkdir()
    credentials = Credentials.generate()
    if COLD_VARIANTS.intersection(keys):
        credentials.add_cold(1 + WARMUP + counts[1])
    credentials.save(credentials_dir)

    runs = [(key, count) for key in keys for count in counts]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {
            run: pool.submit(
                count_instructions, valgrind, *run, credentials_dir, directory, freeze=freeze
            )
            for run in runs
        }
        outputs = {run: future.result() for run, future in futures.items()}
    digests = {report["digest"] for _total, report in outputs.values()}
    if len(digests) != 1:
        message = (
            f"the zerotrust sources changed during the measurement (digests {sorted(digests)}), "
            "so the runs measured different code: rerun when the working tree is stable"
        )
        raise RuntimeError(message)
    totals = {run: total for run, (total, _report) in outputs.items()}

    results = []
    for key in keys:
        first, second = totals[key, counts[0]], totals[key, counts[1]]
        per_request = (second - first) / (counts[1] - counts[0])
        collections = (
            outputs[key, counts[0]][1]["full_collections"],
            outputs[key, counts[1]][1]["full_collections"],
        )
        results.append(
            Result(key, VARIANTS[key], counts, (first, second), collections, per_request)
        )
    for result in results:
        result.ratio = result.per_request / results[0].per_request

    return results


def print_table(results: list[Result], counts: tuple[int, int]) -> None:
    table = Table(
        title=(
            f"Instructions per request under callgrind, all threads, no kernel time: "
            f"(I({counts[1]}) - I({counts[0]})) / {counts[1] - counts[0]}"
        )
    )
    table.add_column("variant", no_wrap=True)
    table.add_column(f"I({counts[0]})", justify="right")
    table.add_column(f"I({counts[1]})", justify="right")
    table.add_column("instructions/req", justify="right")
    table.add_column("over bare", justify="right")
    table.add_column("ratio to bare", justify="right")
    table.add_column("full GCs", justify="right")
    base = results[0].per_request
    for result in results:
        table.add_row(
            result.name,
            f"{result.instructions[0]:,}",
            f"{result.instructions[1]:,}",
            f"{result.per_request:,.0f}",
            f"{result.per_request - base:+,.0f}",
            f"{result.ratio:.2f}x",
            f"{result.full_collections[0]}, {result.full_collections[1]}",
        )
    Console(width=max(Console().width, 190)).print(table)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--requests",
        metavar="N1,N2",
        help=(
            "request counts of the two runs per variant "
            f"(default {DEFAULT_COUNTS[0]},{DEFAULT_COUNTS[1]}; "
            f"{QUICK_COUNTS[0]},{QUICK_COUNTS[1]} with --quick)"
        ),
    )
    parser.add_argument("--quick", action="store_true", help="fewer requests, for a smoke test")
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help="comma-separated variant keys; ratios are to the first (default: all, bare first)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="callgrind runs at a time; counts do not depend on it (default: up to 2)",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    parser.add_argument(
        "--no-freeze",
        dest="freeze",
        action="store_false",
        help="leave the objects from setup to the garbage collector (see gc.freeze)",
    )
    parser.add_argument("--child", metavar="VARIANT", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--credentials", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--events", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    args.variants = [key.strip() for key in args.variants.split(",") if key.strip()]
    unknown = [key for key in args.variants if key not in VARIANTS]
    if unknown or not args.variants:
        parser.error(
            f"--variants: unknown variants {unknown} or none given; "
            f"choose from {', '.join(VARIANTS)}"
        )
    if args.requests is None:
        args.requests = QUICK_COUNTS if args.quick else DEFAULT_COUNTS
    else:
        try:
            first, second = (int(part) for part in args.requests.split(","))
        except ValueError:
            parser.error(f"--requests must be two integers such as 300,1300, not {args.requests!r}")
        args.requests = (first, second)
    if not 0 <= args.requests[0] < args.requests[1] <= 100_000:
        parser.error(
            f"--requests needs 0 <= N1 < N2 <= 100000, not {args.requests[0]},{args.requests[1]}"
        )
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, not {args.jobs}")

    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return run_child(args.child, args.count, args.credentials, args.events, freeze=args.freeze)

    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise SystemExit("valgrind is not on PATH; install it (apt-get install valgrind)")
    version = subprocess.run(  # noqa: S603 -- valgrind from PATH
        [valgrind, "--version"], capture_output=True, text=True, timeout=10, check=True
    ).stdout.strip()

    machine = machine_info()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="zerotrust-instructions-") as directory:
        results = measure(
            valgrind, args.variants, args.requests, args.jobs, Path(directory), freeze=args.freeze
        )
    elapsed = time.perf_counter() - started
    warn_if_sources_changed(machine)

    print_table(results, args.requests)
    print(f"{version}; {elapsed:.1f} s in total; {machine}")
    if args.json:
        document = {
            "benchmark": "instructions",
            "valgrind": version,
            "requests": list(args.requests),
            "warmup": WARMUP,
            "gc_freeze": args.freeze,
            "machine": machine,
            "load_average_end": [round(value, 2) for value in os.getloadavg()],
            "results": [asdict(result) for result in results],
        }
        Path(args.json).write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")

    return 0


if __name__ == "__main__":
    sys.exit(main())
