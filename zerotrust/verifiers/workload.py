# SPDX-License-Identifier: Apache-2.0
"""Service-to-service segmentation: verify the SPIFFE ID in the caller's client certificate."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, ClassVar

from ..exceptions import ConfigurationError
from .base import Deny, Principal, Verdict, VerificationContext, Verifier, VerifierKind
from .certificates import ClientCertificate, ProxyCertificateFormat, read_client_certificate

if TYPE_CHECKING:
    from ..request import AccessRequest

__all__ = ["WorkloadVerifier", "check_spiffe_id"]

# Limits and character sets of the SPIFFE ID standard (SPIFFE-ID.md, sections 2.1 to 2.3).
_MAX_SPIFFE_ID = 2048
_MAX_TRUST_DOMAIN = 255
_SCHEME = "spiffe://"
_TRUST_DOMAIN = re.compile(r"[a-z0-9._\-]+")
_PATH_SEGMENT = re.compile(r"[a-zA-Z0-9._\-]+")
_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~\-]+")


@functools.lru_cache(maxsize=1024)
def check_spiffe_id(value: str) -> str | None:
    """
    Check the syntax of a workload SPIFFE ID such as ``spiffe://example.org/ns/api``.

    The scheme is exactly ``spiffe``, and the trust domain uses ``[a-z0-9._-]``. The path has
    at least one segment. Each segment is non-empty, uses ``[a-zA-Z0-9._-]`` and is not
    ``.`` or ``..``. Port, user info, query and fragment are not allowed, and the whole ID is
    at most 2048 bytes. An ID without a path names a trust domain, not a workload, so it is
    rejected too.

    Returns:
        ``None`` when the ID is valid, else a short description of the first problem.
    """
    if len(value.encode("utf-8", "surrogatepass")) > _MAX_SPIFFE_ID:
        return f"longer than {_MAX_SPIFFE_ID} bytes"
    if not value.startswith(_SCHEME):
        return "scheme is not 'spiffe://'"

    trust_domain, slash, path = value[len(_SCHEME) :].partition("/")
    if not trust_domain:
        return "trust domain is empty"
    if len(trust_domain) > _MAX_TRUST_DOMAIN or not _TRUST_DOMAIN.fullmatch(trust_domain):
        return f"trust domain {trust_domain[:64]!r} is not lower-case [a-z0-9._-]"
    if not slash:
        return "path is empty"
    for segment in path.split("/"):
        if not segment:
            return "path has an empty segment"
        if segment in (".", ".."):
            return "path has a '.' or '..' segment"
        if not _PATH_SEGMENT.fullmatch(segment):
            return f"path segment {segment[:64]!r} is not [a-zA-Z0-9._-]"

    return None


class WorkloadVerifier(Verifier):
    """
    Verify that the caller is an allowed workload, named by the SPIFFE ID in its certificate.

    The client certificate comes from the ASGI ``tls`` extension, or from ``proxy_header`` when
    a trusted proxy terminates mutual TLS (see `read_client_certificate`). It must hold exactly
    one ``spiffe://`` URI subject alternative name, and that ID must be allowed: it is one of
    ``allowed_ids``, starts with an ``allowed_ids`` prefix ending in ``/*``, or belongs to one
    of ``trust_domains``.

    By default the verifier is an identity verifier: it establishes a `Principal` whose subject
    is the SPIFFE ID and whose issuer is the trust domain. Its failures deny with 401. With
    ``identity=False`` it is a context verifier: it records the ID as the ``workload_id`` fact,
    its failures deny with 403, and another verifier (such as `JWTVerifier`) establishes the
    principal.

    Args:
        allowed_ids: SPIFFE IDs allowed to call, such as ``spiffe://prod.example/ns/app/sa/web``.
            An entry ending in ``/*`` allows every ID below that path.
        trust_domains: Trust domains whose every workload is allowed, such as ``prod.example``.
        proxy_header: Header in which a trusted proxy forwards the client certificate, such as
            ``x-ssl-client-cert`` or ``x-forwarded-client-cert``; ``None`` reads only the
            ASGI ``tls`` extension.
        proxy_format: ``pem`` for URL-encoded PEM (nginx ``$ssl_client_escaped_cert``) or
            ``xfcc`` for Envoy's ``x-forwarded-client-cert``.
        identity: Whether to establish the principal (see above).

    .. warning::
       zerotrust does not verify the certificate chain. It trusts the TLS server, or the
       proxy named in ``trusted_proxies``, to have required and verified a client certificate
       against your workload CA.

    Reason codes: ``client_certificate_missing``, ``malformed_client_certificate``,
    ``client_certificate_from_untrusted_peer``, ``certificate_expired``,
    ``certificate_not_yet_valid``, ``spiffe_id_missing``, ``multiple_spiffe_ids``,
    ``spiffe_id_invalid``, ``workload_not_allowed``.
    """

    name = "workload"
    kind: ClassVar[VerifierKind] = "identity"

    def __init__(
        self,
        *,
        allowed_ids: Iterable[str] = (),
        trust_domains: Iterable[str] = (),
        proxy_header: str | None = None,
        proxy_format: ProxyCertificateFormat = "pem",
        identity: bool = True,
        name: str | None = None,
        timeout: float = 2.0,
        required: bool = True,
    ) -> None:
        super().__init__(name=name, timeout=timeout, required=required)
        ids = _string_list(allowed_ids, "allowed_ids")
        domains = _string_list(trust_domains, "trust_domains")
        if not ids and not domains:
            message = "pass allowed_ids=, trust_domains= or both: with neither, every call fails"
            raise ConfigurationError(message, parameter="allowed_ids", value=[])
        if proxy_format not in ("pem", "xfcc"):
            message = f"proxy_format must be 'pem' or 'xfcc', not {proxy_format!r}"
            raise ConfigurationError(message, parameter="proxy_format", value=proxy_format)
        if proxy_header is not None and (
            not isinstance(proxy_header, str) or not _HEADER_NAME.fullmatch(proxy_header)
        ):
            message = f"proxy_header must be an HTTP header name, not {proxy_header!r}"
            raise ConfigurationError(message, parameter="proxy_header", value=proxy_header)

        exact: set[str] = set()
        prefixes: list[str] = []
        for entry in ids:
            if entry.endswith("/*"):
                prefix = entry[:-1]
                problem = check_spiffe_id(prefix + "x")
                if problem is None:
                    prefixes.append(prefix)
            else:
                problem = check_spiffe_id(entry)
                exact.add(entry)
            if problem is not None:
                message = f"allowed_ids entry {entry!r} is not a valid SPIFFE ID: {problem}"
                raise ConfigurationError(message, parameter="allowed_ids", value=entry)
        for domain in domains:
            if len(domain) > _MAX_TRUST_DOMAIN or not _TRUST_DOMAIN.fullmatch(domain):
                message = (
                    f"trust_domains entry {domain!r} must be a lower-case trust domain name "
                    "such as 'prod.example', without 'spiffe://'"
                )
                raise ConfigurationError(message, parameter="trust_domains", value=domain)

        self.allowed_ids = frozenset(exact)
        self.allowed_prefixes = tuple(prefixes)
        self.trust_domains = frozenset(domains)
        self.proxy_header = proxy_header.lower() if proxy_header is not None else None
        self.proxy_format: ProxyCertificateFormat = proxy_format
        self.kind = "identity" if identity else "context"  # type: ignore[misc]

    def verify_cached(self, request: AccessRequest, context: VerificationContext) -> Verdict:
        try:
            certificate = read_client_certificate(
                request, proxy_header=self.proxy_header, proxy_format=self.proxy_format
            )
        except Deny as error:
            return Verdict.failed(error.reason, error.detail)
        if certificate is None:
            return Verdict.failed("client_certificate_missing")

        fingerprint = certificate.fingerprint_sha256[:16]
        spiffe_ids = [uri for uri in certificate.uri_sans if uri[:9].lower() == _SCHEME]
        if not spiffe_ids:
            return Verdict.failed(
                "spiffe_id_missing", "no spiffe:// URI SAN", credential_fingerprint=fingerprint
            )
        if len(spiffe_ids) > 1:
            # An X.509-SVID names exactly one workload; picking one would be a guess.
            detail = f"{len(spiffe_ids)} spiffe:// URI SANs"
            return Verdict.failed("multiple_spiffe_ids", detail, credential_fingerprint=fingerprint)

        spiffe_id = spiffe_ids[0]
        problem = check_spiffe_id(spiffe_id)
        if problem is not None:
            detail = f"{spiffe_id[:100]!r}: {problem}"
            return Verdict.failed("spiffe_id_invalid", detail, credential_fingerprint=fingerprint)
        if not self.is_allowed(spiffe_id):
            detail = f"{spiffe_id[:200]} is not allowed"
            # The caller proved who it is, so this is 403 with the workload as the principal.
            refused = self._passed(spiffe_id, certificate).principal
            return Verdict.failed(
                "workload_not_allowed",
                detail,
                forbidden=True,
                principal=refused,
                credential_fingerprint=fingerprint,
            )

        return self._passed(spiffe_id, certificate)

    async def verify(self, request: AccessRequest, context: VerificationContext) -> Verdict:
        return self.verify_cached(request, context)

    def is_allowed(self, spiffe_id: str) -> bool:
        """Return whether a syntactically valid SPIFFE ID matches the allow-lists."""
        if spiffe_id in self.allowed_ids:
            return True
        trust_domain = spiffe_id[len(_SCHEME) :].partition("/")[0]
        if trust_domain in self.trust_domains:
            return True

        return bool(self.allowed_prefixes) and spiffe_id.startswith(self.allowed_prefixes)

    def _passed(self, spiffe_id: str, certificate: ClientCertificate) -> Verdict:
        return _passed_verdict(
            spiffe_id,
            certificate.fingerprint_sha256[:16],
            certificate.source,
            certificate.not_after,
            self.kind == "identity",
        )


@functools.lru_cache(maxsize=1024)
def _passed_verdict(
    spiffe_id: str, fingerprint: str, source: str, not_after: float, identity: bool
) -> Verdict:
    # Verdicts are immutable and each workload repeats its certificate, so building the principal
    # once per certificate halves the cost of a request. The validity period is checked before.
    if not identity:
        return Verdict.passed(
            workload_id=spiffe_id,
            client_certificate_source=source,
            credential_fingerprint=fingerprint,
        )

    principal = Principal(
        subject=spiffe_id,
        issuer=spiffe_id[len(_SCHEME) :].partition("/")[0],
        expires_at=not_after,
        credential_fingerprint=fingerprint,
    )

    return Verdict.passed(
        principal=principal, workload_id=spiffe_id, client_certificate_source=source
    )


def _string_list(value: Iterable[str], parameter: str) -> list[str]:
    items = [value] if isinstance(value, str) else list(value or ())
    if not all(isinstance(item, str) and item for item in items):
        message = f"{parameter} must be a list of non-empty strings, not {value!r}"
        raise ConfigurationError(message, parameter=parameter, value=value)

    return items
