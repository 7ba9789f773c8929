# SPDX-License-Identifier: Apache-2.0
"""The demo's report: the table of requests and the summary, rendered with rich."""

from __future__ import annotations

import datetime as dt
from collections import Counter

from rich import box
from rich.bar import Bar
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .grants import StepOutcome
from .monitoring import DetectionOutcome
from .runner import DemoResult, Outcome
from .script import MintGrant, Probe

__all__ = ["print_outcomes", "print_summary", "summary_line"]

_BAR_WIDTH = 30


def print_outcomes(console: Console, result: DemoResult) -> None:
    """
    Print one table row per scripted request, and one per grant or detection step where it ran.

    A request row shows what was sent, expected and received. A step row has ``step`` in the
    number column, because the runner called the grant broker or waited for the monitor and
    sent no request.
    """
    table = Table(title=f"Requests to {result.app_url}", title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("#", justify="right")
    table.add_column("request", overflow="fold")
    table.add_column("expected", overflow="fold")
    table.add_column("got")
    table.add_column("decision")
    table.add_column("reason", overflow="fold")
    table.add_column("", justify="center")

    steps_after: dict[int, list[StepOutcome | DetectionOutcome]] = {}
    step_rows: list[StepOutcome | DetectionOutcome] = [*result.steps, *result.detections]
    for step in step_rows:
        steps_after.setdefault(step.after_request, []).append(step)

    for step in steps_after.get(0, []):
        _add_step_row(table, step)
    for number, outcome in enumerate(result.outcomes, start=1):
        _add_request_row(table, number, outcome)
        for step in steps_after.get(number, []):
            _add_step_row(table, step)

    console.print(table)


def _add_request_row(table: Table, number: int, outcome: Outcome) -> None:
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
        _mark(outcome.matched),
    )


def _add_step_row(table: Table, outcome: StepOutcome | DetectionOutcome) -> None:
    """Add the row of a step: for a grant step, what the broker was asked and the grant id."""
    if isinstance(outcome, DetectionOutcome):
        _add_detection_row(table, outcome)
        return
    step = outcome.step
    if isinstance(step, MintGrant):
        methods = ", ".join(step.methods)
        paths = ", ".join(step.paths)
        request = f"[bold]GRANT[/] {escape(step.subject)}: {escape(methods)} {escape(paths)}"
        expected = "minted"
        note = f"requested by {step.requested_by}, approved by {step.approver}"
        if outcome.grant is not None:
            note += f", until {_clock_time(outcome.grant.expires_at)}"
    else:
        subject = outcome.grant.subject if outcome.grant is not None else "the last"
        request = f"[bold]REVOKE[/] {escape(subject)}'s grant"
        expected = "revoked"
        note = f"by {step.revoked_by}: {step.reason}"
    request += f"\n[dim]{escape(step.description)}[/]"

    if outcome.grant is not None:
        got = f"[green]{expected}[/]"
        reason = f"grant_id={outcome.grant.grant_id}\n[dim]{escape(note)}[/]"
    else:
        got = "[red]failed[/]"
        reason = f"[red]{escape(outcome.error or 'no grant')}[/]"
    table.add_row(
        "[dim]step[/]", request, expected, got, "[dim]no request[/]", reason, _mark(outcome.matched)
    )


def _add_detection_row(table: Table, outcome: DetectionOutcome) -> None:
    """Add the row of a detection step: the detectors expected, and those that fired."""
    step = outcome.step
    request = f"[bold]DETECT[/] {escape(', '.join(step.detectors))}"
    request += f"\n[dim]{escape(step.description)}[/]"
    fired = outcome.detectors
    style = "green" if outcome.matched else "red"
    got = f"[{style}]{len(fired)} fired[/]"
    reason = escape(", ".join(fired) or "-")
    reason += f"\n[dim]waited {outcome.waited_seconds * 1000:.0f} ms[/]"
    if outcome.error is not None:
        reason += f"\n[red]{escape(outcome.error)}[/]"
    table.add_row(
        "[dim]step[/]",
        request,
        "fired",
        got,
        "[dim]no request[/]",
        reason,
        _mark(outcome.matched),
    )


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

    _print_grant_events(console, result)
    _print_anomalies(console, result)

    load = result.geo_load_seconds
    loading = f", including {load:.2f} s to load the geo data" if load is not None else ""
    console.print(f"\n[bold]Wall time:[/] {result.wall_seconds:.2f} s{loading}")

    if result.policy_path is not None:
        console.print(
            f"\n[bold]Policy file:[/] {escape(str(result.policy_path))}, "
            f"SHA-256 {result.policy_sha256}",
            soft_wrap=True,
        )

    expected_events = len(result.outcomes)
    count_style = "green" if len(result.events) == expected_events else "red"
    console.print(
        f"\n[bold]Events file:[/] {escape(str(result.events_path.resolve()))}", soft_wrap=True
    )
    console.print(
        f"  [{count_style}]{len(result.events)} access events written[/] "
        f"for {expected_events} requests"
    )
    if result.invalid_lines:
        console.print(
            f"  [red]{result.invalid_lines} lines are neither access events with a decision, "
            "grant events nor anomaly events[/]"
        )

    schema = result.schema_check
    style = {"valid": "green", "invalid": "red", "skipped": "yellow"}[schema.status]
    console.print(f"  [{style}]schema {schema.status}:[/] {escape(schema.detail)}")

    check = result.grant_check
    check_style = "green" if check.passed else "red"
    console.print(f"  [{check_style}]grant events:[/] {escape(check.detail)}")

    anomaly_check = result.anomaly_check
    anomaly_style = "green" if anomaly_check.passed else "red"
    console.print(f"  [{anomaly_style}]anomaly events:[/] {escape(anomaly_check.detail)}")

    if result.leaked_into_events:
        found = len(result.leaked_into_events)
        console.print(f"  [red]{found} token or private key strings found in the events file[/]")
    else:
        searched = len(result.secrets)
        console.print(
            f"  [green]no token or private key in the events file[/] ({searched} strings searched)"
        )


def summary_line(result: DemoResult, leaked_into_output: int) -> str:
    """Return a one-line verdict on the whole run, without markup."""
    matched = sum(outcome.matched for outcome in result.outcomes)
    steps_done = sum(step.matched for step in result.steps)
    detected = sum(detection.matched for detection in result.detections)
    leaks = len(result.leaked_into_events) + leaked_into_output
    parts = [
        f"{matched} of {len(result.outcomes)} requests as expected",
        f"{steps_done} of {len(result.steps)} grant steps done",
        f"{detected} of {len(result.detections)} detection steps done",
        f"{len(result.events)} access, {len(result.grant_events)} grant and "
        f"{len(result.anomaly_events)} anomaly events written to {result.events_path}",
        f"schema {result.schema_check.status}",
        "grant events as expected" if result.grant_check.passed else "grant events differ",
        "anomaly events as expected" if result.anomaly_check.passed else "anomaly events differ",
        "no token or private key leaked"
        if leaks == 0
        else f"{leaks} token or private key strings leaked",
    ]
    verdict = "PASS" if result.passed and leaked_into_output == 0 else "FAIL"

    return f"{verdict}: " + "; ".join(parts)


def _print_grant_events(console: Console, result: DemoResult) -> None:
    """Print how many grant events of each kind the run wrote."""
    counts = result.grant_check.counts
    if not counts:
        return

    console.print()
    table = Table(title="Grant events", title_justify="left", show_header=False, box=None)
    table.add_column("event")
    table.add_column("count", justify="right")
    for kind, count in counts.items():
        table.add_row(kind, str(count))
    console.print(table)


def _print_anomalies(console: Console, result: DemoResult) -> None:
    """
    Print one row per anomaly event the run wrote: the detector, what it flagged and how fast.

    The time to detect is the anomaly's ``time_to_detect_ms``: from the first access event
    that contributed to the one that completed the anomaly, both by event timestamp.
    """
    if not result.anomaly_events:
        return

    console.print()
    table = Table(title="Anomalies", title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("detector")
    table.add_column("subject / client IP", overflow="fold")
    table.add_column("count", justify="right")
    table.add_column("time to detect", justify="right")
    for anomaly in result.anomaly_events:
        flagged = anomaly.get("subject") or "-"
        addresses = anomaly.get("distinct_ips") or [anomaly.get("client_ip") or "-"]
        flagged += " / " + ", ".join(str(address) for address in addresses)
        detect_ms = anomaly.get("time_to_detect_ms")
        detect = f"{detect_ms:.0f} ms" if isinstance(detect_ms, int | float) else "-"
        table.add_row(
            escape(str(anomaly.get("detector"))),
            escape(str(flagged)),
            str(anomaly.get("count", "-")),
            detect,
        )
    console.print(table)


def _context(probe: Probe) -> str:
    """Describe what the request sends besides its token: certificate, headers, clock."""
    parts = []
    if probe.workload is not None:
        # The SPIFFE ID names the certificate in one line; the PEM would fill the table.
        parts.append(f"client certificate {probe.workload.spiffe_id}")
    if probe.device_assertion is not None:
        parts.append("device assertion")
    if probe.forwarded_for is not None:
        parts.append(f"X-Forwarded-For {probe.forwarded_for}")
    if probe.clock is not None:
        parts.append(f"clock {probe.clock:%a %H:%M %Z}")
    if probe.sends_grant:
        # Only the header name: the token itself must never reach the output.
        parts.append("X-Zerotrust-Grant")

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


def _clock_time(timestamp: float) -> str:
    return f"{dt.datetime.fromtimestamp(timestamp, dt.UTC):%H:%M:%S} UTC"


def _mark(matched: bool) -> str:
    return "[green]✓[/]" if matched else "[red]✗[/]"


def _decision_cell(decision: str | None) -> str:
    if decision == "allow":
        return "[green]allow[/]"
    if decision == "deny":
        return "[red]deny[/]"
    return "[yellow]no event[/]"
