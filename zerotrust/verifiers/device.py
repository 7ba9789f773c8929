# SPDX-License-Identifier: Apache-2.0
"""Device verification with a signed posture assertion or a registered TLS client certificate."""

from __future__ import annotations

import hashlib
import re
import time
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

import jwt
from cachetools import LRUCache

from ..devices import NOT_CACHED, DeviceRecord, DeviceRegistry, DeviceRegistryError
from ..exceptions import ConfigurationError, InsecureConfigurationWarning, KeySetUnavailableError
from .base import Deny, Verdict, VerificationContext, Verifier, shared_verdict
from .certificates import ClientCertificate, ProxyCertificateFormat, read_client_certificate
from .jwks import KeySet, RemoteKeySet, StaticKeySet, UnknownKeyError
from .jws import TokenProblem, claim_problem, read_header

if TYPE_CHECKING:
    import httpx

    from ..request import AccessRequest

__all__ = ["DeviceAssertion", "DeviceCredential", "DeviceVerifier", "parse_version"]

DeviceCredential = Literal["assertion", "certificate"]

_CREDENTIALS: frozenset[str] = frozenset({"assertion", "certificate"})
_HEADER_NAME = re.compile(r"[a-z0-9!#$%&'*+.^_`|~\-]{1,64}")
_VERSION = re.compile(r"[0-9]{1,9}(?:\.[0-9]{1,9}){0,7}")
_VERSION_PARTS = 8
_MAX_LEEWAY = 300.0
_MAX_CLAIM_CHARS = 256


def parse_version(text: object) -> tuple[int, ...] | None:
    """
    Parse a dotted numeric version such as ``14.4.1`` into a tuple padded with zeros to 8 parts.

    Returns ``None`` for anything else (``14.4 beta``, ``""``, more than 8 parts), so callers
    can fail closed. Padding makes ``14.2`` equal ``14.2.0``.
    """
    if not isinstance(text, str) or not _VERSION.fullmatch(text.strip()):
        return None
    parts = tuple(int(part) for part in text.strip().split("."))

    return parts + (0,) * (_VERSION_PARTS - len(parts))


@dataclass(frozen=True, slots=True)
class DeviceAssertion:
    """
    The verified claims of one device posture assertion.

    Attributes:
        device_id: The device the assertion is about.
        user: The subject the device is bound to, from the user claim.
        managed: The ``managed`` claim: whether the device is managed and compliant.
        os: The ``os`` claim, lower-cased.
        os_version: The ``os_version`` claim.
        disk_encrypted: The ``disk_encrypted`` claim.
        screen_lock: The ``screen_lock`` claim.
        posture_checked_at: The ``posture_checked_at`` claim, seconds since the epoch.
        expires_at: The ``exp`` claim.
    """

    device_id: str
    user: str | None
    managed: bool | None
    os: str | None
    os_version: str | None
    disk_encrypted: bool | None
    screen_lock: bool | None
    posture_checked_at: float | None
    expires_at: float


class _Posture(Protocol):
    """The posture fields that both an assertion and a registry record provide."""

    @property
    def managed(self) -> bool | None: ...
    @property
    def os(self) -> str | None: ...
    @property
    def os_version(self) -> str | None: ...
    @property
    def disk_encrypted(self) -> bool | None: ...
    @property
    def screen_lock(self) -> bool | None: ...
    @property
    def posture_checked_at(self) -> float | None: ...


class DeviceVerifier(Verifier):
    """
    Verify the device a request comes from, its owner and its posture.

    A device proves itself with a signed posture assertion (a short-lived JWT from a device
    agent or MDM, in the ``header`` request header) or a TLS client certificate whose SHA-256
    fingerprint is in the ``registry``. ``credentials`` lists which are accepted. When a
    request carries both, both are verified and must name the same device; posture then comes
    from the assertion.

    The assertion must be signed with one of ``algorithms`` by a key from ``keys`` or
    ``jwks_url``, carry ``exp``, and match ``issuer`` and ``audience`` exactly. Its device id is
    the ``device_id_claim`` and the user it is bound to is the ``user_claim`` (a dotted path such
    as ``cnf.sub`` reads a nested claim). Posture claims are ``managed``, ``os``,
    ``os_version``, ``disk_encrypted``, ``screen_lock`` and ``posture_checked_at``.

    With a certificate, the device, its owner and its posture come from the registry. With an
    assertion and a registry, the device must also be enrolled there and not revoked, and a
    registry owner must equal the assertion's user.

    The verdict binds the device's user: the engine denies with ``subject_binding_mismatch``
    when it differs from the authenticated subject.

    Args:
        credentials: Accepted credentials: ``assertion``, ``certificate`` or both.
        issuer: The exact ``iss`` of assertions.
        audience: The ``aud`` value assertions must carry, or several.
        algorithms: Allow-list of assertion signature algorithms, such as ``["ES256"]``.
        keys: Static keys of the device issuer (see `StaticKeySet`), instead of ``jwks_url``.
        jwks_url: Where to fetch the device issuer's JWKS (see `RemoteKeySet`).
        header: Request header carrying the assertion.
        device_id_claim: Claim with the device id.
        user_claim: Claim with the user the device is bound to; dotted paths read nested claims.
        leeway: Seconds of clock skew tolerated for ``exp``, ``nbf``, ``iat`` and
            ``posture_checked_at``; at most 300.
        max_assertion_lifetime: Longest accepted ``exp`` minus ``iat`` (or minus now, without
            ``iat``), in seconds; ``None`` for no limit.
        max_assertion_bytes: Longer assertions are rejected before any parsing.
        cache_size: Maximum number of verified assertions cached, and of verdicts kept per
            assertion when there is no registry and no ``max_posture_age``; 0 disables both.
        cache_ttl: Maximum seconds a verified assertion stays cached (never past its ``exp``).
        registry: The device registry; needed for ``certificate``.
        proxy_header: Header in which a trusted proxy forwards the client certificate.
        proxy_format: ``pem`` or ``xfcc`` (Envoy's ``x-forwarded-client-cert``).
        require_managed: Deny devices that are not managed.
        min_os_versions: Allowed operating systems and their minimum version, such as
            ``{"macos": "14.2"}``; any other OS is denied. ``None`` accepts any OS.
        require_encryption: Deny devices without full-disk encryption.
        require_screen_lock: Deny devices without a screen lock.
        max_posture_age: Deny posture collected more than this many seconds ago.
        jwks_options: Extra arguments for `RemoteKeySet`.
        http_client: An ``httpx.AsyncClient`` for fetching the JWKS.

    Raises:
        ConfigurationError: for an invalid option, a missing key source for ``assertion``, or a
            missing registry for ``certificate``.
    """

    name = "device"
    kind = "context"

    def __init__(
        self,
        *,
        credentials: Iterable[DeviceCredential] = ("assertion",),
        issuer: str | None = None,
        audience: str | Iterable[str] | None = None,
        algorithms: Iterable[str] | None = None,
        keys: Any = None,
        jwks_url: str | None = None,
        header: str = "x-device-assertion",
        device_id_claim: str = "sub",
        user_claim: str = "user",
        leeway: float = 30.0,
        max_assertion_lifetime: float | None = 3600.0,
        max_assertion_bytes: int = 8192,
        cache_size: int = 10_000,
        cache_ttl: float = 300.0,
        registry: DeviceRegistry | None = None,
        proxy_header: str | None = None,
        proxy_format: ProxyCertificateFormat = "pem",
        require_managed: bool = False,
        min_os_versions: Mapping[str, str] | None = None,
        require_encryption: bool = False,
        require_screen_lock: bool = False,
        max_posture_age: float | None = None,
        jwks_options: Mapping[str, Any] | None = None,
        http_client: httpx.AsyncClient | None = None,
        name: str | None = None,
        timeout: float = 2.0,
        required: bool = True,
    ) -> None:
        super().__init__(name=name, timeout=timeout, required=required)
        accepted = [credentials] if isinstance(credentials, str) else list(credentials or ())
        if not accepted or not set(accepted) <= _CREDENTIALS:
            message = (
                f"credentials must list 'assertion', 'certificate' or both, not {credentials!r}"
            )
            raise ConfigurationError(message, parameter="credentials", value=credentials)
        self.credentials: frozenset[str] = frozenset(accepted)

        if registry is not None and not isinstance(registry, DeviceRegistry):
            message = f"registry must be a DeviceRegistry, not {type(registry).__name__}"
            raise ConfigurationError(message, parameter="registry", value=registry)
        if "certificate" in self.credentials and registry is None:
            message = "credentials include 'certificate', so pass registry= to look devices up"
            raise ConfigurationError(message, parameter="registry", value=None)
        if proxy_format not in ("pem", "xfcc"):
            message = f"proxy_format must be 'pem' or 'xfcc', not {proxy_format!r}"
            raise ConfigurationError(message, parameter="proxy_format", value=proxy_format)
        self.registry = registry
        self.proxy_header = _check_header(proxy_header, "proxy_header") if proxy_header else None
        self.proxy_format: ProxyCertificateFormat = proxy_format

        self.require_managed = bool(require_managed)
        self.require_encryption = bool(require_encryption)
        self.require_screen_lock = bool(require_screen_lock)
        self.min_os_versions = _check_min_os_versions(min_os_versions)
        if max_posture_age is not None and (
            isinstance(max_posture_age, bool)
            or not isinstance(max_posture_age, int | float)
            or not max_posture_age > 0
        ):
            message = (
                f"max_posture_age must be a positive number of seconds, not {max_posture_age!r}"
            )
            raise ConfigurationError(message, parameter="max_posture_age", value=max_posture_age)
        self.max_posture_age = None if max_posture_age is None else float(max_posture_age)

        self.header = _check_header(header, "header")
        self.key_set: KeySet | None = None
        self.cache: LRUCache[bytes, tuple[DeviceAssertion, float]] | None = None
        if "assertion" in self.credentials:
            self._configure_assertions(
                issuer=issuer,
                audience=audience,
                algorithms=algorithms,
                keys=keys,
                jwks_url=jwks_url,
                device_id_claim=device_id_claim,
                user_claim=user_claim,
                leeway=leeway,
                max_assertion_lifetime=max_assertion_lifetime,
                max_assertion_bytes=max_assertion_bytes,
                cache_size=cache_size,
                cache_ttl=cache_ttl,
                jwks_options=jwks_options,
                http_client=http_client,
            )
        # Without a registry or a posture age limit, the verdict on an assertion depends on the
        # assertion alone, so it is kept beside the cached assertion, keyed by the same digest.
        # The assertion's expiry is still checked on every request before its verdict is used.
        self._judged: dict[bytes, Verdict] | None = None
        if self.cache is not None and self.registry is None and self.max_posture_age is None:
            self._judged = {}

    def _configure_assertions(
        self,
        *,
        issuer: str | None,
        audience: str | Iterable[str] | None,
        algorithms: Iterable[str] | None,
        keys: Any,
        jwks_url: str | None,
        device_id_claim: str,
        user_claim: str,
        leeway: float,
        max_assertion_lifetime: float | None,
        max_assertion_bytes: int,
        cache_size: int,
        cache_ttl: float,
        jwks_options: Mapping[str, Any] | None,
        http_client: httpx.AsyncClient | None,
    ) -> None:
        if not isinstance(issuer, str) or not issuer:
            message = f"issuer must be the exact, non-empty 'iss' of assertions, not {issuer!r}"
            raise ConfigurationError(message, parameter="issuer", value=issuer)
        audiences = [audience] if isinstance(audience, str) else list(audience or [])
        if not audiences or not all(isinstance(a, str) and a for a in audiences):
            message = f"audience must be a non-empty string or list of strings, not {audience!r}"
            raise ConfigurationError(message, parameter="audience", value=audience)
        if algorithms is None:
            message = "algorithms must list what the device issuer signs with, such as ['ES256']"
            raise ConfigurationError(message, parameter="algorithms", value=None)
        if (jwks_url is None) == (keys is None):
            message = "pass exactly one of jwks_url= (fetched keys) or keys= (static keys)"
            raise ConfigurationError(message, parameter="jwks_url", value=jwks_url)
        for parameter, claim in (("device_id_claim", device_id_claim), ("user_claim", user_claim)):
            if not isinstance(claim, str) or not claim or "" in claim.split("."):
                message = f"{parameter} must be a claim name or dotted path, not {claim!r}"
                raise ConfigurationError(message, parameter=parameter, value=claim)
        if isinstance(leeway, bool) or not isinstance(leeway, int | float):
            leeway = -1
        if not 0 <= leeway <= _MAX_LEEWAY:
            message = f"leeway must be between 0 and {_MAX_LEEWAY:g} seconds, not {leeway!r}"
            raise ConfigurationError(message, parameter="leeway", value=leeway)
        if max_assertion_lifetime is not None and not max_assertion_lifetime > 0:
            message = (
                f"max_assertion_lifetime must be positive or None, not {max_assertion_lifetime!r}"
            )
            raise ConfigurationError(
                message, parameter="max_assertion_lifetime", value=max_assertion_lifetime
            )
        if not isinstance(max_assertion_bytes, int) or max_assertion_bytes < 64:
            message = f"max_assertion_bytes must be at least 64, not {max_assertion_bytes!r}"
            raise ConfigurationError(
                message, parameter="max_assertion_bytes", value=max_assertion_bytes
            )
        if not isinstance(cache_size, int) or cache_size < 0:
            message = f"cache_size must be 0 (no cache) or more, not {cache_size!r}"
            raise ConfigurationError(message, parameter="cache_size", value=cache_size)
        if not cache_ttl > 0:
            message = f"cache_ttl must be a positive number of seconds, not {cache_ttl!r}"
            raise ConfigurationError(message, parameter="cache_ttl", value=cache_ttl)

        algorithms = [algorithms] if isinstance(algorithms, str) else list(algorithms)
        if jwks_url is not None:
            self.key_set = RemoteKeySet(
                jwks_url, algorithms=algorithms, client=http_client, **dict(jwks_options or {})
            )
        else:
            self.key_set = StaticKeySet(keys, algorithms=algorithms)

        self.issuer = issuer
        self.audience: list[str] = audiences
        self.algorithms = self.key_set.algorithms
        self.device_id_path = tuple(device_id_claim.split("."))
        self.user_path = tuple(user_claim.split("."))
        self.leeway = float(leeway)
        self.max_assertion_lifetime = (
            None if max_assertion_lifetime is None else float(max_assertion_lifetime)
        )
        self.max_assertion_bytes = max_assertion_bytes
        self.cache_ttl = float(cache_ttl)
        self.cache = LRUCache(maxsize=cache_size) if cache_size else None
        self._options: jwt.types.Options = {
            "require": ["exp", "iss", "aud"],
            "verify_signature": True,
            "verify_exp": True,
            "verify_nbf": True,
            "verify_iat": True,
            "verify_aud": True,
            "verify_iss": True,
            "strict_aud": False,
        }
        if leeway > 60:
            warnings.warn(
                f"device assertion leeway of {leeway:g} s accepts expired assertions for over "
                "a minute",
                InsecureConfigurationWarning,
                stacklevel=3,
            )

    # Request path ------------------------------------------------------------------------------

    def verify_cached(self, request: AccessRequest, context: VerificationContext) -> Verdict | None:
        try:
            certificate, token = self._read_credentials(request)
            assertion = None
            if token is not None:
                digest = hashlib.sha256(token.encode()).digest()
                assertion = self._assertion_cached(token, request.time, digest)
                if assertion is None:
                    return None
                if certificate is None and self._judged is not None:
                    return self._judged_verdict(digest, request.time, assertion)
            record = None
            key = self._registry_key(assertion, certificate)
            if key is not None:
                assert self.registry is not None
                try:
                    cached = self.registry.get_cached(key)
                except DeviceRegistryError as error:
                    return Verdict.failed("device_registry_unavailable", str(error)[:200])
                if cached is NOT_CACHED:
                    return None
                record = cached
            return self._judge(request.time, assertion, certificate, record)
        except Deny as error:
            return Verdict.failed(error.reason, error.detail)

    async def verify(self, request: AccessRequest, context: VerificationContext) -> Verdict:
        try:
            certificate, token = self._read_credentials(request)
            assertion = None
            if token is not None:
                assertion = await self._assertion(token, request.time)
            record = None
            key = self._registry_key(assertion, certificate)
            if key is not None:
                assert self.registry is not None
                try:
                    record = await self.registry.get(key)
                except DeviceRegistryError as error:
                    return Verdict.failed("device_registry_unavailable", str(error)[:200])
            return self._judge(request.time, assertion, certificate, record)
        except Deny as error:
            return Verdict.failed(error.reason, error.detail)

    def _read_credentials(
        self, request: AccessRequest
    ) -> tuple[ClientCertificate | None, str | None]:
        """Return the client certificate and the raw assertion, each if accepted and present."""
        certificate = None
        if "certificate" in self.credentials:
            certificate = read_client_certificate(
                request, proxy_header=self.proxy_header, proxy_format=self.proxy_format
            )
        token = None
        if "assertion" in self.credentials:
            values = request.headers.getlist(self.header)
            if len(values) > 1:
                raise Deny("device_assertion_malformed", f"{len(values)} {self.header} headers")
            if values and values[0].strip():
                token = values[0].strip()
                if len(token) > self.max_assertion_bytes:
                    raise Deny("device_assertion_too_large", f"{len(token)} bytes")
        if certificate is None and token is None:
            accepted = " or ".join(sorted(self.credentials))
            raise Deny("device_credential_missing", f"the request carries no device {accepted}")

        return certificate, token

    def _registry_key(
        self, assertion: DeviceAssertion | None, certificate: ClientCertificate | None
    ) -> str | None:
        if self.registry is None:
            return None
        if certificate is not None:
            return certificate.fingerprint_sha256
        return assertion.device_id if assertion is not None else None

    # Assertions --------------------------------------------------------------------------------

    def _judged_verdict(self, digest: bytes, now: float, assertion: DeviceAssertion) -> Verdict:
        """Return the verdict on a verified assertion, judging it on its first request only."""
        judged = self._judged
        assert judged is not None
        assert self.cache is not None
        verdict = judged.get(digest)
        if verdict is None:
            verdict = shared_verdict(self._judge(now, assertion, None, None))
            if len(judged) >= self.cache.maxsize:
                judged.clear()
            judged[digest] = verdict
        return verdict

    def _assertion_cached(
        self, token: str, now: float, digest: bytes | None = None
    ) -> DeviceAssertion | None:
        """Return the verified assertion without I/O, or ``None`` when its key must be fetched."""
        assert self.key_set is not None
        if digest is None:
            digest = hashlib.sha256(token.encode()).digest()
        if self.cache is not None:
            entry = self.cache.get(digest)
            if entry is not None:
                assertion, deadline = entry
                if now < assertion.expires_at and time.monotonic() < deadline:
                    return assertion
                self.cache.pop(digest, None)

        header = self._read_header(token)
        key = self.key_set.lookup_cached(header.get("kid"), header["alg"])
        if key is None:
            return None

        return self._decode(token, digest, key, now)

    async def _assertion(self, token: str, now: float) -> DeviceAssertion:
        assert self.key_set is not None
        # verify_cached has usually verified and cached the assertion already, when only the
        # registry lookup needed I/O.
        cached = self._assertion_cached(token, now)
        if cached is not None:
            return cached
        header = self._read_header(token)
        kid = header.get("kid")
        try:
            key = await self.key_set.get_key(kid, header["alg"])
        except UnknownKeyError:
            raise Deny(
                "device_assertion_unknown_kid", f"no key with kid {str(kid)[:64]!r}"
            ) from None
        except KeySetUnavailableError as error:
            raise Deny("device_assertion_keys_unavailable", error.reason[:200]) from None
        digest = hashlib.sha256(token.encode()).digest()

        return self._decode(token, digest, key, now)

    def _read_header(self, token: str) -> dict[str, Any]:
        try:
            return read_header(token, self.algorithms)
        except TokenProblem as problem:
            raise Deny(f"device_assertion_{problem.problem}", problem.detail) from None

    def _decode(self, token: str, digest: bytes, key: jwt.PyJWK, now: float) -> DeviceAssertion:
        """Verify the signature and claims, then cache and return the assertion."""
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[key.algorithm_name],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options=self._options,
            )
        except jwt.InvalidTokenError as error:
            raise Deny(f"device_assertion_{claim_problem(error)}", str(error)[:200]) from None

        assertion = self._read_claims(claims, now)
        if self.cache is not None:
            lifetime = min(self.cache_ttl, assertion.expires_at - now)
            if lifetime > 0:
                self.cache[digest] = (assertion, time.monotonic() + lifetime)

        return assertion

    def _read_claims(self, claims: Mapping[str, Any], now: float) -> DeviceAssertion:
        """Build the assertion from verified claims, rejecting claims of the wrong type."""
        expires_at = claims["exp"]
        if isinstance(expires_at, bool) or not isinstance(expires_at, int | float):
            raise Deny("device_assertion_invalid_claim", "exp is not a number")
        if self.max_assertion_lifetime is not None:
            issued = claims.get("iat")
            start = issued if isinstance(issued, int | float) and issued <= now else now
            if expires_at - start > self.max_assertion_lifetime + self.leeway:
                detail = (
                    f"valid for {expires_at - start:.0f} s, longer than "
                    f"{self.max_assertion_lifetime:g} s"
                )
                raise Deny("device_assertion_lifetime_too_long", detail)

        device_id = _nested(claims, self.device_id_path)
        if device_id is None:
            claim = ".".join(self.device_id_path)
            raise Deny("device_assertion_missing_claim", f"no {claim} claim with the device id")
        user = _nested(claims, self.user_path)
        os_name = claims.get("os")
        checked_at = claims.get("posture_checked_at")

        for claim, value in (
            (".".join(self.device_id_path), device_id),
            (".".join(self.user_path), user),
            ("os", os_name),
            ("os_version", claims.get("os_version")),
        ):
            if value is not None and (
                not isinstance(value, str) or not value or len(value) > _MAX_CLAIM_CHARS
            ):
                detail = f"{claim} must be a non-empty string of at most {_MAX_CLAIM_CHARS}"
                raise Deny("device_assertion_invalid_claim", detail)
        for claim in ("managed", "disk_encrypted", "screen_lock"):
            if claims.get(claim) is not None and not isinstance(claims[claim], bool):
                raise Deny("device_assertion_invalid_claim", f"{claim} must be true or false")
        if checked_at is not None:
            if isinstance(checked_at, bool) or not isinstance(checked_at, int | float):
                detail = "posture_checked_at must be seconds since the epoch"
                raise Deny("device_assertion_invalid_claim", detail)
            if checked_at > now + self.leeway:
                detail = f"posture_checked_at {checked_at:.0f} is in the future"
                raise Deny("device_assertion_invalid_claim", detail)

        return DeviceAssertion(
            device_id=device_id,
            user=user,
            managed=claims.get("managed"),
            os=os_name.lower() if os_name is not None else None,
            os_version=claims.get("os_version"),
            disk_encrypted=claims.get("disk_encrypted"),
            screen_lock=claims.get("screen_lock"),
            posture_checked_at=None if checked_at is None else float(checked_at),
            expires_at=float(expires_at),
        )

    # Decision ----------------------------------------------------------------------------------

    def _judge(
        self,
        now: float,
        assertion: DeviceAssertion | None,
        certificate: ClientCertificate | None,
        record: DeviceRecord | None,
    ) -> Verdict:
        """Check enrolment, revocation, binding and posture of verified credentials."""
        if self.registry is not None:
            _check_enrolment(now, assertion, certificate, record)
        device_id = assertion.device_id if assertion is not None else _record_id(record)

        if assertion is not None:
            if assertion.user is None:
                detail = f"assertion for device {device_id!r} names no user"
                return Verdict.failed("device_unbound", detail)
            bound_subject = assertion.user
            if record is not None and record.owner is not None and record.owner != bound_subject:
                detail = f"device {device_id!r} is registered to another owner than its assertion"
                return Verdict.failed("device_owner_mismatch", detail)
        elif record is not None and record.owner is not None:
            bound_subject = record.owner
        else:
            detail = f"device {device_id!r} has no owner in the registry"
            return Verdict.failed("device_unbound", detail)

        posture: _Posture = assertion if assertion is not None else record  # type: ignore[assignment]
        failure = self._check_posture(now, device_id, posture)
        if failure is not None:
            return failure

        if assertion is not None and certificate is not None:
            credential = "assertion+certificate"
        else:
            credential = "assertion" if assertion is not None else "certificate"

        return Verdict.passed(
            bound_subject=bound_subject,
            device_id=device_id,
            device_os=posture.os,
            device_os_version=posture.os_version,
            device_managed=posture.managed is True,
            device_credential=credential,
        )

    def _check_posture(self, now: float, device_id: str, posture: _Posture) -> Verdict | None:
        """Return a failed verdict for the first posture requirement the device misses."""
        if self.max_posture_age is not None:
            checked_at = posture.posture_checked_at
            if checked_at is None:
                detail = f"device {device_id!r}: no posture_checked_at"
                return Verdict.failed("device_posture_stale", detail)
            if now - checked_at > self.max_posture_age:
                detail = (
                    f"device {device_id!r}: posture is {now - checked_at:.0f} s old, "
                    f"more than {self.max_posture_age:g} s"
                )
                return Verdict.failed("device_posture_stale", detail)
        if self.require_managed and posture.managed is not True:
            detail = f"device {device_id!r}: managed is {posture.managed!r}"
            return Verdict.failed("device_not_managed", detail)
        if self.min_os_versions is not None:
            failure = self._check_os(device_id, posture.os, posture.os_version)
            if failure is not None:
                return failure
        if self.require_encryption and posture.disk_encrypted is not True:
            detail = f"device {device_id!r}: disk_encrypted is {posture.disk_encrypted!r}"
            return Verdict.failed("device_not_encrypted", detail)
        if self.require_screen_lock and posture.screen_lock is not True:
            detail = f"device {device_id!r}: screen_lock is {posture.screen_lock!r}"
            return Verdict.failed("device_screen_lock_disabled", detail)

        return None

    def _check_os(self, device_id: str, os_name: str | None, version: str | None) -> Verdict | None:
        assert self.min_os_versions is not None
        minimum = self.min_os_versions.get(os_name) if os_name is not None else None
        if minimum is None:
            allowed = ", ".join(sorted(self.min_os_versions))
            detail = f"device {device_id!r}: OS {str(os_name)[:40]!r} is not one of {allowed}"
            return Verdict.failed("device_os_unsupported", detail)
        parsed = parse_version(version)
        if parsed is None:
            detail = f"device {device_id!r}: OS version {str(version)[:40]!r} is not numeric"
            return Verdict.failed("device_os_version_invalid", detail)
        if parsed < minimum[0]:
            detail = f"device {device_id!r}: {os_name} {version} is older than {minimum[1]}"
            return Verdict.failed("device_os_outdated", detail)

        return None


def _check_enrolment(
    now: float,
    assertion: DeviceAssertion | None,
    certificate: ClientCertificate | None,
    record: DeviceRecord | None,
) -> None:
    """Raise `Deny` unless the registry record exists, matches the credentials and is live."""
    if certificate is not None:
        if record is None or certificate.fingerprint_sha256 not in record.certificate_fingerprints:
            detail = f"no device has certificate {certificate.fingerprint_sha256[:16]}..."
            raise Deny("device_unknown", detail)
        if assertion is not None and assertion.device_id != record.device_id:
            detail = (
                f"certificate of device {record.device_id!r}, assertion for device "
                f"{assertion.device_id[:64]!r}"
            )
            raise Deny("device_credential_conflict", detail)
    elif assertion is not None and (record is None or record.device_id != assertion.device_id):
        raise Deny("device_unknown", f"device {assertion.device_id[:64]!r} is not enrolled")
    assert record is not None

    if record.is_revoked(now):
        when = f" at {record.revoked_at:.0f}" if record.revoked_at is not None else ""
        raise Deny("device_revoked", f"device {record.device_id!r} was revoked{when}")


def _record_id(record: DeviceRecord | None) -> str:
    assert record is not None
    return record.device_id


def _check_header(header: object, parameter: str) -> str:
    if not isinstance(header, str) or not _HEADER_NAME.fullmatch(header.lower()):
        message = (
            f"{parameter} must be an HTTP header name such as 'x-device-assertion', not {header!r}"
        )
        raise ConfigurationError(message, parameter=parameter, value=header)

    return header.lower()


def _check_min_os_versions(
    versions: Mapping[str, str] | None,
) -> dict[str, tuple[tuple[int, ...], str]] | None:
    """Parse ``{"macos": "14.2"}`` into lower-case names with parsed and original versions."""
    if versions is None:
        return None
    if not isinstance(versions, Mapping) or not versions:
        message = (
            f"min_os_versions must be a non-empty mapping of OS name to version, not {versions!r}"
        )
        raise ConfigurationError(message, parameter="min_os_versions", value=versions)

    parsed: dict[str, tuple[tuple[int, ...], str]] = {}
    for os_name, version in versions.items():
        if not isinstance(os_name, str) or not os_name.strip():
            message = f"min_os_versions: OS name {os_name!r} must be a non-empty string"
            raise ConfigurationError(message, parameter="min_os_versions", value=os_name)
        minimum = parse_version(version)
        if minimum is None:
            message = (
                f"min_os_versions[{os_name!r}]: {version!r} is not a dotted numeric version "
                "such as '14.2' or '10.0.19045'"
            )
            raise ConfigurationError(message, parameter=f"min_os_versions.{os_name}", value=version)
        parsed[os_name.strip().lower()] = (minimum, version.strip())

    return parsed


def _nested(claims: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = claims
    for part in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value
