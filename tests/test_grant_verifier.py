# SPDX-License-Identifier: Apache-2.0
"""Tests of the grant verifier: reason codes, properties, revocation and the middleware."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.datastructures import Headers

from zerotrust import JWTVerifier, Segment, ZeroTrustMiddleware
from zerotrust.engine import Decision, VerdictRecord
from zerotrust.events import EventEmitter, MemorySink
from zerotrust.exceptions import ConfigurationError, InsecureConfigurationWarning
from zerotrust.grants import (
    GrantBroker,
    GrantStore,
    GrantVerifier,
    IssuedGrant,
    MemoryGrantStore,
    SQLiteGrantStore,
    generate_signing_key,
)
from zerotrust.grants.tokens import TOKEN_TYPE, grant_audience
from zerotrust.request import AccessRequest
from zerotrust.testing import TokenIssuer, capture_events
from zerotrust.verifiers.base import Verdict, VerificationContext

NOW = 1_800_000_000.0
HEADER = "x-zerotrust-grant"
ADMIN = VerificationContext(Segment("admin", paths=["/admin/"], public=True))
SIGNING_KEY = generate_signing_key()


def make_request(
    token: str | None = None,
    *,
    method: str = "GET",
    path: str = "/admin/users",
    at: float = NOW,
    headers: list[tuple[str, str]] | None = None,
) -> AccessRequest:
    raw = [(name.encode(), value.encode()) for name, value in headers or []]
    if token is not None:
        raw.append((HEADER.encode(), token.encode()))
    return AccessRequest(
        method=method,
        path=path,
        raw_path=path,
        host="app.test",
        headers=Headers(raw=raw),
        client_ip=None,
        peer_ip=None,
        request_id="test-request",
        time=at,
    )


def make_broker(store: GrantStore, clock: Any = lambda: NOW, **options: Any) -> GrantBroker:
    return GrantBroker(signing_key=SIGNING_KEY, store=store, clock=clock, **options)


def mint(broker: GrantBroker, **overrides: Any) -> IssuedGrant:
    arguments: dict[str, Any] = {
        "subject": "bob",
        "segment": "admin",
        "methods": ["GET"],
        "paths": ["/admin/"],
        "reason": "INC-42",
        "requested_by": "bob",
    }
    arguments.update(overrides)
    return broker.mint(**arguments)


async def judge(verifier: GrantVerifier, request: AccessRequest) -> Verdict:
    """Judge a request as the engine does: the cached path first, then verify."""
    verdict = verifier.verify_cached(request, ADMIN)
    if verdict is None:
        verdict = await verifier.verify(request, ADMIN)
    return verdict


async def judge_allowed(verifier: GrantVerifier, request: AccessRequest) -> Verdict:
    """Judge a request, then report it allowed, as the engine does once every check passed."""
    verdict = await judge(verifier, request)
    record = VerdictRecord(verifier.name, verifier.kind, verdict.outcome, None, None, 0.0, verdict)
    decision = Decision(True, 200, (), ADMIN.segment, "enforce", None, (record,))
    verifier.after_decision(request, decision)
    return verdict


@pytest.fixture(name="store")
def fixture_store() -> MemoryGrantStore:
    return MemoryGrantStore(clock=lambda: NOW)


@pytest.fixture(name="broker")
def fixture_broker(store: MemoryGrantStore) -> GrantBroker:
    return make_broker(store)


@pytest.fixture(name="verifier")
def fixture_verifier(broker: GrantBroker, store: MemoryGrantStore) -> GrantVerifier:
    return GrantVerifier(keys=broker.public_jwks(), store=store, mode="required")


class TestGrantVerifierReasons:
    async def test_passes(self, verifier: GrantVerifier, broker: GrantBroker) -> None:
        """A valid grant passes, elevates, binds the subject and names the grant."""
        issued = mint(broker)

        verdict = await judge(verifier, make_request(issued.token))

        assert "pass" == verdict.outcome
        assert verdict.elevates is True
        assert "bob" == verdict.bound_subject
        assert issued.grant.grant_id == verdict.facts["grant_id"]
        assert issued.grant.expires_at == verdict.facts["grant_expires_at"]

    async def test_missing_required(self, verifier: GrantVerifier) -> None:
        """In required mode, a request without a grant fails with grant_missing."""
        verdict = await judge(verifier, make_request())

        assert ("fail", "grant_missing") == (verdict.outcome, verdict.reason)

    async def test_missing_alternative(self, broker: GrantBroker, store: GrantStore) -> None:
        """In alternative mode, a request without a grant is not applicable."""
        verifier = GrantVerifier(keys=broker.public_jwks(), store=store)

        verdict = await judge(verifier, make_request())

        assert "not_applicable" == verdict.outcome
        assert verifier.required is False

    async def test_alternative_still_judges(self, broker: GrantBroker, store: GrantStore) -> None:
        """In alternative mode, a grant that is present but bad still fails."""
        verifier = GrantVerifier(keys=broker.public_jwks(), store=store)
        issued = mint(broker)

        verdict = await judge(verifier, make_request(issued.token, method="POST"))

        assert "grant_method_not_covered" == verdict.reason

    @pytest.mark.parametrize(
        "token", ["", "garbage", "a.b", "a.b.c", "eyJhbGciOiJub25lIn0.e30.", "x" * 5000]
    )
    async def test_malformed(self, verifier: GrantVerifier, token: str) -> None:
        """Text that is not a grant token fails with grant_invalid."""
        verdict = await judge(verifier, make_request(token))

        assert "grant_invalid" == verdict.reason

    async def test_two_headers(self, verifier: GrantVerifier, broker: GrantBroker) -> None:
        """Two grant headers fail, rather than one being picked."""
        token = mint(broker).token

        verdict = await judge(verifier, make_request(token, headers=[(HEADER, token)]))

        assert "grant_invalid" == verdict.reason

    async def test_other_key(self, verifier: GrantVerifier, store: GrantStore) -> None:
        """A grant signed by another broker's key fails."""
        other = GrantBroker(signing_key=generate_signing_key(), store=store, clock=lambda: NOW)

        verdict = await judge(verifier, make_request(mint(other).token))

        assert "grant_invalid" == verdict.reason

    async def test_tampered(self, verifier: GrantVerifier, broker: GrantBroker) -> None:
        """A grant whose payload was changed fails the signature check."""
        header, _, signature = mint(broker).token.split(".")
        claims = jwt.api_jws.base64url_encode(b'{"sub":"mallory"}').decode()

        verdict = await judge(verifier, make_request(f"{header}.{claims}.{signature}"))

        assert "grant_invalid" == verdict.reason

    async def test_wrong_issuer(self, broker: GrantBroker, store: GrantStore) -> None:
        """A grant from another issuer name fails."""
        verifier = GrantVerifier(
            keys=broker.public_jwks(), store=store, issuer="other", mode="required"
        )

        verdict = await judge(verifier, make_request(mint(broker).token))

        assert "grant_invalid" == verdict.reason

    async def test_untyped_token(self, verifier: GrantVerifier, broker: GrantBroker) -> None:
        """A JWT signed by the grant key but without the grant typ fails."""
        claims = {
            "iss": "zerotrust-grants",
            "sub": "bob",
            "aud": grant_audience("admin"),
            "jti": "1" * 32,
            "iat": NOW,
            "nbf": NOW,
            "exp": NOW + 60,
            "segment": "admin",
            "methods": ["GET"],
            "paths": ["/admin/"],
        }
        token = jwt.encode(claims, SIGNING_KEY, algorithm="EdDSA", headers={"kid": broker.key_id})

        verdict = await judge(verifier, make_request(token))

        assert "grant_invalid" == verdict.reason

    async def test_access_token_rejected(
        self, verifier: GrantVerifier, issuer: TokenIssuer
    ) -> None:
        """An ordinary access token in the grant header fails."""
        verdict = await judge(verifier, make_request(issuer.token("bob", alg="EdDSA")))

        assert "grant_invalid" == verdict.reason

    async def test_wrong_audience(self, verifier: GrantVerifier, broker: GrantBroker) -> None:
        """A signed grant whose aud does not match its segment claim fails."""
        claims = {
            "iss": "zerotrust-grants",
            "sub": "bob",
            "aud": "admin",
            "jti": "1" * 32,
            "iat": NOW,
            "nbf": NOW,
            "exp": NOW + 60,
            "segment": "admin",
            "methods": ["GET"],
            "paths": ["/admin/"],
        }
        headers = {"kid": broker.key_id, "typ": TOKEN_TYPE}
        token = jwt.encode(claims, SIGNING_KEY, algorithm="EdDSA", headers=headers)

        verdict = await judge(verifier, make_request(token))

        assert "grant_invalid" == verdict.reason

    async def test_expired(self, verifier: GrantVerifier, broker: GrantBroker) -> None:
        """A grant used after its expiry plus leeway fails with grant_expired."""
        issued = mint(broker, duration=60)

        verdict = await judge(verifier, make_request(issued.token, at=NOW + 90))

        assert "grant_expired" == verdict.reason
        assert issued.grant.grant_id == verdict.facts["grant_id"]

    async def test_not_yet_valid(self, verifier: GrantVerifier, broker: GrantBroker) -> None:
        """A grant used before its start minus leeway fails with grant_not_yet_valid."""
        issued = mint(broker, start=NOW + 600)

        verdict = await judge(verifier, make_request(issued.token, at=NOW + 569))

        assert "grant_not_yet_valid" == verdict.reason

    async def test_wrong_segment(self, verifier: GrantVerifier, broker: GrantBroker) -> None:
        """A grant for another segment fails with grant_wrong_segment."""
        issued = mint(broker, segment="billing")

        verdict = await judge(verifier, make_request(issued.token))

        assert "grant_wrong_segment" == verdict.reason

    async def test_method_not_covered(self, verifier: GrantVerifier, broker: GrantBroker) -> None:
        """A method the grant does not list fails with grant_method_not_covered."""
        issued = mint(broker, methods=["GET"])

        verdict = await judge(verifier, make_request(issued.token, method="DELETE"))

        assert "grant_method_not_covered" == verdict.reason

    async def test_head_is_get(self, verifier: GrantVerifier, broker: GrantBroker) -> None:
        """HEAD is covered by a grant for GET."""
        issued = mint(broker, methods=["GET"])

        verdict = await judge(verifier, make_request(issued.token, method="HEAD"))

        assert "pass" == verdict.outcome

    async def test_get_is_not_head(self, verifier: GrantVerifier, broker: GrantBroker) -> None:
        """A grant for HEAD alone does not cover GET."""
        issued = mint(broker, methods=["HEAD"])

        verdict = await judge(verifier, make_request(issued.token, method="GET"))

        assert "grant_method_not_covered" == verdict.reason

    async def test_path_not_covered(self, verifier: GrantVerifier, broker: GrantBroker) -> None:
        """A path the grant does not list fails with grant_path_not_covered."""
        issued = mint(broker, paths=["/admin/users/*"])

        verdict = await judge(verifier, make_request(issued.token, path="/admin/settings"))

        assert "grant_path_not_covered" == verdict.reason

    async def test_revoked(self, verifier: GrantVerifier, broker: GrantBroker) -> None:
        """A revoked grant fails with grant_revoked, even after an earlier pass."""
        issued = mint(broker)
        assert "pass" == (await judge(verifier, make_request(issued.token))).outcome

        broker.revoke(issued.grant.grant_id, revoked_by="alice")

        verdict = await judge(verifier, make_request(issued.token))
        assert "grant_revoked" == verdict.reason

    async def test_unknown(self, broker: GrantBroker) -> None:
        """A signed grant that the verifier's store does not know fails with grant_unknown."""
        verifier = GrantVerifier(
            keys=broker.public_jwks(), store=MemoryGrantStore(), mode="required"
        )

        verdict = await judge(verifier, make_request(mint(broker).token))

        assert "grant_unknown" == verdict.reason

    async def test_sqlite_store(self, tmp_path: Path) -> None:
        """With SQLite, verify_cached defers to verify, which checks revocation in a thread."""
        store = SQLiteGrantStore(tmp_path / "grants.db")
        broker = make_broker(store)
        verifier = GrantVerifier(keys=broker.public_jwks(), store=store, mode="required")
        issued = mint(broker)
        request = make_request(issued.token)

        assert verifier.verify_cached(request, ADMIN) is None
        assert "pass" == (await verifier.verify(request, ADMIN)).outcome
        broker.revoke(issued.grant.grant_id, revoked_by="alice")
        assert "grant_revoked" == (await verifier.verify(request, ADMIN)).reason
        store.close()

    async def test_store_unavailable(self, tmp_path: Path) -> None:
        """A store that fails gives grant_store_unavailable, never a pass."""
        store = SQLiteGrantStore(tmp_path / "grants.db")
        broker = make_broker(store)
        verifier = GrantVerifier(keys=broker.public_jwks(), store=store, mode="required")
        issued = mint(broker)
        store.close()

        verdict = await verifier.verify(make_request(issued.token), ADMIN)

        assert "grant_store_unavailable" == verdict.reason

    async def test_es256(self, store: GrantStore) -> None:
        """An ES256 broker's grants verify with its published keys."""
        broker = GrantBroker(
            signing_key=generate_signing_key("ES256"), store=store, clock=lambda: NOW
        )
        verifier = GrantVerifier(keys=broker.public_jwks(), store=store, mode="required")

        verdict = await judge(verifier, make_request(mint(broker).token))

        assert "pass" == verdict.outcome

    async def test_es256_not_allowed(self, store: GrantStore) -> None:
        """A grant whose algorithm is not in the allow-list fails."""
        broker = GrantBroker(
            signing_key=generate_signing_key("ES256"), store=store, clock=lambda: NOW
        )
        verifier = GrantVerifier(
            keys=[broker.public_jwks()["keys"][0], make_broker(store).public_jwks()["keys"][0]],
            store=store,
            algorithms=("EdDSA",),
            mode="required",
        )

        verdict = await judge(verifier, make_request(mint(broker).token))

        assert "grant_invalid" == verdict.reason


class TestGrantVerifierLeeway:
    @pytest.mark.parametrize(
        ("offset", "outcome"),
        [
            # Start at NOW, expiry at NOW + 60, leeway 30.
            (-31, "grant_not_yet_valid"),
            (-30, "pass"),
            (0, "pass"),
            (89, "pass"),
            (90, "grant_expired"),
        ],
    )
    async def test_skew(
        self, broker: GrantBroker, store: GrantStore, offset: float, outcome: str
    ) -> None:
        """Clock skew up to the leeway is tolerated at both ends of the window."""
        verifier = GrantVerifier(keys=broker.public_jwks(), store=store, leeway=30)
        issued = mint(broker, duration=60)

        verdict = await judge(verifier, make_request(issued.token, at=NOW + offset))

        assert outcome == (verdict.reason or verdict.outcome)

    async def test_zero_leeway(self, broker: GrantBroker, store: GrantStore) -> None:
        """With no leeway, the expiry second itself is too late."""
        verifier = GrantVerifier(keys=broker.public_jwks(), store=store, leeway=0)
        issued = mint(broker, duration=60)

        assert "pass" == (await judge(verifier, make_request(issued.token, at=NOW + 59.9))).outcome
        assert (
            "grant_expired"
            == (await judge(verifier, make_request(issued.token, at=NOW + 60))).reason
        )


class TestGrantVerifierConfiguration:
    def test_alternative_required(self, broker: GrantBroker, store: GrantStore) -> None:
        """Alternative mode with required=True raises."""
        with pytest.raises(ConfigurationError, match="required=False"):
            GrantVerifier(keys=broker.public_jwks(), store=store, required=True)

    def test_required_mode_default(self, broker: GrantBroker, store: GrantStore) -> None:
        """Required mode makes the verifier required by default."""
        verifier = GrantVerifier(keys=broker.public_jwks(), store=store, mode="required")

        assert verifier.required is True

    @pytest.mark.parametrize(
        "options",
        [
            {"mode": "optional"},
            {"leeway": 301},
            {"leeway": -1},
            {"algorithms": ("HS256",)},
            {"algorithms": ()},
            {"header": "bad header"},
            {"issuer": ""},
            {"use_event_interval": -1},
            {"max_token_bytes": 10},
            {"store": object()},
        ],
    )
    def test_invalid(self, broker: GrantBroker, store: GrantStore, options: dict[str, Any]) -> None:
        """Invalid options raise ConfigurationError."""
        arguments: dict[str, Any] = {"keys": broker.public_jwks(), "store": store}
        arguments.update(options)

        with pytest.raises(ConfigurationError):
            GrantVerifier(**arguments)

    def test_private_key_rejected(self, store: GrantStore) -> None:
        """The verifier refuses the private signing key."""
        with pytest.raises(ConfigurationError):
            GrantVerifier(keys=SIGNING_KEY, store=store)

    def test_wide_leeway_warns(self, broker: GrantBroker, store: GrantStore) -> None:
        """A leeway over a minute warns."""
        with pytest.warns(InsecureConfigurationWarning):
            GrantVerifier(keys=broker.public_jwks(), store=store, leeway=120)


class TestGrantUsedEvents:
    @pytest.fixture(name="emitter")
    def fixture_emitter(self) -> Iterator[EventEmitter]:
        emitter = EventEmitter([MemorySink()])
        yield emitter
        emitter.close()

    async def test_first_use(
        self, broker: GrantBroker, store: GrantStore, emitter: EventEmitter
    ) -> None:
        """The first use of a grant emits grant_used with the request, never the token."""
        verifier = GrantVerifier(keys=broker.public_jwks(), store=store, events=emitter)
        issued = mint(broker)

        with capture_events() as events:
            await judge_allowed(verifier, make_request(issued.token))

        (event,) = events
        assert "grant_used" == event["event"]
        assert issued.grant.grant_id == event["grant_id"]
        assert "bob" == event["subject"]
        assert "/admin/users" == event["path"]
        assert "test-request" == event["request_id"]
        assert 1 == event["uses"]
        assert issued.token not in repr(event)

    async def test_rate_limited(
        self, broker: GrantBroker, store: GrantStore, emitter: EventEmitter
    ) -> None:
        """Uses within the interval are counted into the next grant_used event."""
        verifier = GrantVerifier(
            keys=broker.public_jwks(), store=store, events=emitter, use_event_interval=60
        )
        issued = mint(broker, duration=600)

        with capture_events() as events:
            for offset in (0, 10, 20, 30, 61):
                await judge_allowed(verifier, make_request(issued.token, at=NOW + offset))

        assert [1, 4] == [event["uses"] for event in events]

    async def test_every_use(
        self, broker: GrantBroker, store: GrantStore, emitter: EventEmitter
    ) -> None:
        """With an interval of 0, every use emits an event."""
        verifier = GrantVerifier(
            keys=broker.public_jwks(), store=store, events=emitter, use_event_interval=0
        )
        issued = mint(broker)

        with capture_events() as events:
            for _ in range(3):
                await judge_allowed(verifier, make_request(issued.token))

        assert 3 == len(events)

    async def test_no_event_on_failure(
        self, broker: GrantBroker, store: GrantStore, emitter: EventEmitter
    ) -> None:
        """A denied use emits no grant_used event."""
        verifier = GrantVerifier(keys=broker.public_jwks(), store=store, events=emitter)
        issued = mint(broker)

        with capture_events() as events:
            await judge(verifier, make_request(issued.token, method="POST"))

        assert [] == events


# Path segments that collide on purpose, so generated paths often hit and miss the patterns.
_WORDS = ("admin", "users", "7", "x")
_PATTERN_PARTS = st.lists(st.sampled_from((*_WORDS, "*")), min_size=0, max_size=3)
_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE")


@st.composite
def grant_patterns(draw: st.DrawFn) -> str:
    parts = draw(_PATTERN_PARTS)
    ending = draw(st.sampled_from(("", "/", "/**")))
    if not parts and ending == "":
        return "/"
    return "/" + "/".join(parts) + ending if parts else ending or "/"


@st.composite
def request_paths(draw: st.DrawFn) -> str:
    parts = draw(st.lists(st.sampled_from(_WORDS), min_size=0, max_size=4))
    trailing = draw(st.booleans())
    return "/" + "/".join(parts) + ("/" if trailing and parts else "")


def covers(pattern: str, path: str) -> bool:
    """Match a path against a grant pattern by comparing segments, independent of PathPattern."""
    if "*" in pattern:
        wanted = pattern.split("/")[1:]
        given_parts = path.split("/")[1:]
        if wanted[-1] == "**":
            head = wanted[:-1]
            return len(given_parts) >= len(head) and all(
                (want == "*" and part != "") or want == part
                for want, part in zip(head, given_parts, strict=False)
            )
        return len(wanted) == len(given_parts) and all(
            (want == "*" and part != "") or want == part
            for want, part in zip(wanted, given_parts, strict=True)
        )
    if pattern == "/":
        return True
    if pattern.endswith("/"):
        return path.startswith(pattern) or path == pattern[:-1]
    return path == pattern


class TestGrantVerifierProperties:
    @settings(max_examples=200, deadline=None)
    @given(
        start=st.integers(min_value=0, max_value=3600),
        duration=st.integers(min_value=1, max_value=3600),
        offset=st.floats(min_value=-7200, max_value=14400, allow_nan=False),
    )
    async def test_window(self, start: int, duration: int, offset: float) -> None:
        """A grant passes exactly between its start and its expiry, with no leeway."""
        store = MemoryGrantStore(clock=lambda: NOW)
        broker = make_broker(store)
        verifier = GrantVerifier(keys=broker.public_jwks(), store=store, leeway=0)
        issued = mint(broker, start=NOW + start, duration=duration)
        at = NOW + offset

        verdict = await judge(verifier, make_request(issued.token, at=at))

        inside = NOW + start <= at < NOW + start + duration
        assert inside == (verdict.outcome == "pass")
        if at < NOW + start:
            assert "grant_not_yet_valid" == verdict.reason
        if at >= NOW + start + duration:
            assert "grant_expired" == verdict.reason

    @settings(max_examples=300, deadline=None)
    @given(
        patterns=st.lists(grant_patterns(), min_size=1, max_size=3),
        methods=st.lists(st.sampled_from(_METHODS), min_size=1, max_size=3),
        path=request_paths(),
        method=st.sampled_from(_METHODS),
    )
    async def test_scope(
        self, patterns: list[str], methods: list[str], path: str, method: str
    ) -> None:
        """A grant allows a request exactly when it lists its method and a matching path."""
        store = MemoryGrantStore(clock=lambda: NOW)
        broker = make_broker(store)
        verifier = GrantVerifier(keys=broker.public_jwks(), store=store)
        issued = mint(broker, methods=methods, paths=patterns)

        verdict = await judge(verifier, make_request(issued.token, method=method, path=path))

        method_covered = method in methods or (method == "HEAD" and "GET" in methods)
        path_covered = any(covers(pattern, path) for pattern in patterns)
        assert (method_covered and path_covered) == (verdict.outcome == "pass")
        if not method_covered:
            assert "grant_method_not_covered" == verdict.reason
        elif not path_covered:
            assert "grant_path_not_covered" == verdict.reason


def admin_app(
    issuer: TokenIssuer,
    broker: GrantBroker,
    store: GrantStore,
    sink: MemorySink,
    events: EventEmitter | None = None,
) -> ZeroTrustMiddleware:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    identity = JWTVerifier(
        issuer=issuer.issuer, audience="api", algorithms=["ES256"], keys=issuer.jwks()
    )
    grants = GrantVerifier(
        keys=broker.public_jwks(), store=store, events=events, use_event_interval=0
    )
    admin = Segment("admin", paths=["/admin/"], verifiers=[identity, grants], roles=["admin"])
    return ZeroTrustMiddleware(app, policy=[admin], events=sink)


class TestGrantMiddleware:
    async def test_grant_lifecycle(self, issuer: TokenIssuer) -> None:
        """A user without the role is denied, allowed with a grant, and denied once revoked."""
        store = MemoryGrantStore()
        broker = GrantBroker(signing_key=SIGNING_KEY, store=store)
        emitter = EventEmitter([MemorySink()])
        app = admin_app(issuer, broker, store, MemorySink(), emitter)
        bob = {"authorization": f"Bearer {issuer.token('bob', alg='ES256')}"}
        root = {"authorization": f"Bearer {issuer.token('root', alg='ES256', roles=['admin'])}"}
        transport = httpx.ASGITransport(app=app)

        async with httpx.AsyncClient(transport=transport, base_url="http://app.test") as client:
            with capture_events() as events:
                assert 200 == (await client.get("/admin/users", headers=root)).status_code
                assert 403 == (await client.get("/admin/users", headers=bob)).status_code
                assert ["insufficient_role"] == events[-1]["reasons"]

                issued = broker.mint(
                    subject="bob",
                    segment="admin",
                    methods=["GET"],
                    paths=["/admin/users"],
                    reason="INC-42",
                    requested_by="bob",
                )
                granted = {**bob, HEADER: issued.token}
                assert 200 == (await client.get("/admin/users", headers=granted)).status_code
                assert issued.grant.grant_id == events[-1]["facts"]["grant_id"]
                assert "grant_used" == events[-2]["event"]
                assert 403 == (await client.post("/admin/users", headers=granted)).status_code
                assert 403 == (await client.get("/admin/other", headers=granted)).status_code

                broker.revoke(issued.grant.grant_id, revoked_by="alice")
                assert 403 == (await client.get("/admin/users", headers=granted)).status_code
                assert ["grant_revoked", "insufficient_role"] == events[-1]["reasons"]

        emitter.close()
        access = [event for event in events if event["event"] == "access"]
        assert 6 == len(access)
        for event in events:
            assert issued.token not in repr(event)

    async def test_other_subject(self, issuer: TokenIssuer) -> None:
        """Bob's grant presented by alice is denied with subject_binding_mismatch."""
        store = MemoryGrantStore()
        broker = GrantBroker(signing_key=SIGNING_KEY, store=store)
        app = admin_app(issuer, broker, store, MemorySink())
        issued = mint_live(broker)
        headers = {
            "authorization": f"Bearer {issuer.token('alice', alg='ES256')}",
            HEADER: issued.token,
        }
        transport = httpx.ASGITransport(app=app)

        async with httpx.AsyncClient(transport=transport, base_url="http://app.test") as client:
            with capture_events() as events:
                response = await client.get("/admin/users", headers=headers)

        assert 403 == response.status_code
        assert "subject_binding_mismatch" in events[-1]["reasons"]

    async def test_grant_alone_is_not_identity(self, issuer: TokenIssuer) -> None:
        """A grant without an access token gets 401."""
        store = MemoryGrantStore()
        broker = GrantBroker(signing_key=SIGNING_KEY, store=store)
        app = admin_app(issuer, broker, store, MemorySink())
        transport = httpx.ASGITransport(app=app)

        async with httpx.AsyncClient(transport=transport, base_url="http://app.test") as client:
            response = await client.get("/admin/users", headers={HEADER: mint_live(broker).token})

        assert 401 == response.status_code

    @pytest.mark.parametrize("kind", ["memory", "sqlite"])
    async def test_revocation_under_load(
        self, issuer: TokenIssuer, tmp_path: Path, kind: str
    ) -> None:
        """Every request that starts after revoke() returns is denied."""
        store: GrantStore = (
            MemoryGrantStore() if kind == "memory" else SQLiteGrantStore(tmp_path / "grants.db")
        )
        broker = GrantBroker(signing_key=SIGNING_KEY, store=store)
        app = admin_app(issuer, broker, store, MemorySink())
        issued = mint_live(broker)
        headers = {
            "authorization": f"Bearer {issuer.token('bob', alg='ES256')}",
            HEADER: issued.token,
        }
        revoked = asyncio.Event()
        first_allowed = asyncio.Event()
        transport = httpx.ASGITransport(app=app)

        async with httpx.AsyncClient(transport=transport, base_url="http://app.test") as client:

            async def call(index: int) -> tuple[bool, int]:
                await asyncio.sleep(index * 0.0005)
                after = revoked.is_set()
                response = await client.get("/admin/users", headers=headers)
                if response.status_code == 200:
                    first_allowed.set()
                return after, response.status_code

            async def revoke() -> None:
                # Revoke while requests are in flight, after at least one was allowed, so the
                # test sees both sides however slow the machine is.
                await asyncio.wait_for(first_allowed.wait(), timeout=30)
                await asyncio.to_thread(broker.revoke, issued.grant.grant_id, revoked_by="alice")
                revoked.set()

            results, _ = await asyncio.wait_for(
                asyncio.gather(asyncio.gather(*(call(i) for i in range(200))), revoke()),
                timeout=60,
            )
            # On a fast machine every request of the burst may start before the revocation
            # ends, so a few more requests make sure the "after" side is never empty.
            results.extend([await call(0) for _ in range(5)])

        after_statuses = {status for after, status in results if after}
        before_statuses = {status for after, status in results if not after}
        assert {403} == after_statuses
        assert 200 in before_statuses
        store.close()


def mint_live(broker: GrantBroker) -> IssuedGrant:
    """Mint a grant with the real clock, as the middleware judges by wall time."""
    return broker.mint(
        subject="bob",
        segment="admin",
        methods=["GET"],
        paths=["/admin/"],
        reason="INC-42",
        requested_by="bob",
    )


class TestGrantUseAudit:
    async def test_no_use_recorded_for_denied_request(self, issuer: TokenIssuer) -> None:
        """A grant presented by another subject is denied and records no grant_used event."""
        store = MemoryGrantStore()
        broker = GrantBroker(signing_key=SIGNING_KEY, store=store)
        emitter = EventEmitter([MemorySink()])
        app = admin_app(issuer, broker, store, MemorySink(), events=emitter)
        issued = mint_live(broker)
        headers = {
            "authorization": f"Bearer {issuer.token('mallory', alg='ES256')}",
            HEADER: issued.token,
        }
        transport = httpx.ASGITransport(app=app)

        with capture_events() as events:
            async with httpx.AsyncClient(transport=transport, base_url="http://app.test") as client:
                response = await client.get("/admin/users", headers=headers)

        assert 403 == response.status_code
        assert [] == [event for event in events if event["event"] == "grant_used"]
        emitter.close()
