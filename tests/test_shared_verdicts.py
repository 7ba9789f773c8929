# SPDX-License-Identifier: Apache-2.0
"""Verdicts that verifiers reuse across requests, and the checks that still run on every one."""

from __future__ import annotations

import ipaddress
import time
from typing import Any

import jwt
import pytest
from starlette.datastructures import Headers

from zerotrust import DeviceVerifier, GeoVerifier, Segment, VerificationContext
from zerotrust.geo import GeoBackend, GeoResult
from zerotrust.grants import GrantBroker, GrantVerifier, MemoryGrantStore, generate_signing_key
from zerotrust.monitor import RiskSignal, RiskSignals, RiskVerifier
from zerotrust.request import AccessRequest, IPAddress, TrustedProxies
from zerotrust.testing import TokenIssuer

CONTEXT = VerificationContext(Segment("api", paths=["/api/"], public=True))
CLIENT = "81.2.69.142"


def make_request(
    headers: list[tuple[str, str]] | None = None,
    *,
    client: str | None = CLIENT,
    at: float | None = None,
) -> AccessRequest:
    raw = [(name.encode(), value.encode()) for name, value in headers or []]
    return AccessRequest(
        method="GET",
        path="/api/items",
        raw_path="/api/items",
        host="api.test",
        headers=Headers(raw=raw),
        client_ip=ipaddress.ip_address(client) if client is not None else None,
        peer_ip=None,
        request_id="test-request",
        time=time.time() if at is None else at,
    )


class FlakyBackend(GeoBackend):
    """A backend whose first lookup raises and whose later lookups find GB."""

    provides_country = True

    def __init__(self) -> None:
        self.lookups = 0

    def lookup(self, address: IPAddress) -> GeoResult | None:
        self.lookups += 1
        if self.lookups == 1:
            raise OSError("database file truncated")
        return GeoResult(country="GB")


class TestDevice:
    def test_verdict_reused_for_same_assertion(self) -> None:
        issuer = TokenIssuer(issuer="https://mdm.test", algorithms=("ES256",))
        verifier = DeviceVerifier(
            issuer=issuer.issuer, audience="api", algorithms=["ES256"], keys=issuer.jwks()
        )
        token = issuer.token("laptop-1", alg="ES256", user="alice", managed=True)
        request = make_request([("x-device-assertion", token)])

        first = verifier.verify_cached(request, CONTEXT)
        second = verifier.verify_cached(request, CONTEXT)

        assert first is not None
        assert "pass" == first.outcome
        assert first is second
        with pytest.raises(TypeError):
            first.facts["device_id"] = "other"  # type: ignore[index]

    def test_expiry_checked_after_reuse(self) -> None:
        issuer = TokenIssuer(issuer="https://mdm.test", algorithms=("ES256",))
        verifier = DeviceVerifier(
            issuer=issuer.issuer,
            audience="api",
            algorithms=["ES256"],
            keys=issuer.jwks(),
            leeway=0,
        )
        token = issuer.token("laptop-1", alg="ES256", lifetime=1, user="alice", managed=True)
        expires = jwt.decode(token, options={"verify_signature": False})["exp"]

        passed = verifier.verify_cached(make_request([("x-device-assertion", token)]), CONTEXT)
        time.sleep(max(0.0, expires - time.time()) + 0.1)
        late = verifier.verify_cached(make_request([("x-device-assertion", token)]), CONTEXT)

        assert passed is not None
        assert "pass" == passed.outcome
        assert late is not None
        assert "device_assertion_expired" == late.reason

    def test_no_reuse_with_posture_age(self) -> None:
        issuer = TokenIssuer(issuer="https://mdm.test", algorithms=("ES256",))
        verifier = DeviceVerifier(
            issuer=issuer.issuer,
            audience="api",
            algorithms=["ES256"],
            keys=issuer.jwks(),
            max_posture_age=60,
        )
        checked = time.time()
        token = issuer.token(
            "laptop-1", alg="ES256", user="alice", managed=True, posture_checked_at=checked
        )

        fresh = verifier.verify_cached(
            make_request([("x-device-assertion", token)], at=checked + 1), CONTEXT
        )
        stale = verifier.verify_cached(
            make_request([("x-device-assertion", token)], at=checked + 120), CONTEXT
        )

        assert fresh is not None
        assert "pass" == fresh.outcome
        assert stale is not None
        assert "device_posture_stale" == stale.reason


class TestGeo:
    def test_verdict_reused_per_address(self) -> None:
        verifier = GeoVerifier(allow_countries=["GB"], backend=FlakyBackend())
        verifier.check(ipaddress.ip_address("81.2.69.1"))  # the failing first lookup

        first = verifier.check(ipaddress.ip_address(CLIENT))
        second = verifier.check(ipaddress.ip_address(CLIENT))

        assert "pass" == first.outcome
        assert first is second
        with pytest.raises(TypeError):
            first.facts["country"] = "FR"  # type: ignore[index]

    def test_failed_lookup_not_reused(self) -> None:
        backend = FlakyBackend()
        verifier = GeoVerifier(allow_countries=["GB"], backend=backend)

        failed = verifier.check(ipaddress.ip_address(CLIENT))
        retried = verifier.check(ipaddress.ip_address(CLIENT))

        assert "geo_lookup_failed" == failed.reason
        assert "pass" == retried.outcome
        assert 2 == backend.lookups

    def test_verdicts_bounded_by_cache_size(self) -> None:
        verifier = GeoVerifier(allow_countries=["GB"], backend=FlakyBackend(), cache_size=4)
        for host in range(1, 20):
            verifier.check(ipaddress.ip_address(f"81.2.69.{host}"))

        assert len(verifier._verdicts or {}) <= 4


class TestGrant:
    def test_revocation_checked_after_reuse(self) -> None:
        store = MemoryGrantStore()
        broker = GrantBroker(signing_key=generate_signing_key(), store=store)
        verifier = GrantVerifier(keys=broker.public_jwks(), store=store)
        issued = broker.mint(
            subject="alice",
            segment="api",
            methods=["GET"],
            paths=["/api/"],
            reason="test",
            requested_by="alice",
            duration=600,
        )
        request = make_request([("x-zerotrust-grant", issued.token)])

        first = verifier.verify_cached(request, CONTEXT)
        second = verifier.verify_cached(request, CONTEXT)
        broker.revoke(issued.grant.grant_id, revoked_by="bob")
        revoked = verifier.verify_cached(request, CONTEXT)

        assert first is not None
        assert "pass" == first.outcome
        assert first is second
        with pytest.raises(TypeError):
            first.facts["grant_id"] = "other"  # type: ignore[index]
        assert revoked is not None
        assert "grant_revoked" == revoked.reason


class TestRisk:
    def test_signal_seen_after_earlier_pass(self) -> None:
        signals = RiskSignals()
        verifier = RiskVerifier(signals)
        issuer = TokenIssuer()
        request = make_request([("authorization", f"Bearer {issuer.token('alice')}")])

        passed = verifier.verify_cached(request, CONTEXT)
        now = time.time()
        signals.raise_signal(
            RiskSignal("client_ip", CLIENT, "burst", "denied_burst", now, now + 600)
        )
        denied = verifier.verify_cached(request, CONTEXT)

        assert passed is not None
        assert "pass" == passed.outcome
        assert denied is not None
        assert "risk_flagged_client_ip" == denied.reason


class TestTrustedProxies:
    @pytest.mark.parametrize(
        ("address", "trusted"),
        [
            ("10.0.0.7", True),
            ("10.1.0.7", False),
            ("::ffff:10.0.0.8", True),
            ("2001:db8::1", False),
        ],
    )
    def test_membership_repeated(self, address: str, trusted: bool) -> None:
        proxies = TrustedProxies(["10.0.0.0/16"])
        parsed: Any = ipaddress.ip_address(address)

        assert trusted is (parsed in proxies)
        assert trusted is (parsed in proxies)

    def test_membership_beyond_bound(self) -> None:
        proxies = TrustedProxies(["10.0.0.0/16"])
        addresses = [ipaddress.ip_address(f"10.{n // 256}.{n % 256}.1") for n in range(5000)]

        found = [address in proxies for address in addresses]

        assert [address.packed[1] == 0 for address in addresses] == found
        assert len(proxies._trusted) <= 4096
