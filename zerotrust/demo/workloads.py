# SPDX-License-Identifier: Apache-2.0
"""The demo's workload certificates: a throwaway CA and SPIFFE client certificates, in memory."""

from __future__ import annotations

import datetime as dt
import urllib.parse
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CLIENT_CERTIFICATE_HEADER",
    "INTERNAL_CALLERS",
    "TRUST_DOMAIN",
    "DemoWorkloads",
    "WorkloadCertificate",
    "generate_workloads",
]

TRUST_DOMAIN = "demo.test"
# The app tier may call the internal segment, which stands for the database tier.
WEB_ID = f"spiffe://{TRUST_DOMAIN}/ns/app/sa/web"
REPORT_ID = f"spiffe://{TRUST_DOMAIN}/ns/batch/sa/report"
INTERNAL_CALLERS = (WEB_ID,)
# The header in which a TLS-terminating proxy forwards the client certificate, as with nginx's
# $ssl_client_escaped_cert. The scripted client plays that proxy from loopback.
CLIENT_CERTIFICATE_HEADER = "X-SSL-Client-Cert"
_CA_LIFETIME = dt.timedelta(days=1)
_LEAF_LIFETIME = dt.timedelta(hours=1)
# The expired certificate's validity period ended this long before the demo started.
_EXPIRED_AGO = dt.timedelta(days=1)


@dataclass(frozen=True, slots=True)
class WorkloadCertificate:
    """
    A workload's client certificate, without its private key.

    Attributes:
        spiffe_id: The SPIFFE ID in the certificate's URI subject alternative name.
        pem: The certificate in PEM. Certificates are public, so it may be shown.
    """

    spiffe_id: str
    pem: str

    @property
    def header_value(self) -> str:
        """The certificate as URL-encoded PEM, the way the proxy forwards it."""
        return urllib.parse.quote(self.pem, safe="")


@dataclass(frozen=True, slots=True)
class DemoWorkloads:
    """
    The certificates of one demo run, all issued by one CA generated for that run.

    Attributes:
        ca_pem: The CA certificate in PEM.
        web: The app tier's workload, which the internal segment allows.
        report: A batch job's workload, which the internal segment does not allow.
        expired: The web workload's certificate, expired since the day before the run.
        key_markers: The lines of base64 in the PEM of each private key, CA included, and
            each body joined into one line, except lines that also occur in a certificate.
            The keys themselves are dropped after signing, and the leak checks search for
            these strings.
    """

    ca_pem: str
    web: WorkloadCertificate
    report: WorkloadCertificate
    expired: WorkloadCertificate
    key_markers: tuple[str, ...]


def generate_workloads(now: dt.datetime | None = None) -> DemoWorkloads:
    """
    Generate a CA and the workload certificates, all valid at ``now`` except the expired one.

    Every key is a new P-256 key, never written anywhere, and dropped when this call returns.
    Only ``key_markers`` keeps parts of them, in memory, for the leak checks. The app never
    receives the CA, because the middleware trusts the proxy to have verified the chain.
    """
    now = now or dt.datetime.now(dt.UTC)
    markers: list[str] = []

    ca_key = ec.generate_private_key(ec.SECP256R1())
    markers.extend(_key_markers(ca_key))
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "zerotrust demo workload CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + _CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )

    def issue(spiffe_id: str, not_before: dt.datetime, not_after: dt.datetime) -> str:
        key = ec.generate_private_key(ec.SECP256R1())
        markers.extend(_key_markers(key))
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            # The SPIFFE ID alone names the workload. With an empty subject, RFC 5280 requires
            # the subject alternative name extension to be critical.
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]),
                critical=True,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        return certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")

    valid_from = now - dt.timedelta(minutes=5)
    expired_until = now - _EXPIRED_AGO
    web = WorkloadCertificate(WEB_ID, issue(WEB_ID, valid_from, now + _LEAF_LIFETIME))
    report = WorkloadCertificate(REPORT_ID, issue(REPORT_ID, valid_from, now + _LEAF_LIFETIME))
    expired = WorkloadCertificate(
        WEB_ID, issue(WEB_ID, expired_until - _LEAF_LIFETIME, expired_until)
    )
    ca_pem = ca.public_bytes(serialization.Encoding.PEM).decode("ascii")
    # A PEM line with only public key bytes could, at the right base64 alignment, also occur in
    # a certificate. Certificates are public, so printing one must not count as a key leak.
    certificates = (ca_pem, web.pem, report.pem, expired.pem)
    private_markers = [m for m in markers if not any(m in pem for pem in certificates)]

    return DemoWorkloads(ca_pem, web, report, expired, tuple(private_markers))


def _key_markers(key: ec.EllipticCurvePrivateKey) -> list[str]:
    """
    Return each base64 line of the key's PKCS #8 PEM, and the whole body on one line.

    Each line contains part of the private value or of the key's own public point, so none of
    them occurs by chance in the demo's output.
    """
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")
    lines = [line for line in pem.splitlines() if not line.startswith("-----")]
    return [*lines, "".join(lines)]
