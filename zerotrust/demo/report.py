# SPDX-License-Identifier: Apache-2.0
"""The demo's report: the table of requests and the summary, rendered with rich."""

from __future__ import annotations

from collections import Counter

from rich import box
from rich.bar import Bar
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .runner import DemoResult, Outcome
from .script import Probe

__all__ = ["print_outcomes", "print_summary", "summary_line"]

_BAR_WIDTH = 30


def print_outcomes(console: Console, result: DemoResult) -> None:
    """Print one table row per scripted request: what was sent, expected and received."""
    table = Table(title=f"Requests to {result.app_url}", title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("#", justify="right")
    table.add_column("request", overflow="fold")
    table.add_column("expected", overflow="fold")
    table.add_column("got")
    table.add_column("decision")
    table.add_column("reason", overflow="fold")
    table.add_column("", justify="center")

    for number, outcome in enumerate(result.outcomes, start=1):
        probe = outcome.probe
        request = f"[bold]{probe.method}[/] {escape(probe.target)}"
        request += f"\n[dim]{escape(probe.description)}[/]"
        context = _context(probe)
        if context:
            request += f"\n[dim]{escape(context)}[/]"
        reason = escape(outcome.reason or "-")
        facts = _shown_facts(outcome)
        if facts:
            reason += f"\n[dim]{escape(facts)}[/]"
        expected = f"{probe.expected_status} {probe.expected_reason or 'allow'}"
        table.add_row(
            str(number),
            request,
            expected,
            _status_cell(outcome),
            _decision_cell(outcome.decision),
            reason,
            "[green]✓[/]" if outcome.matched else "[red]✗[/]",
        )

    console.print(table)


def print_summary(console: Console, result: DemoResult) -> None:
    """Print totals by decision, a bar chart of denial reasons and the checks of the events file."""
    matched = sum(outcome.matched for outcome in result.outcomes)
    decisions = Counter(outcome.decision or "none" for outcome in result.outcomes)
    totals = ", ".join(f"{count} {name}" for name, count in sorted(decisions.items()))
    console.print(
        f"\n[bold]Decisions:[/] {totals}; {matched} of {len(result.outcomes)} as expected"
    )

    reasons = Counter(
        outcome.reason
        for outcome in result.outcomes
        if outcome.decision == "deny" and outcome.reason
    )
    if reasons:
        chart = Table(title="Denial reasons", title_justify="left", show_header=False, box=None)
        chart.add_column("reason")
        chart.add_column("count", justify="right")
        chart.add_column("bar", width=_BAR_WIDTH)
        largest = max(reasons.values())
        for reason, count in reasons.most_common():
            chart.add_row(reason, str(count), Bar(largest, 0, count, width=_BAR_WIDTH, color="red"))
        console.print(chart)

    load = result.geo_load_seconds
    loading = f", including {load:.2f} s to load the geo data" if load is not None else ""
    console.print(f"\n[bold]Wall time:[/] {result.wall_seconds:.2f} s{loading}")

    expected_events = len(result.outcomes)
    count_style = "green" if len(result.events) == expected_events else "red"
    console.print(
        f"\n[bold]Events file:[/] {escape(str(result.events_path.resolve()))}", soft_wrap=True
    )
    console.print(
        f"  [{count_style}]{len(result.events)} events written[/] for {expected_events} requests"
    )
    if result.invalid_lines:
        console.print(
            f"  [red]{result.invalid_lines} lines are not JSON objects with a decision[/]"
        )

    schema = result.schema_check
    style = {"valid": "green", "invalid": "red", "skipped": "yellow"}[schema.status]
    console.print(f"  [{style}]schema {schema.status}:[/] {escape(schema.detail)}")

    if result.leaked_into_events:
        found = len(result.leaked_into_events)
        console.print(f"  [red]{found} token strings found in the events file[/]")
    else:
        console.print(f"  [green]no token in the events file[/] ({len(result.secrets)} searched)")


def summary_line(result: DemoResult, leaked_into_output: int) -> str:
    """Return a one-line verdict on the whole run, without markup."""
    matched = sum(outcome.matched for outcome in result.outcomes)
    leaks = len(result.leaked_into_events) + leaked_into_output
    parts = [
        f"{matched} of {len(result.outcomes)} requests as expected",
        f"{len(result.events)} events written to {result.events_path}",
        f"schema {result.schema_check.status}",
        "no token leaked" if leaks == 0 else f"{leaks} token strings leaked",
    ]
    verdict = "PASS" if result.passed and leaked_into_output == 0 else "FAIL"

    return f"{verdict}: " + "; ".join(parts)


def _context(probe: Probe) -> str:
    """Describe the context the request sets: device assertion, forwarded address, clock."""
    parts = []
    if probe.device_assertion is not None:
        parts.append("device assertion")
    if probe.forwarded_for is not None:
        parts.append(f"X-Forwarded-For {probe.forwarded_for}")
    if probe.clock is not None:
        parts.append(f"clock {probe.clock:%a %H:%M %Z}")

    return ", ".join(parts)


def _shown_facts(outcome: Outcome) -> str:
    """Format the event facts the probe expects, with the values the event recorded."""
    facts = outcome.facts
    return ", ".join(f"{key}={facts.get(key, '(missing)')}" for key in outcome.probe.expected_facts)


def _status_cell(outcome: Outcome) -> str:
    if outcome.status is None:
        return f"[red]{escape(outcome.error or 'no response')}[/]"
    style = "green" if outcome.status == outcome.probe.expected_status else "red"
    return f"[{style}]{outcome.status}[/]"


def _decision_cell(decision: str | None) -> str:
    if decision == "allow":
        return "[green]allow[/]"
    if decision == "deny":
        return "[red]deny[/]"
    return "[yellow]no event[/]"
