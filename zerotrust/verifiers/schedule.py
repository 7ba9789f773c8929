# SPDX-License-Identifier: Apache-2.0
"""Time-window verification: allow requests only at set local wall-clock times of the week."""

from __future__ import annotations

import datetime as dt
import math
import re
from array import array
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeAlias
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..exceptions import ConfigurationError
from .base import Verdict, VerificationContext, Verifier

if TYPE_CHECKING:
    from ..request import AccessRequest

__all__ = ["DAY_NAMES", "Clock", "TimeWindow", "TimeWindowVerifier"]

Clock: TypeAlias = Callable[[], "dt.datetime | float"]

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_FULL_DAY_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_DAY_NUMBERS = {
    **{name: number for number, name in enumerate(DAY_NAMES)},
    **{name: number for number, name in enumerate(_FULL_DAY_NAMES)},
}
_DAY_GROUPS = {"daily": range(7), "weekdays": range(5), "weekends": range(5, 7)}
_MINUTES_PER_DAY = 24 * 60
_MINUTES_PER_WEEK = 7 * _MINUTES_PER_DAY
_CLOCK_TIME = re.compile(r"(\d{1,2}):(\d{2})")
_WINDOW_TEXT = re.compile(r"(?:(.*?)\s+)?(\S+?)\s*-\s*(\S+)")
_MAX_WINDOWS = 1000


class TimeWindow:
    """
    A weekly window of local wall-clock time, such as Monday to Friday, 08:00 to 18:00.

    The window starts at ``start`` on each listed day and ends at ``end``, which is excluded.
    When ``end`` is earlier than ``start``, the window crosses midnight: it belongs to the
    listed day and ends on the next day, so ``fri 22:00-06:00`` runs from Friday 22:00 to
    Saturday 06:00, and ``sun 22:00-06:00`` ends on Monday. ``end`` may be ``24:00`` (or
    ``00:00``) for the end of the day.

    Args:
        days: Day names (``mon`` or ``monday``, case-insensitive), ranges such as ``mon-fri``
            or ``fri-mon``, comma-separated lists, or ``daily``, ``weekdays``, ``weekends``;
            or an iterable of such strings.
        start: ``HH:MM`` in 24-hour form, or a `datetime.time` on a whole minute.
        end: ``HH:MM`` in 24-hour form, ``24:00``, or a `datetime.time` on a whole minute.

    Raises:
        ConfigurationError: for an unknown day, a malformed time (``24:01``, ``8am``), no
            days, or ``start`` equal to ``end`` (use ``00:00-24:00`` for a whole day).

    .. versionadded:: 0.2.0
    """

    __slots__ = ("days", "end", "start")

    days: frozenset[int]
    """Listed days, 0 for Monday to 6 for Sunday."""
    start: int
    """Minutes after midnight, 0 to 1439."""
    end: int
    """Minutes after midnight, 1 to 1440; at most ``start`` when the window crosses midnight."""

    def __init__(self, days: str | Iterable[str], start: str | dt.time, end: str | dt.time) -> None:
        start_minute = _parse_clock_time(start, "start")
        end_minute = _parse_clock_time(end, "end")
        if start_minute == _MINUTES_PER_DAY:
            message = f"time window start {start!r} must be before 24:00"
            raise ConfigurationError(message, parameter="start", value=start)
        if start_minute == end_minute:
            message = (
                f"time window {start!r} to {end!r} is empty: "
                "start must differ from end, and a whole day is 00:00-24:00"
            )
            raise ConfigurationError(message, parameter="end", value=end)

        set_attribute = object.__setattr__
        set_attribute(self, "days", _parse_days(days))
        set_attribute(self, "start", start_minute)
        set_attribute(self, "end", end_minute or _MINUTES_PER_DAY)

    @classmethod
    def parse(cls, text: str) -> TimeWindow:
        """
        Parse ``"<days> HH:MM-HH:MM"``, such as ``"mon-fri 08:00-18:00"``.

        Without days (``"08:00-18:00"``) the window applies every day.
        """
        if not isinstance(text, str):
            message = f"time window {text!r} must be a string such as 'mon-fri 08:00-18:00'"
            raise ConfigurationError(message, parameter="windows", value=text)

        match = _WINDOW_TEXT.fullmatch(text.strip())
        if match is None:
            message = f"time window {text!r} must look like 'mon-fri 08:00-18:00'"
            raise ConfigurationError(message, parameter="windows", value=text)

        days, start, end = match.groups()
        try:
            return cls(days or "daily", start, end)
        except ConfigurationError as error:
            message = f"time window {text!r}: {error}"
            raise ConfigurationError(message, parameter="windows", value=text) from None

    @property
    def crosses_midnight(self) -> bool:
        return self.end <= self.start

    def minutes_of_week(self) -> Iterable[int]:
        """Yield every minute of the week inside the window, Monday 00:00 being minute 0."""
        length = (self.end - self.start) % _MINUTES_PER_DAY or _MINUTES_PER_DAY
        for day in sorted(self.days):
            first = day * _MINUTES_PER_DAY + self.start
            for minute in range(first, first + length):
                yield minute % _MINUTES_PER_WEEK

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"TimeWindow is immutable: cannot set {name!r}")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TimeWindow):
            return NotImplemented
        return (self.days, self.start, self.end) == (other.days, other.start, other.end)

    def __hash__(self) -> int:
        return hash((self.days, self.start, self.end))

    def __str__(self) -> str:
        return f"{_format_days(self.days)} {_format_minute(self.start)}-{_format_minute(self.end)}"

    def __repr__(self) -> str:
        return f"TimeWindow.parse({str(self)!r})"


class TimeWindowVerifier(Verifier):
    """
    Allow requests only inside weekly windows of local wall-clock time in one time zone.

    The request's instant is converted once to wall-clock time in ``timezone`` and matched by
    its weekday, hour and minute. So on a spring-forward day the skipped hour never occurs, and
    a ``02:00-03:00`` window in ``Europe/Berlin`` matches no instant that day. On a fall-back
    day the repeated hour occurs twice, and the same window matches both passes, two real
    hours.

    The instant is the request's arrival time (`AccessRequest.time`), the same one the access
    event records, so the decision and its event agree. Pass ``clock`` only to override it.

    Args:
        windows: `TimeWindow` objects or strings such as ``"mon-fri 08:00-18:00"``.
        timezone: An IANA time zone name such as ``"Europe/Berlin"``, or a `datetime.tzinfo`.
        exceptions: Dates (`datetime.date` or ``"YYYY-MM-DD"``) on which every request fails,
            such as public holidays. The local date of the instant is what counts, so an
            exception on Saturday also closes Saturday 00:00-06:00 of a window that starts on
            Friday 22:00.
        extra_dates: Dates on which access is allowed outside the weekly windows:
            ``"2024-12-28"`` for the whole day, or ``"2024-12-28 10:00-14:00"`` for part of it
            (no crossing of midnight). A date cannot be in both lists.
        clock: A callable returning the current time as an aware `datetime.datetime` or seconds
            since the epoch, used instead of the request's arrival time.

    Raises:
        ConfigurationError: for an invalid window or date, an unknown time zone, a date in both
            lists, no windows and no extra dates, or a clock that is not callable.

    Reason codes: ``outside_time_window``, ``exception_date``, ``invalid_time`` (the clock
    returned a naive datetime or something other than a time, or the instant is out of range).

    Facts: ``local_time`` (ISO 8601 with the UTC offset), ``time_zone`` and ``time_window``
    (the window or extra date that matched, in its canonical text form).

    .. versionadded:: 0.2.0
    """

    name = "time_window"
    kind = "context"

    def __init__(
        self,
        *,
        windows: Iterable[TimeWindow | str] | TimeWindow | str,
        timezone: str | dt.tzinfo,
        exceptions: Iterable[dt.date | str] = (),
        extra_dates: Iterable[dt.date | str] = (),
        clock: Clock | None = None,
        name: str | None = None,
        timeout: float = 2.0,
        required: bool = True,
    ) -> None:
        super().__init__(name=name, timeout=timeout, required=required)
        if clock is not None and not callable(clock):
            message = f"clock must be a callable that returns the current time, not {clock!r}"
            raise ConfigurationError(message, parameter="clock", value=clock)

        self.zone = _load_zone(timezone)
        self.windows = _parse_windows(windows)
        self.exceptions = frozenset(
            _parse_date(entry, "exceptions") for entry in _as_entries(exceptions, "exceptions")
        )
        self.extra_dates = _parse_extra_dates(_as_entries(extra_dates, "extra_dates"))
        self.clock = clock
        self._last_verdict: tuple[int, Verdict] | None = None
        if not self.windows and not self.extra_dates:
            message = "TimeWindowVerifier needs at least one window in windows= or extra_dates="
            raise ConfigurationError(message, parameter="windows", value=windows)
        both = sorted(self.exceptions.intersection(self.extra_dates))
        if both:
            message = (
                f"date {both[0].isoformat()!r} is in both exceptions and extra_dates: "
                "remove it from one of them"
            )
            raise ConfigurationError(message, parameter="extra_dates", value=both[0])

        self.time_zone = str(getattr(self.zone, "key", None) or self.zone)
        self._exception_days = frozenset(day.toordinal() for day in self.exceptions)
        self._extra_days = {
            day.toordinal(): tuple(
                (start, end, f"{day.isoformat()} {_format_range(start, end)}")
                for start, end in ranges
            )
            for day, ranges in self.extra_dates.items()
        }
        # One entry per minute of the week: the 1-based index of the first window covering it,
        # or 0. A request then costs one index, whatever the number of windows.
        self._minute_table = array("H", bytes(2 * _MINUTES_PER_WEEK))
        for index, window in reversed(list(enumerate(self.windows, start=1))):
            for minute in window.minutes_of_week():
                self._minute_table[minute] = index
        self._window_labels = ("", *(str(window) for window in self.windows))

    def local_time(self, request: AccessRequest) -> dt.datetime | None:
        """Return the instant to judge as wall-clock time in the zone, or ``None`` if invalid."""
        value: Any = request.time if self.clock is None else self.clock()
        if isinstance(value, dt.datetime):
            if value.utcoffset() is None:
                return None
            return value.astimezone(self.zone)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        try:
            return dt.datetime.fromtimestamp(value, self.zone)
        except (ValueError, OverflowError, OSError):
            return None

    def verify_cached(self, request: AccessRequest, context: VerificationContext) -> Verdict:
        if self.clock is None and type(request.time) is float and math.isfinite(request.time):
            # Requests arrive many per second and the verdict only depends on the whole second
            # (its local_time fact has second precision), so the last one is reused.
            second = int(request.time // 1)
            last = self._last_verdict
            if last is not None and last[0] == second:
                return last[1]
            verdict = self._judge(request)
            self._last_verdict = (second, verdict)
            return verdict
        return self._judge(request)

    def _judge(self, request: AccessRequest) -> Verdict:
        local = self.local_time(request)
        if local is None:
            return Verdict.failed("invalid_time", "the time to judge is missing or out of range")

        stamp = local.isoformat(timespec="seconds")
        zone = self.time_zone
        day = local.toordinal()
        if day in self._exception_days:
            detail = f"{local.date().isoformat()} is an exception date"
            return Verdict.failed("exception_date", detail, local_time=stamp, time_zone=zone)

        minute = local.hour * 60 + local.minute
        for start, end, label in self._extra_days.get(day, ()):
            if start <= minute < end:
                return Verdict.passed(local_time=stamp, time_zone=zone, time_window=label)
        index = self._minute_table[local.weekday() * _MINUTES_PER_DAY + minute]
        if index:
            label = self._window_labels[index]
            return Verdict.passed(local_time=stamp, time_zone=zone, time_window=label)

        detail = f"local time {stamp} ({zone}) is outside every window"
        return Verdict.failed("outside_time_window", detail, local_time=stamp, time_zone=zone)

    async def verify(self, request: AccessRequest, context: VerificationContext) -> Verdict:
        return self.verify_cached(request, context)


def _load_zone(timezone: object) -> dt.tzinfo:
    if isinstance(timezone, dt.tzinfo):
        return timezone
    if not isinstance(timezone, str):
        message = (
            f"timezone must be an IANA time zone name such as 'Europe/Berlin', not {timezone!r}"
        )
        raise ConfigurationError(message, parameter="timezone", value=timezone)
    try:
        return ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        message = (
            f"timezone {timezone!r} is not a known IANA time zone such as 'Europe/Berlin' "
            "(names are case-sensitive; without a system time zone database, install tzdata)"
        )
        raise ConfigurationError(message, parameter="timezone", value=timezone) from None


def _parse_windows(windows: object) -> tuple[TimeWindow, ...]:
    if isinstance(windows, TimeWindow | str):
        windows = [windows]
    if not isinstance(windows, Iterable):
        message = f"windows must be a list of TimeWindow or strings, not {windows!r}"
        raise ConfigurationError(message, parameter="windows", value=windows)

    parsed = tuple(
        window if isinstance(window, TimeWindow) else TimeWindow.parse(window) for window in windows
    )
    if len(parsed) > _MAX_WINDOWS:
        message = (
            f"windows lists {len(parsed)} windows, more than the maximum of {_MAX_WINDOWS}: "
            "merge windows with the same times into one with several days"
        )
        raise ConfigurationError(message, parameter="windows", value=len(parsed))

    return parsed


def _parse_days(days: object) -> frozenset[int]:
    parts = [days] if isinstance(days, str) else days
    if not isinstance(parts, Iterable):
        message = f"days must be a string such as 'mon-fri', not {days!r}"
        raise ConfigurationError(message, parameter="days", value=days)

    numbers: set[int] = set()
    for part in parts:
        if not isinstance(part, str):
            message = f"day {part!r} must be a day name such as 'mon'"
            raise ConfigurationError(message, parameter="days", value=part)
        for token in part.lower().split(","):
            numbers.update(_parse_day_token(token.strip(), days))
    if not numbers:
        message = f"days {days!r} lists no day: use names such as 'mon-fri' or 'daily'"
        raise ConfigurationError(message, parameter="days", value=days)

    return frozenset(numbers)


def _parse_day_token(token: str, days: object) -> Iterable[int]:
    if token in _DAY_GROUPS:
        return _DAY_GROUPS[token]
    first, dash, last = token.partition("-")
    first, last = first.strip(), last.strip()
    if first in _DAY_NUMBERS and (not dash or last in _DAY_NUMBERS):
        start = _DAY_NUMBERS[first]
        count = (_DAY_NUMBERS[last] - start) % 7 + 1 if dash else 1
        return [(start + offset) % 7 for offset in range(count)]

    message = (
        f"days {days!r}: {token!r} is not a day, a range such as 'mon-fri', "
        "or one of 'daily', 'weekdays', 'weekends'"
    )
    raise ConfigurationError(message, parameter="days", value=days)


def _parse_clock_time(value: object, parameter: str) -> int:
    """Return minutes after midnight for ``HH:MM`` (00:00 to 24:00) or a whole-minute time."""
    if isinstance(value, dt.time):
        if value.second or value.microsecond or value.tzinfo is not None:
            message = f"{parameter} {value!r} must be a naive time on a whole minute"
            raise ConfigurationError(message, parameter=parameter, value=value)
        return value.hour * 60 + value.minute

    match = _CLOCK_TIME.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is not None:
        hour, minute = int(match[1]), int(match[2])
        if (hour < 24 and minute < 60) or (hour, minute) == (24, 0):
            return hour * 60 + minute

    message = f"{parameter} {value!r} is not a time from 00:00 to 24:00 in 24-hour HH:MM form"
    raise ConfigurationError(message, parameter=parameter, value=value)


def _parse_date(value: object, parameter: str) -> dt.date:
    if isinstance(value, dt.datetime):
        message = f"{parameter} entry {value!r} must be a date, not a datetime"
        raise ConfigurationError(message, parameter=parameter, value=value)
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value.strip())
        except ValueError:
            pass

    message = f"{parameter} entry {value!r} is not a date in YYYY-MM-DD form"
    raise ConfigurationError(message, parameter=parameter, value=value)


def _as_entries(value: object, parameter: str) -> list[object]:
    if isinstance(value, str | dt.date):
        return [value]
    if isinstance(value, Iterable):
        return list(value)
    message = f"{parameter} must be a list of dates in YYYY-MM-DD form, not {value!r}"
    raise ConfigurationError(message, parameter=parameter, value=value)


def _parse_extra_dates(entries: list[object]) -> dict[dt.date, list[tuple[int, int]]]:
    extra: dict[dt.date, list[tuple[int, int]]] = {}
    for entry in entries:
        day_text, times = entry, ""
        if isinstance(entry, str):
            day_text, _, times = entry.strip().partition(" ")
        day = _parse_date(day_text, "extra_dates")
        start, end = 0, _MINUTES_PER_DAY
        if times.strip():
            start_text, dash, end_text = times.strip().partition("-")
            start = _parse_clock_time(start_text, "extra_dates")
            end = _parse_clock_time(end_text, "extra_dates") if dash else -1
            if end == 0:
                end = _MINUTES_PER_DAY
            if not start < end:
                message = (
                    f"extra_dates entry {entry!r} must be 'YYYY-MM-DD' or "
                    "'YYYY-MM-DD HH:MM-HH:MM' with start before end"
                )
                raise ConfigurationError(message, parameter="extra_dates", value=entry)
        extra.setdefault(day, []).append((start, end))

    return extra


def _format_days(days: frozenset[int]) -> str:
    if len(days) == 7:
        return "daily"
    runs: list[list[int]] = []
    for day in sorted(days):
        if runs and runs[-1][-1] == day - 1:
            runs[-1].append(day)
        else:
            runs.append([day])
    return ",".join(
        DAY_NAMES[run[0]] if len(run) == 1 else f"{DAY_NAMES[run[0]]}-{DAY_NAMES[run[-1]]}"
        for run in runs
    )


def _format_minute(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


def _format_range(start: int, end: int) -> str:
    return f"{_format_minute(start)}-{_format_minute(end)}"
