# SPDX-License-Identifier: Apache-2.0
"""Identity verification with JSON Web Tokens (RFC 7519) signed by a static key or a JWKS."""

from __future__ import annotations

import hashlib
import time
import warnings
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import jwt
from cachetools import LRUCache
from starlette.requests import cookie_parser

from ..exceptions import ConfigurationError, InsecureConfigurationWarning, KeySetUnavailableError
from .base import Principal, Verdict, VerificationContext, Verifier
from .jwks import KeySet, RemoteKeySet, StaticKeySet, UnknownKeyError
from .jws import TokenProblem, claim_problem, read_header

if TYPE_CHECKING:
    import httpx

    from ..request import AccessRequest

__all__ = ["JWTVerifier", "TokenCache", "token_fingerprint"]

_MAX_LEEWAY = 300.0
# Reason codes of this verifier for the problems of `zerotrust.verifiers.jws`.
_REASONS = {
    "malformed": "token_malformed",
    "expired": "token_expired",
    "not_yet_valid": "token_not_yet_valid",
    "invalid": "token_invalid",
}


def token_fingerprint(token: str | bytes) -> str:
    """Return a short, non-reversible identifier of a credential: 16 hex digits of its SHA-256."""
    data = token.encode() if isinstance(token, str) else token
    return hashlib.sha256(data).hexdigest()[:16]


class TokenCache:
    """
    A bounded cache of verified tokens whose entries never outlive the token's ``exp``.

    Keys are SHA-256 digests of the tokens, so the cache holds no token. Entries expire after
    ``ttl`` seconds or at the token's expiry, whichever comes first; the least recently used
    entry is evicted when the cache is full.
    """

    def __init__(self, *, maxsize: int = 10_000, ttl: float = 300.0) -> None:
        if maxsize < 1:
            message = f"token cache maxsize must be at least 1, not {maxsize!r}"
            raise ConfigurationError(message, parameter="cache_size", value=maxsize)
        if not ttl > 0:
            message = f"token cache ttl must be positive, not {ttl!r}"
            raise ConfigurationError(message, parameter="cache_ttl", value=ttl)

        self.ttl = ttl
        # An LRU cache with the deadline stored beside each entry costs a fifth of a TLRUCache
        # lookup, and the request path does one lookup per request.
        self._cache: LRUCache[bytes, tuple[Verdict, float, float]] = LRUCache(maxsize=maxsize)

    def get_verdict(self, digest: bytes, now: float) -> Verdict | None:
        """Return the cached verdict for a token digest, if it is still valid at ``now``."""
        entry = self._cache.get(digest)
        if entry is None:
            return None
        verdict, deadline, expires_at = entry
        if now >= expires_at or time.monotonic() >= deadline:
            self._cache.pop(digest, None)
            return None
        return verdict

    def get(self, digest: bytes) -> Principal | None:
        """Return the cached principal for a token digest, if it is still valid."""
        verdict = self.get_verdict(digest, time.time())
        return verdict.principal if verdict is not None else None

    def put(self, digest: bytes, principal: Principal) -> None:
        lifetime = self.ttl
        expires_at = principal.expires_at if principal.expires_at is not None else float("inf")
        lifetime = min(lifetime, expires_at - time.time())
        if lifetime <= 0:
            return
        verdict = Verdict.passed(principal=principal)
        self._cache[digest] = (verdict, time.monotonic() + lifetime, expires_at)

    def clear(self) -> None:
        self._cache.clear()

    def __len__(self) -> int:
        return len(self._cache)


class JWTVerifier(Verifier):
    """
    Verify a bearer JWT and establish the principal.

    The token comes from ``Authorization: Bearer`` or, if ``cookie`` is set and there is no
    such header, from that cookie. The signature must use one of ``algorithms`` (``none`` is
    never accepted) with a key from ``keys`` or ``jwks_url``. ``exp`` and ``sub`` are required;
    ``iss`` and ``aud`` must match exactly; ``nbf`` and ``iat`` are honoured with ``leeway``.

    Args:
        issuer: The exact ``iss`` value expected.
        audience: The ``aud`` value this service accepts, or several.
        algorithms: The allow-list of signature algorithms, such as ``["RS256"]``.
            HMAC and public-key algorithms cannot be mixed.
        jwks_url: Where to fetch the issuer's JSON Web Key Set.
        keys: Static keys instead of ``jwks_url``: JWK dicts, a JWKS dict, PEM public keys,
            ``cryptography`` public keys, or an HMAC secret of at least 32 bytes.
        leeway: Seconds of clock skew tolerated for ``exp``, ``nbf`` and ``iat``; at most 300.
        scopes_claim: Claim carrying the scopes: a space-separated string (``scope``) or a list
            (``scp``).
        roles_claim: Claim carrying roles; a dotted path such as ``realm_access.roles`` reads a
            nested claim.
        cookie: Cookie name to read the token from when there is no ``Authorization`` header.
        max_token_bytes: Longer tokens are rejected before any parsing.
        cache_size: Maximum number of verified tokens cached; 0 disables the cache.
        cache_ttl: Maximum seconds a verified token stays cached (never past its ``exp``).
        jwks_options: Extra arguments for `RemoteKeySet`, such as ``{"timeout": 1.0}``.
        http_client: An ``httpx.AsyncClient`` for fetching the JWKS.

    .. warning::
       Never build ``algorithms`` from the token itself; list what your issuer signs with.

    Reason codes: ``token_missing``, ``malformed_authorization``, ``token_too_large``,
    ``token_malformed``, ``algorithm_not_allowed``, ``unsupported_critical_header``,
    ``unknown_kid``, ``jwks_unavailable``, ``invalid_signature``, ``token_expired``,
    ``token_not_yet_valid``, ``invalid_issuer``, ``invalid_audience``, ``missing_claim``,
    ``invalid_claim``, ``token_invalid``.
    """

    name = "jwt"
    kind = "identity"

    def __init__(
        self,
        *,
        issuer: str,
        audience: str | Iterable[str],
        algorithms: Iterable[str],
        jwks_url: str | None = None,
        keys: Any = None,
        leeway: float = 30.0,
        scopes_claim: str = "scope",
        roles_claim: str = "roles",
        cookie: str | None = None,
        max_token_bytes: int = 8192,
        cache_size: int = 10_000,
        cache_ttl: float = 300.0,
        jwks_options: Mapping[str, Any] | None = None,
        http_client: httpx.AsyncClient | None = None,
        name: str | None = None,
        timeout: float = 3.0,
        required: bool = True,
    ) -> None:
        super().__init__(name=name, timeout=timeout, required=required)
        if not isinstance(issuer, str) or not issuer:
            message = f"issuer must be the exact, non-empty 'iss' value, not {issuer!r}"
            raise ConfigurationError(message, parameter="issuer", value=issuer)
        audiences = [audience] if isinstance(audience, str) else list(audience or [])
        if not audiences or not all(isinstance(a, str) and a for a in audiences):
            message = f"audience must be a non-empty string or list of strings, not {audience!r}"
            raise ConfigurationError(message, parameter="audience", value=audience)
        if (jwks_url is None) == (keys is None):
            message = "pass exactly one of jwks_url= (fetched keys) or keys= (static keys)"
            raise ConfigurationError(message, parameter="jwks_url", value=jwks_url)
        if not 0 <= leeway <= _MAX_LEEWAY:
            message = f"leeway must be between 0 and {_MAX_LEEWAY:g} seconds, not {leeway!r}"
            raise ConfigurationError(message, parameter="leeway", value=leeway)
        if max_token_bytes < 64:
            message = f"max_token_bytes must be at least 64, not {max_token_bytes!r}"
            raise ConfigurationError(message, parameter="max_token_bytes", value=max_token_bytes)

        algorithms = [algorithms] if isinstance(algorithms, str) else list(algorithms)
        self.key_set: KeySet
        if jwks_url is not None:
            self.key_set = RemoteKeySet(
                jwks_url, algorithms=algorithms, client=http_client, **dict(jwks_options or {})
            )
        else:
            self.key_set = StaticKeySet(keys, algorithms=algorithms)

        self.issuer = issuer
        self.audience: list[str] = audiences
        self.algorithms = self.key_set.algorithms
        self.leeway = float(leeway)
        self.scopes_claim = scopes_claim
        self.roles_path = tuple(roles_claim.split("."))
        self.cookie = cookie
        self.max_token_bytes = max_token_bytes
        self.cache = TokenCache(maxsize=cache_size, ttl=cache_ttl) if cache_size else None
        self._challenge_missing: Mapping[str, str] = {}
        self._options: jwt.types.Options = {
            "require": ["exp", "sub", "iss", "aud"],
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
                f"JWT leeway of {leeway:g} s accepts expired tokens for over a minute",
                InsecureConfigurationWarning,
                stacklevel=2,
            )

    def extract_token(self, request: AccessRequest) -> str | Verdict:
        """Return the raw token, or a failed verdict when it is missing or malformed."""
        values = request.headers.getlist("authorization")
        if len(values) > 1:
            return Verdict.failed("malformed_authorization", "more than one Authorization header")
        if values:
            scheme, _, token = values[0].strip().partition(" ")
            if scheme.lower() != "bearer":
                return Verdict.failed(
                    "malformed_authorization", f"scheme {scheme[:20]!r} is not Bearer"
                )
            token = token.strip()
        elif self.cookie is not None:
            cookie_header = request.headers.get("cookie")
            token = cookie_parser(cookie_header).get(self.cookie, "") if cookie_header else ""
        else:
            token = ""

        if not token:
            return Verdict.failed("token_missing", challenge=self._challenge_missing)
        if len(token) > self.max_token_bytes:
            digest = hashlib.sha256(token.encode()).digest()
            return _failed("token_too_large", f"{len(token)} bytes", digest)

        return token

    def verify_cached(self, request: AccessRequest, context: VerificationContext) -> Verdict | None:
        token = self.extract_token(request)
        if isinstance(token, Verdict):
            return token

        digest = hashlib.sha256(token.encode()).digest()
        if self.cache is not None:
            cached = self.cache.get_verdict(digest, request.time)
            if cached is not None:
                return cached

        # Only verified tokens are cached, so the format check can wait for a cache miss.
        header = self._read_header(token, digest)
        if isinstance(header, Verdict):
            return header
        key = self.key_set.lookup_cached(header.get("kid"), header["alg"])
        if key is None:
            return None

        return self._decode(token, digest, key)

    async def verify(self, request: AccessRequest, context: VerificationContext) -> Verdict:
        token = self.extract_token(request)
        if isinstance(token, Verdict):
            return token
        digest = hashlib.sha256(token.encode()).digest()
        header = self._read_header(token, digest)
        if isinstance(header, Verdict):
            return header

        kid = header.get("kid")
        try:
            key = await self.key_set.get_key(kid, header["alg"])
        except UnknownKeyError:
            return _failed("unknown_kid", f"no key with kid {str(kid)[:64]!r}", digest)
        except KeySetUnavailableError as error:
            # The token may be fine, so the challenge carries no invalid_token error.
            return Verdict.failed(
                "jwks_unavailable",
                error.reason,
                challenge={},
                credential_fingerprint=digest.hex()[:16],
            )

        return self._decode(token, digest, key)

    def _read_header(self, token: str, digest: bytes) -> dict[str, Any] | Verdict:
        try:
            return read_header(token, self.algorithms)
        except TokenProblem as problem:
            return _failed(_reason(problem.problem), problem.detail, digest)

    def _decode(self, token: str, digest: bytes, key: jwt.PyJWK) -> Verdict:
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
            return _failed(_reason(claim_problem(error)), str(error)[:200], digest)

        subject = claims.get("sub")
        expires = claims.get("exp")
        if not isinstance(subject, str) or not subject:
            return _failed("invalid_claim", "sub is not a non-empty string", digest)
        # PyJWT reads a numeric string as exp too, but the token cache needs a number to stop
        # serving the token at its expiry, and RFC 7519 defines exp as a JSON number.
        if isinstance(expires, bool) or not isinstance(expires, int | float):
            return _failed("invalid_claim", "exp is not a number", digest)
        scopes = _string_set(claims.get(self.scopes_claim))
        roles = _string_set(_nested(claims, self.roles_path))
        if scopes is None or roles is None:
            return _failed("invalid_claim", "scope or role claim has an unexpected type", digest)

        principal = Principal(
            subject=subject,
            issuer=claims.get("iss"),
            scopes=scopes,
            roles=roles,
            claims=claims,
            expires_at=float(expires),
            credential_fingerprint=digest.hex()[:16],
            # A malformed authentication claim counts as absent, so step-up checks fail closed.
            auth_time=_number(claims.get("auth_time")),
            acr=acr if isinstance(acr := claims.get("acr"), str) else None,
            amr=_methods(claims.get("amr")),
        )
        if self.cache is not None:
            self.cache.put(digest, principal)

        return Verdict.passed(principal=principal)


def _failed(reason: str, detail: str, digest: bytes) -> Verdict:
    # The fingerprint lets detectors correlate failures of one token without logging it.
    return Verdict.failed(reason, detail, credential_fingerprint=digest.hex()[:16])


def _reason(problem: str) -> str:
    return _REASONS.get(problem, problem)


def _methods(value: Any) -> frozenset[str]:
    # RFC 8176 defines amr as a JSON array of strings; anything else counts as no methods.
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return frozenset(value)
    return frozenset()


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _nested(claims: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = claims
    for part in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _string_set(value: Any) -> frozenset[str] | None:
    """Read a claim that is a space-separated string or a list of strings."""
    if value is None:
        return frozenset()
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return frozenset(value)
    return None
