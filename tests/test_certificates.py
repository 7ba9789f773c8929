# SPDX-License-Identifier: Apache-2.0
"""Tests for reading client certificates from the TLS extension and from proxy headers."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import time
import urllib.parse
from dataclasses import dataclass

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st
from starlette.datastructures import Headers

from zerotrust.request import AccessRequest
from zerotrust.verifiers.base import Deny
from zerotrust.verifiers.certificates import (
    MAX_CERTIFICATE_CHARS,
    ClientCertificate,
    check_validity,
    parse_certificate,
    read_client_certificate,
)

HOUR = datetime.timedelta(hours=1)
PROXY = ipaddress.ip_address("127.0.0.1")


# Certificate building ---------------------------------------------------------------------------


@dataclass(frozen=True)
class IssuedCertificate:
    """A client certificate and its private key, both PEM-encoded."""

    pem: str
    key_pem: str


class WorkloadCA:
    """
    A trustme CA that also issues client certificates with URI SANs and any validity period.

    trustme 1.2 only issues DNS, IP and e-mail SANs, so client certificates are built with
    ``cryptography`` and signed with the CA's key.
    """

    def __init__(self) -> None:
        self.ca = trustme.CA()
        self._key = serialization.load_pem_private_key(self.ca.private_key_pem.bytes(), None)
        self._name = x509.load_pem_x509_certificate(self.ca.cert_pem.bytes()).subject

    def issue(
        self,
        *uris: str,
        common_name: str = "workload",
        not_before: datetime.datetime | None = None,
        not_after: datetime.datetime | None = None,
    ) -> IssuedCertificate:
        now = datetime.datetime.now(datetime.UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self._name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or now - HOUR)
            .not_valid_after(not_after or now + HOUR)
            .add_extension(
                x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
            )
        )
        if uris:
            names = [x509.UniformResourceIdentifier(uri) for uri in uris]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        certificate = builder.sign(self._key, hashes.SHA256())  # type: ignore[arg-type]
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

        return IssuedCertificate(
            certificate.public_bytes(serialization.Encoding.PEM).decode(), key_pem.decode()
        )


def make_request(
    *,
    chain: tuple[str, ...] = (),
    headers: list[tuple[str, str]] | None = None,
    trusted: bool = False,
    at: float | None = None,
) -> AccessRequest:
    """Build a GET request with a TLS client chain and raw headers, from a proxy or not."""
    raw = [(name.lower().encode(), value.encode("latin-1")) for name, value in headers or []]

    return AccessRequest(
        method="GET",
        path="/db/query",
        raw_path="/db/query",
        host="db.test",
        headers=Headers(raw=raw),
        client_ip=PROXY,
        peer_ip=PROXY,
        request_id="test-request",
        time=time.time() if at is None else at,
        tls_client_chain=chain,
        from_trusted_proxy=trusted,
    )


def escaped(pem: str) -> str:
    """URL-encode a PEM certificate as nginx's ``$ssl_client_escaped_cert`` does."""
    return urllib.parse.quote(pem, safe="")


def reason_of(error: pytest.ExceptionInfo[Deny]) -> str:
    return error.value.reason


@pytest.fixture(name="authority", scope="module")
def fixture_authority() -> WorkloadCA:
    return WorkloadCA()


@pytest.fixture(name="leaf", scope="module")
def fixture_leaf(authority: WorkloadCA) -> IssuedCertificate:
    return authority.issue("spiffe://prod.example/ns/app/sa/web", "https://web.prod.example/")


# Hypothesis rejects function-scoped fixtures in @given tests, so this one is built at import.
FUZZ_CERTIFICATE_DER = x509.load_pem_x509_certificate(
    WorkloadCA().issue("spiffe://prod.example/ns/app").pem.encode()
).public_bytes(serialization.Encoding.DER)


# Parsing ----------------------------------------------------------------------------------------


class TestParseCertificate:
    def test_facts(self, leaf: IssuedCertificate) -> None:
        """The subject, URI SANs, fingerprint and validity period are read from the leaf."""
        expected = x509.load_pem_x509_certificate(leaf.pem.encode())

        parsed = parse_certificate(leaf.pem)

        assert "CN=workload" == parsed.subject
        assert (
            "spiffe://prod.example/ns/app/sa/web",
            "https://web.prod.example/",
        ) == parsed.uri_sans
        assert expected.fingerprint(hashes.SHA256()).hex() == parsed.fingerprint_sha256
        assert expected.not_valid_before_utc.timestamp() == parsed.not_before
        assert expected.not_valid_after_utc.timestamp() == parsed.not_after
        assert "tls" == parsed.source

    def test_spaces_for_line_breaks(self, leaf: IssuedCertificate) -> None:
        """PEM whose line breaks became spaces, as some proxies send it, still parses."""
        expected = parse_certificate(leaf.pem).fingerprint_sha256

        assert expected == parse_certificate(leaf.pem.replace("\n", " ")).fingerprint_sha256

    def test_without_subject_alternative_names(self, authority: WorkloadCA) -> None:
        """A certificate without a SAN extension has no URI SANs."""
        assert () == parse_certificate(authority.issue().pem).uri_sans

    def test_cached(self, leaf: IssuedCertificate) -> None:
        """Parsing the same PEM twice returns the cached object."""
        first = parse_certificate(leaf.pem, "proxy")

        assert first is parse_certificate(leaf.pem, "proxy")

    def test_source_is_part_of_cache_key(self, leaf: IssuedCertificate) -> None:
        """The same PEM read from a proxy header is not reported as a TLS certificate."""
        parse_certificate(leaf.pem, "tls")

        assert "proxy" == parse_certificate(leaf.pem, "proxy").source

    @pytest.mark.parametrize(
        "make_pem",
        [
            pytest.param(lambda pem: "", id="empty"),
            pytest.param(lambda pem: "not a certificate", id="text"),
            pytest.param(lambda pem: pem + pem, id="two certificates"),
            pytest.param(lambda pem: pem + "trailing", id="trailing text"),
            pytest.param(lambda pem: "leading" + pem, id="leading text"),
            pytest.param(lambda pem: pem.replace("M", "!", 3), id="not base64"),
            pytest.param(lambda pem: pem.replace("M", "", 1), id="bad base64 padding"),
            pytest.param(
                lambda pem: "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                id="not DER",
            ),
            pytest.param(lambda pem: pem.replace("CERTIFICATE", "PRIVATE KEY"), id="wrong label"),
            pytest.param(
                lambda pem: pem + " " * (MAX_CERTIFICATE_CHARS - len(pem) + 1), id="too long"
            ),
        ],
    )
    def test_malformed(self, leaf: IssuedCertificate, make_pem) -> None:  # type: ignore[no-untyped-def]
        """Anything but exactly one valid PEM certificate is malformed."""
        with pytest.raises(Deny) as error:
            parse_certificate(make_pem(leaf.pem))

        assert "malformed_client_certificate" == reason_of(error)

    @given(position=st.integers(min_value=0), value=st.integers(min_value=0, max_value=255))
    def test_corrupted_der(self, position: int, value: int) -> None:
        """A certificate with one byte changed either parses or is malformed, never crashes."""
        der = bytearray(FUZZ_CERTIFICATE_DER)
        der[position % len(der)] = value
        body = base64.encodebytes(bytes(der)).decode()
        pem = f"-----BEGIN CERTIFICATE-----\n{body}-----END CERTIFICATE-----\n"

        reason = None
        try:
            parse_certificate(pem)
        except Deny as error:
            reason = error.reason

        assert reason in (None, "malformed_client_certificate")

    def test_not_a_string(self, leaf: IssuedCertificate) -> None:
        """A certificate given as bytes is malformed, not a crash."""
        with pytest.raises(Deny) as error:
            parse_certificate(leaf.pem.encode())  # type: ignore[arg-type]

        assert "malformed_client_certificate" == reason_of(error)


# Validity ---------------------------------------------------------------------------------------


class TestCheckValidity:
    def test_inside_period(self, leaf: IssuedCertificate) -> None:
        """A certificate inside its validity period passes."""
        certificate = parse_certificate(leaf.pem)

        check_validity(certificate, certificate.not_before)
        check_validity(certificate, certificate.not_after)

    @pytest.mark.parametrize(
        ("offset", "reason"),
        [
            pytest.param(-1, "certificate_not_yet_valid", id="before"),
            pytest.param(1, "certificate_expired", id="after"),
        ],
    )
    def test_outside_period(self, leaf: IssuedCertificate, offset: int, reason: str) -> None:
        """A second outside the validity period fails with its own reason code."""
        certificate = parse_certificate(leaf.pem)
        now = certificate.not_before - 1 if offset < 0 else certificate.not_after + 1

        with pytest.raises(Deny) as error:
            check_validity(certificate, now)

        assert reason == reason_of(error)


# Sources ----------------------------------------------------------------------------------------


class TestReadClientCertificate:
    def test_none(self) -> None:
        """Without a TLS chain or a configured header there is no certificate."""
        assert read_client_certificate(make_request()) is None

    def test_tls_leaf(self, authority: WorkloadCA, leaf: IssuedCertificate) -> None:
        """The first certificate of the TLS chain is the client's."""
        ca_pem = authority.ca.cert_pem.bytes().decode()

        certificate = read_client_certificate(make_request(chain=(leaf.pem, ca_pem)))

        assert isinstance(certificate, ClientCertificate)
        assert "tls" == certificate.source
        assert "CN=workload" == certificate.subject

    def test_tls_before_header(self, authority: WorkloadCA, leaf: IssuedCertificate) -> None:
        """The TLS chain wins over a proxy header."""
        other = authority.issue(common_name="other")
        request = make_request(
            chain=(leaf.pem,), headers=[("x-client-cert", escaped(other.pem))], trusted=True
        )

        certificate = read_client_certificate(request, proxy_header="x-client-cert")

        assert certificate is not None
        assert "CN=workload" == certificate.subject

    def test_header_not_configured(self, leaf: IssuedCertificate) -> None:
        """A certificate header is ignored unless a proxy header is configured."""
        request = make_request(headers=[("x-client-cert", escaped(leaf.pem))], trusted=True)

        assert read_client_certificate(request) is None

    def test_header_absent(self) -> None:
        """A configured header that is absent means no certificate."""
        request = make_request(trusted=True)

        assert read_client_certificate(request, proxy_header="x-client-cert") is None

    def test_header_empty(self) -> None:
        """An empty header from a proxy whose client presented no certificate means none."""
        request = make_request(headers=[("x-client-cert", " ")], trusted=True)

        assert read_client_certificate(request, proxy_header="x-client-cert") is None

    @pytest.mark.parametrize(
        "encode",
        [
            pytest.param(escaped, id="url-encoded"),
            pytest.param(lambda pem: pem.replace("\n", " "), id="spaces"),
            pytest.param(lambda pem: pem.replace("\n", "\t"), id="tabs"),
            pytest.param(lambda pem: escaped(pem).replace("%20", "+"), id="plus for space"),
        ],
    )
    def test_pem_header(self, leaf: IssuedCertificate, encode) -> None:  # type: ignore[no-untyped-def]
        """A trusted proxy's PEM header is read in each encoding proxies use."""
        request = make_request(headers=[("x-client-cert", encode(leaf.pem))], trusted=True)

        certificate = read_client_certificate(request, proxy_header="x-client-cert")

        assert certificate is not None
        assert "proxy" == certificate.source
        assert "CN=workload" == certificate.subject

    def test_untrusted_peer(self, leaf: IssuedCertificate) -> None:
        """A certificate header from a peer that is not a trusted proxy fails the request."""
        request = make_request(headers=[("x-client-cert", escaped(leaf.pem))], trusted=False)

        with pytest.raises(Deny) as error:
            read_client_certificate(request, proxy_header="x-client-cert")

        assert "client_certificate_from_untrusted_peer" == reason_of(error)

    def test_repeated_header(self, leaf: IssuedCertificate) -> None:
        """Two certificate headers are ambiguous and malformed."""
        header = ("x-client-cert", escaped(leaf.pem))
        request = make_request(headers=[header, header], trusted=True)

        with pytest.raises(Deny) as error:
            read_client_certificate(request, proxy_header="x-client-cert")

        assert "malformed_client_certificate" == reason_of(error)

    def test_malformed_header(self) -> None:
        """A header that is not a PEM certificate is malformed."""
        request = make_request(headers=[("x-client-cert", "%2D%2D%2D")], trusted=True)

        with pytest.raises(Deny) as error:
            read_client_certificate(request, proxy_header="x-client-cert")

        assert "malformed_client_certificate" == reason_of(error)

    @pytest.mark.parametrize(
        ("offset", "reason"),
        [
            pytest.param(-2 * HOUR, "certificate_not_yet_valid", id="not yet valid"),
            pytest.param(2 * HOUR, "certificate_expired", id="expired"),
        ],
    )
    def test_validity_at_request_time(
        self, leaf: IssuedCertificate, offset: datetime.timedelta, reason: str
    ) -> None:
        """The validity period is checked against the request's arrival time."""
        at = time.time() + offset.total_seconds()

        with pytest.raises(Deny) as error:
            read_client_certificate(make_request(chain=(leaf.pem,), at=at))

        assert reason == reason_of(error)

    def test_expired_certificate(self, authority: WorkloadCA) -> None:
        """A certificate that expired an hour ago fails with certificate_expired."""
        now = datetime.datetime.now(datetime.UTC)
        expired = authority.issue(not_before=now - 3 * HOUR, not_after=now - HOUR)

        with pytest.raises(Deny) as error:
            read_client_certificate(make_request(chain=(expired.pem,)))

        assert "certificate_expired" == reason_of(error)


class TestForwardedClientCert:
    def read(self, value: str) -> ClientCertificate | None:
        request = make_request(headers=[("x-forwarded-client-cert", value)], trusted=True)

        return read_client_certificate(
            request, proxy_header="x-forwarded-client-cert", proxy_format="xfcc"
        )

    def test_cert_field(self, leaf: IssuedCertificate) -> None:
        """The URL-encoded Cert field of the only element is the client's certificate."""
        value = f'By=spiffe://prod.example/ns/db;Hash=abc;Cert="{escaped(leaf.pem)}"'

        certificate = self.read(value)

        assert certificate is not None
        assert "proxy" == certificate.source
        assert "CN=workload" == certificate.subject

    def test_right_most_element(self, authority: WorkloadCA, leaf: IssuedCertificate) -> None:
        """With several elements, the one the nearest proxy appended counts."""
        first = authority.issue(common_name="earlier-hop")
        value = f"Cert={escaped(first.pem)};Hash=1,Hash=2;Cert={escaped(leaf.pem)}"

        certificate = self.read(value)

        assert certificate is not None
        assert "CN=workload" == certificate.subject

    def test_quoted_separators(self, leaf: IssuedCertificate) -> None:
        """Commas, semicolons and escaped quotes inside a quoted value do not split it."""
        subject = r'"CN=a\"b,O=c;d"'
        value = f'Subject={subject};Cert="{escaped(leaf.pem)}";URI=spiffe://prod.example/x'

        assert self.read(value) is not None

    @pytest.mark.parametrize(
        "value",
        [
            pytest.param("Hash=abc;URI=spiffe://prod.example/ns/app", id="no Cert field"),
            pytest.param('Cert="unterminated', id="unterminated quote"),
            pytest.param("Cert", id="no value"),
            pytest.param("Cert=a;Cert=b", id="repeated field"),
            pytest.param("Cert=%2D%2D", id="not a certificate"),
        ],
    )
    def test_malformed(self, value: str) -> None:
        """An XFCC header without a parsable Cert field in its last element is malformed."""
        with pytest.raises(Deny) as error:
            self.read(value)

        assert "malformed_client_certificate" == reason_of(error)

    def test_empty(self) -> None:
        """An empty XFCC header means the client presented no certificate."""
        assert self.read("") is None

    def test_cert_missing_from_last_element(self, leaf: IssuedCertificate) -> None:
        """A Cert in an earlier element does not stand in for the nearest proxy's element."""
        value = f"Cert={escaped(leaf.pem)},Hash=abc;URI=spiffe://prod.example/ns/app"

        with pytest.raises(Deny) as error:
            self.read(value)

        assert "malformed_client_certificate" == reason_of(error)

    def test_too_long(self) -> None:
        """An oversized XFCC header is rejected before it is split."""
        with pytest.raises(Deny) as error:
            self.read("Hash=" + "a" * 70_000)

        assert "malformed_client_certificate" == reason_of(error)
