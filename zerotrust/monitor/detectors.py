# SPDX-License-Identifier: Apache-2.0
"""Detectors: stateful rules over access events that report attacks as anomaly events."""

from __future__ import annotations

import abc
import functools
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from ..events.access import format_timestamp, new_event_id
from ..exceptions import ConfigurationError
from .geo_centroids import COUNTRY_CENTROIDS, country_distance_km
from .signals import SignalKind
from .windows import (
    DistinctWindow,
    EventWindow,
    KeyedState,
    KeyState,
    LocalWindows,
    SharedWindows,
    check_positive,
    event_time,
)

if TYPE_CHECKING:
    from ..state.base import StateStore

__all__ = [
    "CredentialStuffingDetector",
    "DeniedBurstDetector",
    "Detector",
    "ImpossibleTravelDetector",
    "LateralMovementDetector",
    "Severity",
    "TokenReplayDetector",
    "default_detectors",
    "run_detectors",
]

Severity = Literal["low", "medium", "high", "critical"]

MAX_CONTRIBUTING_IDS = 50
"""Most event ids an anomaly lists in ``contributing_event_ids``; the latest are kept."""

DEFAULT_MAX_KEYS = 10_000
"""Default number of subjects, addresses or credentials each detector tracks at once."""

# Seconds a subject's last located request is remembered in a shared store.
_TRAVEL_MEMORY = 86_400.0


class Detector(abc.ABC):
    """
    Base class of detectors.

    A detector receives access events one at a time, in order, through `observe`, and returns the
    anomaly events they complete. It keeps its state per key (subject, address, credential) in
    a `KeyedState` of at most ``max_keys`` keys, each with a bounded window, so its memory has a
    fixed ceiling whatever the traffic. Time comes from each event's ``timestamp``, never from
    the clock, so replaying a log finds what live monitoring found.

    A detector fires once per attack: after an anomaly about a key it stays quiet about that
    key for its window, then fires again if the attack goes on.

    A detector takes no lock: call `observe` from one thread at a time, as `MonitorSink` does.

    With a `StateStore` (the ``store`` argument, or `share`), the windows and quiet periods
    live in that store, so the detectors of every worker count one attack together and only
    one of them fires. Quiet periods in a store count in clock time rather than event time.
    While the store is unavailable, the detector counts in this process only.

    Attributes:
        name: The detector name in anomaly events and risk signals.
        signal_kind: What `MonitorSink` flags when this detector fires.
        limit_to_source_ips: Whether that flag only applies to requests from the anomaly's
            ``distinct_ips``, so an attacker who triggers it cannot lock out the real user.

    .. versionadded:: 0.6
    """

    name: ClassVar[str] = "detector"
    signal_kind: SignalKind = "subject"
    limit_to_source_ips: bool = False
    store: StateStore | None = None
    _local: LocalWindows
    _windows: LocalWindows | SharedWindows

    def _init_windows(
        self, max_keys: int, factory: Callable[[], KeyState], store: StateStore | None
    ) -> None:
        self._local = LocalWindows(max_keys, factory)
        self._windows = self._local
        if store is not None:
            self.share(store)

    def share(self, store: StateStore) -> None:
        """
        Keep this detector's windows in ``store`` from now on.

        .. versionadded:: 0.7
        """
        self.store = store
        self._windows = SharedWindows(store, self.name, self._local)

    @property
    def state(self) -> KeyedState[KeyState]:
        """The per-key state kept in this process."""
        return self._local.state

    @abc.abstractmethod
    def observe(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        """Take one access event into account; return the anomaly events it completes."""

    def anomaly(
        self,
        event: dict[str, Any],
        now: float,
        *,
        first_seen: float,
        count: int,
        event_ids: Sequence[str],
        severity: Severity,
        description: str,
        **fields: Any,
    ) -> dict[str, Any]:
        """Build an anomaly event detected at ``now`` by the access event ``event``."""
        anomaly: dict[str, Any] = {
            "event": "anomaly",
            "timestamp": format_timestamp(now),
            "event_id": new_event_id(now),
            "detector": self.name,
            "subject": event.get("subject"),
            "client_ip": event.get("client_ip"),
            "count": count,
            "first_seen": format_timestamp(first_seen),
            "last_seen": format_timestamp(now),
            "contributing_event_ids": list(event_ids[-MAX_CONTRIBUTING_IDS:]),
            "time_to_detect_ms": round(max(0.0, now - first_seen) * 1000, 3),
            "severity": severity,
            "description": description,
        }
        anomaly.update(fields)

        return anomaly


def _positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        message = f"{name} must be a positive integer, not {value!r}"
        raise ConfigurationError(message, parameter=name, value=value)
    return value


def _country(event: dict[str, Any]) -> str | None:
    facts = event.get("facts")
    if not isinstance(facts, dict):
        return None
    country = facts.get("country")
    return country.upper() if isinstance(country, str) and country else None


def _sorted_values(values: Iterable[Any]) -> list[str]:
    return sorted({str(value) for value in values if value is not None})


class DeniedBurstDetector(Detector):
    """
    Flag a subject with more than ``threshold`` denied requests within ``window`` seconds.

    The anomaly names the client addresses and countries (``facts.country``) the denials came
    from, so the risk signal can be limited to those addresses.

    Memory: at most ``max_keys`` subjects, each with its last ``threshold + 1`` denials.

    Args:
        threshold: Denials within the window that are still normal.
        window: Seconds the denials are counted over.
        min_distinct_ips: Fire only if the denials came from at least this many addresses.
        max_keys: Most subjects tracked at once; the least recently denied go first.
        store: Where the windows are shared with other workers; this process only when ``None``.

    .. versionadded:: 0.6
    """

    name = "denied_burst"
    signal_kind = "subject"
    limit_to_source_ips = True

    def __init__(
        self,
        threshold: int = 10,
        window: float = 3600.0,
        min_distinct_ips: int = 1,
        *,
        max_keys: int = DEFAULT_MAX_KEYS,
        store: StateStore | None = None,
    ) -> None:
        self.threshold = _positive_int("threshold", threshold)
        check_positive("window", window)
        self.window = float(window)
        self.min_distinct_ips = _positive_int("min_distinct_ips", min_distinct_ips)
        self.history = threshold + 1
        history = self.history
        self._init_windows(max_keys, lambda: KeyState(EventWindow(history)), store)

    def observe(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        subject = event.get("subject")
        if not _denied_by_policy(event) or not subject:
            return []
        now = event_time(event)
        if now is None:
            return []

        window = self._windows.events(
            subject,
            now,
            event.get("event_id"),
            (event.get("client_ip"), _country(event)),
            window=self.window,
            maxlen=self.history,
        )
        if len(window) <= self.threshold:
            return []
        addresses = _sorted_values(value[0] for _, _, value in window.entries)
        if len(addresses) < self.min_distinct_ips:
            return []
        if not self._windows.claim(subject, now, self.window):
            return []

        countries = _sorted_values(value[1] for _, _, value in window.entries)
        count = len(window)
        return [
            self.anomaly(
                event,
                now,
                first_seen=window.entries[0][0],
                count=count,
                event_ids=[entry[1] for entry in window.entries if entry[1] is not None],
                severity="high" if len(countries) > 1 else "medium",
                description=(
                    f"{count} denied requests for subject {subject!r} within {self.window:g} s "
                    f"from {len(addresses)} addresses in {len(countries)} countries"
                ),
                distinct_ips=addresses,
                countries=countries,
                window_s=self.window,
            )
        ]


class LateralMovementDetector(Detector):
    """
    Flag a subject denied in ``segments`` or more distinct segments within ``window`` seconds.

    A principal probing segment after segment is what lateral movement looks like from the
    inside; a user missing one permission is denied in one segment.

    Memory: at most ``max_keys`` subjects, each with at most ``max(segments, 32)`` segments.

    Args:
        segments: Distinct segments with denials that make an anomaly.
        window: Seconds the segments are collected over.
        max_keys: Most subjects tracked at once.
        store: Where the windows are shared with other workers; this process only when ``None``.

    .. versionadded:: 0.6
    """

    name = "lateral_movement"
    signal_kind = "subject"
    limit_to_source_ips = True

    def __init__(
        self,
        segments: int = 3,
        window: float = 900.0,
        *,
        max_keys: int = DEFAULT_MAX_KEYS,
        store: StateStore | None = None,
    ) -> None:
        self.segments = _positive_int("segments", segments)
        check_positive("window", window)
        self.window = float(window)
        self.size = size = max(segments, 32)
        self._init_windows(max_keys, lambda: KeyState(DistinctWindow(size)), store)

    def observe(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        subject = event.get("subject")
        segment = event.get("segment")
        if not _denied_by_policy(event) or not subject or not segment:
            return []
        now = event_time(event)
        if now is None:
            return []

        window = self._windows.distinct(
            subject,
            segment,
            now,
            event.get("event_id"),
            event.get("client_ip"),
            window=self.window,
            max_values=self.size,
        )
        if len(window) < self.segments or not self._windows.claim(subject, now, self.window):
            return []

        segments = [str(value) for value in window.values]
        addresses = _sorted_values(window.extras())
        return [
            self.anomaly(
                event,
                now,
                first_seen=window.first_seen(),
                count=len(segments),
                event_ids=window.event_ids(),
                severity="high",
                description=(
                    f"subject {subject!r} was denied in {len(segments)} segments within "
                    f"{self.window:g} s"
                ),
                segments=segments,
                distinct_ips=addresses,
                window_s=self.window,
            )
        ]


class ImpossibleTravelDetector(Detector):
    """
    Flag a subject seen from two countries too far apart for the time between the requests.

    Each request with a ``facts.country`` is compared with the subject's previous one: the
    distance between the two countries' centroids, less ``tolerance_km``, must be coverable at
    ``max_speed_kmh``. A country missing from the centroid table gives no judgement.

    NOTE: centroids are approximate, and for large countries far from where people live (the US
    and Canada, Russia and its neighbours) a short real trip across a border can look fast.
    ``tolerance_km`` absorbs part of that error.

    Memory: at most ``max_keys`` subjects, each with its last located request.

    Args:
        max_speed_kmh: Fastest plausible travel speed, roughly an airliner.
        tolerance_km: Distance subtracted before the speed check, for centroid error.
        window: Seconds the detector stays quiet about a subject after firing.
        max_keys: Most subjects tracked at once.
        store: Where the last located requests are shared with other workers; this process
            only when ``None``.

    .. versionadded:: 0.6
    """

    name = "impossible_travel"
    signal_kind = "subject"

    def __init__(
        self,
        max_speed_kmh: float = 1000.0,
        *,
        tolerance_km: float = 500.0,
        window: float = 3600.0,
        max_keys: int = DEFAULT_MAX_KEYS,
        store: StateStore | None = None,
    ) -> None:
        check_positive("max_speed_kmh", max_speed_kmh)
        check_positive("window", window)
        if isinstance(tolerance_km, bool) or not isinstance(tolerance_km, int | float):
            message = f"tolerance_km must be a number of kilometres, not {tolerance_km!r}"
            raise ConfigurationError(message, parameter="tolerance_km", value=tolerance_km)
        self.max_speed_kmh = float(max_speed_kmh)
        self.tolerance_km = max(0.0, float(tolerance_km))
        self.window = float(window)
        self._init_windows(max_keys, lambda: KeyState(None), store)

    def observe(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        subject = event.get("subject")
        country = _country(event)
        if not subject or country is None:
            return []
        now = event_time(event)
        if now is None:
            return []

        if country not in COUNTRY_CENTROIDS:
            return []

        # The subject's last located request is kept, not a list of events. It is kept for a
        # day: after that any trip is possible.
        located = (now, country, event.get("event_id"), event.get("client_ip"))
        previous = self._windows.swap(subject, located, _TRAVEL_MEMORY)
        if previous is None or previous[1] == country:
            return []
        distance = country_distance_km(previous[1], country)
        if distance is None:
            return []
        elapsed = now - previous[0]
        travelled = max(0.0, distance - self.tolerance_km)
        if travelled == 0.0:
            return []
        speed = travelled / (elapsed / 3600) if elapsed > 0 else None
        if speed is not None and speed <= self.max_speed_kmh:
            return []
        if not self._windows.claim(subject, now, self.window):
            return []

        speed_text = "instantly" if speed is None else f"at {speed:.0f} km/h"
        event_ids = [value for value in (previous[2], event.get("event_id")) if value is not None]
        return [
            self.anomaly(
                event,
                now,
                first_seen=previous[0],
                count=2,
                event_ids=event_ids,
                severity="high",
                description=(
                    f"subject {subject!r} moved from {previous[1]} to {country} "
                    f"({distance:.0f} km between centroids) in {elapsed:g} s, {speed_text}"
                ),
                countries=[previous[1], country],
                distinct_ips=_sorted_values((previous[3], event.get("client_ip"))),
                distance_km=round(distance),
                elapsed_s=round(elapsed, 3),
                speed_kmh=None if speed is None else round(speed),
            )
        ]


class TokenReplayDetector(Detector):
    """
    Flag one credential used from more than ``max_ips`` addresses or ``max_devices`` devices.

    The credential is the event's ``credential_fingerprint``; the device is ``facts.device_id``.
    A bearer token copied off one machine and used elsewhere shows up as a new address.

    Memory: at most ``max_keys`` credentials, each with at most ``max(max_ips, max_devices) + 1``
    addresses and as many devices.

    Args:
        max_ips: Distinct client addresses one credential may use within the window.
        window: Seconds the addresses are collected over.
        max_devices: Distinct devices one credential may use; ``max_ips`` when ``None``.
        max_keys: Most credentials tracked at once.
        store: Where the windows are shared with other workers; this process only when ``None``.

    .. versionadded:: 0.6
    """

    name = "token_replay"
    signal_kind = "credential"

    def __init__(
        self,
        max_ips: int = 2,
        window: float = 600.0,
        *,
        max_devices: int | None = None,
        max_keys: int = DEFAULT_MAX_KEYS,
        store: StateStore | None = None,
    ) -> None:
        self.max_ips = _positive_int("max_ips", max_ips)
        self.max_devices = _positive_int(
            "max_devices", max_ips if max_devices is None else max_devices
        )
        check_positive("window", window)
        self.window = float(window)
        self.size = size = max(self.max_ips, self.max_devices) + 1
        self._init_windows(
            max_keys, lambda: KeyState((DistinctWindow(size), DistinctWindow(size))), store
        )

    def observe(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        fingerprint = event.get("credential_fingerprint")
        if not fingerprint:
            return []
        now = event_time(event)
        if now is None:
            return []

        event_id = event.get("event_id")
        client_ip = event.get("client_ip")
        facts = event.get("facts")
        device = facts.get("device_id") if isinstance(facts, dict) else None
        addresses = self._windows.distinct(
            fingerprint,
            client_ip or None,
            now,
            event_id,
            window=self.window,
            max_values=self.size,
            slot=0,
        )
        devices = self._windows.distinct(
            fingerprint,
            str(device) if device else None,
            now,
            event_id,
            window=self.window,
            max_values=self.size,
            slot=1,
        )
        too_many_ips = len(addresses) > self.max_ips
        too_many_devices = len(devices) > self.max_devices
        if not (too_many_ips or too_many_devices):
            return []
        if not self._windows.claim(fingerprint, now, self.window):
            return []

        firing = addresses if too_many_ips else devices
        ips = [str(value) for value in addresses.values]
        device_ids = [str(value) for value in devices.values]
        return [
            self.anomaly(
                event,
                now,
                first_seen=firing.first_seen(),
                count=len(firing),
                event_ids=firing.event_ids(),
                severity="high",
                description=(
                    f"credential {fingerprint} was used from {len(ips)} addresses and "
                    f"{len(device_ids)} devices within {self.window:g} s"
                ),
                credential_fingerprint=fingerprint,
                distinct_ips=ips,
                device_ids=device_ids,
                window_s=self.window,
            )
        ]


@functools.lru_cache(maxsize=4096)
def _network_of(address: str) -> str | None:
    # The same network key as the risk verifier looks up, so signals and lookups meet; an
    # IPv4-mapped IPv6 address counts as its IPv4 address.
    from .risk import network_key

    try:
        return network_key(address)
    except ValueError:
        return None


def _denied_by_policy(event: dict[str, Any]) -> bool:
    """Whether a denial counts as suspicious: not one caused only by a risk signal."""
    if event.get("decision") != "deny":
        return False
    reasons = event.get("reasons") or []
    # Denials the risk verifier causes must not feed new bursts, or a flag would renew itself.
    return not reasons or not all(str(reason).startswith("risk_") for reason in reasons)


def _identity_failed(event: dict[str, Any]) -> bool:
    if event.get("decision") != "deny":
        return False
    if event.get("status") == 401:
        return True
    # In monitor mode the request went through, so the status does not show the failure.
    verifiers = event.get("verifiers")
    if not isinstance(verifiers, list):
        return False
    return any(
        isinstance(record, dict)
        and record.get("kind") == "identity"
        and record.get("result") == "fail"
        for record in verifiers
    )


class CredentialStuffingDetector(Detector):
    """
    Flag one client address (or network) failing identity for ``subjects`` distinct accounts.

    An identity failure is a denial with status 401, or a failed identity verifier in monitor
    mode. A rejected token often names no subject, so a failure without one counts its
    ``credential_fingerprint`` as the account; a failure with neither is not counted.

    Memory: at most ``max_keys`` addresses or networks, each with at most ``max(subjects, 50)``
    accounts.

    Args:
        subjects: Distinct failing accounts from one source that make an anomaly.
        window: Seconds the accounts are collected over.
        by: ``"client_ip"`` to count per address, ``"network"`` per /24 (IPv4) or /64 (IPv6).
        max_keys: Most sources tracked at once.
        store: Where the windows are shared with other workers; this process only when ``None``.

    .. versionadded:: 0.6
    """

    name = "credential_stuffing"

    def __init__(
        self,
        subjects: int = 10,
        window: float = 600.0,
        by: Literal["client_ip", "network"] = "client_ip",
        *,
        max_keys: int = DEFAULT_MAX_KEYS,
        store: StateStore | None = None,
    ) -> None:
        if by not in ("client_ip", "network"):
            message = f"by must be 'client_ip' or 'network', not {by!r}"
            raise ConfigurationError(message, parameter="by", value=by)
        self.subjects = _positive_int("subjects", subjects)
        check_positive("window", window)
        self.window = float(window)
        self.by = by
        self.signal_kind = "network" if by == "network" else "client_ip"
        self.size = size = max(subjects, MAX_CONTRIBUTING_IDS)
        self._init_windows(max_keys, lambda: KeyState(DistinctWindow(size)), store)

    def observe(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        client_ip = event.get("client_ip")
        if not client_ip or not _identity_failed(event):
            return []
        subject = event.get("subject")
        fingerprint = event.get("credential_fingerprint")
        account: Hashable
        if subject:
            account = ("subject", subject)
        elif fingerprint:
            account = ("credential", fingerprint)
        else:
            return []
        key = client_ip if self.by == "client_ip" else _network_of(client_ip)
        if key is None:
            return []
        now = event_time(event)
        if now is None:
            return []

        window = self._windows.distinct(
            key,
            account,
            now,
            event.get("event_id"),
            client_ip,
            window=self.window,
            max_values=self.size,
        )
        if len(window) < self.subjects or not self._windows.claim(key, now, self.window):
            return []

        accounts: list[tuple[str, str]] = list(window.values)  # type: ignore[arg-type]
        subjects = [value for kind, value in accounts if kind == "subject"]
        source = f"network {key}" if self.by == "network" else f"address {key}"
        fields: dict[str, Any] = {
            "subject": None,
            "distinct_subjects": len(subjects),
            "distinct_credentials": len(accounts) - len(subjects),
            "subjects": subjects[:MAX_CONTRIBUTING_IDS],
            "distinct_ips": _sorted_values(window.extras()),
            "window_s": self.window,
        }
        if self.by == "network":
            fields["network"] = key
        return [
            self.anomaly(
                event,
                now,
                first_seen=window.first_seen(),
                count=len(accounts),
                event_ids=window.event_ids(),
                severity="high",
                description=(
                    f"{source} failed authentication for {len(accounts)} accounts within "
                    f"{self.window:g} s"
                ),
                **fields,
            )
        ]


def default_detectors(store: StateStore | None = None) -> list[Detector]:
    """
    Return a fresh set of every detector with its default thresholds.

    Args:
        store: Where the detectors share their windows; this process only when ``None``.

    .. versionadded:: 0.6
    .. versionchanged:: 0.7 The ``store`` argument.
    """
    return [
        DeniedBurstDetector(store=store),
        LateralMovementDetector(store=store),
        ImpossibleTravelDetector(store=store),
        TokenReplayDetector(store=store),
        CredentialStuffingDetector(store=store),
    ]


def run_detectors(
    events: Iterable[dict[str, Any]], detectors: Sequence[Detector] | None = None
) -> list[dict[str, Any]]:
    """
    Replay events through detectors in order and return every anomaly event they raise.

    Only access events are observed; anomaly and other events are skipped.

    Args:
        events: Events in the order they happened, such as the lines of a JSON log.
        detectors: The detectors to run; `default_detectors` when ``None``.

    .. versionadded:: 0.6
    """
    chosen = default_detectors() if detectors is None else list(detectors)
    anomalies: list[dict[str, Any]] = []
    for event in events:
        if not isinstance(event, dict) or event.get("event") != "access":
            continue
        for detector in chosen:
            anomalies.extend(detector.observe(event))

    return anomalies
