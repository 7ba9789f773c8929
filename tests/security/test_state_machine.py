# SPDX-License-Identifier: Apache-2.0
"""
Attack class: mixed sequences of valid and hostile requests, explored by Hypothesis.

A rule-based state machine mints real tokens and grants, forges tokens the way the other
modules do (``alg: none``, HMAC keyed with the public key, tampered claims, a foreign key,
an embedded key, a wrong audience), revokes grants, and sends requests with path tricks,
spoofed forwarding and rewrite headers and tokens in the wrong place. The policy has a public
segment and three protected ones: scopes per method, a role plus an office network, and a role
that a grant may stand in for. After every request it checks that:

- an allow implies every requirement of the segment the app's router sees, per a model;
- a clean request (canonical path, token in one ``Authorization`` header) that meets the
  requirements is allowed, so the model cannot pass vacuously;
- no response is a 5xx, and each request produces exactly one access event;
- no event contains a token, a token's signature, or private key material.

The number of examples follows the Hypothesis profile of ``tests/conftest.py``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import event as note_event
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, rule

from zerotrust import (
    GrantBroker,
    GrantVerifier,
    JWTVerifier,
    MemoryGrantStore,
    MemorySink,
    NetworkVerifier,
    Segment,
    ZeroTrustMiddleware,
)
from zerotrust.grants import generate_signing_key
from zerotrust.testing import TokenIssuer, capture_events

from .support import AUDIENCE, Recorder, asgi_call, build_app, encode_json, encode_segment, sign_raw

ISSUER = TokenIssuer(algorithms=("RS256",))
FOREIGN_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
GRANT_KEY = generate_signing_key()
TRUSTED_PROXY = "192.0.2.1"
OFFICE_PREFIX = "10."
GRANT_HEADER = "x-zerotrust-grant"

SUBJECTS = ("alice", "bob", "root")
CANONICAL_PATHS = (
    "/",
    "/public/page",
    "/api",
    "/api/items",
    "/admin",
    "/admin/users",
    "/ops/deploy",
)
HOSTILE_PATHS = (
    "/public/../admin/users",
    "//admin/users",
    "/%61dmin/users",
    "/admin%2fusers",
    "/ADMIN/users",
    "/admin;x=1/users",
    "/api/%2e%2e/admin/users",
    "/ops/./deploy",
    "/api/%252e%252e/admin",
    "/admin/users%00",
)
METHODS = ("GET", "HEAD", "POST", "DELETE", "OPTIONS", "PROPFIND", "get")
PLACEMENTS = ("header", "lower-case-scheme", "duplicate", "query", "path", "cookie", "basic")
# Headers that some stacks believe; none of them may change a decision here.
DECOYS: tuple[tuple[str, str], ...] = (
    ("x-http-method-override", "GET"),
    ("x-original-url", "/public/page"),
    ("x-rewrite-url", "/admin/users"),
    ("x-real-ip", "10.1.1.1"),
    ("forwarded", "for=10.1.1.1"),
    ("x-forwarded-client-cert", "Hash=00;URI=spiffe://prod.example/admin"),
    ("x-zerotrust-subject", "root"),
)
FORWARDED_FOR = (None, "10.1.1.1", "203.0.113.5", "10.1.1.1, 203.0.113.5", "not-an-address")
PEERS = ("127.0.0.1", TRUSTED_PROXY, "10.9.9.9")


def private_key_marker(key: Any) -> str:
    """Return the last 32 base64 characters of a private key's PEM, which carry key material."""
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return "".join(pem.splitlines()[1:-1])[-32:]


KEY_MARKERS = (private_key_marker(ISSUER.private_keys["RS256"]), private_key_marker(GRANT_KEY))


@dataclass(frozen=True)
class TokenRecord:
    token: str
    subject: str
    scopes: frozenset[str]
    roles: frozenset[str]
    genuine: bool


@dataclass
class GrantRecord:
    token: str
    subject: str
    grant_id: str
    revoked: bool = False


@dataclass
class Outcome:
    status: int
    events: list[dict[str, Any]] = field(default_factory=list)


def forge(kind: str, base: TokenRecord) -> str:
    """Derive a token that must never verify from a real one, as an attacker would."""
    now = int(time.time())
    claims = {
        "iss": ISSUER.issuer,
        "sub": "root",
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 300,
        "scope": "read write",
        "roles": ["admin", "ops"],
    }
    if kind == "alg-none":
        return f"{encode_json({'alg': 'none', 'typ': 'JWT'})}.{encode_json(claims)}."
    if kind == "hmac-public-key":
        public_pem = (
            ISSUER.private_keys["RS256"]
            .public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        signing_input = f"{encode_json({'alg': 'HS256', 'kid': 'RS256-1'})}.{encode_json(claims)}"
        signature = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{encode_segment(signature)}"
    if kind == "tampered":
        header, _, rest = base.token.partition(".")
        signature = rest.partition(".")[2]
        return f"{header}.{encode_json(claims)}.{signature}"
    if kind == "foreign-key":
        issuer = TokenIssuer.__new__(TokenIssuer)
        issuer.private_keys = {"RS256": FOREIGN_KEY}
        return sign_raw(issuer, {"alg": "RS256", "kid": "RS256-1"}, claims)
    if kind == "embedded-jwk":
        from jwt.algorithms import RSAAlgorithm

        jwk = json.loads(RSAAlgorithm.to_jwk(FOREIGN_KEY.public_key()))
        issuer = TokenIssuer.__new__(TokenIssuer)
        issuer.private_keys = {"RS256": FOREIGN_KEY}
        return sign_raw(issuer, {"alg": "RS256", "kid": "evil", "jwk": jwk}, claims)
    if kind == "wrong-audience":
        return ISSUER.token("root", audience="other-api", scopes=["read", "write"], roles=["admin"])
    return sign_raw(ISSUER, {"alg": "RS256", "kid": "../../RS256-1"}, claims)


FORGERIES = (
    "alg-none",
    "hmac-public-key",
    "tampered",
    "foreign-key",
    "embedded-jwk",
    "wrong-audience",
    "kid-traversal",
)


class AttackMachine(RuleBasedStateMachine):
    tokens = Bundle("tokens")
    grants = Bundle("grants")

    def __init__(self) -> None:
        super().__init__()
        self.store = MemoryGrantStore()
        self.broker = GrantBroker(signing_key=GRANT_KEY, store=self.store)
        identity = JWTVerifier(
            issuer=ISSUER.issuer, audience=AUDIENCE, algorithms=["RS256"], keys=ISSUER.jwks()
        )
        grant_verifier = GrantVerifier(keys=self.broker.public_jwks(), store=self.store)
        self.policy = [
            Segment("public", paths=["/"], public=True),
            Segment(
                "api",
                paths=["/api/"],
                verifiers=[identity],
                scopes={"GET": ["read"], "*": ["write"]},
            ),
            Segment(
                "admin",
                paths=["/admin/"],
                verifiers=[identity, NetworkVerifier(allow=["10.0.0.0/8"])],
                roles=["admin"],
            ),
            Segment("ops", paths=["/ops/"], verifiers=[identity, grant_verifier], roles=["ops"]),
        ]
        self.recorder = Recorder()
        self.app = ZeroTrustMiddleware(
            build_app(self.recorder),
            policy=self.policy,
            trusted_proxies=[TRUSTED_PROXY],
            events=MemorySink(maxlen=10),
        )
        self.secrets: set[str] = set()
        self.grant_records: list[GrantRecord] = []

    # Credentials --------------------------------------------------------------------------------

    @initialize(target=tokens)
    def first_token(self) -> TokenRecord:
        return self.mint(
            subject="root", scopes=("read", "write"), roles=("admin", "ops"), expired=False
        )

    @rule(
        target=tokens,
        subject=st.sampled_from(SUBJECTS),
        scopes=st.sets(st.sampled_from(("read", "write"))),
        roles=st.sets(st.sampled_from(("admin", "ops", "viewer"))),
        expired=st.booleans(),
    )
    def mint(self, subject: str, scopes: Any, roles: Any, expired: bool) -> TokenRecord:
        lifetime = -120.0 if expired else 300.0
        token = ISSUER.token(
            subject,
            audience=AUDIENCE,
            scopes=sorted(scopes),
            roles=sorted(roles),
            lifetime=lifetime,
        )
        self.remember(token)
        return TokenRecord(token, subject, frozenset(scopes), frozenset(roles), not expired)

    @rule(target=tokens, kind=st.sampled_from(FORGERIES), base=tokens)
    def forge_token(self, kind: str, base: TokenRecord) -> TokenRecord:
        token = forge(kind, base)
        self.remember(token)
        return TokenRecord(
            token, "root", frozenset({"read", "write"}), frozenset({"admin", "ops"}), False
        )

    @rule(target=grants, subject=st.sampled_from(SUBJECTS))
    def mint_grant(self, subject: str) -> GrantRecord:
        issued = self.broker.mint(
            subject=subject,
            segment="ops",
            methods=["GET"],
            paths=["/ops/"],
            reason="deploy a fix",
            requested_by=subject,
        )
        self.remember(issued.token)
        record = GrantRecord(issued.token, subject, issued.grant.grant_id)
        self.grant_records.append(record)
        return record

    @rule(grant=grants)
    def revoke(self, grant: GrantRecord) -> None:
        if not grant.revoked:
            self.broker.revoke(grant.grant_id, revoked_by="security")
            grant.revoked = True

    def remember(self, token: str) -> None:
        self.secrets.add(token)
        signature = token.rpartition(".")[2]
        if len(signature) >= 16:
            self.secrets.add(signature)

    # Requests -----------------------------------------------------------------------------------

    @rule(
        method=st.sampled_from(("GET", "HEAD", "POST")),
        path=st.sampled_from(("/api/items", "/admin/users", "/ops/deploy")),
        token=tokens,
        grant=st.one_of(st.none(), grants),
        peer=st.sampled_from(PEERS),
        forwarded_for=st.sampled_from(FORWARDED_FOR[:4]),
        decoys=st.lists(st.sampled_from(DECOYS), max_size=2, unique=True),
    )
    def clean_request(
        self,
        method: str,
        path: str,
        token: TokenRecord,
        grant: GrantRecord | None,
        peer: str,
        forwarded_for: str | None,
        decoys: list[tuple[str, str]],
    ) -> None:
        """Send a well-formed request to a protected segment, so that allows happen too."""
        self.request(method, path, token, "header", grant, peer, forwarded_for, decoys)

    @rule(
        method=st.sampled_from(METHODS),
        path=st.sampled_from(CANONICAL_PATHS + HOSTILE_PATHS),
        token=st.one_of(st.none(), tokens),
        placement=st.sampled_from(PLACEMENTS),
        grant=st.one_of(st.none(), grants),
        peer=st.sampled_from(PEERS),
        forwarded_for=st.sampled_from(FORWARDED_FOR),
        decoys=st.lists(st.sampled_from(DECOYS), max_size=3, unique=True),
    )
    def request(
        self,
        method: str,
        path: str,
        token: TokenRecord | None,
        placement: str,
        grant: GrantRecord | None,
        peer: str,
        forwarded_for: str | None,
        decoys: list[tuple[str, str]],
    ) -> None:
        raw_path = path
        query = b""
        headers: list[tuple[bytes, bytes]] = [(b"host", b"app.test")]
        if token is not None:
            if placement in ("header", "lower-case-scheme", "duplicate"):
                scheme = "bearer" if placement == "lower-case-scheme" else "Bearer"
                headers.append((b"authorization", f"{scheme} {token.token}".encode()))
                if placement == "duplicate":
                    headers.append((b"authorization", f"Bearer {token.token}".encode()))
            elif placement == "query":
                query = f"access_token={token.token}".encode()
            elif placement == "path":
                raw_path = f"{path.rstrip('/')}/{token.token}"
            elif placement == "cookie":
                headers.append((b"cookie", f"access_token={token.token}".encode()))
            else:
                headers.append((b"authorization", f"Basic {token.token}".encode()))
        if grant is not None:
            headers.append((GRANT_HEADER.encode(), grant.token.encode()))
        if forwarded_for is not None:
            headers.append((b"x-forwarded-for", forwarded_for.encode()))
        headers += [(name.encode(), value.encode()) for name, value in decoys]

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": urllib.parse.unquote(raw_path),
            "raw_path": raw_path.encode(),
            "root_path": "",
            "query_string": query,
            "headers": headers,
            "client": (peer, 40000),
            "server": ("127.0.0.1", 8000),
        }
        self.recorder.clear()
        with capture_events() as events:
            sent = asyncio.run(asgi_call(self.app, scope))
        starts = [message for message in sent if message["type"] == "http.response.start"]

        assert 1 == len(starts)
        status = starts[0]["status"]
        assert status < 500
        access = [event for event in events if event["event"] == "access"]
        assert 1 == len(access)
        event = access[0]
        self.check_no_secrets(events)

        note_event(f"{event['segment']} {event['decision']}")
        client_ip = self.client_ip(peer, forwarded_for)
        met = self.requirements_met(event, method, token, placement, grant, client_ip)
        if event["decision"] == "allow":
            assert met, event
            self.check_verdicts(event)
        clean = (
            path in CANONICAL_PATHS
            and (token is None or placement in ("header", "lower-case-scheme"))
            and not (peer == TRUSTED_PROXY and forwarded_for == "not-an-address")
        )
        if clean and met:
            assert "allow" == event["decision"], event

    def client_ip(self, peer: str, forwarded_for: str | None) -> str:
        """Return the client address the model expects: the peer, unless the proxy names one."""
        if peer != TRUSTED_PROXY or forwarded_for is None:
            return peer
        return forwarded_for.split(",")[-1].strip()

    def requirements_met(
        self,
        event: dict[str, Any],
        method: str,
        token: TokenRecord | None,
        placement: str,
        grant: GrantRecord | None,
        client_ip: str,
    ) -> bool:
        """Decide, from the model alone, whether the event's segment may let the request in."""
        segment = event["segment"]
        if segment == "public":
            return True
        if segment is None or token is None or not token.genuine:
            return False
        if placement not in ("header", "lower-case-scheme"):
            return False
        # The middleware decides on the upper-cased method, as Django and Werkzeug route on it.
        method = method.upper()
        if segment == "api":
            needed = {"read"} if method in ("GET", "HEAD") else {"write"}
            return needed <= token.scopes
        if segment == "admin":
            return "admin" in token.roles and client_ip.startswith(OFFICE_PREFIX)
        if grant is not None:
            # A grant header is always judged: a bad one denies even a principal with the role.
            return (
                not grant.revoked and grant.subject == token.subject and method in ("GET", "HEAD")
            )
        return "ops" in token.roles

    def check_verdicts(self, event: dict[str, Any]) -> None:
        segment = next(s for s in self.policy if s.name == event["segment"])
        for verifier, record in zip(segment.verifiers, event["verifiers"], strict=True):
            assert record["result"] == "pass" or (
                record["result"] == "not_applicable" and not verifier.required
            )

    def check_no_secrets(self, events: list[dict[str, Any]]) -> None:
        rendered = json.dumps(events, default=str)
        for secret in self.secrets:
            assert secret not in rendered
        for marker in KEY_MARKERS:
            assert marker not in rendered

    @invariant()
    def admin_handler_only_when_allowed(self) -> None:
        # Requests run one at a time, so a handler call belongs to the last allowed request.
        assert len(self.recorder.admin) <= 1


# The example count comes from the active profile. Wall-clock deadlines are off because a loaded
# machine stretches them; the CPU cost of hostile input is checked in test_tokens.py instead.
AttackMachine.TestCase.settings = settings(stateful_step_count=12, deadline=None)
TestAttackMachine = AttackMachine.TestCase
