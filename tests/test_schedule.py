# SPDX-License-Identifier: Apache-2.0
"""Tests for time-window verification: parsing, reason codes, daylight saving and enforcement."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.datastructures import Headers
from starlette.types import Receive, Scope, Send

from zerotrust import ConfigurationError, Engine, MemorySink, Policy, Segment, ZeroTrustMiddleware
from zerotrust.request import AccessRequest
from zerotrust.testing import capture_events
from zerotrust.verifiers.base import Verdict, VerificationContext
from zerotrust.verifiers.schedule import DAY_NAMES, TimeWindow, TimeWindowVerifier

CONTEXT = VerificationContext(Segment("all", paths=["/"], public=True))
BERLIN = ZoneInfo("Europe/Berlin")


def make_request(time: float) -> AccessRequest:
    return AccessRequest(
        method="GET",
        path="/",
        raw_path="/",
        host="app.test",
        headers=Headers(),
        client_ip=None,
        peer_ip=None,
        request_id="req-1",
        time=time,
    )


def at(text: str, zone: str = "Europe/Berlin") -> float:
    """Return the epoch seconds of a local wall time such as ``2024-01-15 09:00``."""
    return dt.datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(zone)).timestamp()


def utc(text: str) -> float:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp()


def find_transitions(zone: ZoneInfo, first_year: int, last_year: int) -> list[int]:
    """Return the instants at which the zone's UTC offset changes, by bisection on the offset."""

    def offset(instant: int) -> dt.timedelta | None:
        return dt.datetime.fromtimestamp(instant, zone).utcoffset()

    start = int(dt.datetime(first_year, 1, 1, tzinfo=dt.UTC).timestamp())
    end = int(dt.datetime(last_year + 1, 1, 1, tzinfo=dt.UTC).timestamp())
    found = []
    for day in range(start, end, 86400):
        if offset(day) == offset(day + 86400):
            continue
        low, high = day, day + 86400
        while high - low > 1:
            middle = (low + high) // 2
            if offset(middle) == offset(low):
                low = middle
            else:
                high = middle
        found.append(high)
    return found


def in_window_directly(local: dt.datetime, days: set[int], start: int, end: int) -> bool:
    """Decide membership from the wall time alone, without minute-of-week tables."""
    minute = local.hour * 60 + local.minute
    if start < end:
        return local.weekday() in days and start <= minute < end
    starts_today = local.weekday() in days and minute >= start
    started_yesterday = (local.weekday() - 1) % 7 in days and minute < end
    return starts_today or started_yesterday


def count_minutes_inside(verifier: TimeWindowVerifier, first: float, last: float) -> int:
    """Count the UTC minutes from ``first`` to ``last`` (excluded) that the verifier allows."""
    return sum(
        verifier.verify_cached(make_request(instant), CONTEXT).outcome == "pass"
        for instant in range(int(first), int(last), 60)
    )


class TestTimeWindow:
    @pytest.mark.parametrize(
        ("text", "canonical"),
        [
            ("mon-fri 08:00-18:00", "mon-fri 08:00-18:00"),
            ("Monday-Friday 8:00-18:00", "mon-fri 08:00-18:00"),
            ("mon - fri 08:00 - 18:00", "mon-fri 08:00-18:00"),
            ("08:00-18:00", "daily 08:00-18:00"),
            ("weekdays 09:30-17:00", "mon-fri 09:30-17:00"),
            ("weekends 10:00-12:00", "sat-sun 10:00-12:00"),
            ("mon,wed,fri 07:00-08:00", "mon,wed,fri 07:00-08:00"),
            ("fri-mon 00:00-24:00", "mon,fri-sun 00:00-24:00"),
            ("fri 22:00-06:00", "fri 22:00-06:00"),
            ("sun 22:00-00:00", "sun 22:00-24:00"),
            ("daily 00:00-24:00", "daily 00:00-24:00"),
        ],
    )
    def test_parse(self, text: str, canonical: str) -> None:
        """Window strings parse to the canonical text form."""
        assert canonical == str(TimeWindow.parse(text))

    def test_constructor_equals_parse(self) -> None:
        """The keyword constructor builds the same window as the string form."""
        window = TimeWindow(days="mon-fri", start="08:00", end="18:00")

        assert TimeWindow.parse("mon-fri 08:00-18:00") == window
        assert hash(TimeWindow.parse("mon-fri 08:00-18:00")) == hash(window)
        assert (frozenset(range(5)), 480, 1080) == (window.days, window.start, window.end)

    def test_day_list(self) -> None:
        """Days may be an iterable of names and ranges."""
        window = TimeWindow(days=["mon", "Wed-Thu"], start="09:00", end="10:00")

        assert frozenset({0, 2, 3}) == window.days

    def test_time_objects(self) -> None:
        """datetime.time values on a whole minute are accepted."""
        window = TimeWindow(days="sat", start=dt.time(9, 15), end=dt.time(11))

        assert "sat 09:15-11:00" == str(window)

    def test_crosses_midnight(self) -> None:
        """A window whose end is before its start crosses midnight."""
        assert TimeWindow.parse("fri 22:00-06:00").crosses_midnight
        assert not TimeWindow.parse("fri 06:00-22:00").crosses_midnight
        assert not TimeWindow.parse("fri 22:00-24:00").crosses_midnight

    def test_minutes_of_week_wrap(self) -> None:
        """A Sunday window crossing midnight continues on Monday at minute 0."""
        minutes = list(TimeWindow.parse("sun 23:00-01:00").minutes_of_week())

        assert 120 == len(minutes)
        assert 6 * 1440 + 23 * 60 == minutes[0]
        assert 59 == minutes[-1]

    def test_immutable(self) -> None:
        """A window cannot be changed after construction."""
        window = TimeWindow.parse("mon 08:00-09:00")

        with pytest.raises(AttributeError, match="immutable"):
            window.start = 0

    def test_repr(self) -> None:
        """The repr is an expression that rebuilds the window."""
        assert "TimeWindow.parse('mon 08:00-09:00')" == repr(TimeWindow.parse("mon 08:00-09:00"))

    def test_not_equal_to_text(self) -> None:
        """A window never equals its text form."""
        assert "mon 08:00-09:00" != TimeWindow.parse("mon 08:00-09:00")

    @pytest.mark.parametrize(
        ("text", "quoted"),
        [
            ("mon-fri 24:01-18:00", "'24:01'"),
            ("mon-fri 08:00-24:01", "'24:01'"),
            ("mon 8am-9am", "'8am'"),
            ("mon 08:60-09:00", "'08:60'"),
            ("mon 08:00:30-09:00", "'08:00:30'"),
            ("xyz 08:00-09:00", "'xyz'"),
            ("mon-xyz 08:00-09:00", "'mon-xyz'"),
            ("mon 08:00-08:00", "'08:00'"),
            ("mon 00:00-00:00", "'00:00'"),
            ("mon 24:00-03:00", "'24:00'"),
            ("mon-fri", "'mon-fri'"),
            ("", "''"),
            ("mon 08:00", "'mon 08:00'"),
            (", 08:00-09:00", "','"),
        ],
    )
    def test_invalid_text(self, text: str, quoted: str) -> None:
        """An invalid window string raises ConfigurationError that quotes the value."""
        with pytest.raises(ConfigurationError) as error:
            TimeWindow.parse(text)

        assert quoted in str(error.value)
        assert "windows" == error.value.parameter

    @pytest.mark.parametrize(
        ("arguments", "parameter"),
        [
            ({"days": [], "start": "08:00", "end": "09:00"}, "days"),
            ({"days": 3, "start": "08:00", "end": "09:00"}, "days"),
            ({"days": [3], "start": "08:00", "end": "09:00"}, "days"),
            ({"days": "mon", "start": dt.time(8, 0, 30), "end": "09:00"}, "start"),
            ({"days": "mon", "start": "08:00", "end": 9}, "end"),
        ],
    )
    def test_invalid_arguments(self, arguments: dict[str, Any], parameter: str) -> None:
        """Invalid constructor arguments raise ConfigurationError naming the parameter."""
        with pytest.raises(ConfigurationError) as error:
            TimeWindow(**arguments)

        assert parameter == error.value.parameter

    def test_parse_non_string(self) -> None:
        """Parsing something that is not a string raises ConfigurationError."""
        with pytest.raises(ConfigurationError, match="must be a string"):
            TimeWindow.parse(42)  # type: ignore[arg-type]


class TestTimeWindowConfiguration:
    @pytest.mark.parametrize(
        "timezone", ["Mars/Olympus_Mons", "europe/berlin", "", "../etc/passwd", "Europe", 42]
    )
    def test_unknown_timezone(self, timezone: Any) -> None:
        """An unknown or malformed time zone raises ConfigurationError that quotes it."""
        with pytest.raises(ConfigurationError) as error:
            TimeWindowVerifier(windows="08:00-18:00", timezone=timezone)

        assert repr(timezone) in str(error.value)
        assert "timezone" == error.value.parameter

    def test_tzinfo_accepted(self) -> None:
        """A tzinfo object is accepted and named by its string form."""
        verifier = TimeWindowVerifier(windows="08:00-18:00", timezone=dt.UTC)

        assert "UTC" == verifier.time_zone

    def test_no_windows(self) -> None:
        """A verifier with no windows and no extra dates raises ConfigurationError."""
        with pytest.raises(ConfigurationError, match="at least one window"):
            TimeWindowVerifier(windows=[], timezone="UTC")

    def test_too_many_windows(self) -> None:
        """More than 1000 windows raise ConfigurationError."""
        windows = ["mon 08:00-09:00"] * 1001

        with pytest.raises(ConfigurationError, match="more than the maximum of 1000"):
            TimeWindowVerifier(windows=windows, timezone="UTC")

    def test_windows_not_iterable(self) -> None:
        """A windows value that is neither a window nor a list raises ConfigurationError."""
        with pytest.raises(ConfigurationError, match="windows must be a list"):
            TimeWindowVerifier(windows=42, timezone="UTC")  # type: ignore[arg-type]

    @pytest.mark.parametrize(
        "entry", ["2024-13-01", "25.12.2024", dt.datetime(2024, 12, 25, tzinfo=dt.UTC), 42]
    )
    def test_invalid_exception(self, entry: Any) -> None:
        """An exception that is not a date raises ConfigurationError that quotes it."""
        with pytest.raises(ConfigurationError) as error:
            TimeWindowVerifier(windows="08:00-18:00", timezone="UTC", exceptions=[entry])

        assert repr(entry) in str(error.value)
        assert "exceptions" == error.value.parameter

    @pytest.mark.parametrize(
        "entry", ["2024-12-28 14:00-10:00", "2024-12-28 10:00", "2024-12-28 10:00-25:00", "x"]
    )
    def test_invalid_extra_date(self, entry: str) -> None:
        """A malformed extra date raises ConfigurationError naming extra_dates."""
        with pytest.raises(ConfigurationError) as error:
            TimeWindowVerifier(windows="08:00-18:00", timezone="UTC", extra_dates=[entry])

        assert "extra_dates" == error.value.parameter

    def test_exceptions_not_iterable(self) -> None:
        """An exceptions value that is not a list of dates raises ConfigurationError."""
        with pytest.raises(ConfigurationError, match="exceptions must be a list"):
            TimeWindowVerifier(windows="08:00-18:00", timezone="UTC", exceptions=42)  # type: ignore[arg-type]

    def test_date_in_both_lists(self) -> None:
        """A date that is both an exception and an extra date raises ConfigurationError."""
        with pytest.raises(ConfigurationError, match="'2024-12-24' is in both"):
            TimeWindowVerifier(
                windows="08:00-18:00",
                timezone="UTC",
                exceptions=["2024-12-24"],
                extra_dates=["2024-12-24 08:00-12:00"],
            )

    def test_clock_not_callable(self) -> None:
        """A clock that cannot be called raises ConfigurationError."""
        with pytest.raises(ConfigurationError, match="clock must be a callable"):
            TimeWindowVerifier(windows="08:00-18:00", timezone="UTC", clock=1.0)  # type: ignore[arg-type]

    def test_single_exception_string(self) -> None:
        """A single date string is one exception date."""
        verifier = TimeWindowVerifier(
            windows="08:00-18:00", timezone="UTC", exceptions="2024-12-25"
        )

        assert frozenset({dt.date(2024, 12, 25)}) == verifier.exceptions


class TestTimeWindowVerifier:
    verifier = TimeWindowVerifier(
        windows=["mon-fri 08:00-18:00", "fri 22:00-06:00"],
        timezone="Europe/Berlin",
        exceptions=["2024-12-25", dt.date(2024, 1, 20)],
        extra_dates=["2024-01-13 10:00-12:00", "2024-01-14"],
    )

    @pytest.mark.parametrize(
        ("local", "outcome", "reason"),
        [
            # inside the weekday window, in winter (UTC+1) and summer (UTC+2)
            ("2024-01-15 08:00", "pass", None),
            ("2024-01-15 17:59:59", "pass", None),
            ("2024-07-01 08:00", "pass", None),
            # the window end is excluded, and so is the minute before its start
            ("2024-01-15 18:00", "fail", "outside_time_window"),
            ("2024-01-15 07:59:59", "fail", "outside_time_window"),
            # the Friday night window runs into Saturday morning, but not Sunday morning
            ("2024-01-19 22:00", "pass", None),
            ("2024-01-27 05:59", "pass", None),
            ("2024-01-27 06:00", "fail", "outside_time_window"),
            ("2024-01-28 03:00", "fail", "outside_time_window"),
            # exception dates close the whole local day
            ("2024-12-25 10:00", "fail", "exception_date"),
            ("2024-01-20 03:00", "fail", "exception_date"),
            # extra dates open a Saturday for two hours and a Sunday for the whole day
            ("2024-01-13 11:00", "pass", None),
            ("2024-01-13 12:00", "fail", "outside_time_window"),
            ("2024-01-14 23:59", "pass", None),
        ],
    )
    def test_decisions(self, local: str, outcome: str, reason: str | None) -> None:
        """Local wall times are allowed or denied with the documented reason code."""
        verdict = self.verifier.verify_cached(make_request(at(local)), CONTEXT)

        assert outcome == verdict.outcome
        assert reason == verdict.reason

    @pytest.mark.parametrize(
        ("local", "window"),
        [
            ("2024-01-15 09:00", "mon-fri 08:00-18:00"),
            ("2024-01-27 03:00", "fri 22:00-06:00"),
            ("2024-01-13 10:30", "2024-01-13 10:00-12:00"),
            ("2024-01-14 08:00", "2024-01-14 00:00-24:00"),
        ],
    )
    def test_window_fact(self, local: str, window: str) -> None:
        """A pass records the window or extra date that matched."""
        verdict = self.verifier.verify_cached(make_request(at(local)), CONTEXT)

        assert window == verdict.facts["time_window"]

    def test_pass_facts(self) -> None:
        """A pass records the local time with its offset and the time zone."""
        verdict = self.verifier.verify_cached(make_request(utc("2024-07-01 07:30:15")), CONTEXT)

        assert {
            "local_time": "2024-07-01T09:30:15+02:00",
            "time_zone": "Europe/Berlin",
            "time_window": "mon-fri 08:00-18:00",
        } == dict(verdict.facts)

    def test_failure_detail(self) -> None:
        """A denial explains the local time in its detail and records it as a fact."""
        verdict = self.verifier.verify_cached(make_request(utc("2024-01-15 20:00")), CONTEXT)

        assert "local time 2024-01-15T21:00:00+01:00 (Europe/Berlin) is outside every window" == (
            verdict.detail
        )
        assert "2024-01-15T21:00:00+01:00" == verdict.facts["local_time"]

    def test_exception_detail(self) -> None:
        """An exception-date denial names the date."""
        verdict = self.verifier.verify_cached(make_request(at("2024-12-25 10:00")), CONTEXT)

        assert "2024-12-25 is an exception date" == verdict.detail

    def test_sunday_night_wraps_to_monday(self) -> None:
        """A Sunday window crossing midnight allows early Monday, not early Sunday."""
        verifier = TimeWindowVerifier(windows="sun 22:00-06:00", timezone="Europe/Berlin")

        monday = verifier.verify_cached(make_request(at("2024-01-15 05:00")), CONTEXT)
        sunday = verifier.verify_cached(make_request(at("2024-01-14 05:00")), CONTEXT)

        assert "pass" == monday.outcome
        assert "outside_time_window" == sunday.reason

    def test_first_window_named(self) -> None:
        """When windows overlap, the first listed window is the one recorded."""
        verifier = TimeWindowVerifier(
            windows=["mon 10:00-11:00", "daily 00:00-24:00"], timezone="UTC"
        )

        verdict = verifier.verify_cached(make_request(utc("2024-01-15 10:30")), CONTEXT)

        assert "mon 10:00-11:00" == verdict.facts["time_window"]

    def test_extra_dates_only(self) -> None:
        """A verifier with only extra dates allows those times and nothing else."""
        verifier = TimeWindowVerifier(
            windows=[], timezone="UTC", extra_dates=["2024-05-04 09:00-10:00"]
        )

        inside = verifier.verify_cached(make_request(utc("2024-05-04 09:59")), CONTEXT)
        outside = verifier.verify_cached(make_request(utc("2024-05-11 09:30")), CONTEXT)

        assert "pass" == inside.outcome
        assert "outside_time_window" == outside.reason

    @pytest.mark.parametrize(
        "value",
        [
            dt.datetime(2024, 1, 15, 9, 0),
            "2024-01-15T09:00:00+01:00",
            None,
            True,
            float("nan"),
            1e20,
        ],
    )
    def test_invalid_clock_value(self, value: Any) -> None:
        """A naive datetime, a non-time or an out-of-range instant fails with invalid_time."""
        verifier = TimeWindowVerifier(windows="08:00-18:00", timezone="UTC", clock=lambda: value)

        verdict = verifier.verify_cached(make_request(utc("2024-01-15 09:00")), CONTEXT)

        assert "invalid_time" == verdict.reason

    def test_invalid_request_time(self) -> None:
        """A request time that is not a finite number fails with invalid_time."""
        verifier = TimeWindowVerifier(windows="00:00-24:00", timezone="UTC")

        verdict = verifier.verify_cached(make_request(float("inf")), CONTEXT)

        assert "invalid_time" == verdict.reason

    @pytest.mark.parametrize(
        "now",
        [
            dt.datetime(2024, 1, 15, 9, 0, tzinfo=BERLIN),
            dt.datetime(2024, 1, 15, 3, 0, tzinfo=ZoneInfo("America/New_York")),
            at("2024-01-15 09:00"),
            int(at("2024-01-15 09:00")),
        ],
    )
    def test_clock_overrides_request_time(self, now: dt.datetime | float) -> None:
        """An injected clock decides the instant, whatever the request's arrival time."""
        verifier = TimeWindowVerifier(
            windows="mon 08:00-10:00", timezone="Europe/Berlin", clock=lambda: now
        )

        verdict = verifier.verify_cached(make_request(at("2024-01-20 23:00")), CONTEXT)

        assert "pass" == verdict.outcome
        assert "2024-01-15T09:00:00+01:00" == verdict.facts["local_time"]

    async def test_verify_matches_cached(self) -> None:
        """The async verify returns the same verdict as verify_cached."""
        request = make_request(at("2024-01-15 09:00"))

        assert self.verifier.verify_cached(request, CONTEXT) == await self.verifier.verify(
            request, CONTEXT
        )

    def test_default_name_and_kind(self) -> None:
        """The verifier is a context verifier named 'time_window' unless renamed."""
        assert ("time_window", "context") == (self.verifier.name, self.verifier.kind)


# Windows that start or end near the hours that daylight saving time skips or repeats.
_NEAR_TRANSITION = st.sampled_from([0, 60, 90, 120, 150, 180, 210, 1380, 1440])
window_specs = st.tuples(
    st.sets(st.integers(0, 6), min_size=1),
    st.integers(0, 1439) | _NEAR_TRANSITION.filter(lambda minute: minute < 1440),
    st.integers(1, 1440) | _NEAR_TRANSITION.filter(lambda minute: minute > 0),
).filter(lambda spec: spec[1] != spec[2] % 1440 and spec[1] != spec[2])

DST_ZONES = ("Europe/Berlin", "America/New_York", "Australia/Lord_Howe")
TRANSITIONS = {name: find_transitions(ZoneInfo(name), 2023, 2027) for name in DST_ZONES}
# Asia/Kolkata has kept UTC+05:30 without daylight saving time since 1945.
TRANSITIONS["Asia/Kolkata"] = [int(utc(f"{year}-03-31 20:30")) for year in range(2023, 2028)]


def hhmm(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


class TestDaylightSaving:
    def test_transitions_found(self) -> None:
        """Each zone with daylight saving time has two transitions a year from 2023 to 2027."""
        for name in DST_ZONES:
            assert 10 == len(TRANSITIONS[name]), name

    @pytest.mark.parametrize(
        ("zone", "window", "first", "last", "minutes"),
        [
            # 2024-03-31 in Berlin: 02:00 to 02:59 never occur
            ("Europe/Berlin", "sun 02:00-03:00", "2024-03-30 23:00", "2024-03-31 23:00", 0),
            ("Europe/Berlin", "sun 01:00-04:00", "2024-03-30 23:00", "2024-03-31 23:00", 120),
            # 2024-10-27 in Berlin: 02:00 to 02:59 occur twice
            ("Europe/Berlin", "sun 02:00-03:00", "2024-10-26 22:00", "2024-10-27 23:00", 120),
            ("Europe/Berlin", "sun 00:00-24:00", "2024-10-26 20:00", "2024-10-28 04:00", 1500),
            # 2024-03-10 and 2024-11-03 in New York
            ("America/New_York", "sun 02:00-03:00", "2024-03-10 04:00", "2024-03-11 04:00", 0),
            ("America/New_York", "sun 01:00-02:00", "2024-11-03 04:00", "2024-11-04 04:00", 120),
            # Lord Howe Island shifts by 30 minutes: 01:30 to 01:59 repeat, 02:00 to 02:29 skip
            ("Australia/Lord_Howe", "sun 01:30-02:00", "2024-04-06 12:00", "2024-04-07 12:00", 60),
            ("Australia/Lord_Howe", "sun 02:00-02:30", "2024-10-05 12:00", "2024-10-06 12:00", 0),
            ("Australia/Lord_Howe", "sun 01:00-03:00", "2024-10-05 12:00", "2024-10-06 12:00", 90),
            # a crossing window on the night of the Berlin spring-forward day lasts 7 hours
            ("Europe/Berlin", "sat 22:00-06:00", "2024-03-30 12:00", "2024-03-31 12:00", 420),
        ],
    )
    def test_transition_day(
        self, zone: str, window: str, first: str, last: str, minutes: int
    ) -> None:
        """Windows count wall-clock minutes: skipped hours never match, repeated hours twice."""
        verifier = TimeWindowVerifier(windows=window, timezone=zone)

        assert minutes == count_minutes_inside(verifier, utc(first), utc(last))

    @given(
        zone_name=st.sampled_from(sorted(TRANSITIONS)),
        choice=st.integers(0, 9),
        offset=st.integers(-4 * 3600, 4 * 3600),
        specs=st.lists(window_specs, min_size=1, max_size=4),
        exception_shift=st.integers(-1, 1) | st.none(),
    )
    def test_matches_wall_clock(
        self,
        zone_name: str,
        choice: int,
        offset: int,
        specs: list[tuple[set[int], int, int]],
        exception_shift: int | None,
    ) -> None:
        """Near real transitions, the verdict equals a direct check of the local wall time."""
        zone = ZoneInfo(zone_name)
        transitions = TRANSITIONS[zone_name]
        instant = transitions[choice % len(transitions)] + offset
        local = dt.datetime.fromtimestamp(instant, dt.UTC).astimezone(zone)
        exceptions = []
        if exception_shift is not None:
            exceptions.append(local.date() + dt.timedelta(days=exception_shift))
        windows = [
            TimeWindow(days=[DAY_NAMES[day] for day in days], start=hhmm(start), end=hhmm(end))
            for days, start, end in specs
        ]
        verifier = TimeWindowVerifier(windows=windows, timezone=zone_name, exceptions=exceptions)

        verdict = verifier.verify_cached(make_request(instant), CONTEXT)

        if local.date() in exceptions:
            expected = "exception_date"
        elif any(in_window_directly(local, days, start, end % 1440) for days, start, end in specs):
            expected = None
        else:
            expected = "outside_time_window"
        assert expected == verdict.reason
        assert local.isoformat(timespec="seconds") == verdict.facts["local_time"]


class SlowTimeWindowVerifier(TimeWindowVerifier):
    """A time-window verifier that waits on a calendar backend which never replies in time."""

    def verify_cached(self, request: AccessRequest, context: VerificationContext) -> None:  # type: ignore[override]
        return None

    async def verify(self, request: AccessRequest, context: VerificationContext) -> Verdict:
        await asyncio.sleep(5)
        return Verdict.passed()


class TestTimeWindowEngine:
    async def test_timeout(self) -> None:
        """A verifier that takes longer than its timeout fails with verifier_timeout."""
        verifier = SlowTimeWindowVerifier(windows="00:00-24:00", timezone="UTC", timeout=0.05)
        engine = Engine(Policy([Segment("all", paths=["/"], public=True, verifiers=[verifier])]))

        decision = await engine.decide(make_request(utc("2024-01-15 09:00")))

        assert ("verifier_timeout",) == decision.reasons


async def hello(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})


def client_at(now: dt.datetime) -> httpx.AsyncClient:
    verifier = TimeWindowVerifier(
        windows="mon-fri 08:00-18:00",
        timezone="Europe/Berlin",
        exceptions=["2024-12-25"],
        clock=lambda: now,
    )
    segment = Segment("office", paths=["/"], public=True, verifiers=[verifier])
    app = ZeroTrustMiddleware(hello, policy=[segment], events=MemorySink())
    transport = httpx.ASGITransport(app=app, client=("192.0.2.1", 50000))
    return httpx.AsyncClient(transport=transport, base_url="http://app.test")


class TestTimeWindowMiddleware:
    async def test_allowed_event(self) -> None:
        """Inside the window the app responds, and the event records the local time and window."""
        with capture_events() as events:
            async with client_at(dt.datetime(2024, 1, 15, 9, 30, tzinfo=BERLIN)) as client:
                response = await client.get("/")

        assert 200 == response.status_code
        assert {
            "local_time": "2024-01-15T09:30:00+01:00",
            "time_zone": "Europe/Berlin",
            "time_window": "mon-fri 08:00-18:00",
        } == events[0]["facts"]

    @pytest.mark.parametrize(
        ("now", "reason"),
        [
            (dt.datetime(2024, 1, 13, 9, 30, tzinfo=BERLIN), "outside_time_window"),
            (dt.datetime(2024, 12, 25, 9, 30, tzinfo=BERLIN), "exception_date"),
        ],
    )
    async def test_denied_event(self, now: dt.datetime, reason: str) -> None:
        """Outside the window the request gets 403 with the reason code in the event."""
        with capture_events() as events:
            async with client_at(now) as client:
                response = await client.get("/")

        assert 403 == response.status_code
        assert [reason] == events[0]["reasons"]

    async def test_request_time_by_default(self) -> None:
        """Without a clock, the request's arrival time is judged and recorded."""
        verifier = TimeWindowVerifier(windows="daily 00:00-24:00", timezone="UTC")
        segment = Segment("office", paths=["/"], public=True, verifiers=[verifier])
        app = ZeroTrustMiddleware(hello, policy=[segment], events=MemorySink())
        transport = httpx.ASGITransport(app=app, client=("192.0.2.1", 50000))

        with capture_events() as events:
            async with httpx.AsyncClient(transport=transport, base_url="http://app.test") as client:
                await client.get("/")

        assert events[0]["timestamp"][:19] == events[0]["facts"]["local_time"][:19]
