# SPDX-License-Identifier: Apache-2.0
"""Client certificates from the ASGI ``tls`` extension or from a header set by a trusted proxy."""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import re
import urllib.parse
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from cryptography import x509

from .base import Deny

if TYPE_CHECKING:
    from ..request import AccessRequest

__all__ = [
    "ClientCertificate",
    "ProxyCertificateFormat",
    "check_validity",
    "parse_certificate",
    "read_client_certificate",
]

ProxyCertificateFormat = Literal["pem", "xfcc"]
CertificateSource = Literal["tls", "proxy"]

# A leaf certificate is 1 to 3 KiB of PEM; anything far larger is rejected before decoding.
MAX_CERTIFICATE_CHARS = 16_384
# An Envoy header carries the certificate plus hashes, names and possibly the chain of each hop.
_MAX_XFCC_CHARS = 65_536
# The space may arrive as "+" when a proxy form-encodes the PEM armour.
_PEM_BLOCK = re.compile(
    r"-----BEGIN[ +]CERTIFICATE-----(?P<body>[A-Za-z0-9+/=\s]*?)-----END[ +]CERTIFICATE-----"
)
_WHITESPACE = re.compile(r"\s+")
_CACHE_SIZE = 512
# Exceptions cryptography raises for invalid certificates. The last three are not ValueErrors.
_PARSE_ERRORS = (
    binascii.Error,
    ValueError,
    x509.InvalidVersion,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
)


@dataclass(frozen=True, slots=True)
class ClientCertificate:
    """
    A parsed client leaf certificate and the facts zerotrust reads from it.

    Attributes:
        certificate: The ``cryptography`` certificate object.
        fingerprint_sha256: Lower-case hex SHA-256 of the DER encoding, without colons.
        source: ``tls`` when this server terminated mutual TLS, ``proxy`` when a trusted
            proxy forwarded the certificate in a header.
        subject: The subject distinguished name as an RFC 4514 string.
        uri_sans: The URI subject alternative names, such as ``spiffe://example.org/api``.
        not_before: Start of the validity period, seconds since the epoch.
        not_after: End of the validity period, seconds since the epoch.
    """

    certificate: x509.Certificate
    fingerprint_sha256: str
    source: CertificateSource
    subject: str
    uri_sans: tuple[str, ...]
    not_before: float
    not_after: float


def read_client_certificate(
    request: AccessRequest,
    *,
    proxy_header: str | None = None,
    proxy_format: ProxyCertificateFormat = "pem",
) -> ClientCertificate | None:
    """
    Return the client's leaf certificate, or ``None`` when the request carries none.

    The leaf of ``request.tls_client_chain`` comes first. Without one, and only when
    ``proxy_header`` is set, the certificate comes from that header, which must have been sent
    by a trusted proxy. The ``pem`` format is URL-encoded PEM (nginx
    ``$ssl_client_escaped_cert``) or PEM whose line breaks became spaces. The ``xfcc`` format
    is Envoy's ``x-forwarded-client-cert``, of which the right-most element's ``Cert`` counts.

    The validity period is checked against ``request.time`` here, so every caller fails closed
    on an expired certificate. The chain is not verified: that is the TLS server's or the
    proxy's job.

    Raises:
        Deny: ``malformed_client_certificate`` for a certificate or header that cannot be
            parsed; ``client_certificate_from_untrusted_peer`` when the header comes from a
            peer that is not a trusted proxy; ``certificate_expired`` or
            ``certificate_not_yet_valid`` outside the validity period.
    """
    if request.tls_client_chain:
        certificate = parse_certificate(request.tls_client_chain[0], "tls")
    elif proxy_header is None:
        return None
    else:
        # Some proxies send the header empty when the client presented no certificate.
        values = [value for value in request.headers.getlist(proxy_header) if value.strip()]
        if not values:
            return None
        if not request.from_trusted_proxy:
            # Anyone can write this header, so it is an attack or a missing trusted_proxies entry.
            detail = f"{proxy_header} sent by {request.peer_ip}, which is not a trusted proxy"
            raise Deny("client_certificate_from_untrusted_peer", detail)
        if len(values) > 1:
            raise Deny("malformed_client_certificate", f"{len(values)} {proxy_header} headers")
        if proxy_format == "xfcc":
            pem = _xfcc_certificate(values[0])
        else:
            pem = urllib.parse.unquote(values[0])
        certificate = parse_certificate(pem, "proxy")

    check_validity(certificate, request.time)

    return certificate


def check_validity(certificate: ClientCertificate, now: float) -> None:
    """
    Check that ``now`` (seconds since the epoch) lies inside the validity period.

    A TLS server checks this only during the handshake, and a kept-alive connection can
    outlive the certificate, so the check runs again on each request. No clock skew is allowed.

    Raises:
        Deny: ``certificate_expired`` or ``certificate_not_yet_valid``.
    """
    if now > certificate.not_after:
        raise Deny("certificate_expired", f"not valid after {certificate.not_after:.0f}")
    if now < certificate.not_before:
        raise Deny("certificate_not_yet_valid", f"not valid before {certificate.not_before:.0f}")


def parse_certificate(pem: str, source: CertificateSource = "tls") -> ClientCertificate:
    """
    Parse one PEM certificate, with any whitespace for line breaks, into a `ClientCertificate`.

    Results are cached by PEM text, because each client sends the same certificate on every
    request and parsing costs tens of microseconds.

    Raises:
        Deny: ``malformed_client_certificate`` when ``pem`` is not exactly one valid certificate.
    """
    if not isinstance(pem, str):
        raise Deny("malformed_client_certificate", f"certificate is a {type(pem).__name__}")
    if len(pem) > MAX_CERTIFICATE_CHARS:
        raise Deny("malformed_client_certificate", f"certificate of {len(pem)} characters")

    return _parse_cached(pem, source)


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _parse_cached(pem: str, source: CertificateSource) -> ClientCertificate:
    # lru_cache never stores a call that raised, so malformed input is never cached.
    blocks = _PEM_BLOCK.findall(pem)
    if len(blocks) != 1 or _PEM_BLOCK.sub("", pem).strip():
        detail = f"expected one PEM certificate, found {len(blocks)} and {len(pem)} characters"
        raise Deny("malformed_client_certificate", detail)
    # cryptography warns about certificates that break RFC 5280 (a serial number that is not
    # positive, a country name that is not two letters) and plans to reject some of them.
    # Failing closed now keeps the verdict stable across cryptography upgrades.
    # NOTE: catch_warnings changes process-wide state, so a warning that another thread issues
    # during these microseconds is recorded here: it is not shown and it rejects this parse.
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            der = base64.b64decode(_WHITESPACE.sub("", blocks[0]), validate=True)
            certificate = x509.load_der_x509_certificate(der)
            subject = certificate.subject.rfc4514_string()
            uri_sans = _uri_sans(certificate)
            not_before = certificate.not_valid_before_utc.timestamp()
            not_after = certificate.not_valid_after_utc.timestamp()
    except _PARSE_ERRORS as error:
        detail = f"{type(error).__name__}: {str(error)[:200]}"
        raise Deny("malformed_client_certificate", detail) from None
    if caught:
        detail = f"{caught[0].category.__name__}: {str(caught[0].message)[:200]}"
        raise Deny("malformed_client_certificate", detail)

    return ClientCertificate(
        certificate=certificate,
        fingerprint_sha256=hashlib.sha256(der).hexdigest(),
        source=source,
        subject=subject,
        uri_sans=uri_sans,
        not_before=not_before,
        not_after=not_after,
    )


def _uri_sans(certificate: x509.Certificate) -> tuple[str, ...]:
    try:
        extension = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return ()

    return tuple(extension.value.get_values_for_type(x509.UniformResourceIdentifier))


def _xfcc_certificate(header: str) -> str:
    """Return the URL-decoded ``Cert`` of the right-most (nearest proxy's) XFCC element."""
    if len(header) > _MAX_XFCC_CHARS:
        raise Deny("malformed_client_certificate", f"XFCC header of {len(header)} characters")
    try:
        elements = _split_xfcc(header)
    except ValueError as error:
        raise Deny("malformed_client_certificate", f"XFCC header: {error}") from None

    fields = elements[-1]
    if "cert" not in fields:
        detail = (
            "the last XFCC element has no Cert field: configure the proxy to forward the "
            f"certificate, not only {', '.join(sorted(fields)) or 'nothing'}"
        )
        raise Deny("malformed_client_certificate", detail)

    return urllib.parse.unquote(fields["cert"])


def _split_xfcc(header: str) -> list[dict[str, str]]:
    """
    Split ``x-forwarded-client-cert`` into elements of lower-case key to value.

    Elements are separated by ``,`` and fields by ``;``. A value may be double-quoted, and
    inside quotes ``,``, ``;`` and ``=`` are literal and a backslash escapes the next character.
    """
    elements: list[dict[str, str]] = []
    fields: dict[str, str] = {}
    key: list[str] = []
    value: list[str] = []
    in_value = quoted = escaped = False

    def end_field() -> None:
        name = "".join(key).strip().lower()
        if not name or not in_value:
            raise ValueError(f"field {name!r} has no '=value'")
        if name in fields:
            raise ValueError(f"field {name!r} is repeated in one element")
        fields[name] = "".join(value).strip()

    for character in header:
        if escaped:
            value.append(character)
            escaped = False
        elif quoted:
            if character == "\\":
                escaped = True
            elif character == '"':
                quoted = False
            else:
                value.append(character)
        elif character == '"' and in_value and not "".join(value).strip():
            quoted = True
        elif character == "=" and not in_value:
            in_value = True
        elif character in ";,":
            end_field()
            key, value, in_value = [], [], False
            if character == ",":
                elements.append(fields)
                fields = {}
        else:
            (value if in_value else key).append(character)

    if quoted or escaped:
        raise ValueError("unterminated quoted value")
    end_field()
    elements.append(fields)

    return elements
