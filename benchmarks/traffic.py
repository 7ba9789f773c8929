# SPDX-License-Identifier: Apache-2.0
"""Generate a labelled day of access events, benign and attack, for testing detectors."""

from __future__ import annotations

import ipaddress
import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ATTACK_KINDS",
    "COUNTRY_CENTROIDS",
    "DAY_START",
    "Attack",
    "TrafficDay",
    "distance_km",
    "flood_events",
    "generate_day",
]

# Monday 2026-03-02 00:00:00 UTC, the start of the simulated day.
DAY_START = 1_772_409_600.0
HOST = "api.example.com"
ISSUER = "https://login.example.com/"
PROXY_IP = "10.0.0.5"
OFFICE_NAT_IP = "198.51.100.10"
TOKEN_LIFETIME = 3600.0

# Each scripted attack and the detector expected to catch it.
ATTACK_KINDS: dict[str, str] = {
    "credential_stuffing": "credential_stuffing",
    "lateral_movement": "lateral_movement",
    "token_replay": "token_replay",
    "impossible_travel": "impossible_travel",
    "denied_burst": "denied_burst",
}

# Rough geographic centres (latitude, longitude) of the countries used here, to keep the benign
# travellers below airliner speed. NOTE: a country centroid can be 1,000 km or more from where
# a user really is (US, BR), so speeds computed from centroids are estimates.
COUNTRY_CENTROIDS: dict[str, tuple[float, float]] = {
    "BR": (-10.0, -52.0),
    "DE": (51.2, 10.4),
    "ES": (40.4, -3.7),
    "FR": (46.6, 2.4),
    "GB": (54.0, -2.5),
    "JP": (36.2, 138.3),
    "NG": (9.1, 8.7),
    "NL": (52.2, 5.3),
    "PL": (52.0, 19.1),
    "US": (39.8, -98.6),
    "VN": (16.0, 107.8),
}

# Segment name to path prefix. Benign users work in the first three.
SEGMENTS: dict[str, str] = {
    "items": "/items",
    "reports": "/reports",
    "billing": "/billing",
    "admin": "/admin",
    "hr": "/hr",
    "deploy": "/deploy",
}
BENIGN_SEGMENTS = ("items", "reports", "billing")
USER_AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Firefox/124.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_3) Safari/605.1.15",
    "inventory-cli/2.3",
)
PHONE_AGENT = "inventory-app/5.1 (Android 14)"


@dataclass
class Attack:
    """
    Ground truth for one scripted attack.

    Attributes:
        name: The attack, a key of `ATTACK_KINDS`.
        detector: The detector expected to catch it.
        event_ids: Ids of the attack's own events, in time order.
        subjects: Subjects the attack used or targeted.
        client_ips: Client addresses the attack came from.
        fingerprints: Credential fingerprints the attack presented.
        first_seen: Time of its first event, seconds since the epoch.
        last_seen: Time of its last event, seconds since the epoch.
        description: What the attack does, for reports.
    """

    name: str
    detector: str
    description: str
    event_ids: list[str] = field(default_factory=list)
    subjects: set[str] = field(default_factory=set)
    client_ips: set[str] = field(default_factory=set)
    fingerprints: set[str] = field(default_factory=set)
    first_seen: float = math.inf
    last_seen: float = -math.inf


@dataclass
class TrafficDay:
    """
    A simulated day of traffic.

    Attributes:
        events: Access events in timestamp order, without any label key.
        attacks: Ground truth of each scripted attack.
        benign_subjects: Subjects of the benign users.
        benign_ips: Client addresses the benign users came from.
    """

    events: list[dict[str, Any]]
    attacks: list[Attack]
    benign_subjects: set[str]
    benign_ips: set[str]

    def attack(self, name: str) -> Attack:
        """Return the attack called ``name``."""
        for attack in self.attacks:
            if attack.name == name:
                return attack
        message = f"no attack named {name!r}; known attacks: {[a.name for a in self.attacks]}"
        raise KeyError(message)


def distance_km(a: str, b: str) -> float:
    """Return the great-circle distance between the centroids of two countries, in kilometres."""
    lat1, lon1 = map(math.radians, COUNTRY_CENTROIDS[a])
    lat2, lon2 = map(math.radians, COUNTRY_CENTROIDS[b])
    h = (
        math.sin((lat2 - lat1) / 2) ** 2
        + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    )

    return 2 * 6371.0 * math.asin(math.sqrt(h))


def format_time(timestamp: float) -> str:
    """Format seconds since the epoch as RFC 3339 UTC with microseconds, like access events."""
    whole = int(timestamp)
    micros = min(round((timestamp - whole) * 1_000_000), 999_999)

    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{micros:06d}Z"


def _uuid7(timestamp: float, rng: random.Random) -> str:
    # A version 7 UUID from the seeded generator, so the same seed gives the same ids.
    value = (int(timestamp * 1000) & 0xFFFF_FFFF_FFFF) << 80
    value |= rng.getrandbits(80)
    value = (value & ~(0xF << 76)) | (0x7 << 76)
    value = (value & ~(0x3 << 62)) | (0x2 << 62)
    text = f"{value:032x}"

    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


@dataclass
class _User:
    subject: str
    country: str
    ip: str
    device_id: str
    user_agent: str
    segments: tuple[str, ...]
    start_hour: float
    hours: float


class _Builder:
    """Collects events with their labels, then sorts them by time."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.rows: list[tuple[float, dict[str, Any], str | None]] = []
        self.attacks: dict[str, Attack] = {}
        self.benign_ips: set[str] = set()

    def fingerprint(self) -> str:
        return f"{self.rng.getrandbits(64):016x}"

    def add(
        self,
        when: float,
        *,
        subject: str | None,
        fingerprint: str | None,
        client_ip: str,
        country: str,
        segment: str,
        reasons: tuple[str, ...] = (),
        method: str = "GET",
        user_agent: str = USER_AGENTS[0],
        device_id: str | None = None,
        label: str | None = None,
    ) -> dict[str, Any]:
        event = self._event(
            when,
            subject=subject,
            fingerprint=fingerprint,
            client_ip=client_ip,
            country=country,
            segment=segment,
            reasons=reasons,
            method=method,
            user_agent=user_agent,
            device_id=device_id,
        )
        self.rows.append((when, event, label))
        if label is None:
            self.benign_ips.add(client_ip)
        else:
            attack = self.attacks[label]
            attack.client_ips.add(client_ip)
            if subject is not None:
                attack.subjects.add(subject)
            if fingerprint is not None:
                attack.fingerprints.add(fingerprint)

        return event

    def _event(
        self,
        when: float,
        *,
        subject: str | None,
        fingerprint: str | None,
        client_ip: str,
        country: str,
        segment: str,
        reasons: tuple[str, ...],
        method: str,
        user_agent: str,
        device_id: str | None,
    ) -> dict[str, Any]:
        rng = self.rng
        identity_failed = any(reason.startswith(("token_", "invalid_")) for reason in reasons)
        status = 200
        if reasons:
            status = 401 if identity_failed else 403
        jwt_reason = reasons[0] if identity_failed else None
        geo_reason = next((r for r in reasons if r.startswith("country_")), None)
        verifiers = [
            _verifier("jwt", "identity", jwt_reason, rng),
            _verifier("geo", "context", geo_reason, rng),
        ]
        facts: dict[str, Any] = {"country": country}
        if device_id is not None:
            facts["device_id"] = device_id
        path = SEGMENTS[segment] + ("" if rng.random() < 0.5 else f"/{rng.randrange(1, 5000)}")
        event: dict[str, Any] = {
            "event": "access",
            "schema_version": "1",
            "timestamp": format_time(when),
            "event_id": _uuid7(when, rng),
            "request_id": f"{rng.getrandbits(128):032x}",
            "decision": "deny" if reasons else "allow",
            "action": "deny" if reasons else "allow",
            "mode": "enforce",
            "status": status,
            "reasons": list(reasons),
            "segment": segment,
            # A rejected token establishes no principal, so only its fingerprint is recorded.
            "subject": None if identity_failed else subject,
            "issuer": None if identity_failed else ISSUER,
            "credential_fingerprint": fingerprint,
            "client_ip": client_ip,
            "peer_ip": PROXY_IP,
            "method": method,
            "scheme": "https",
            "protocol": "http",
            "host": HOST,
            "path": path,
            "user_agent": user_agent,
            "latency_ms": round(rng.uniform(0.8, 40.0), 3),
            "decision_ms": round(rng.uniform(0.2, 1.5), 3),
            "verifiers": verifiers,
        }
        if "insufficient_scope" in reasons:
            event["missing_scopes"] = [f"{segment}:{'write' if method != 'GET' else 'read'}"]
        event["facts"] = facts

        return event

    def finish(self) -> tuple[list[dict[str, Any]], list[Attack]]:
        # Sort on time only: the builder's insertion order breaks ties, so sorting is stable.
        self.rows.sort(key=lambda row: row[0])
        events: list[dict[str, Any]] = []
        for when, event, label in self.rows:
            events.append(event)
            if label is not None:
                attack = self.attacks[label]
                attack.event_ids.append(event["event_id"])
                attack.first_seen = min(attack.first_seen, when)
                attack.last_seen = max(attack.last_seen, when)

        return events, list(self.attacks.values())


def _verifier(name: str, kind: str, reason: str | None, rng: random.Random) -> dict[str, Any]:
    return {
        "name": name,
        "kind": kind,
        "result": "pass" if reason is None else "fail",
        "reason": reason,
        "detail": None,
        "duration_ms": round(rng.uniform(0.01, 0.6), 3),
    }


def generate_day(seed: int = 0, *, users: int = 150, max_events: int = 20_000) -> TrafficDay:
    """
    Generate one labelled day of access events.

    The benign part has office users behind one NAT address and remote users. A phone user's
    carrier address changes every 15 to 40 minutes within one country, and two travellers move
    at airliner speed or less. Clients send expired tokens now and then, and a few users are
    denied a scope once.
    The five scripted attacks are listed in `ATTACK_KINDS`; their labels live only in
    `TrafficDay.attacks`, never in the events.

    Args:
        seed: Seed of the generator; the same seed gives the same events, ids included.
        users: Number of benign users.
        max_events: Upper bound on the number of benign events; attacks add about 120.
    """
    rng = random.Random(seed)
    builder = _Builder(rng)
    benign_users = _make_users(rng, users)
    budget = max_events
    for user in benign_users:
        budget -= _simulate_user(builder, user, budget)
        if budget <= 0:
            break
    _simulate_phone_user(builder)
    _simulate_travellers(builder)
    _add_attacks(builder)
    events, attacks = builder.finish()
    benign_subjects = {user.subject for user in benign_users}
    benign_subjects |= {"phone.user@example.com", "traveller.a@example.com"}
    benign_subjects |= {"traveller.b@example.com", "frank@example.com", "erin@example.com"}

    return TrafficDay(events, attacks, benign_subjects, builder.benign_ips)


def _make_users(rng: random.Random, count: int) -> list[_User]:
    users: list[_User] = []
    remote_countries = ("DE", "DE", "FR", "NL", "PL", "GB", "ES")
    for index in range(count):
        in_office = index % 5 < 3
        country = "DE" if in_office else remote_countries[index % len(remote_countries)]
        ip = (
            OFFICE_NAT_IP
            if in_office
            else f"2001:db8:{100 + index:x}::{rng.randrange(1, 0xFFFF):x}"
        )
        segments = BENIGN_SEGMENTS if index % 7 == 0 else BENIGN_SEGMENTS[:2]
        users.append(
            _User(
                subject=f"user{index:03d}@example.com",
                country=country,
                ip=ip,
                device_id=f"laptop-{index:04d}",
                user_agent=USER_AGENTS[index % len(USER_AGENTS)],
                segments=segments,
                start_hour=rng.uniform(6.5, 9.5),
                hours=rng.uniform(6.0, 9.5),
            )
        )

    return users


def _simulate_user(builder: _Builder, user: _User, budget: int) -> int:
    """Add one benign user's working day; return the number of events added."""
    rng = builder.rng
    now = DAY_START + user.start_hour * 3600
    end = now + user.hours * 3600
    added = 0
    # Some clients start the morning with yesterday's expired token.
    stale = builder.fingerprint() if rng.random() < 0.1 else None
    token_issued = now
    token = builder.fingerprint()
    denials_left = 1 if rng.random() < 0.3 else 0
    while now < end and added < budget:
        if stale is not None:
            builder.add(
                now,
                subject=user.subject,
                fingerprint=stale,
                client_ip=user.ip,
                country=user.country,
                segment=user.segments[0],
                reasons=("token_expired",),
                user_agent=user.user_agent,
            )
            stale, added, now = None, added + 1, now + rng.uniform(0.5, 3.0)
        if now - token_issued >= TOKEN_LIFETIME:
            # Now and then a client sends the old token once more before it renews.
            if rng.random() < 0.05:
                builder.add(
                    now,
                    subject=user.subject,
                    fingerprint=token,
                    client_ip=user.ip,
                    country=user.country,
                    segment=user.segments[0],
                    reasons=("token_expired",),
                    user_agent=user.user_agent,
                )
                added, now = added + 1, now + rng.uniform(0.5, 3.0)
            token, token_issued = builder.fingerprint(), now
        segment = rng.choice(user.segments)
        reasons: tuple[str, ...] = ()
        method = "GET" if rng.random() < 0.85 else "POST"
        if denials_left and rng.random() < 0.02:
            # A user clicking a button they lack the scope for, once.
            segment, method, reasons, denials_left = "reports", "POST", ("insufficient_scope",), 0
        builder.add(
            now,
            subject=user.subject,
            fingerprint=token,
            client_ip=user.ip,
            country=user.country,
            segment=segment,
            reasons=reasons,
            method=method,
            user_agent=user.user_agent,
            device_id=user.device_id,
        )
        added += 1
        now += rng.expovariate(1 / 240.0)

    return added


def _simulate_phone_user(builder: _Builder) -> None:
    # A phone on a German carrier: the carrier address changes every 15 to 40 minutes, so no
    # token is seen from more than two addresses within ten minutes.
    rng = builder.rng
    subject = "phone.user@example.com"
    now = DAY_START + 7 * 3600
    end = DAY_START + 21 * 3600
    token_issued, token = now, builder.fingerprint()
    ip = f"100.64.{rng.randrange(256)}.{rng.randrange(1, 255)}"
    ip_changes_at = now + rng.uniform(900, 2400)
    while now < end:
        if now >= ip_changes_at:
            ip = f"100.64.{rng.randrange(256)}.{rng.randrange(1, 255)}"
            ip_changes_at = now + rng.uniform(900, 2400)
        if now - token_issued >= TOKEN_LIFETIME:
            token_issued, token = now, builder.fingerprint()
        builder.add(
            now,
            subject=subject,
            fingerprint=token,
            client_ip=ip,
            country="DE",
            segment="items",
            user_agent=PHONE_AGENT,
            device_id="phone-7781",
        )
        now += rng.expovariate(1 / 240.0)


def _simulate_travellers(builder: _Builder) -> None:
    # Traveller A takes the train from Germany to the Netherlands; traveller B flies from
    # Germany to the United States. Both stay well under 1,000 km/h between centroids.
    trips = (
        (
            "traveller.a@example.com",
            ("DE", "192.0.2.21", 6.0, 9.0),
            ("NL", "192.0.2.22", 14.0, 18.0),
        ),
        (
            "traveller.b@example.com",
            ("DE", "192.0.2.31", 5.0, 6.5),
            ("US", "192.0.2.32", 19.0, 23.5),
        ),
    )
    rng = builder.rng
    for subject, *legs in trips:
        for country, ip, start, stop in legs:
            now, token = DAY_START + start * 3600, builder.fingerprint()
            while now < DAY_START + stop * 3600:
                builder.add(
                    now,
                    subject=subject,
                    fingerprint=token,
                    client_ip=ip,
                    country=country,
                    segment="items",
                    device_id=f"laptop-{subject[9]}",
                )
                now += rng.expovariate(1 / 200.0)


def _add_attacks(builder: _Builder) -> None:
    rng = builder.rng
    for name, detector in ATTACK_KINDS.items():
        builder.attacks[name] = Attack(name, detector, _DESCRIPTIONS[name])

    # Credential stuffing: 40 stolen tokens of different users are tried from one address in
    # four minutes at night. Every one fails, so only fingerprints are recorded, no subjects.
    now = DAY_START + 2 * 3600 + 13 * 60
    for _ in range(40):
        reason = "invalid_signature" if rng.random() < 0.6 else "token_expired"
        builder.add(
            now,
            subject=None,
            fingerprint=builder.fingerprint(),
            client_ip="203.0.113.66",
            country="NL",
            segment="items",
            reasons=(reason,),
            user_agent="python-requests/2.31.0",
            label="credential_stuffing",
        )
        now += rng.uniform(2.0, 10.0)

    # Lateral movement: a compromised service account probes five segments it has no role in.
    now = DAY_START + 10 * 3600 + 40 * 60
    token = builder.fingerprint()
    for segment in ("reports", "admin", "hr", "deploy", "billing", "admin", "deploy", "hr"):
        builder.add(
            now,
            subject="svc-reporting@example.com",
            fingerprint=token,
            client_ip="10.20.3.17",
            country="DE",
            segment=segment,
            reasons=("insufficient_role",),
            user_agent="curl/8.5.0",
            label="lateral_movement",
        )
        now += rng.uniform(20.0, 70.0)

    _add_token_replay(builder)

    # Impossible travel: erin works from Germany, then her account is used from Japan 20 minutes
    # after her last German request.
    now = DAY_START + 13 * 3600
    token = builder.fingerprint()
    while now < DAY_START + 15 * 3600:
        builder.add(
            now,
            subject="erin@example.com",
            fingerprint=token,
            client_ip="192.0.2.41",
            country="DE",
            segment="items",
            device_id="laptop-erin",
        )
        now += rng.uniform(120.0, 300.0)
    last_german = now - 1.0
    builder.add(
        last_german,
        subject="erin@example.com",
        fingerprint=token,
        client_ip="192.0.2.41",
        country="DE",
        segment="items",
        device_id="laptop-erin",
    )
    now = last_german + 20 * 60
    jp_token = builder.fingerprint()
    for _ in range(3):
        builder.add(
            now,
            subject="erin@example.com",
            fingerprint=jp_token,
            client_ip="203.0.113.140",
            country="JP",
            segment="reports",
            label="impossible_travel",
        )
        now += rng.uniform(30.0, 90.0)

    # Denied burst: a leaked contractor token tried against a geo-fenced segment from a proxy
    # network, 14 denials in 40 minutes from five addresses in four countries.
    now = DAY_START + 20 * 3600
    token = builder.fingerprint()
    sources = (
        ("203.0.113.201", "BR"),
        ("203.0.113.202", "VN"),
        ("203.0.113.203", "NG"),
        ("203.0.113.204", "US"),
        ("203.0.113.205", "BR"),
    )
    for index in range(14):
        ip, country = sources[index % len(sources)]
        builder.add(
            now,
            subject="contractor17@example.com",
            fingerprint=token,
            client_ip=ip,
            country=country,
            segment="billing",
            reasons=("country_not_allowed",),
            user_agent="Mozilla/5.0 (X11; Linux x86_64) Chrome/122.0",
            label="denied_burst",
        )
        now += rng.uniform(120.0, 220.0)


def _add_token_replay(builder: _Builder) -> None:
    # frank works from home. A copy of his token is replayed from three other German addresses
    # within ten minutes, through a residential proxy service, so the country never changes.
    rng = builder.rng
    token = builder.fingerprint()
    start = DAY_START + 14 * 3600
    now = start
    while now < start + 45 * 60:
        builder.add(
            now,
            subject="frank@example.com",
            fingerprint=token,
            client_ip="192.0.2.51",
            country="DE",
            segment="items",
            device_id="laptop-frank",
        )
        now += rng.uniform(60.0, 240.0)
    now = start + 5 * 60
    for ip in ("198.51.100.71", "198.51.100.72", "198.51.100.73", "198.51.100.72"):
        builder.add(
            now,
            subject="frank@example.com",
            fingerprint=token,
            client_ip=ip,
            country="DE",
            segment="billing",
            user_agent="python-httpx/0.27.0",
            label="token_replay",
        )
        now += rng.uniform(40.0, 120.0)


_DESCRIPTIONS = {
    "credential_stuffing": "40 stolen tokens failing 401 from one address in 4 minutes",
    "lateral_movement": "one service account denied in 5 segments in 8 minutes",
    "token_replay": "one token used from 4 addresses within 10 minutes",
    "impossible_travel": "one subject in DE, then in JP 20 minutes later",
    "denied_burst": "14 denials in 40 minutes from 5 addresses in 4 countries",
}


# Flood addresses count up from 10.0.0.0 and 2001:db8:: (private and documentation ranges).
_FLOOD_IPV4_BASE = int(ipaddress.IPv4Address("10.0.0.0"))
_FLOOD_IPV6_BASE = int(ipaddress.IPv6Address("2001:db8::"))
# Flood event kinds by index modulo 3: allowed, failed 401, denied 403.
_FLOOD_REASONS: tuple[tuple[str, ...], ...] = ((), ("token_expired",), ("insufficient_role",))
_FLOOD_STATUSES = (200, 401, 403)


def flood_events(
    count: int, *, seed: int = 0, per_second: float = 300.0
) -> Iterator[dict[str, Any]]:
    """
    Yield ``count`` access events lazily, each with a new subject, address and fingerprint.

    A third are allowed, a third fail 401 and a third are denied 403, spread over several
    segments and countries, so every detector has to keep state for almost every event.
    Timestamps advance by ``1 / per_second`` seconds, so 1,000,000 events cover about an hour
    at the default rate and time windows alone cannot keep the state small.
    """
    rng = random.Random(seed)
    countries = tuple(COUNTRY_CENTROIDS)
    segments = tuple(SEGMENTS)
    step = 1.0 / per_second
    for index in range(count):
        when = DAY_START + index * step
        kind = index % 3
        reasons = _FLOOD_REASONS[kind]
        if index % 2:
            ip = str(ipaddress.IPv6Address(_FLOOD_IPV6_BASE + index))
        else:
            ip = str(ipaddress.IPv4Address(_FLOOD_IPV4_BASE + index))
        yield {
            "event": "access",
            "schema_version": "1",
            "timestamp": format_time(when),
            "event_id": _uuid7(when, rng),
            "request_id": f"flood-{index}",
            "decision": "deny" if reasons else "allow",
            "action": "deny" if reasons else "allow",
            "mode": "enforce",
            "status": _FLOOD_STATUSES[kind],
            "reasons": list(reasons),
            "segment": segments[index % len(segments)],
            "subject": None if kind == 1 else f"flood{index}@example.com",
            "issuer": None if kind == 1 else ISSUER,
            "credential_fingerprint": f"{index:016x}",
            "client_ip": ip,
            "peer_ip": PROXY_IP,
            "method": "GET",
            "scheme": "https",
            "protocol": "http",
            "host": HOST,
            "path": "/items",
            "user_agent": "flood/1.0",
            "latency_ms": 1.0,
            "decision_ms": 0.5,
            "verifiers": [],
            "facts": {"country": countries[index % len(countries)]},
        }
