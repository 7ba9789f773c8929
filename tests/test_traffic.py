# SPDX-License-Identifier: Apache-2.0
"""Tests of the labelled traffic generator and of the default detectors on its traffic."""

from __future__ import annotations

import importlib.util
import itertools
import sys
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator, FormatChecker

from zerotrust.events import access_event_schema

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import traffic

HAVE_DETECTORS = importlib.util.find_spec("zerotrust.monitor.detectors") is not None
needs_detectors = pytest.mark.skipif(
    not HAVE_DETECTORS, reason="zerotrust.monitor.detectors is not importable in this checkout"
)
SEEDS = (0, 1, 2)


@pytest.fixture(name="day", scope="module")
def fixture_day() -> traffic.TrafficDay:
    """The labelled day for seed 0."""
    return traffic.generate_day(0)


class TestGenerator:
    def test_same_seed_same_events(self, day: traffic.TrafficDay) -> None:
        """The same seed produces identical events, ids included."""
        assert day.events == traffic.generate_day(0).events

    def test_other_seed_other_events(self, day: traffic.TrafficDay) -> None:
        """Another seed produces other events."""
        assert day.events != traffic.generate_day(1).events

    def test_size_bounded(self) -> None:
        """``max_events`` bounds the benign events; the attacks add about 120."""
        small = traffic.generate_day(0, max_events=2_000)
        assert len(small.events) < 2_000 + 1_000

    def test_events_time_ordered(self, day: traffic.TrafficDay) -> None:
        """Events come in timestamp order, as detectors require."""
        timestamps = [event["timestamp"] for event in day.events]
        assert sorted(timestamps) == timestamps

    def test_event_ids_unique(self, day: traffic.TrafficDay) -> None:
        """Every event id is unique."""
        ids = [event["event_id"] for event in day.events]
        assert len(ids) == len(set(ids))

    def test_events_match_schema(self, day: traffic.TrafficDay) -> None:
        """Every generated event, flood events included, validates against the access schema."""
        validator = Draft202012Validator(access_event_schema(), format_checker=FormatChecker())
        sample = day.events[::7] + list(traffic.flood_events(30))
        errors = [error.message for event in sample for error in validator.iter_errors(event)]
        assert [] == errors

    def test_no_label_in_events(self, day: traffic.TrafficDay) -> None:
        """Labels stay out of the events: only access event keys are present."""
        allowed = set(access_event_schema()["properties"])
        extra = {key for event in day.events for key in event} - allowed
        assert set() == extra

    def test_every_attack_labelled(self, day: traffic.TrafficDay) -> None:
        """Each attack kind appears once in the ground truth, with its events."""
        assert set(traffic.ATTACK_KINDS) == {attack.name for attack in day.attacks}
        for attack in day.attacks:
            assert attack.event_ids, attack.name

    def test_attack_ids_in_stream(self, day: traffic.TrafficDay) -> None:
        """Every labelled event id is in the stream, and its time lies in the attack's span."""
        by_id = {event["event_id"]: event for event in day.events}
        for attack in day.attacks:
            first = traffic.format_time(attack.first_seen)
            last = traffic.format_time(attack.last_seen)
            for event_id in attack.event_ids:
                assert event_id in by_id, attack.name
                assert first <= by_id[event_id]["timestamp"] <= last, attack.name

    def test_attack_subjects_not_benign_except_victims(self, day: traffic.TrafficDay) -> None:
        """Only the replay and travel victims are both benign users and attack subjects."""
        shared = {s for attack in day.attacks for s in attack.subjects} & day.benign_subjects
        assert {"frank@example.com", "erin@example.com"} == shared

    def test_office_nat_shared(self, day: traffic.TrafficDay) -> None:
        """Many benign users share the office NAT address."""
        subjects = {e["subject"] for e in day.events if e["client_ip"] == traffic.OFFICE_NAT_IP}
        assert len(subjects) > 50

    def test_benign_mistakes_present(self, day: traffic.TrafficDay) -> None:
        """Benign users send expired tokens now and then, so detectors see benign 401s."""
        attack_ids = {event_id for attack in day.attacks for event_id in attack.event_ids}
        benign_expired = [
            event
            for event in day.events
            if event["reasons"] == ["token_expired"] and event["event_id"] not in attack_ids
        ]
        assert len(benign_expired) >= 5

    def test_phone_changes_address_in_one_country(self, day: traffic.TrafficDay) -> None:
        """The phone user uses several carrier addresses, all in one country."""
        events = [e for e in day.events if e["subject"] == "phone.user@example.com"]
        assert len({e["client_ip"] for e in events}) >= 5
        assert {"DE"} == {e["facts"]["country"] for e in events}

    def test_travellers_below_airliner_speed(self, day: traffic.TrafficDay) -> None:
        """Each benign country change is slower than 1,000 km/h between centroids."""
        for subject in ("traveller.a@example.com", "traveller.b@example.com"):
            events = [e for e in day.events if e["subject"] == subject]
            for before, after in itertools.pairwise(events):
                if before["facts"]["country"] == after["facts"]["country"]:
                    continue
                hours = (_seconds(after) - _seconds(before)) / 3600
                distance = traffic.distance_km(
                    before["facts"]["country"], after["facts"]["country"]
                )
                assert distance / hours < 1000, subject

    def test_flood_distinct_and_lazy(self) -> None:
        """Flood events have distinct subjects, addresses and fingerprints, and come lazily."""
        events = list(itertools.islice(traffic.flood_events(10**9), 3_000))
        assert 3_000 == len({e["client_ip"] for e in events})
        assert 3_000 == len({e["credential_fingerprint"] for e in events})
        subjects = [e["subject"] for e in events if e["subject"] is not None]
        assert len(subjects) == len(set(subjects))


def _seconds(event: dict[str, object]) -> float:
    import bench_detectors

    return bench_detectors.parse_time(str(event["timestamp"]))


@needs_detectors
class TestDetectorsOnTraffic:
    @pytest.mark.parametrize("seed", SEEDS)
    def test_every_attack_detected(self, seed: int) -> None:
        """Each scripted attack raises at least one anomaly that names its events."""
        import bench_detectors

        evaluation = bench_detectors.evaluate(traffic.generate_day(seed))
        missed = [r.attack.name for r in evaluation.results if not r.detected]
        assert [] == missed

    @pytest.mark.parametrize("seed", SEEDS)
    def test_expected_detector_fires(self, seed: int) -> None:
        """Each scripted attack is caught by the detector built for it."""
        import bench_detectors

        evaluation = bench_detectors.evaluate(traffic.generate_day(seed))
        silent = [r.attack.name for r in evaluation.results if not r.expected_detector_fired]
        assert [] == silent

    @pytest.mark.parametrize("seed", SEEDS)
    def test_no_false_positives(self, seed: int) -> None:
        """No anomaly is raised about benign traffic alone."""
        import bench_detectors

        evaluation = bench_detectors.evaluate(traffic.generate_day(seed))
        descriptions = [anomaly["description"] for anomaly in evaluation.false_positives]
        assert [] == descriptions
        assert set() == evaluation.flagged_benign_subjects
        assert set() == evaluation.flagged_benign_ips

    def test_detection_within_attack(self) -> None:
        """The expected detector fires before the attack's last event plus a minute."""
        import bench_detectors

        evaluation = bench_detectors.evaluate(traffic.generate_day(0))
        for result in evaluation.results:
            seconds = result.seconds_to_detect(result.attack.detector)
            assert seconds is not None, result.attack.name
            span = result.attack.last_seen - result.attack.first_seen
            assert 0 <= seconds <= span + 60, result.attack.name

    def test_flood_keeps_state_bounded(self) -> None:
        """After 25,000 distinct keys no detector tracks more than its ``max_keys``."""
        from zerotrust.monitor.detectors import (
            CredentialStuffingDetector,
            DeniedBurstDetector,
            ImpossibleTravelDetector,
            LateralMovementDetector,
            TokenReplayDetector,
            run_detectors,
        )

        detectors = [
            DeniedBurstDetector(max_keys=500),
            LateralMovementDetector(max_keys=500),
            ImpossibleTravelDetector(max_keys=500),
            TokenReplayDetector(max_keys=500),
            CredentialStuffingDetector(max_keys=500),
        ]
        run_detectors(traffic.flood_events(25_000), detectors)
        for detector in detectors:
            assert len(detector.state) <= 500, detector.name
