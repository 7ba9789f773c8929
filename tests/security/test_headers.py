# SPDX-License-Identifier: Apache-2.0
"""
Attack class: request headers that claim what the client cannot prove.

A client may write any header: ``X-Forwarded-For``, ``Forwarded``, ``X-Real-IP`` and client
certificate headers (``X-Forwarded-Client-Cert``, ``X-SSL-Client-Cert``) count only when a
configured trusted proxy sent them. Duplicated ``Authorization`` and ``Host`` headers, host
spellings that a virtual-host router may read differently, oversized headers and a request id
carrying CR/LF must not change the decision, crash the middleware or reach a response header.
"""

from __future__ import annotations

import datetime
import functools
import json
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from zerotrust import (
    JWTVerifier,
    MemorySink,
    NetworkVerifier,
    Segment,
    WorkloadVerifier,
    ZeroTrustMiddleware,
)
from zerotrust.testing import TokenIssuer, capture_events, serve

from .support import AUDIENCE, Recorder, asgi_call, build_app, http_scope, raw_request, wait_until

OFFICE = "10.0.0.0/8"
SPIFFE_ID = "spiffe://prod.example/ns/payments/sa/api"
# Headers that some proxies, CDNs and frameworks read as the client address.
CLIENT_ADDRESS_HEADERS = [
    b"x-forwarded-for",
    b"x-real-ip",
    b"true-client-ip",
    b"cf-connecting-ip",
    b"x-client-ip",
    b"x-cluster-client-ip",
    b"fastly-client-ip",
]


def office_app(recorder: Recorder, **options: Any) -> ZeroTrustMiddleware:
    """Protect the admin area with a network check that only office addresses pass."""
    policy = [
        Segment("public", paths=["/"], public=True),
        Segment(
            "admin", paths=["/admin/"], public=True, verifiers=[NetworkVerifier(allow=[OFFICE])]
        ),
    ]
    options.setdefault("events", MemorySink())
    return ZeroTrustMiddleware(build_app(recorder), policy=policy, **options)


def status_of(sent: list[dict[str, Any]]) -> int:
    return int(next(m["status"] for m in sent if m["type"] == "http.response.start"))


def response_headers(sent: list[dict[str, Any]]) -> list[tuple[bytes, bytes]]:
    start = next(m for m in sent if m["type"] == "http.response.start")
    return list(start["headers"])


async def decide(
    app: ZeroTrustMiddleware, scope: dict[str, Any]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    with capture_events() as events:
        sent = await asgi_call(app, scope)
    assert 1 == len(events)
    return sent, events[0]


# Client address ---------------------------------------------------------------------------------


class TestSpoofedClientAddress:
    @pytest.mark.parametrize("header", CLIENT_ADDRESS_HEADERS)
    @pytest.mark.parametrize("trusted", [(), ("192.0.2.0/24",)], ids=["no-proxy", "other-proxy"])
    async def test_untrusted_peer(self, header: bytes, trusted: tuple[str, ...]) -> None:
        """An office address claimed by an untrusted peer is ignored: the peer is the client."""
        recorder = Recorder()
        app = office_app(recorder, trusted_proxies=trusted)
        scope = http_scope("/admin/users", headers=[(header, b"10.1.2.3")])

        sent, event = await decide(app, scope)

        assert 403 == status_of(sent)
        assert ["network_not_allowed"] == event["reasons"]
        assert "127.0.0.1" == event["client_ip"]
        assert [] == recorder.admin

    @pytest.mark.parametrize(
        "value",
        [
            b"for=10.1.2.3",
            b'for="10.1.2.3:80"',
            b"for=10.1.2.3;proto=https",
            b'for="[::ffff:10.1.2.3]"',
        ],
    )
    async def test_forwarded_untrusted(self, value: bytes) -> None:
        """An RFC 7239 ``Forwarded`` header from an untrusted peer is ignored."""
        recorder = Recorder()
        app = office_app(recorder, forwarded_header="forwarded")

        sent, event = await decide(app, http_scope("/admin/users", headers=[(b"forwarded", value)]))

        assert 403 == status_of(sent)
        assert "127.0.0.1" == event["client_ip"]

    @pytest.mark.parametrize(
        "header", [b"forwarded", b"x-real-ip", b"true-client-ip", b"x-client-ip"]
    )
    async def test_trusted_proxy_other_header(self, header: bytes) -> None:
        """Behind a trusted proxy, only the configured header counts, not look-alikes."""
        recorder = Recorder()
        app = office_app(recorder, trusted_proxies=["127.0.0.1"])
        value = b"for=10.1.2.3" if header == b"forwarded" else b"10.1.2.3"
        scope = http_scope("/admin/users", headers=[(header, value)])

        sent, event = await decide(app, scope)

        assert 403 == status_of(sent)
        assert "127.0.0.1" == event["client_ip"]

    async def test_client_prepends_office_address(self) -> None:
        """A client that writes an office address before the proxy's entry stays outside."""
        recorder = Recorder()
        app = office_app(recorder, trusted_proxies=["127.0.0.1"])
        scope = http_scope("/admin/users", headers=[(b"x-forwarded-for", b"10.1.2.3, 203.0.113.9")])

        sent, event = await decide(app, scope)

        assert 403 == status_of(sent)
        assert "203.0.113.9" == event["client_ip"]

    async def test_trusted_proxy_honoured(self) -> None:
        """The trusted proxy's own entry is believed, so the cases above can fail."""
        recorder = Recorder()
        app = office_app(recorder, trusted_proxies=["127.0.0.1"])
        scope = http_scope("/admin/users", headers=[(b"x-forwarded-for", b"10.1.2.3")])

        sent, event = await decide(app, scope)

        assert 200 == status_of(sent)
        assert "10.1.2.3" == event["client_ip"]
        assert ["/admin/users"] == recorder.admin

    @pytest.mark.parametrize(
        "value",
        [
            b"10.1.2.3, not-an-address",
            b"10.1.2.3,,",
            b"unknown",
            b"10.1.2.3 10.1.2.4",
            b"",
            b"::::",
        ],
    )
    async def test_trusted_proxy_malformed(self, value: bytes) -> None:
        """A forwarding header from a trusted proxy that cannot be parsed denies the request."""
        recorder = Recorder()
        app = office_app(recorder, trusted_proxies=["127.0.0.1"])
        scope = http_scope("/admin/users", headers=[(b"x-forwarded-for", value)])

        sent, event = await decide(app, scope)

        assert 403 == status_of(sent)
        assert ["malformed_forwarded_header"] == event["reasons"]
        assert [] == recorder.admin

    def test_served_spoof(self) -> None:
        """Over uvicorn on 127.0.0.1, spoofed address headers leave the admin area closed."""
        recorder = Recorder()
        app = office_app(recorder)
        headers = [(name, b"10.1.2.3") for name in CLIENT_ADDRESS_HEADERS]
        headers.append((b"forwarded", b"for=10.1.2.3"))
        with serve(app) as base_url:
            response = raw_request(
                int(base_url.rsplit(":", 1)[1]), b"/admin/users", headers=headers
            )

        assert 403 == response.status
        assert [] == recorder.admin


# Client certificates ----------------------------------------------------------------------------


@functools.cache
def workload_certificate() -> str:
    """Return a PEM certificate whose URI SAN is an allowed SPIFFE ID."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "payments")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(SPIFFE_ID)]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


def certificate_header(header: str) -> tuple[bytes, bytes]:
    quoted = urllib.parse.quote(workload_certificate(), safe="")
    if header == "x-forwarded-client-cert":
        return header.encode(), f'Hash=00;Cert="{quoted}";URI={SPIFFE_ID}'.encode()
    return header.encode(), quoted.encode()


def workload_app(recorder: Recorder, header: str, **options: Any) -> ZeroTrustMiddleware:
    workload = WorkloadVerifier(
        trust_domains=["prod.example"],
        proxy_header=header,
        proxy_format="xfcc" if header == "x-forwarded-client-cert" else "pem",
    )
    policy = [
        Segment("public", paths=["/"], public=True),
        Segment("admin", paths=["/admin/"], verifiers=[workload]),
    ]
    return ZeroTrustMiddleware(build_app(recorder), policy=policy, events=MemorySink(), **options)


CERTIFICATE_HEADERS = ["x-forwarded-client-cert", "x-ssl-client-cert"]


class TestSpoofedClientCertificate:
    @pytest.mark.parametrize("header", CERTIFICATE_HEADERS)
    @pytest.mark.parametrize("trusted", [(), ("192.0.2.0/24",)], ids=["no-proxy", "other-proxy"])
    async def test_untrusted_peer(self, header: str, trusted: tuple[str, ...]) -> None:
        """A certificate header from a peer that is not a trusted proxy denies with 401."""
        recorder = Recorder()
        app = workload_app(recorder, header, trusted_proxies=trusted)

        sent, event = await decide(
            app, http_scope("/admin/users", headers=[certificate_header(header)])
        )

        assert 401 == status_of(sent)
        assert ["client_certificate_from_untrusted_peer"] == event["reasons"]
        assert [] == recorder.admin

    @pytest.mark.parametrize("header", CERTIFICATE_HEADERS)
    async def test_trusted_proxy_honoured(self, header: str) -> None:
        """The same header from a trusted proxy passes, so the case above can fail."""
        recorder = Recorder()
        app = workload_app(recorder, header, trusted_proxies=["127.0.0.1"])

        sent, event = await decide(
            app, http_scope("/admin/users", headers=[certificate_header(header)])
        )

        assert 200 == status_of(sent)
        assert SPIFFE_ID == event["subject"]

    @pytest.mark.parametrize("header", CERTIFICATE_HEADERS)
    async def test_duplicated_from_trusted_proxy(self, header: str) -> None:
        """Two certificate headers, one proxy's and one the client's, deny the request."""
        recorder = Recorder()
        app = workload_app(recorder, header, trusted_proxies=["127.0.0.1"])
        duplicated = [certificate_header(header), certificate_header(header)]

        sent, event = await decide(app, http_scope("/admin/users", headers=duplicated))

        assert 401 == status_of(sent)
        assert ["malformed_client_certificate"] == event["reasons"]

    async def test_other_certificate_header_ignored(self) -> None:
        """A certificate in a header the verifier does not read is no certificate at all."""
        recorder = Recorder()
        app = workload_app(recorder, "x-ssl-client-cert", trusted_proxies=["127.0.0.1"])
        scope = http_scope("/admin/users", headers=[certificate_header("x-forwarded-client-cert")])

        sent, event = await decide(app, scope)

        assert 401 == status_of(sent)
        assert ["client_certificate_missing"] == event["reasons"]


# Duplicated and oversized headers ---------------------------------------------------------------


def identity_app(issuer: TokenIssuer, recorder: Recorder, **options: Any) -> ZeroTrustMiddleware:
    identity = JWTVerifier(
        issuer=issuer.issuer, audience=AUDIENCE, algorithms=["RS256"], keys=issuer.jwks()
    )
    policy = [
        Segment("public", paths=["/"], public=True),
        Segment("admin", paths=["/admin/"], verifiers=[identity], roles=["admin"]),
        Segment("internal", paths=["/"], hosts=["internal.example.com"], verifiers=[identity]),
    ]
    return ZeroTrustMiddleware(build_app(recorder), policy=policy, events=MemorySink(), **options)


@pytest.fixture(name="served", scope="module")
def fixture_served(issuer: TokenIssuer) -> Iterator[tuple[int, Recorder]]:
    recorder = Recorder()
    with serve(identity_app(issuer, recorder)) as base_url:
        yield int(base_url.rsplit(":", 1)[1]), recorder


def bearer(token: str) -> tuple[bytes, bytes]:
    return b"authorization", f"Bearer {token}".encode()


class TestDuplicatedHeaders:
    @pytest.mark.parametrize("order", ["good-first", "bad-first"])
    def test_two_authorization_headers(
        self, issuer: TokenIssuer, served: tuple[int, Recorder], order: str
    ) -> None:
        """Two Authorization headers deny, whichever of them carries the good token."""
        port, recorder = served
        recorder.clear()
        good = bearer(issuer.token("root", roles=["admin"]))
        bad = bearer("not-a-token")
        headers = [good, bad] if order == "good-first" else [bad, good]
        request_id = uuid.uuid4().hex

        with capture_events() as events:
            response = raw_request(
                port, b"/admin/users", headers=[*headers, (b"x-request-id", request_id.encode())]
            )
            wait_until(lambda: any(e["request_id"] == request_id for e in events))

        assert 401 == response.status
        assert [] == recorder.admin
        event = next(e for e in events if e["request_id"] == request_id)
        assert ["malformed_authorization"] == event["reasons"]

    def test_comma_joined_credentials(
        self, issuer: TokenIssuer, served: tuple[int, Recorder]
    ) -> None:
        """Two tokens joined in one Authorization value are one malformed token."""
        port, recorder = served
        recorder.clear()
        token = issuer.token("root", roles=["admin"])
        value = f"Bearer {token}, Bearer {token}".encode()

        response = raw_request(port, b"/admin/users", headers=[(b"authorization", value)])

        assert 401 == response.status
        assert [] == recorder.admin

    @pytest.mark.parametrize(
        "hosts",
        [
            [b"internal.example.com", b"public.example.com"],
            [b"public.example.com", b"internal.example.com"],
            [b"public.example.com", b"public.example.com"],
        ],
    )
    async def test_two_host_headers(self, issuer: TokenIssuer, hosts: list[bytes]) -> None:
        """Two Host headers deny the request, whichever comes first."""
        recorder = Recorder()
        app = identity_app(issuer, recorder)
        scope = http_scope("/reports")
        scope["headers"] = [(b"host", host) for host in hosts]

        sent, event = await decide(app, scope)

        assert 403 == status_of(sent)
        assert ["duplicate_host_header"] == event["reasons"]
        assert [] == recorder.public

    def test_served_two_host_headers(self, served: tuple[int, Recorder]) -> None:
        """uvicorn passes both Host headers on, and the request is denied."""
        port, recorder = served
        recorder.clear()

        response = raw_request(
            port,
            b"/reports",
            host=b"public.example.com",
            headers=[(b"host", b"internal.example.com")],
        )

        assert response.status in (400, 403)
        assert [] == recorder.public

    @pytest.mark.parametrize(
        "host",
        [
            b"internal.example.com",
            b"INTERNAL.example.com",
            b"internal.example.com.",
            b"internal.example.com:8443",
            b"Internal.Example.Com.:443",
            b"internal.example.com:443:443",
            b"internal.example.com@public.example.com",
            b"public.example.com@internal.example.com",
            b"internal.example.com/public",
            b"internal.example.com\\public",
            b"internal.example.com%2f",
            b"internal%2eexample.com",
            b" internal.example.com",
            b"internal.example.com:",
            b"internal.example.com:99999999",
            b"[internal.example.com]",
            "internal.\uff45xample.com".encode(),  # a fullwidth e
        ],
    )
    async def test_host_spellings(self, issuer: TokenIssuer, host: bytes) -> None:
        """No spelling of the internal host falls through to the public segment."""
        recorder = Recorder()
        app = identity_app(issuer, recorder)
        scope = http_scope("/reports")
        scope["headers"] = [(b"host", host)]

        sent, event = await decide(app, scope)

        assert status_of(sent) in (401, 403)
        assert event["reasons"] in (["token_missing"], ["malformed_host_header"])
        assert [] == recorder.public


class TestOversizedHeaders:
    async def test_one_mebibyte_token(self, issuer: TokenIssuer) -> None:
        """A 1 MiB bearer token is denied as too large, quickly, and the event omits it."""
        recorder = Recorder()
        app = identity_app(issuer, recorder)
        token = "eyJ" + "A" * (1 << 20)
        scope = http_scope("/admin/users", headers=[bearer(token)])

        # CPU time of this process, unlike wall-clock time, does not grow with machine load.
        started = time.process_time()
        sent, event = await decide(app, scope)
        elapsed = time.process_time() - started

        assert 401 == status_of(sent)
        assert ["token_too_large"] == event["reasons"]
        assert token not in json.dumps(event, default=str)
        assert elapsed < 1.0

    async def test_many_headers(self, issuer: TokenIssuer) -> None:
        """A request with ten thousand headers is denied in bounded time."""
        recorder = Recorder()
        app = identity_app(issuer, recorder)
        headers = [(f"x-filler-{number}".encode(), b"x" * 64) for number in range(10_000)]
        scope = http_scope("/admin/users", headers=headers)

        started = time.process_time()
        sent, event = await decide(app, scope)
        elapsed = time.process_time() - started

        assert 401 == status_of(sent)
        assert ["token_missing"] == event["reasons"]
        assert elapsed < 2.0

    @pytest.mark.parametrize("size", [70_000, 1_000_000])
    def test_served_oversized_header(self, served: tuple[int, Recorder], size: int) -> None:
        """An oversized header gets a 4xx or a closed connection, and uvicorn serves on."""
        port, recorder = served
        recorder.clear()

        try:
            status = raw_request(port, b"/admin/users", headers=[(b"x-filler", b"x" * size)]).status
        except (ConnectionResetError, BrokenPipeError):
            status = None
        after = raw_request(port, b"/public")

        assert status in (None, 400, 401, 431)
        assert [] == recorder.admin
        assert 200 == after.status


# Request ids ------------------------------------------------------------------------------------


class TestRequestIdInjection:
    @pytest.mark.parametrize(
        "value",
        [
            b"abc\r\nSet-Cookie: session=stolen",
            b"abc\nx-admin: 1",
            b"abc\rx",
            b"abc\x00",
            b"<script>alert(1)</script>",
            b"a" * 129,
            b"id with spaces",
            b"eyJhbGciOiJub25lIn0.e30.",
            b"\xc3\xa9t\xc3\xa9",
            b"-leading-dash",
        ],
    )
    async def test_replaced(self, issuer: TokenIssuer, value: bytes) -> None:
        """An unsafe request id is replaced by a random one, in the response and the event."""
        recorder = Recorder()
        app = identity_app(issuer, recorder)
        scope = http_scope("/admin/users", headers=[(b"x-request-id", value)])

        sent, event = await decide(app, scope)

        returned = dict(response_headers(sent))[b"x-request-id"]
        assert 32 == len(returned)
        assert returned.decode() == event["request_id"]
        for _, header_value in response_headers(sent):
            assert b"\r" not in header_value
            assert b"\n" not in header_value
        body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
        assert value not in body

    async def test_duplicated_replaced(self, issuer: TokenIssuer) -> None:
        """Two request ids are replaced by a random one rather than trusting either."""
        app = identity_app(issuer, Recorder())
        scope = http_scope(
            "/admin/users", headers=[(b"x-request-id", b"first"), (b"x-request-id", b"second")]
        )

        _, event = await decide(app, scope)

        assert event["request_id"] not in ("first", "second")

    @pytest.mark.parametrize(
        "line", [b"X-Request-ID: abc\rSet-Cookie: a=b", b"X-Request-ID: abc\r\n Set-Cookie: a=b"]
    )
    def test_served_bare_cr_and_folding(self, served: tuple[int, Recorder], line: bytes) -> None:
        """A bare CR or a folded header line never reaches the response headers."""
        port, _ = served
        name, _, value = line.partition(b": ")

        response = raw_request(port, b"/admin/users", headers=[(name, value)])

        assert response.status in (400, 401)
        assert response.header("set-cookie") is None
