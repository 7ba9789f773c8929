# SPDX-License-Identifier: Apache-2.0
"""Would-be denials of monitor-mode segments, counted from access events, for a rollout decision."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from . import offline

__all__ = ["MonitorRollout", "SegmentRollout", "WouldDeny"]

# Keys kept per table; further segments or segment-reason pairs are counted under "(other)".
_MAX_SEGMENTS = 1_000
_MAX_REASONS = 10_000
# Subjects remembered across every row to count distinct ones. Past this budget a row's count
# is a lower bound, and the row marks it as one.
_MAX_TRACKED_SUBJECTS = 100_000
_OTHER = "(other)"
_NO_REASON = "(none)"


@dataclass(slots=True)
class WouldDeny:
    """
    Would-be denials of one segment for one reason code.

    Attributes:
        count: Requests let through that the policy denied for this reason.
        subjects: Distinct subjects among them, while the budget lasts.
        subjects_exact: Whether ``subjects`` contains every distinct subject seen.
        anonymous: Requests among them with no subject, such as a missing token.
        first_seen: Time of the earliest of them, in seconds since the epoch.
        last_seen: Time of the latest of them, in seconds since the epoch.
    """

    count: int = 0
    subjects: set[str] = field(default_factory=set)
    subjects_exact: bool = True
    anonymous: int = 0
    first_seen: float | None = None
    last_seen: float | None = None


@dataclass(slots=True)
class SegmentRollout:
    """
    Monitor-mode traffic of one segment.

    Attributes:
        requests: Access events of the segment in monitor mode.
        would_deny: Those the policy denied and the middleware let through.
        reasons: Would-be denials by reason code.
        first_seen: Time of the earliest would-be denial, in seconds since the epoch.
        last_seen: Time of the latest would-be denial, in seconds since the epoch.
    """

    requests: int = 0
    would_deny: int = 0
    reasons: dict[str, WouldDeny] = field(default_factory=dict)
    first_seen: float | None = None
    last_seen: float | None = None

    @property
    def verdict(self) -> str:
        """One line for the rollout decision on this segment."""
        if not self.would_deny:
            return f"safe to enforce: no would-be denials in {self.requests} requests"
        return f"would deny {self.would_deny} of {self.requests}"


@dataclass(slots=True)
class MonitorRollout:
    """
    Counters of what monitor mode let through that enforcement would deny, per segment and
    reason, gathered in one pass over access events.

    Memory is bounded: at most 1,000 segments and 10,000 segment-reason pairs (the rest are
    counted under ``(other)``) and 100,000 remembered subjects in all.
    """

    segments: dict[str, SegmentRollout] = field(default_factory=dict)
    _tracked_subjects: int = 0
    _pairs: int = 0

    def observe(self, event: dict[str, Any]) -> None:
        """Count one access event; events outside monitor mode are ignored."""
        if event.get("mode") != "monitor":
            return
        segment = event.get("segment")
        name = segment if isinstance(segment, str) else _OTHER
        if name not in self.segments and len(self.segments) >= _MAX_SEGMENTS:
            name = _OTHER
        row = self.segments.setdefault(name, SegmentRollout())
        row.requests += 1
        # A monitor-mode denial has decision "deny" and action "allow": it reached the app.
        if event.get("decision") != "deny" or event.get("action") != "allow":
            return

        moment = offline.event_time(event)
        row.would_deny += 1
        row.first_seen, row.last_seen = _widen(row.first_seen, row.last_seen, moment)
        subject = event.get("subject")
        reasons = event.get("reasons") or [_NO_REASON]
        for reason in dict.fromkeys(str(reason) for reason in reasons):
            self._count(row, reason, subject if isinstance(subject, str) else None, moment)

    def _count(
        self, row: SegmentRollout, reason: str, subject: str | None, moment: float | None
    ) -> None:
        counts = row.reasons.get(reason)
        if counts is None:
            if self._pairs >= _MAX_REASONS:
                reason = _OTHER
            else:
                self._pairs += 1
            counts = row.reasons.setdefault(reason, WouldDeny())

        counts.count += 1
        counts.first_seen, counts.last_seen = _widen(counts.first_seen, counts.last_seen, moment)
        if subject is None:
            counts.anonymous += 1
        elif subject not in counts.subjects:
            if self._tracked_subjects < _MAX_TRACKED_SUBJECTS:
                counts.subjects.add(subject)
                self._tracked_subjects += 1
            else:
                counts.subjects_exact = False

    def as_list(self) -> list[dict[str, Any]]:
        """
        Return one JSON-ready dict per segment seen in monitor mode, segments with the most
        would-be denials first, each with its reasons, most frequent first.
        """
        ordered = sorted(self.segments.items(), key=lambda item: (-item[1].would_deny, item[0]))
        return [
            {
                "segment": name,
                "requests": row.requests,
                "would_deny": row.would_deny,
                "safe_to_enforce": row.would_deny == 0,
                "verdict": row.verdict,
                "first_seen": _iso(row.first_seen),
                "last_seen": _iso(row.last_seen),
                "reasons": [
                    {
                        "reason": reason,
                        "count": counts.count,
                        "distinct_subjects": len(counts.subjects),
                        "distinct_subjects_exact": counts.subjects_exact,
                        "without_subject": counts.anonymous,
                        "first_seen": _iso(counts.first_seen),
                        "last_seen": _iso(counts.last_seen),
                    }
                    for reason, counts in sorted(
                        row.reasons.items(), key=lambda item: (-item[1].count, item[0])
                    )
                ],
            }
            for name, row in ordered
        ]


def _widen(
    first: float | None, last: float | None, moment: float | None
) -> tuple[float | None, float | None]:
    if moment is None:
        return first, last
    return (
        moment if first is None else min(first, moment),
        moment if last is None else max(last, moment),
    )


def _iso(moment: float | None) -> str | None:
    if moment is None:
        return None
    return dt.datetime.fromtimestamp(moment, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
