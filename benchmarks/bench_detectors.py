# SPDX-License-Identifier: Apache-2.0
"""Score the default detectors on a labelled day of traffic and measure their memory in a flood."""

from __future__ import annotations

import argparse
import calendar
import gc
import json
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench_machine import machine_info, warn_if_sources_changed
from rich.console import Console
from rich.table import Table
from traffic import Attack, TrafficDay, flood_events, generate_day

from zerotrust.monitor.detectors import default_detectors, run_detectors

FULL_FLOOD_SIZES = (100_000, 1_000_000)
QUICK_FLOOD_SIZES = (20_000, 200_000)
# Wall-clock budget of one flood run; a run that reaches it stops and reports how far it got.
FULL_FLOOD_DEADLINE = 600.0
QUICK_FLOOD_DEADLINE = 60.0


@dataclass
class AttackResult:
    """The anomalies attributed to one scripted attack."""

    attack: Attack
    anomalies: list[dict[str, Any]] = field(default_factory=list)

    @property
    def detected(self) -> bool:
        return bool(self.anomalies)

    def first(self, detector: str | None = None) -> dict[str, Any] | None:
        """Return the earliest anomaly about this attack (raised by ``detector``)."""
        chosen = [a for a in self.anomalies if detector is None or a["detector"] == detector]
        return min(chosen, key=lambda anomaly: anomaly["timestamp"], default=None)

    @property
    def detectors(self) -> list[str]:
        return sorted({anomaly["detector"] for anomaly in self.anomalies})

    @property
    def expected_detector_fired(self) -> bool:
        return self.attack.detector in self.detectors

    def seconds_to_detect(self, detector: str | None = None) -> float | None:
        """Return seconds from the attack's first event to the first anomaly (of ``detector``)."""
        first = self.first(detector)
        if first is None:
            return None

        # Timestamps carry microseconds, so finer differences are float noise.
        return round(parse_time(first["timestamp"]) - self.attack.first_seen, 6)


@dataclass
class Evaluation:
    """Detector results on one labelled day."""

    results: list[AttackResult]
    false_positives: list[dict[str, Any]]
    flagged_benign_subjects: set[str]
    flagged_benign_ips: set[str]
    anomalies: int
    events: int
    seconds: float

    @property
    def recall(self) -> float:
        return sum(result.detected for result in self.results) / len(self.results)


def parse_time(text: str) -> float:
    """Parse an RFC 3339 UTC timestamp with a ``Z`` suffix into seconds since the epoch."""
    whole, _, fraction = text.rstrip("Z").partition(".")
    seconds = calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S"))

    return seconds + (float(f"0.{fraction}") if fraction else 0.0)


def attribute(anomaly: dict[str, Any], attacks: list[Attack]) -> Attack | None:
    """
    Return the attack an anomaly is about, or ``None`` for a false positive.

    An anomaly belongs to an attack when one of its ``contributing_event_ids`` is an attack
    event. An anomaly that lists no ids falls back to its subject, client address or credential
    during the attack or the hour after it.
    """
    contributing = set(anomaly.get("contributing_event_ids") or ())
    for attack in attacks:
        if contributing & set(attack.event_ids):
            return attack
    if contributing:
        return None

    when = parse_time(anomaly["timestamp"])
    for attack in attacks:
        in_time = attack.first_seen <= when <= attack.last_seen + 3600
        about_attack = (
            anomaly.get("subject") in attack.subjects
            or anomaly.get("client_ip") in attack.client_ips
            or anomaly.get("credential_fingerprint") in attack.fingerprints
        )
        if in_time and about_attack:
            return attack

    return None


def evaluate(day: TrafficDay) -> Evaluation:
    """Replay the day through `default_detectors` and score each anomaly against the labels."""
    started = time.perf_counter()
    anomalies = run_detectors(day.events, default_detectors())
    seconds = time.perf_counter() - started

    results = {attack.name: AttackResult(attack) for attack in day.attacks}
    false_positives: list[dict[str, Any]] = []
    for anomaly in anomalies:
        attack = attribute(anomaly, day.attacks)
        if attack is None:
            false_positives.append(anomaly)
        else:
            results[attack.name].anomalies.append(anomaly)
    flagged_subjects = {a.get("subject") for a in false_positives} & day.benign_subjects
    flagged_ips = {a.get("client_ip") for a in false_positives} & day.benign_ips

    return Evaluation(
        results=list(results.values()),
        false_positives=false_positives,
        flagged_benign_subjects={s for s in flagged_subjects if s is not None},
        flagged_benign_ips={ip for ip in flagged_ips if ip is not None},
        anomalies=len(anomalies),
        events=len(day.events),
        seconds=seconds,
    )


def _reported_ms(result: AttackResult) -> float | None:
    first = result.first(result.attack.detector)
    return None if first is None else first["time_to_detect_ms"]


def _format_seconds(value: float | None) -> str:
    return "-" if value is None else f"{value or 0.0:,.1f} s"


def print_replay(console: Console, evaluation: Evaluation, seed: int) -> None:
    table = Table(title=f"Labelled replay, seed {seed}: {evaluation.events:,} events")
    for column in (
        "attack",
        "detected",
        "expected detector",
        "detectors that fired",
        "time to detect (from attack start)",
        "time_to_detect_ms (reported)",
    ):
        table.add_column(column)
    for result in evaluation.results:
        first = result.first(result.attack.detector)
        table.add_row(
            f"{result.attack.name}\n[dim]{result.attack.description}[/dim]",
            "yes" if result.detected else "[red]no[/red]",
            result.attack.detector
            + (" (fired)" if result.expected_detector_fired else " [red](silent)[/red]"),
            ", ".join(
                f"{name} x{sum(a['detector'] == name for a in result.anomalies)}"
                for name in result.detectors
            )
            or "-",
            _format_seconds(result.seconds_to_detect(result.attack.detector)),
            "-" if first is None else f"{first['time_to_detect_ms']:,.0f} ms",
        )
    console.print(table)
    console.print(
        f"recall {evaluation.recall:.0%}; {evaluation.anomalies} anomalies, "
        f"{len(evaluation.false_positives)} false positives "
        f"(benign subjects flagged: {sorted(evaluation.flagged_benign_subjects) or 'none'}, "
        f"benign addresses flagged: {sorted(evaluation.flagged_benign_ips) or 'none'}); "
        f"replay took {evaluation.seconds * 1000:,.0f} ms"
    )
    for anomaly in evaluation.false_positives[:10]:
        console.print(f"  false positive: {anomaly['detector']} {anomaly.get('description')}")


def _current_rss_kib() -> int:
    with open("/proc/self/statm", encoding="ascii") as file:
        pages = int(file.read().split()[1])
    return pages * resource.getpagesize() // 1024


def run_flood(count: int, deadline: float) -> dict[str, Any]:
    """Feed ``count`` flood events through fresh default detectors; return memory and time."""
    detectors = default_detectors()
    # Warm up imports and caches so the baseline does not count them as growth.
    run_detectors(flood_events(10, seed=1), detectors)
    detectors = default_detectors()
    gc.collect()
    rss_before = _current_rss_kib()
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    started = time.perf_counter()
    processed = anomalies = 0
    for event in flood_events(count):
        for detector in detectors:
            anomalies += len(detector.observe(event))
        processed += 1
        if processed % 10_000 == 0 and time.perf_counter() - started > deadline:
            break
    seconds = time.perf_counter() - started
    gc.collect()

    return {
        "requested": count,
        "events": processed,
        "seconds": round(seconds, 2),
        "events_per_second": round(processed / seconds),
        "anomalies": anomalies,
        "rss_before_kib": rss_before,
        "rss_after_kib": _current_rss_kib(),
        "peak_rss_before_kib": peak_before,
        # ru_maxrss and statm are sampled differently, so take the larger of the two.
        "peak_rss_after_kib": max(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, _current_rss_kib()
        ),
        "tracked_keys": {d.name: len(d.state) for d in detectors if hasattr(d, "state")},
    }


def flood_in_child(count: int, deadline: float) -> dict[str, Any]:
    # A fresh process per size, because peak RSS never goes down within one process.
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--flood-child",
        str(count),
        "--deadline",
        str(deadline),
    ]
    completed = subprocess.run(  # noqa: S603 -- this interpreter and this script
        command, capture_output=True, text=True, timeout=deadline + 120, check=False
    )
    if completed.returncode != 0:
        message = (
            f"the flood of {count} events failed with exit code {completed.returncode}; "
            f"its stderr: {completed.stderr}"
        )
        raise RuntimeError(message)

    return json.loads(completed.stdout)


def print_flood(console: Console, floods: list[dict[str, Any]]) -> None:
    table = Table(title="Memory flood: every event has a new subject, address and credential")
    for column in (
        "events",
        "time",
        "events/s",
        "anomalies",
        "RSS before",
        "RSS after",
        "peak RSS",
        "growth",
        "most keys in one detector",
    ):
        table.add_column(column, justify="right")
    for flood in floods:
        # ru_maxrss already reads about 90 MiB before the flood, so growth compares current RSS.
        growth = flood["rss_after_kib"] - flood["rss_before_kib"]
        partial = "" if flood["events"] == flood["requested"] else " [red](deadline)[/red]"
        table.add_row(
            f"{flood['events']:,}{partial}",
            f"{flood['seconds']:.1f} s",
            f"{flood['events_per_second']:,}",
            f"{flood['anomalies']:,}",
            f"{flood['rss_before_kib'] / 1024:.1f} MiB",
            f"{flood['rss_after_kib'] / 1024:.1f} MiB",
            f"{flood['peak_rss_after_kib'] / 1024:.1f} MiB",
            f"{growth / 1024:+.1f} MiB",
            f"{max(flood['tracked_keys'].values(), default=0):,}",
        )
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="flood with 20,000 and 200,000 events instead of 100,000 and 1,000,000",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the labelled day (default 0)")
    parser.add_argument(
        "--seeds",
        type=int,
        default=5,
        help="number of seeds, starting at --seed, to compute recall over (default 5)",
    )
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--no-flood", action="store_true", help="skip the memory flood")
    parser.add_argument("--flood-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument(
        "--deadline", type=float, default=FULL_FLOOD_DEADLINE, help=argparse.SUPPRESS
    )
    args = parser.parse_args()

    if args.flood_child is not None:
        print(json.dumps(run_flood(args.flood_child, args.deadline)))
        return

    # Wide enough for the tables when the output is a file rather than a terminal.
    console = Console(width=max(Console().width, 150))
    machine = machine_info()
    console.print(
        f"machine: {machine['cpu_model']}, {machine['cpu_count']} CPUs, "
        f"Python {machine['python']}, load average {machine['load_average']}"
    )

    evaluations = []
    for seed in range(args.seed, args.seed + args.seeds):
        evaluation = evaluate(generate_day(seed))
        evaluations.append((seed, evaluation))
        if seed == args.seed:
            print_replay(console, evaluation, seed)
    missed = sum(not r.detected for _, e in evaluations for r in e.results)
    total = sum(len(e.results) for _, e in evaluations)
    false_positives = sum(len(e.false_positives) for _, e in evaluations)
    console.print(
        f"over {args.seeds} seeds: {total - missed}/{total} attacks detected, "
        f"{false_positives} false positives"
    )

    floods: list[dict[str, Any]] = []
    if not args.no_flood:
        sizes = QUICK_FLOOD_SIZES if args.quick else FULL_FLOOD_SIZES
        deadline = QUICK_FLOOD_DEADLINE if args.quick else FULL_FLOOD_DEADLINE
        floods = [flood_in_child(size, deadline) for size in sizes]
        print_flood(console, floods)
    warn_if_sources_changed(machine)

    if args.json is not None:
        summary = {
            "machine": machine,
            "replay": [
                {
                    "seed": seed,
                    "events": evaluation.events,
                    "recall": evaluation.recall,
                    "false_positives": len(evaluation.false_positives),
                    "attacks": [
                        {
                            "attack": r.attack.name,
                            "detected": r.detected,
                            "detectors": r.detectors,
                            "seconds_to_detect": r.seconds_to_detect(r.attack.detector),
                            "time_to_detect_ms": _reported_ms(r),
                        }
                        for r in evaluation.results
                    ],
                }
                for seed, evaluation in evaluations
            ],
            "floods": floods,
        }
        args.json.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
