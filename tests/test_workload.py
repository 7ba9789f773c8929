# SPDX-License-Identifier: Apache-2.0
"""Tests for WorkloadVerifier: SPIFFE ID syntax, allow-lists, reason codes and the middleware."""

from __future__ import annotations

import asyncio
import datetime
import time
import urllib.parse
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from tests.test_certificates import HOUR, IssuedCertificate, WorkloadCA, make_request
from zerotrust import Engine, Policy, Segment, ZeroTrustMiddleware, get_access
from zerotrust.events import MemorySink
from zerotrust.exceptions import ConfigurationError
from zerotrust.request import AccessRequest
from zerotrust.testing import capture_events
from zerotrust.verifiers.base import Principal, Verdict, VerificationContext
from zerotrust.verifiers.workload import WorkloadVerifier, check_spiffe_id

WEB = "spiffe://prod.example/ns/app/sa/web"
BATCH = "spiffe://prod.example/ns/batch/sa/worker"
PAYMENTS = "spiffe://prod.example/ns/payments/sa/api"
PARTNER = "spiffe://partner.example/billing"


@pytest.fixture(name="authority", scope="module")
def fixture_authority() -> WorkloadCA:
    return WorkloadCA()


@pytest.fixture(name="web", scope="module")
def fixture_web(authority: WorkloadCA) -> IssuedCertificate:
    return authority.issue(WEB)


def context() -> VerificationContext:
    segment = Segment("db", paths=["/db/*"], verifiers=[WorkloadVerifier(allowed_ids=[WEB])])
    return VerificationContext(segment)


def judge(verifier: WorkloadVerifier, request: AccessRequest) -> Verdict:
    return verifier.verify_cached(request, context())


# SPIFFE ID syntax -------------------------------------------------------------------------------


class TestCheckSpiffeId:
    @pytest.mark.parametrize(
        "value",
        [
            WEB,
            "spiffe://example.org/a",
            "spiffe://my_domain-1.example/A.b_c-D/9",
            "spiffe://td/" + "a" * (2048 - len("spiffe://td/")),
        ],
    )
    def test_valid(self, value: str) -> None:
        """Well-formed workload IDs have no problem."""
        assert check_spiffe_id(value) is None

    @pytest.mark.parametrize(
        "value",
        [
            # Scheme
            pytest.param("https://prod.example/web", id="https scheme"),
            pytest.param("SPIFFE://prod.example/web", id="upper-case scheme"),
            pytest.param("spiffe:/prod.example/web", id="one slash"),
            # Trust domain
            pytest.param("spiffe:///web", id="empty trust domain"),
            pytest.param("spiffe://Prod.example/web", id="upper-case trust domain"),
            pytest.param("spiffe://prod.example:8443/web", id="port"),
            pytest.param("spiffe://user@prod.example/web", id="user info"),
            pytest.param("spiffe://" + "a" * 256 + "/web", id="trust domain too long"),
            # Path
            pytest.param("spiffe://prod.example", id="no path"),
            pytest.param("spiffe://prod.example/", id="root path"),
            pytest.param("spiffe://prod.example/web/", id="trailing slash"),
            pytest.param("spiffe://prod.example//web", id="empty segment"),
            pytest.param("spiffe://prod.example/./web", id="dot segment"),
            pytest.param("spiffe://prod.example/ns/../web", id="dot-dot segment"),
            pytest.param("spiffe://prod.example/web?x=1", id="query"),
            pytest.param("spiffe://prod.example/web#x", id="fragment"),
            pytest.param("spiffe://prod.example/w%2Fb", id="percent-encoding"),
            pytest.param("spiffe://prod.example/wéb", id="non-ASCII"),
            pytest.param("spiffe://td/" + "a" * (2049 - len("spiffe://td/")), id="too long"),
        ],
    )
    def test_invalid(self, value: str) -> None:
        """Each syntax rule of the SPIFFE ID standard is enforced."""
        assert check_spiffe_id(value) is not None


# Configuration ----------------------------------------------------------------------------------


class TestWorkloadVerifierConfiguration:
    @pytest.mark.parametrize(
        ("options", "parameter"),
        [
            pytest.param({}, "allowed_ids", id="nothing allowed"),
            pytest.param({"allowed_ids": ["spiffe://prod.example"]}, "allowed_ids", id="no path"),
            pytest.param({"allowed_ids": ["https://x/y"]}, "allowed_ids", id="not spiffe"),
            pytest.param({"allowed_ids": ["spiffe://p/a/*/b"]}, "allowed_ids", id="inner star"),
            pytest.param({"allowed_ids": [""]}, "allowed_ids", id="empty entry"),
            pytest.param({"allowed_ids": [7]}, "allowed_ids", id="not a string"),
            pytest.param({"trust_domains": ["spiffe://prod.example"]}, "trust_domains", id="uri"),
            pytest.param({"trust_domains": ["Prod.example"]}, "trust_domains", id="upper-case"),
            pytest.param(
                {"allowed_ids": [WEB], "proxy_format": "der"}, "proxy_format", id="format"
            ),
            pytest.param(
                {"allowed_ids": [WEB], "proxy_header": "x bad"}, "proxy_header", id="header"
            ),
        ],
    )
    def test_invalid(self, options: dict[str, Any], parameter: str) -> None:
        """Invalid configuration raises ConfigurationError naming the parameter."""
        with pytest.raises(ConfigurationError) as error:
            WorkloadVerifier(**options)

        assert parameter == error.value.parameter

    def test_single_string(self) -> None:
        """A single ID or trust domain may be given as a string."""
        verifier = WorkloadVerifier(allowed_ids=WEB, trust_domains="partner.example")

        assert frozenset({WEB}) == verifier.allowed_ids
        assert frozenset({"partner.example"}) == verifier.trust_domains

    def test_kind(self) -> None:
        """The verifier is an identity verifier unless identity=False."""
        assert "identity" == WorkloadVerifier(allowed_ids=[WEB]).kind
        assert "context" == WorkloadVerifier(allowed_ids=[WEB], identity=False).kind

    def test_header_name_lower_case(self) -> None:
        """The proxy header name is stored in lower case."""
        verifier = WorkloadVerifier(allowed_ids=[WEB], proxy_header="X-SSL-Client-Cert")

        assert "x-ssl-client-cert" == verifier.proxy_header


# Decisions --------------------------------------------------------------------------------------


class TestWorkloadVerifier:
    @pytest.mark.parametrize(
        ("options", "spiffe_id"),
        [
            pytest.param({"allowed_ids": [WEB]}, WEB, id="exact id"),
            pytest.param({"trust_domains": ["partner.example"]}, PARTNER, id="trust domain"),
            pytest.param(
                {"allowed_ids": ["spiffe://prod.example/ns/payments/*"]}, PAYMENTS, id="prefix"
            ),
            pytest.param({"allowed_ids": ["spiffe://prod.example/*"]}, BATCH, id="domain prefix"),
            pytest.param(
                {"allowed_ids": [WEB], "trust_domains": ["partner.example"]}, PARTNER, id="either"
            ),
        ],
    )
    def test_allowed(self, authority: WorkloadCA, options: dict[str, Any], spiffe_id: str) -> None:
        """An ID matching an exact entry, a prefix or a trust domain passes."""
        issued = authority.issue(spiffe_id)

        verdict = judge(WorkloadVerifier(**options), make_request(chain=(issued.pem,)))

        assert "pass" == verdict.outcome

    @pytest.mark.parametrize(
        ("options", "spiffe_id"),
        [
            pytest.param({"allowed_ids": [WEB]}, BATCH, id="other id"),
            pytest.param({"allowed_ids": [WEB]}, WEB + "/extra", id="longer id"),
            pytest.param(
                {"allowed_ids": ["spiffe://prod.example/ns/payments/*"]},
                "spiffe://prod.example/ns/payments-evil/sa/api",
                id="prefix without slash",
            ),
            pytest.param(
                {"allowed_ids": ["spiffe://prod.example/ns/payments/*"]},
                "spiffe://prod.example/ns/payments",
                id="prefix itself",
            ),
            pytest.param({"trust_domains": ["prod.example"]}, PARTNER, id="other domain"),
            pytest.param(
                {"trust_domains": ["prod.example"]},
                "spiffe://prod.example.evil/web",
                id="domain suffix",
            ),
        ],
    )
    def test_not_allowed(
        self, authority: WorkloadCA, options: dict[str, Any], spiffe_id: str
    ) -> None:
        """An ID outside every allow-list fails with workload_not_allowed."""
        issued = authority.issue(spiffe_id)

        verdict = judge(WorkloadVerifier(**options), make_request(chain=(issued.pem,)))

        assert "workload_not_allowed" == verdict.reason

    def test_principal(self, web: IssuedCertificate) -> None:
        """The principal's subject is the SPIFFE ID and its issuer the trust domain."""
        certificate_request = make_request(chain=(web.pem,))
        verifier = WorkloadVerifier(allowed_ids=[WEB])

        verdict = judge(verifier, certificate_request)

        assert isinstance(verdict.principal, Principal)
        assert WEB == verdict.principal.subject
        assert "prod.example" == verdict.principal.issuer
        assert 16 == len(verdict.principal.credential_fingerprint or "")
        assert verdict.principal.expires_at is not None

    def test_facts(self, web: IssuedCertificate) -> None:
        """The workload ID and the certificate source are recorded as facts."""
        verdict = judge(WorkloadVerifier(allowed_ids=[WEB]), make_request(chain=(web.pem,)))

        assert {"workload_id": WEB, "client_certificate_source": "tls"} == dict(verdict.facts)

    def test_context_mode(self, web: IssuedCertificate) -> None:
        """With identity=False the verifier passes with facts and no principal."""
        verifier = WorkloadVerifier(allowed_ids=[WEB], identity=False)

        verdict = judge(verifier, make_request(chain=(web.pem,)))

        assert verdict.principal is None
        assert WEB == verdict.facts["workload_id"]
        assert 16 == len(verdict.facts["credential_fingerprint"])

    def test_proxy_header(self, web: IssuedCertificate) -> None:
        """A certificate forwarded by a trusted proxy identifies the workload."""
        header = ("x-ssl-client-cert", urllib.parse.quote(web.pem, safe=""))
        request = make_request(headers=[header], trusted=True)
        verifier = WorkloadVerifier(allowed_ids=[WEB], proxy_header="x-ssl-client-cert")

        verdict = judge(verifier, request)

        assert "pass" == verdict.outcome
        assert "proxy" == verdict.facts["client_certificate_source"]

    def test_xfcc_header(self, web: IssuedCertificate) -> None:
        """A certificate forwarded by Envoy in x-forwarded-client-cert identifies the workload."""
        value = f'Hash=abc;Cert="{urllib.parse.quote(web.pem, safe="")}";URI={WEB}'
        request = make_request(headers=[("x-forwarded-client-cert", value)], trusted=True)
        verifier = WorkloadVerifier(
            allowed_ids=[WEB], proxy_header="x-forwarded-client-cert", proxy_format="xfcc"
        )

        assert "pass" == judge(verifier, request).outcome

    async def test_verify(self, web: IssuedCertificate) -> None:
        """The awaitable verify returns the same verdict as verify_cached."""
        verifier = WorkloadVerifier(allowed_ids=[WEB])
        request = make_request(chain=(web.pem,))

        assert judge(verifier, request) == await verifier.verify(request, context())


class TestWorkloadVerifierReasons:
    @pytest.mark.parametrize(
        ("uris", "reason"),
        [
            pytest.param((), "spiffe_id_missing", id="no SAN"),
            pytest.param(("https://web.prod.example/",), "spiffe_id_missing", id="https URI"),
            pytest.param((WEB, BATCH), "multiple_spiffe_ids", id="two ids"),
            pytest.param(("spiffe://prod.example/a/../web",), "spiffe_id_invalid", id="dots"),
            pytest.param(("SPIFFE://prod.example/web",), "spiffe_id_invalid", id="upper scheme"),
            pytest.param(("spiffe://prod.example",), "spiffe_id_invalid", id="no path"),
            pytest.param((BATCH,), "workload_not_allowed", id="not allowed"),
        ],
    )
    def test_certificate_content(
        self, authority: WorkloadCA, uris: tuple[str, ...], reason: str
    ) -> None:
        """Each problem with the certificate's SPIFFE IDs has its own reason code."""
        issued = authority.issue(*uris)

        verdict = judge(WorkloadVerifier(allowed_ids=[WEB]), make_request(chain=(issued.pem,)))

        assert "fail" == verdict.outcome
        assert reason == verdict.reason
        assert 16 == len(verdict.facts["credential_fingerprint"])

    def test_other_uri_sans_ignored(self, authority: WorkloadCA) -> None:
        """URI SANs with other schemes beside the one SPIFFE ID are ignored."""
        issued = authority.issue("https://web.prod.example/", WEB)

        verdict = judge(WorkloadVerifier(allowed_ids=[WEB]), make_request(chain=(issued.pem,)))

        assert "pass" == verdict.outcome

    def test_missing(self) -> None:
        """A request without a client certificate fails with client_certificate_missing."""
        verdict = judge(WorkloadVerifier(allowed_ids=[WEB]), make_request())

        assert "client_certificate_missing" == verdict.reason

    def test_malformed(self) -> None:
        """An unparsable certificate in the TLS chain fails closed."""
        verdict = judge(WorkloadVerifier(allowed_ids=[WEB]), make_request(chain=("junk",)))

        assert "malformed_client_certificate" == verdict.reason

    def test_untrusted_peer(self, web: IssuedCertificate) -> None:
        """A certificate header from a peer that is not a trusted proxy fails the request."""
        header = ("x-ssl-client-cert", urllib.parse.quote(web.pem, safe=""))
        verifier = WorkloadVerifier(allowed_ids=[WEB], proxy_header="x-ssl-client-cert")

        verdict = judge(verifier, make_request(headers=[header], trusted=False))

        assert "client_certificate_from_untrusted_peer" == verdict.reason

    @pytest.mark.parametrize(
        ("start", "end", "reason"),
        [
            pytest.param(-3 * HOUR, -HOUR, "certificate_expired", id="expired"),
            pytest.param(HOUR, 3 * HOUR, "certificate_not_yet_valid", id="not yet valid"),
        ],
    )
    def test_validity(
        self,
        authority: WorkloadCA,
        start: datetime.timedelta,
        end: datetime.timedelta,
        reason: str,
    ) -> None:
        """A certificate outside its validity period fails, even with an allowed ID."""
        now = datetime.datetime.now(datetime.UTC)
        issued = authority.issue(WEB, not_before=now + start, not_after=now + end)

        verdict = judge(WorkloadVerifier(allowed_ids=[WEB]), make_request(chain=(issued.pem,)))

        assert reason == verdict.reason


class SlowWorkloadVerifier(WorkloadVerifier):
    """A workload verifier whose verdict needs slow I/O, such as a revocation lookup."""

    def verify_cached(self, request: AccessRequest, context: VerificationContext) -> None:  # type: ignore[override]
        return None

    async def verify(self, request: AccessRequest, context: VerificationContext) -> Verdict:
        await asyncio.sleep(5)
        return super().verify_cached(request, context)


class TestWorkloadVerifierTimeout:
    async def test_timeout(self, web: IssuedCertificate) -> None:
        """A workload verifier slower than its timeout denies with verifier_timeout."""
        verifier = SlowWorkloadVerifier(allowed_ids=[WEB], timeout=0.05)
        engine = Engine(Policy([Segment("db", paths=["/db/*"], verifiers=[verifier])]))
        started = time.monotonic()

        decision = await engine.decide(make_request(chain=(web.pem,)))

        assert ("verifier_timeout",) == decision.reasons
        assert 401 == decision.status
        assert time.monotonic() - started < 2


# Through the middleware -------------------------------------------------------------------------


async def whoami(request: Request) -> JSONResponse:
    access = get_access(request)
    return JSONResponse({"subject": access.subject if access is not None else None})


class WithTLSChain:
    """Put a fixed client certificate chain into the ASGI tls extension, as a TLS server does."""

    def __init__(self, app: ASGIApp, chain: list[str]) -> None:
        self.app = app
        self.chain = chain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.chain:
            scope["extensions"] = {
                **(scope.get("extensions") or {}),
                "tls": {"client_cert_chain": list(self.chain), "tls_version": 0x0304},
            }
        await self.app(scope, receive, send)


def protected_app(verifier: WorkloadVerifier, chain: list[str], **options: Any) -> ASGIApp:
    app = Starlette(routes=[Route("/db/query", whoami)])
    middleware = ZeroTrustMiddleware(
        app,
        policy=[Segment("db", paths=["/db/*"], verifiers=[verifier])],
        events=MemorySink(),
        **options,
    )
    return WithTLSChain(middleware, chain)


async def fetch(app: ASGIApp, headers: dict[str, str] | None = None) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="https://db.test") as client:
        return await client.get("/db/query", headers=headers)


class TestWorkloadMiddleware:
    async def test_allowed(self, web: IssuedCertificate) -> None:
        """An allowed workload reaches the app, which gets the SPIFFE ID as the subject."""
        app = protected_app(WorkloadVerifier(allowed_ids=[WEB]), [web.pem])

        with capture_events() as events:
            response = await fetch(app)

        assert 200 == response.status_code
        assert {"subject": WEB} == response.json()
        assert "allow" == events[0]["decision"]
        assert WEB == events[0]["subject"]
        assert "prod.example" == events[0]["issuer"]
        assert {"workload_id": WEB, "client_certificate_source": "tls"} == events[0]["facts"]

    async def test_not_allowed_event(self, authority: WorkloadCA) -> None:
        """A denied workload's event records the reason, the ID and the fingerprint."""
        batch = authority.issue(BATCH)
        app = protected_app(WorkloadVerifier(allowed_ids=[WEB]), [batch.pem])

        with capture_events() as events:
            await fetch(app)

        event = events[0]
        assert ["workload_not_allowed"] == event["reasons"]
        assert BATCH in event["verifiers"][0]["detail"]
        assert 16 == len(event["credential_fingerprint"])

    async def test_not_allowed_forbidden(self, authority: WorkloadCA) -> None:
        """An authenticated workload that is not allowed gets 403, not 401."""
        batch = authority.issue(BATCH)
        app = protected_app(WorkloadVerifier(allowed_ids=[WEB]), [batch.pem])

        response = await fetch(app)

        assert 403 == response.status_code

    async def test_not_allowed_context_mode(self, authority: WorkloadCA) -> None:
        """As a context verifier in a public segment, a workload that is not allowed gets 403."""
        batch = authority.issue(BATCH)
        verifier = WorkloadVerifier(allowed_ids=[WEB], identity=False)
        app = Starlette(routes=[Route("/db/query", whoami)])
        middleware = ZeroTrustMiddleware(
            app,
            policy=[Segment("db", paths=["/db/*"], public=True, verifiers=[verifier])],
            events=MemorySink(),
        )

        with capture_events() as events:
            response = await fetch(WithTLSChain(middleware, [batch.pem]))

        assert 403 == response.status_code
        assert ["workload_not_allowed"] == events[0]["reasons"]

    async def test_missing_certificate(self) -> None:
        """Without a client certificate an identity segment returns 401."""
        app = protected_app(WorkloadVerifier(allowed_ids=[WEB]), [])

        with capture_events() as events:
            response = await fetch(app)

        assert 401 == response.status_code
        assert ["client_certificate_missing"] == events[0]["reasons"]

    async def test_proxy_header(self, web: IssuedCertificate) -> None:
        """A trusted proxy's URL-encoded certificate header identifies the workload."""
        verifier = WorkloadVerifier(allowed_ids=[WEB], proxy_header="x-ssl-client-cert")
        app = protected_app(verifier, [], trusted_proxies=["127.0.0.1"])
        headers = {"x-ssl-client-cert": urllib.parse.quote(web.pem, safe="")}

        with capture_events() as events:
            response = await fetch(app, headers)

        assert 200 == response.status_code
        assert {"subject": WEB} == response.json()
        assert "proxy" == events[0]["facts"]["client_certificate_source"]

    async def test_proxy_header_untrusted(self, web: IssuedCertificate) -> None:
        """Without the peer in trusted_proxies the certificate header denies the request."""
        verifier = WorkloadVerifier(allowed_ids=[WEB], proxy_header="x-ssl-client-cert")
        app = protected_app(verifier, [])
        headers = {"x-ssl-client-cert": urllib.parse.quote(web.pem, safe="")}

        with capture_events() as events:
            response = await fetch(app, headers)

        assert 401 == response.status_code
        assert ["client_certificate_from_untrusted_peer"] == events[0]["reasons"]
