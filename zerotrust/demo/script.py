# SPDX-License-Identifier: Apache-2.0
"""The demo's scripted requests, each with the status and reason code the policy must produce."""

from __future__ import annotations

import base64
import datetime as dt
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..testing import TokenIssuer
from .app import (
    BURST_THRESHOLD,
    DEVICE_AUDIENCE,
    INTERNAL_PATH,
    OFFICE_TIME_ZONE,
    REPORT_PATH,
    STUFFING_ACCOUNTS,
)
from .workloads import DemoWorkloads, WorkloadCertificate

__all__ = [
    "AFTER_HOURS",
    "ALLOWED_ADDRESS",
    "ATTACK_ADDRESS",
    "FOREIGN_ADDRESS",
    "GRANT_DURATION",
    "IN_OFFICE_HOURS",
    "STUFFING_ADDRESS",
    "AwaitDetection",
    "GrantStep",
    "MintGrant",
    "Probe",
    "RevokeGrant",
    "ScriptStep",
    "build_script",
    "scripted_requests",
]

# A Wednesday in June: 10:30 is inside the workspace's office hours, 19:30 is after them.
IN_OFFICE_HOURS = dt.datetime(2024, 6, 12, 10, 30, tzinfo=OFFICE_TIME_ZONE)
AFTER_HOURS = dt.datetime(2024, 6, 12, 19, 30, tzinfo=OFFICE_TIME_ZONE)
# Public DNS resolvers. The geoip2fast 1.2.2 data places the first in DE and the second in US.
ALLOWED_ADDRESS = "194.25.0.60"
FOREIGN_ADDRESS = "8.8.8.8"
# Documentation ranges (RFC 5737): the attacker's addresses, forwarded by the loopback proxy.
ATTACK_ADDRESS = "203.0.113.66"
STUFFING_ADDRESS = "198.51.100.23"
# Seconds the reader's grant for the daily report lasts, unless it is revoked first.
GRANT_DURATION = 900.0


@dataclass(frozen=True, slots=True)
class Probe:
    """
    One scripted request and its expected outcome.

    Attributes:
        method: The HTTP method.
        target: The request target exactly as written on the wire.
        description: What the request tries, in a few words.
        token: The bearer token to send, or ``None`` for no ``Authorization`` header.
        expected_status: The HTTP status the middleware or the app must return.
        expected_reason: The first reason code of the access event; ``None`` for an allow.
        device_assertion: The device posture assertion to send in ``X-Device-Assertion``.
        forwarded_for: The client address to send in ``X-Forwarded-For``; without it, the
            client is the loopback address the request comes from.
        clock: The instant the office-hours check judges; ``None`` for `IN_OFFICE_HOURS`.
        expected_facts: Facts the access event must record with these values.
        sends_grant: Whether to send the token of the grant that the last `MintGrant` step
            minted, in the ``X-Zerotrust-Grant`` header. The runner then sets ``grant_token``
            and expects the access event to record the grant's id as the ``grant_id`` fact.
        grant_token: The grant token sent; ``None`` until the runner sets it.
        workload: The client certificate to forward in `CLIENT_CERTIFICATE_HEADER`, as a
            TLS-terminating proxy on loopback would.
        expected_subject: The subject the access event must record; ``None`` to skip the check.
    """

    method: str
    target: str
    description: str
    token: str | None
    expected_status: int
    expected_reason: str | None = None
    device_assertion: str | None = None
    forwarded_for: str | None = None
    clock: dt.datetime | None = None
    expected_facts: Mapping[str, Any] = field(default_factory=dict)
    sends_grant: bool = False
    grant_token: str | None = None
    workload: WorkloadCertificate | None = None
    expected_subject: str | None = None

    @property
    def expected_decision(self) -> str:
        return "allow" if self.expected_reason is None else "deny"


@dataclass(frozen=True, slots=True)
class MintGrant:
    """
    A step of the demo runner between two requests: mint a just-in-time grant.

    The runner calls `GrantBroker.mint` with these arguments. Its broker requires an approver
    other than the requester and the subject, so ``approver`` must be a third person.

    Attributes:
        description: What the step does, in a few words.
        subject: Who the grant is for.
        segment: The segment it applies to.
        methods: The HTTP methods it covers.
        paths: The path patterns it covers, inside the segment.
        reason: Why it is requested; recorded in every grant event.
        requested_by: Who requests it.
        approver: Who approves it.
        duration: Seconds it lasts.
    """

    description: str
    subject: str
    segment: str
    methods: tuple[str, ...]
    paths: tuple[str, ...]
    reason: str
    requested_by: str
    approver: str
    duration: float = GRANT_DURATION


@dataclass(frozen=True, slots=True)
class RevokeGrant:
    """
    A step of the demo runner between two requests: revoke the grant the last `MintGrant` minted.

    Attributes:
        description: What the step does, in a few words.
        revoked_by: Who revokes the grant.
        reason: Why; recorded in the ``grant_revoked`` event.
    """

    description: str
    revoked_by: str
    reason: str


@dataclass(frozen=True, slots=True)
class AwaitDetection:
    """
    A step of the demo runner between two requests: wait until the monitor reports anomalies.

    The monitor runs in the event delivery thread, so the runner flushes the emitter before the
    next request, within a time limit.

    Attributes:
        description: What the step waits for, in a few words.
        detectors: The names of the detectors that must have fired.
    """

    description: str
    detectors: tuple[str, ...]


GrantStep = MintGrant | RevokeGrant
ScriptStep = Probe | MintGrant | RevokeGrant | AwaitDetection


def build_script(
    issuer: TokenIssuer, device_agent: TokenIssuer, workloads: DemoWorkloads
) -> list[ScriptStep]:
    """
    Pair each scripted request with its expected outcome, with the grant steps in between.

    ``issuer`` mints the user tokens, ``device_agent`` the device posture assertions, and
    ``workloads`` contains the client certificates of the service-to-service requests.
    """
    reader = issuer.token("reader", scopes=["api:read"], alg="RS256")
    reader_ec = issuer.token("reader-ec", scopes=["api:read"], alg="ES256")
    writer = issuer.token("writer", scopes=["api:read", "api:write"], alg="ES256")
    admin = issuer.token("admin", scopes=["api:read"], roles=["admin"], alg="RS256")
    # Issued two hours ago with a one-hour lifetime: far outside the 30 s leeway.
    expired = issuer.token(
        "reader", scopes=["api:read"], alg="RS256", now=time.time() - 7200, lifetime=3600
    )
    other_audience = issuer.token("reader", audience="billing", scopes=["api:read"], alg="RS256")
    unknown_kid = issuer.token("reader", scopes=["api:read"], alg="RS256", kid="RS256-retired")

    unsigned = _unsigned(reader)
    altered = _alter_signature(reader)
    edited = _add_admin_role(reader)

    return [
        # Allowed: valid tokens with the scopes and roles each segment requires.
        Probe("GET", "/healthz", "public health check", None, 200),
        Probe("GET", "/api/items", "reader, RS256 token", reader, 200),
        Probe("GET", "/api/items", "reader, ES256 token", reader_ec, 200),
        Probe("POST", "/api/items", "writer creates an item", writer, 201),
        Probe("GET", "/admin/users", "admin on the admin area", admin, 200),
        # Denied with 401: the token is missing or not valid.
        Probe("GET", "/api/items", "no token", None, 401, "token_missing"),
        Probe("GET", "/api/items", "expired token", expired, 401, "token_expired"),
        Probe("GET", "/api/items", "audience 'billing'", other_audience, 401, "invalid_audience"),
        Probe("GET", "/api/items", "unsigned, alg: none", unsigned, 401, "algorithm_not_allowed"),
        Probe("GET", "/api/items", "signature altered", altered, 401, "invalid_signature"),
        Probe("GET", "/admin/users", "claims edited: admin", edited, 401, "invalid_signature"),
        Probe("GET", "/api/items", "unpublished key id", unknown_kid, 401, "unknown_kid"),
        # Denied with 403: a valid identity without the required scope or role.
        Probe("POST", "/api/items", "reader writes", reader, 403, "insufficient_scope"),
        Probe("GET", "/admin/users", "reader on admin area", reader, 403, "insufficient_role"),
        Probe("GET", "/secret", "route outside every segment", admin, 403, "no_segment"),
        # Denied with 403: ambiguous paths, sent byte for byte by the raw client.
        Probe("GET", "/api/../admin/users", "dot-dot segment", reader, 403, "path_not_normalized"),
        Probe("GET", "//admin/users", "doubled slash", reader, 403, "path_not_normalized"),
        Probe("GET", "/api/%2e%2e/admin/users", "encoded dots", reader, 403, "path_not_normalized"),
        Probe("GET", "/api%2Fitems", "encoded slash", reader, 403, "encoded_slash"),
        # Denied with 403: the admin area accepts loopback clients only.
        Probe(
            "GET",
            "/admin/users",
            "admin from outside loopback",
            admin,
            403,
            "network_not_allowed",
            forwarded_for=FOREIGN_ADDRESS,
        ),
        *_workspace_probes(issuer, device_agent),
        *_internal_probes(workloads),
        *_grant_steps(reader, writer),
        *_attack_steps(issuer, reader),
    ]


def scripted_requests(script: Sequence[ScriptStep]) -> list[Probe]:
    """Return the requests of a script in order, without the grant steps."""
    return [step for step in script if isinstance(step, Probe)]


def _workspace_probes(issuer: TokenIssuer, device_agent: TokenIssuer) -> list[Probe]:
    """
    Script the workspace: every check passing, then each context check failing on its own.

    Each request changes one thing from the first: the device assertion, the client address or
    the clock. Device assertion times are real, because the device verifier judges them by the
    request's arrival time; only the office-hours check reads the demo clock.
    """
    now = time.time()
    alice = issuer.token("alice", scopes=["workspace:read"], alg="ES256")
    managed = _device_assertion(device_agent, "mac-0042", "alice", now=now)
    unmanaged = _device_assertion(device_agent, "mac-0042", "alice", now=now, managed=False)
    # Collected two days ago, so older than the policy's max_posture_age of one hour.
    stale = _device_assertion(
        device_agent, "mac-0042", "alice", now=now, checked_at=now - 2 * 86400
    )
    bobs_device = _device_assertion(device_agent, "mac-0099", "bob", now=now)

    def workspace(
        description: str,
        status: int,
        reason: str | None = None,
        *,
        device_assertion: str | None = managed,
        forwarded_for: str = ALLOWED_ADDRESS,
        clock: dt.datetime = IN_OFFICE_HOURS,
        expected_facts: Mapping[str, Any] | None = None,
    ) -> Probe:
        return Probe(
            "GET",
            "/workspace/documents",
            description,
            alice,
            status,
            reason,
            device_assertion=device_assertion,
            forwarded_for=forwarded_for,
            clock=clock,
            expected_facts=expected_facts or {},
        )

    return [
        # Allowed: the user, a managed device with fresh posture, an allowed country, on time.
        workspace(
            "alice, managed device, DE, office hours",
            200,
            expected_facts={
                "device_id": "mac-0042",
                "device_managed": True,
                "country": "DE",
                "time_window": "mon-fri 08:00-18:00",
            },
        ),
        # Denied with 403: one context check fails, and the event records why.
        workspace("no device assertion", 403, "device_credential_missing", device_assertion=None),
        workspace("unmanaged device", 403, "device_not_managed", device_assertion=unmanaged),
        workspace("posture two days old", 403, "device_posture_stale", device_assertion=stale),
        workspace("bob's device", 403, "subject_binding_mismatch", device_assertion=bobs_device),
        workspace(
            "client in the US",
            403,
            "country_not_allowed",
            forwarded_for=FOREIGN_ADDRESS,
            expected_facts={"country": "US"},
        ),
        workspace(
            "after office hours",
            403,
            "outside_time_window",
            clock=AFTER_HOURS,
            expected_facts={"local_time": AFTER_HOURS.isoformat()},
        ),
    ]


def _internal_probes(workloads: DemoWorkloads) -> list[Probe]:
    """
    Script the service-to-service segment, which only the app tier's workload may call.

    The requests carry no bearer token: the client certificate names the caller. The
    certificate's validity period is judged at the request's real arrival time.
    """
    web = workloads.web

    def internal(
        description: str,
        status: int,
        reason: str | None = None,
        *,
        workload: WorkloadCertificate | None,
        expected_subject: str | None = None,
        expected_facts: Mapping[str, Any] | None = None,
    ) -> Probe:
        return Probe(
            "GET",
            INTERNAL_PATH,
            description,
            None,
            status,
            reason,
            workload=workload,
            expected_subject=expected_subject,
            expected_facts=expected_facts or {},
        )

    return [
        # Allowed: the app tier's workload, named by the SPIFFE ID in its certificate.
        internal(
            "app tier calls the database tier",
            200,
            workload=web,
            expected_subject=web.spiffe_id,
            expected_facts={"workload_id": web.spiffe_id},
        ),
        # Denied with 403: a known workload that is not on the allow-list.
        internal(
            "batch job calls the database tier",
            403,
            "workload_not_allowed",
            workload=workloads.report,
            expected_subject=workloads.report.spiffe_id,
        ),
        # Denied with 401: no certificate, or one outside its validity period.
        internal("no client certificate", 401, "client_certificate_missing", workload=None),
        internal(
            "app tier, certificate expired",
            401,
            "certificate_expired",
            workload=workloads.expired,
        ),
    ]


def _grant_steps(reader: str, writer: str) -> list[ScriptStep]:
    """
    Script a just-in-time grant for the reader, from the first denial to the revocation.

    The reader has no admin role, so the daily report in the admin area is closed to them until
    the runner mints a grant for it. The grant opens that one path for GET requests only, for
    the reader only, and only until it is revoked.
    """
    return [
        Probe("GET", REPORT_PATH, "reader, no grant yet", reader, 403, "insufficient_role"),
        MintGrant(
            "runner mints a grant for the reader, approved by admin",
            subject="reader",
            segment="admin",
            methods=("GET",),
            paths=(REPORT_PATH,),
            reason="read the daily report for the access review",
            requested_by="reader",
            approver="admin",
        ),
        Probe("GET", REPORT_PATH, "reader with the grant", reader, 200, sends_grant=True),
        Probe(
            "GET",
            "/admin/users",
            "reader's grant on a path it does not cover",
            reader,
            403,
            "grant_path_not_covered",
            sends_grant=True,
        ),
        Probe(
            "POST",
            REPORT_PATH,
            "reader's grant with a method it does not cover",
            reader,
            403,
            "grant_method_not_covered",
            sends_grant=True,
        ),
        Probe(
            "GET",
            REPORT_PATH,
            "writer presents the reader's grant",
            writer,
            403,
            "subject_binding_mismatch",
            sends_grant=True,
        ),
        RevokeGrant(
            "runner revokes the reader's grant",
            revoked_by="admin",
            reason="access review finished",
        ),
        Probe(
            "GET",
            REPORT_PATH,
            "reader with the revoked grant",
            reader,
            403,
            "grant_revoked",
            sends_grant=True,
        ),
    ]


def _attack_steps(issuer: TokenIssuer, reader: str) -> list[ScriptStep]:
    """
    Script an attack from two outside addresses, its detection, and what it changes.

    First carol's stolen token, which may only read, tries to write more than
    `BURST_THRESHOLD` times from `ATTACK_ADDRESS`. Then `STUFFING_ADDRESS` sends forged tokens
    for `STUFFING_ACCOUNTS` accounts. Once the monitor has flagged both, the API denies carol
    from the attacker's address and anyone from the stuffing address. Carol and the reader
    still get in from loopback: a flag limited to the attacking addresses cannot lock them out.
    """
    carol = issuer.token("carol", scopes=["api:read"], alg="ES256")
    burst = [
        Probe(
            "POST",
            "/api/items",
            f"carol's stolen token writes, attempt {attempt}",
            carol,
            403,
            "insufficient_scope",
            forwarded_for=ATTACK_ADDRESS,
        )
        for attempt in range(1, BURST_THRESHOLD + 2)
    ]
    stuffing = [
        Probe(
            "GET",
            "/api/items",
            f"forged token for user-{number:02d}",
            _alter_signature(issuer.token(f"user-{number:02d}", scopes=["api:read"], alg="RS256")),
            401,
            "invalid_signature",
            forwarded_for=STUFFING_ADDRESS,
        )
        for number in range(1, STUFFING_ACCOUNTS + 1)
    ]
    return [
        *burst,
        *stuffing,
        AwaitDetection(
            "wait for the monitor to flag the burst and the stuffing",
            detectors=("denied_burst", "credential_stuffing"),
        ),
        Probe(
            "GET",
            "/api/items",
            "carol reads from the attacker's address",
            carol,
            403,
            "risk_flagged_subject",
            forwarded_for=ATTACK_ADDRESS,
        ),
        Probe("GET", "/api/items", "carol reads from loopback", carol, 200),
        Probe(
            "GET",
            "/api/items",
            "reader from the stuffing address",
            reader,
            403,
            "risk_flagged_client_ip",
            forwarded_for=STUFFING_ADDRESS,
        ),
        Probe("GET", "/api/items", "reader from loopback", reader, 200),
    ]


def _device_assertion(
    device_agent: TokenIssuer,
    device_id: str,
    user: str,
    *,
    now: float,
    managed: bool = True,
    checked_at: float | None = None,
) -> str:
    """Mint a posture assertion for a macOS laptop with disk encryption and a screen lock."""
    return device_agent.token(
        device_id,
        audience=DEVICE_AUDIENCE,
        alg="ES256",
        now=now,
        user=user,
        managed=managed,
        os="macos",
        os_version="14.4.1",
        disk_encrypted=True,
        screen_lock=True,
        posture_checked_at=int(now if checked_at is None else checked_at),
    )


def _split(token: str) -> list[str]:
    return token.split(".")


def _encode_part(value: dict[str, object]) -> str:
    raw = json.dumps(value, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _decode_part(part: str) -> dict[str, object]:
    padded = part + "=" * (-len(part) % 4)
    value: dict[str, object] = json.loads(base64.urlsafe_b64decode(padded))
    return value


def _unsigned(token: str) -> str:
    """Return the token's claims under an ``alg: none`` header with an empty signature."""
    _, payload, _ = _split(token)
    return f"{_encode_part({'alg': 'none', 'typ': 'JWT'})}.{payload}."


def _alter_signature(token: str) -> str:
    # Change a character in the middle: the last one may only carry padding bits.
    header, payload, signature = _split(token)
    middle = len(signature) // 2
    replacement = "A" if signature[middle] != "A" else "B"
    return f"{header}.{payload}.{signature[:middle]}{replacement}{signature[middle + 1 :]}"


def _add_admin_role(token: str) -> str:
    """Return the token with ``roles: ["admin"]`` added to its claims and the old signature."""
    header, payload, signature = _split(token)
    claims = _decode_part(payload)
    claims["roles"] = ["admin"]
    return f"{header}.{_encode_part(claims)}.{signature}"
