# SPDX-License-Identifier: Apache-2.0
from __future__ import annotations

import itertools
from typing import Any

import pytest

from zerotrust.events import format_timestamp
from zerotrust.exceptions import ConfigurationError
from zerotrust.monitor import (
    CredentialStuffingDetector,
    DeniedBurstDetector,
    Detector,
    ImpossibleTravelDetector,
    LateralMovementDetector,
    TokenReplayDetector,
    default_detectors,
    run_detectors,
)
from zerotrust.monitor.geo_centroids import COUNTRY_CENTROIDS, country_distance_km
from zerotrust.monitor.windows import event_time

START = 1_790_000_000.0
_ids = itertools.count()


def access(at: float = 0.0, **fields: Any) -> dict[str, Any]:
    """An access event ``at`` seconds after START; allowed unless ``decision`` is set."""
    facts = {}
    if "country" in fields:
        facts["country"] = fields.pop("country")
    if "device_id" in fields:
        facts["device_id"] = fields.pop("device_id")
    event: dict[str, Any] = {
        "event": "access",
        "timestamp": format_timestamp(START + at),
        "event_id": f"e{next(_ids)}",
        "decision": "allow",
        "status": 200,
        "segment": "api",
        "subject": None,
        "client_ip": "198.51.100.7",
        "credential_fingerprint": None,
    }
    event.update(fields)
    if facts:
        event["facts"] = facts
    return event


def denied(at: float = 0.0, **fields: Any) -> dict[str, Any]:
    return access(at, decision="deny", status=403, **fields)


def failed_login(at: float = 0.0, **fields: Any) -> dict[str, Any]:
    fields.setdefault("reasons", ["token_invalid"])
    return access(at, decision="deny", status=401, **fields)


def observe_all(detector: Detector, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [anomaly for event in events for anomaly in detector.observe(event)]


class TestEventTime:
    def test_rfc3339_z(self) -> None:
        """A ``Z`` timestamp parses to seconds since the epoch."""
        assert START + 1.5 == event_time({"timestamp": format_timestamp(START + 1.5)})

    def test_offset(self) -> None:
        """An explicit offset is honoured."""
        assert 3600.0 == event_time({"timestamp": "1970-01-01T02:00:00+01:00"})

    def test_number(self) -> None:
        """A number is taken as seconds since the epoch."""
        assert 12.0 == event_time({"timestamp": 12})

    @pytest.mark.parametrize("value", [None, "yesterday", True, [1]])
    def test_unusable(self, value: Any) -> None:
        """Missing or malformed timestamps give ``None``."""
        assert event_time({"timestamp": value}) is None


class TestDeniedBurst:
    def test_fires_above_threshold(self) -> None:
        """The eleventh denial within the hour fires, from the attacker's addresses."""
        detector = DeniedBurstDetector(threshold=10, window=3600)
        events = [
            denied(i * 60, subject="alice", client_ip=f"203.0.113.{i % 3}", country="RU")
            for i in range(11)
        ]
        anomalies = observe_all(detector, events)

        assert 1 == len(anomalies)
        anomaly = anomalies[0]
        assert "denied_burst" == anomaly["detector"]
        assert "anomaly" == anomaly["event"]
        assert "alice" == anomaly["subject"]
        assert 11 == anomaly["count"]
        assert ["203.0.113.0", "203.0.113.1", "203.0.113.2"] == anomaly["distinct_ips"]
        assert ["RU"] == anomaly["countries"]
        assert [event["event_id"] for event in events] == anomaly["contributing_event_ids"]
        assert events[0]["timestamp"] == anomaly["first_seen"]
        assert events[-1]["timestamp"] == anomaly["last_seen"]
        assert events[-1]["timestamp"] == anomaly["timestamp"]

    def test_time_to_detect(self) -> None:
        """Time to detect runs from the first counted denial to the detecting one."""
        detector = DeniedBurstDetector(threshold=2, window=60)
        anomalies = observe_all(detector, [denied(t, subject="a") for t in (0, 1.25, 2.5)])

        assert 2500.0 == anomalies[0]["time_to_detect_ms"]

    def test_benign_user_quiet(self) -> None:
        """A user with five denials next to the attack raises nothing."""
        detector = DeniedBurstDetector()
        events = [denied(i, subject="bob") for i in range(5)]
        events += [denied(i, subject="alice") for i in range(11)]
        anomalies = observe_all(detector, events)

        assert ["alice"] == [anomaly["subject"] for anomaly in anomalies]

    def test_allowed_not_counted(self) -> None:
        """Allowed requests are not denials."""
        detector = DeniedBurstDetector(threshold=2)

        assert [] == observe_all(detector, [access(i, subject="a") for i in range(10)])

    def test_spread_out_quiet(self) -> None:
        """Denials further apart than the window never add up."""
        detector = DeniedBurstDetector(threshold=3, window=60)

        assert [] == observe_all(detector, [denied(i * 30, subject="a") for i in range(20)])

    def test_fires_once_per_burst(self) -> None:
        """Further denials within the window after firing stay quiet."""
        detector = DeniedBurstDetector(threshold=3, window=100)
        anomalies = observe_all(detector, [denied(i, subject="a") for i in range(30)])

        assert 1 == len(anomalies)

    def test_rearms_after_window(self) -> None:
        """A burst that goes on past the window fires again."""
        detector = DeniedBurstDetector(threshold=3, window=100)
        events = [denied(i * 10, subject="a") for i in range(25)]
        anomalies = observe_all(detector, events)

        assert 3 == len(anomalies)
        assert [START + 30, START + 130, START + 230] == [event_time(a) for a in anomalies]

    def test_min_distinct_ips(self) -> None:
        """With ``min_distinct_ips`` a single-address burst is not enough."""
        detector = DeniedBurstDetector(threshold=2, min_distinct_ips=2)
        single = [denied(i, subject="a", client_ip="192.0.2.1") for i in range(5)]

        assert [] == observe_all(detector, single)
        assert 1 == len(detector.observe(denied(6, subject="a", client_ip="192.0.2.2")))

    def test_severity_by_countries(self) -> None:
        """Denials from several countries are graded high."""
        detector = DeniedBurstDetector(threshold=1)
        anomalies = observe_all(
            detector, [denied(0, subject="a", country="DE"), denied(1, subject="a", country="br")]
        )

        assert "high" == anomalies[0]["severity"]
        assert ["BR", "DE"] == anomalies[0]["countries"]

    def test_memory_bound(self) -> None:
        """A flood of distinct subjects keeps the table at ``max_keys``."""
        detector = DeniedBurstDetector(threshold=3, max_keys=1000)
        for i in range(200_000):
            detector.observe(denied(i * 0.001, subject=f"user-{i}"))

        assert 1000 == len(detector.state)

    def test_window_bound(self) -> None:
        """One subject's history never exceeds ``threshold + 1`` denials."""
        detector = DeniedBurstDetector(threshold=5)
        for i in range(10_000):
            detector.observe(denied(i * 0.01, subject="a"))

        assert 6 == len(detector.state.get("a").window)

    @pytest.mark.parametrize(
        "options",
        [{"threshold": 0}, {"threshold": 2.5}, {"window": 0}, {"window": "1h"}, {"max_keys": 0}],
    )
    def test_invalid_configuration(self, options: dict[str, Any]) -> None:
        """Nonsense thresholds, windows and sizes are rejected at construction."""
        with pytest.raises(ConfigurationError):
            DeniedBurstDetector(**options)


class TestLateralMovement:
    def test_fires_on_third_segment(self) -> None:
        """Denials in three segments within the window fire."""
        detector = LateralMovementDetector(segments=3, window=900)
        events = [
            denied(0, subject="svc", segment="billing"),
            denied(10, subject="svc", segment="billing"),
            denied(20, subject="svc", segment="hr"),
            denied(30, subject="svc", segment="admin", client_ip="192.0.2.9"),
        ]
        anomalies = observe_all(detector, events)

        assert 1 == len(anomalies)
        assert ["billing", "hr", "admin"] == anomalies[0]["segments"]
        assert ["192.0.2.9", "198.51.100.7"] == anomalies[0]["distinct_ips"]
        assert 20_000.0 == anomalies[0]["time_to_detect_ms"]

    def test_one_segment_quiet(self) -> None:
        """Many denials in one segment are not lateral movement."""
        detector = LateralMovementDetector()

        assert [] == observe_all(
            detector, [denied(i, subject="u", segment="hr") for i in range(50)]
        )

    def test_allowed_segments_quiet(self) -> None:
        """Allowed requests across segments are normal work."""
        detector = LateralMovementDetector()
        events = [access(i, subject="u", segment=f"s{i}") for i in range(10)]

        assert [] == observe_all(detector, events)

    def test_outside_window_quiet(self) -> None:
        """Segments denied further apart than the window do not add up."""
        detector = LateralMovementDetector(segments=3, window=60)
        events = [denied(i * 100, subject="u", segment=f"s{i}") for i in range(10)]

        assert [] == observe_all(detector, events)

    def test_fires_once(self) -> None:
        """More segments within the window after firing stay quiet."""
        detector = LateralMovementDetector(segments=2, window=900)
        events = [denied(i, subject="u", segment=f"s{i}") for i in range(10)]

        assert 1 == len(observe_all(detector, events))

    def test_memory_bound(self) -> None:
        """A flood of subjects and segments stays within its bounds."""
        detector = LateralMovementDetector(segments=3, max_keys=500)
        for i in range(200_000):
            detector.observe(denied(i * 0.001, subject=f"u{i % 100_000}", segment=f"s{i}"))

        assert 500 == len(detector.state)
        sizes = {len(state.window) for state in detector.state._table.values()}
        assert max(sizes) <= 32


class TestImpossibleTravel:
    def test_fires_on_fast_jump(self) -> None:
        """Germany then Brazil ten minutes later fires."""
        detector = ImpossibleTravelDetector(max_speed_kmh=1000)
        events = [
            access(0, subject="alice", country="DE", client_ip="192.0.2.1"),
            denied(600, subject="alice", country="BR", client_ip="203.0.113.4"),
        ]
        anomalies = observe_all(detector, events)

        assert 1 == len(anomalies)
        anomaly = anomalies[0]
        assert ["DE", "BR"] == anomaly["countries"]
        assert 600_000.0 == anomaly["time_to_detect_ms"]
        assert [event["event_id"] for event in events] == anomaly["contributing_event_ids"]
        assert ["192.0.2.1", "203.0.113.4"] == anomaly["distinct_ips"]
        assert anomaly["speed_kmh"] > 1000

    def test_plausible_flight_quiet(self) -> None:
        """Germany then the US after twelve hours is a flight, not an attack."""
        detector = ImpossibleTravelDetector()
        events = [
            access(0, subject="bob", country="DE"),
            access(12 * 3600, subject="bob", country="US"),
        ]

        assert [] == observe_all(detector, events)

    def test_neighbours_quiet(self) -> None:
        """Crossing between neighbouring countries within minutes is within tolerance."""
        detector = ImpossibleTravelDetector()
        events = [access(0, subject="c", country="DE"), access(60, subject="c", country="AT")]

        assert [] == observe_all(detector, events)

    def test_same_time_fires(self) -> None:
        """Two far countries at the same instant fire with no speed."""
        detector = ImpossibleTravelDetector()
        anomalies = observe_all(
            detector, [access(0, subject="d", country="JP"), access(0, subject="d", country="GB")]
        )

        assert anomalies[0]["speed_kmh"] is None

    def test_unknown_country_no_judgement(self) -> None:
        """A country missing from the table neither fires nor replaces the last location."""
        detector = ImpossibleTravelDetector()
        events = [
            access(0, subject="e", country="DE"),
            access(1, subject="e", country="XX"),
            access(2, subject="e", country="AU"),
        ]
        anomalies = observe_all(detector, events)

        assert [["DE", "AU"]] == [anomaly["countries"] for anomaly in anomalies]

    def test_fires_once(self) -> None:
        """Alternating between two countries fires once per window."""
        detector = ImpossibleTravelDetector(window=3600)
        events = [access(i, subject="f", country="DE" if i % 2 else "CN") for i in range(20)]

        assert 1 == len(observe_all(detector, events))

    def test_memory_bound(self) -> None:
        """A flood of distinct subjects keeps the table at ``max_keys``."""
        detector = ImpossibleTravelDetector(max_keys=2000)
        for i in range(200_000):
            detector.observe(access(i * 0.001, subject=f"s{i}", country="FR"))

        assert 2000 == len(detector.state)


class TestCentroids:
    def test_coverage(self) -> None:
        """The table covers at least sixty countries with valid coordinates."""
        assert len(COUNTRY_CENTROIDS) >= 60
        for lat, lon in COUNTRY_CENTROIDS.values():
            assert -90 <= lat <= 90
            assert -180 <= lon <= 180

    def test_distance(self) -> None:
        """Germany to Brazil is roughly nine to ten thousand kilometres."""
        distance = country_distance_km("DE", "BR")

        assert distance is not None
        assert 9000 < distance < 10_500

    def test_unknown(self) -> None:
        """An unknown country has no distance."""
        assert country_distance_km("DE", "ZZ") is None


class TestTokenReplay:
    def test_fires_on_third_address(self) -> None:
        """One credential from three addresses fires."""
        detector = TokenReplayDetector(max_ips=2, window=600)
        events = [
            access(i * 10, subject="a", credential_fingerprint="fp1", client_ip=f"192.0.2.{i}")
            for i in range(3)
        ]
        anomalies = observe_all(detector, events)

        assert 1 == len(anomalies)
        assert "fp1" == anomalies[0]["credential_fingerprint"]
        assert ["192.0.2.0", "192.0.2.1", "192.0.2.2"] == anomalies[0]["distinct_ips"]
        assert 20_000.0 == anomalies[0]["time_to_detect_ms"]
        assert 3 == anomalies[0]["count"]

    def test_one_address_quiet(self) -> None:
        """A token used many times from one address is normal."""
        detector = TokenReplayDetector()
        events = [access(i, credential_fingerprint="fp", client_ip="192.0.2.1") for i in range(100)]

        assert [] == observe_all(detector, events)

    def test_devices(self) -> None:
        """One credential on two devices fires with ``max_devices=1``."""
        detector = TokenReplayDetector(max_devices=1)
        events = [
            access(0, credential_fingerprint="fp", device_id="laptop"),
            access(1, credential_fingerprint="fp", device_id="phone"),
        ]
        anomalies = observe_all(detector, events)

        assert [["laptop", "phone"]] == [anomaly["device_ids"] for anomaly in anomalies]

    def test_addresses_expire(self) -> None:
        """Addresses older than the window are forgotten."""
        detector = TokenReplayDetector(max_ips=1, window=60)
        events = [
            access(i * 120, credential_fingerprint="fp", client_ip=f"192.0.2.{i}") for i in range(5)
        ]

        assert [] == observe_all(detector, events)

    def test_memory_bound(self) -> None:
        """A flood of credentials and addresses stays within its bounds."""
        detector = TokenReplayDetector(max_ips=2, max_keys=1000)
        for i in range(200_000):
            detector.observe(
                access(i * 0.001, credential_fingerprint=f"fp{i % 50_000}", client_ip=f"ip{i}")
            )

        assert 1000 == len(detector.state)
        for state in detector.state._table.values():
            assert len(state.window[0]) <= 3


class TestCredentialStuffing:
    def test_fires_on_distinct_subjects(self) -> None:
        """Failures for ten accounts from one address fire."""
        detector = CredentialStuffingDetector(subjects=10)
        events = [failed_login(i, subject=f"user{i}", client_ip="203.0.113.66") for i in range(10)]
        anomalies = observe_all(detector, events)

        assert 1 == len(anomalies)
        assert "203.0.113.66" == anomalies[0]["client_ip"]
        assert anomalies[0]["subject"] is None
        assert 10 == anomalies[0]["count"]
        assert 9000.0 == anomalies[0]["time_to_detect_ms"]

    def test_counts_fingerprints(self) -> None:
        """Rejected tokens without a subject count by fingerprint."""
        detector = CredentialStuffingDetector(subjects=5)
        events = [failed_login(i, credential_fingerprint=f"fp{i}") for i in range(5)]
        anomalies = observe_all(detector, events)

        assert 1 == len(anomalies)
        assert 5 == anomalies[0]["distinct_credentials"]

    def test_no_credential_not_counted(self) -> None:
        """A failure with neither subject nor credential is not an attempted account."""
        detector = CredentialStuffingDetector(subjects=2)
        events = [failed_login(i, reasons=["identity_missing"]) for i in range(10)]

        assert [] == observe_all(detector, events)

    def test_nat_office_quiet(self) -> None:
        """Many users succeeding behind one address, plus a few typos, stay quiet."""
        detector = CredentialStuffingDetector(subjects=10)
        events = [access(i, subject=f"staff{i}", client_ip="192.0.2.10") for i in range(200)]
        events += [
            failed_login(300 + i, subject=f"staff{i}", client_ip="192.0.2.10") for i in range(3)
        ]

        assert [] == observe_all(detector, events)

    def test_same_account_quiet(self) -> None:
        """One account failing many times is not stuffing."""
        detector = CredentialStuffingDetector(subjects=3)
        events = [failed_login(i, subject="alice") for i in range(50)]

        assert [] == observe_all(detector, events)

    def test_forbidden_not_counted(self) -> None:
        """A 403 is an authorization failure, not an identity failure."""
        detector = CredentialStuffingDetector(subjects=2)
        events = [denied(i, subject=f"u{i}") for i in range(10)]

        assert [] == observe_all(detector, events)

    def test_monitor_mode_identity_failure(self) -> None:
        """A failed identity verifier counts even when monitor mode sent a 200."""
        detector = CredentialStuffingDetector(subjects=2)
        verifiers = [{"name": "jwt", "kind": "identity", "result": "fail"}]
        events = [
            access(i, decision="deny", status=200, subject=f"u{i}", verifiers=verifiers)
            for i in range(2)
        ]

        assert 1 == len(observe_all(detector, events))

    def test_by_network(self) -> None:
        """With ``by="network"`` addresses in one /24 add up."""
        detector = CredentialStuffingDetector(subjects=4, by="network")
        events = [
            failed_login(i, subject=f"u{i}", client_ip=f"203.0.113.{i + 1}") for i in range(4)
        ]
        anomalies = observe_all(detector, events)

        assert "203.0.113.0/24" == anomalies[0]["network"]
        assert "network" == detector.signal_kind

    def test_by_network_ipv6(self) -> None:
        """IPv6 addresses add up per /64."""
        detector = CredentialStuffingDetector(subjects=2, by="network")
        events = [
            failed_login(0, subject="a", client_ip="2001:db8:1:2::1"),
            failed_login(1, subject="b", client_ip="2001:db8:1:2:ffff::9"),
        ]

        assert ["2001:db8:1:2::/64"] == [a["network"] for a in observe_all(detector, events)]

    def test_invalid_by(self) -> None:
        """An unknown grouping is rejected."""
        with pytest.raises(ConfigurationError):
            CredentialStuffingDetector(by="asn")  # type: ignore[arg-type]

    def test_memory_bound(self) -> None:
        """A flood of addresses keeps the table at ``max_keys``."""
        detector = CredentialStuffingDetector(max_keys=1000)
        for i in range(200_000):
            detector.observe(
                failed_login(
                    i * 0.001, subject="x", client_ip=f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}"
                )
            )

        assert 1000 == len(detector.state)


class TestRunDetectors:
    def test_replay(self) -> None:
        """Replaying a mixed log finds each scripted attack once."""
        events: list[dict[str, Any]] = []
        events += [denied(i, subject="alice") for i in range(11)]
        events += [denied(100 + i, subject="svc", segment=f"s{i}") for i in range(3)]
        events += [
            access(200, subject="eve", country="DE"),
            access(210, subject="eve", country="AU"),
        ]
        events += [
            access(300 + i, credential_fingerprint="stolen", client_ip=f"192.0.2.{i}")
            for i in range(3)
        ]
        events += [
            failed_login(400 + i, subject=f"v{i}", client_ip="203.0.113.1") for i in range(10)
        ]
        events.append({"event": "anomaly", "detector": "denied_burst"})
        anomalies = run_detectors(events)

        assert [
            "denied_burst",
            "lateral_movement",
            "impossible_travel",
            "token_replay",
            "credential_stuffing",
        ] == [anomaly["detector"] for anomaly in anomalies]

    def test_default_detectors_fresh(self) -> None:
        """Each call returns new detectors with separate state."""
        first, second = default_detectors(), default_detectors()

        assert all(a is not b for a, b in zip(first, second, strict=True))

    def test_anomaly_ids_unique(self) -> None:
        """Every anomaly gets a new event id."""
        events = [denied(i, subject=f"u{i // 11}") for i in range(110)]
        anomalies = run_detectors(events, [DeniedBurstDetector()])

        assert 10 == len({anomaly["event_id"] for anomaly in anomalies})


class TestRiskDenialsIgnored:
    def test_risk_denials_do_not_renew_a_burst(self) -> None:
        """Denials caused only by a risk signal do not count toward a new denied burst."""
        from zerotrust.events import format_timestamp, new_event_id
        from zerotrust.monitor import DeniedBurstDetector

        detector = DeniedBurstDetector(threshold=3, window=3600)
        anomalies = []
        for second in range(10):
            event = {
                "event": "access",
                "event_id": new_event_id(),
                "timestamp": format_timestamp(1_800_000_000 + second),
                "decision": "deny",
                "reasons": ["risk_flagged_client_ip"],
                "subject": "alice",
                "client_ip": "203.0.113.7",
            }
            anomalies.extend(detector.observe(event))

        assert [] == anomalies
