# SPDX-License-Identifier: Apache-2.0
"""Key sets for JWT verification: static keys, or a JWKS URL fetched asynchronously and cached."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Iterable, Mapping
from typing import Any

import httpx
import jwt
from jwt.algorithms import get_default_algorithms

from .._urls import is_allowed_url
from ..exceptions import ConfigurationError, KeySetUnavailableError

__all__ = [
    "ASYMMETRIC_ALGORITHMS",
    "HMAC_ALGORITHMS",
    "KeySet",
    "RemoteKeySet",
    "StaticKeySet",
    "UnknownKeyError",
]

logger = logging.getLogger("zerotrust.jwks")

HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
# Which JWK key type, and curve where it matters, each algorithm verifies with.
_KEY_TYPES: dict[str, tuple[str, frozenset[str] | None]] = {
    **{alg: ("RSA", None) for alg in ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")},
    "ES256": ("EC", frozenset({"P-256"})),
    "ES384": ("EC", frozenset({"P-384"})),
    "ES512": ("EC", frozenset({"P-521"})),
    "EdDSA": ("OKP", frozenset({"Ed25519", "Ed448"})),
    "Ed25519": ("OKP", frozenset({"Ed25519"})),
    **{alg: ("oct", None) for alg in HMAC_ALGORITHMS},
}
ASYMMETRIC_ALGORITHMS = frozenset(_KEY_TYPES) - HMAC_ALGORITHMS
_MAX_AGE = re.compile(r"(?:^|[,\s])max-age\s*=\s*\"?(\d{1,10})")
_MIN_HMAC_SECRET_BYTES = 32
_RETRY_DELAY = 5.0


class UnknownKeyError(LookupError):
    """No key in the key set matches the token's ``kid`` and algorithm."""


def check_algorithms(algorithms: Iterable[str]) -> frozenset[str]:
    """Validate an algorithm allow-list and return it as a set."""
    if isinstance(algorithms, str):
        algorithms = [algorithms]
    allowed = frozenset(algorithms)
    if not allowed:
        message = "algorithms must list at least one algorithm, such as ['RS256']"
        raise ConfigurationError(message, parameter="algorithms", value=[])

    supported = get_default_algorithms()
    for alg in allowed:
        if alg not in _KEY_TYPES or alg not in supported:
            message = (
                f"algorithm {alg!r} is not supported: choose from "
                f"{', '.join(sorted(a for a in _KEY_TYPES if a in supported))}"
            )
            raise ConfigurationError(message, parameter="algorithms", value=alg)
    if allowed & HMAC_ALGORITHMS and allowed & ASYMMETRIC_ALGORITHMS:
        message = (
            "algorithms mixes HMAC and public-key algorithms, which lets a public key be used "
            f"as an HMAC secret: {sorted(allowed)}"
        )
        raise ConfigurationError(message, parameter="algorithms", value=sorted(allowed))

    return allowed


def _compatible(jwk: Mapping[str, Any], alg: str) -> bool:
    kty, curves = _KEY_TYPES[alg]
    if jwk.get("kty") != kty:
        return False
    if curves is not None and jwk.get("crv") not in curves:
        return False
    declared = jwk.get("alg")
    if declared is not None and declared != alg:
        return False

    return jwk.get("use") in (None, "sig")


KeyIndex = dict[tuple[str | None, str], list[jwt.PyJWK]]


def _index_keys(
    jwks: Iterable[Mapping[str, Any]], algorithms: frozenset[str], source: str
) -> KeyIndex:
    """Build a ``(kid, alg) -> keys`` index, skipping keys that are invalid or unusable."""
    index: KeyIndex = {}
    for jwk in jwks:
        if not isinstance(jwk, Mapping):
            continue
        kid = jwk.get("kid")
        if kid is not None and not isinstance(kid, str):
            continue
        if "d" in jwk:
            # A published private key is an issuer mistake; verifying needs only the public part.
            logger.warning("skipping key %r from %s: it contains private key material", kid, source)
            continue
        for alg in algorithms:
            if not _compatible(jwk, alg):
                continue
            try:
                key = jwt.PyJWK(dict(jwk), algorithm=alg)
            except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError, KeyError) as error:
                logger.warning("skipping key %r from %s: %s", kid, source, error)
                continue
            index.setdefault((kid, alg), []).append(key)

    return index


def _find(index: KeyIndex, kid: str | None, alg: str) -> jwt.PyJWK | None:
    """
    Return the one key for ``kid`` and ``alg``, or ``None`` when there is none or several.

    A key without a kid may serve tokens with or without one, and a token without a kid may use
    the only key for its algorithm. Whenever more than one key could apply, there is no match:
    guessing between keys would let a token choose which key verifies it.
    """
    keys = index.get((kid, alg))
    if keys is not None:
        return keys[0] if len(keys) == 1 else None

    anonymous = index.get((None, alg), [])
    if len(anonymous) == 1:
        return anonymous[0]
    if kid is None:
        candidates = [key for (_, key_alg), keys in index.items() if key_alg == alg for key in keys]
        if len(candidates) == 1:
            return candidates[0]

    return None


class KeySet:
    """The source of the key for a token's ``kid`` and ``alg``, for a `JWTVerifier`."""

    algorithms: frozenset[str]

    def lookup_cached(self, kid: str | None, alg: str) -> jwt.PyJWK | None:
        """Return the key if it is known now without I/O, else ``None``."""
        raise NotImplementedError

    async def get_key(self, kid: str | None, alg: str) -> jwt.PyJWK:
        """
        Return the key for ``kid`` and ``alg``.

        Raises:
            UnknownKeyError: if no key matches.
            KeySetUnavailableError: if the keys could not be fetched.
        """
        raise NotImplementedError


class StaticKeySet(KeySet):
    """
    Keys given in configuration: JWK dicts, a JWKS dict, PEM text or ``cryptography`` keys.

    Raises:
        ConfigurationError: if a key cannot be parsed, fits none of the algorithms, or is an
            HMAC secret shorter than 32 bytes.
    """

    def __init__(self, keys: Any, *, algorithms: Iterable[str]) -> None:
        self.algorithms = check_algorithms(algorithms)
        jwks = list(_as_jwks(keys, self.algorithms))
        self._index = _index_keys(jwks, self.algorithms, "static keys")
        if not self._index:
            message = f"none of the configured keys can verify {sorted(self.algorithms)}"
            raise ConfigurationError(message, parameter="keys", value=None)

    def lookup_cached(self, kid: str | None, alg: str) -> jwt.PyJWK | None:
        return _find(self._index, kid, alg)

    async def get_key(self, kid: str | None, alg: str) -> jwt.PyJWK:
        key = _find(self._index, kid, alg)
        if key is None:
            raise UnknownKeyError(kid)
        return key


def _as_jwks(keys: Any, algorithms: frozenset[str]) -> Iterable[Mapping[str, Any]]:
    if isinstance(keys, Mapping) and "keys" in keys:
        keys = keys["keys"]
    if isinstance(keys, Mapping | str | bytes) or not isinstance(keys, Iterable):
        keys = [keys]

    for key in keys:
        if isinstance(key, Mapping):
            if "d" in key or (key.get("kty") == "oct" and not algorithms <= HMAC_ALGORITHMS):
                message = "keys must be public keys; a private or secret JWK was given"
                raise ConfigurationError(message, parameter="keys", value="<private key>")
            yield key
        else:
            yield _key_to_jwk(key, algorithms)


def _key_to_jwk(key: Any, algorithms: frozenset[str]) -> Mapping[str, Any]:
    """Convert PEM text, an HMAC secret or a ``cryptography`` key into a public JWK dict."""
    if algorithms <= HMAC_ALGORITHMS:
        secret = key.encode() if isinstance(key, str) else key
        if not isinstance(secret, bytes) or len(secret) < _MIN_HMAC_SECRET_BYTES:
            message = f"an HMAC secret must be at least {_MIN_HMAC_SECRET_BYTES} bytes long"
            raise ConfigurationError(message, parameter="keys", value="<secret>")
        try:
            # PyJWT refuses PEM, SSH and JWK text as an HMAC secret when it verifies: a public
            # key is public, so anyone could sign with it. Refusing it here fails at startup
            # rather than on every request.
            jwt.algorithms.HMACAlgorithm(jwt.algorithms.HMACAlgorithm.SHA256).prepare_key(secret)
        except jwt.InvalidKeyError:
            message = (
                "an HMAC secret must be a random shared secret, not a public key, certificate "
                "or JWK: for a public key, list an asymmetric algorithm such as 'RS256'"
            )
            raise ConfigurationError(message, parameter="keys", value="<secret>") from None
        hmac_jwk: dict[str, Any] = json.loads(jwt.algorithms.HMACAlgorithm.to_jwk(secret))
        return hmac_jwk

    for alg in sorted(algorithms):
        algorithm = get_default_algorithms()[alg]
        try:
            prepared = algorithm.prepare_key(key)
            jwk: dict[str, Any] = json.loads(algorithm.to_jwk(prepared))
        except (ValueError, TypeError, jwt.InvalidKeyError):
            continue
        if jwk.get("d") is not None:
            message = "keys must be public keys; a private key was given"
            raise ConfigurationError(message, parameter="keys", value="<private key>")
        return jwk

    message = f"a configured key cannot be used with any of {sorted(algorithms)}"
    raise ConfigurationError(message, parameter="keys", value="<key>")


def _check_url(url: str) -> str:
    if is_allowed_url(url):
        return url
    message = f"jwks_url {url!r} must use https (plain http is allowed only on loopback)"
    raise ConfigurationError(message, parameter="jwks_url", value=url)


class RemoteKeySet(KeySet):
    """
    A JSON Web Key Set fetched from a URL with ``httpx``, never blocking the event loop.

    The key set is cached for ``Cache-Control: max-age`` seconds, clamped to
    ``[min_ttl, max_ttl]``, or ``ttl`` seconds when the server sends none. When a refresh fails,
    the last good key set stays in use for up to ``max_stale`` seconds. A token with an unknown
    ``kid`` triggers at most one refresh per ``refresh_interval`` seconds, so a flood of
    made-up ``kid`` values cannot hammer the key server. Concurrent requests share one fetch.

    Args:
        url: The JWKS URL; https, or http on a loopback address.
        algorithms: Algorithms whose keys to keep.
        timeout: Seconds for one fetch, connection included.
        ttl: Cache lifetime when the response has no ``max-age``.
        min_ttl: Lower bound for ``max-age``.
        max_ttl: Upper bound for ``max-age``.
        refresh_interval: Minimum seconds between refreshes caused by an unknown ``kid``.
        max_stale: How long the last good key set outlives its expiry while refreshes fail.
        max_bytes: Largest response body accepted.
        max_keys: Most keys accepted from one response.
        client: An ``httpx.AsyncClient`` to use (for proxies or custom TLS); by default a
            short-lived client per fetch that ignores proxy environment variables.
    """

    def __init__(
        self,
        url: str,
        *,
        algorithms: Iterable[str],
        timeout: float = 2.0,
        ttl: float = 300.0,
        min_ttl: float = 60.0,
        max_ttl: float = 86400.0,
        refresh_interval: float = 30.0,
        max_stale: float = 86400.0,
        max_bytes: int = 512 * 1024,
        max_keys: int = 100,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.url = _check_url(url)
        self.algorithms = check_algorithms(algorithms)
        if self.algorithms & HMAC_ALGORITHMS:
            message = (
                "a JWKS publishes public keys, so HMAC algorithms cannot be used with it: "
                f"{sorted(self.algorithms & HMAC_ALGORITHMS)}"
            )
            raise ConfigurationError(message, parameter="algorithms", value=sorted(self.algorithms))
        for parameter, value in (
            ("timeout", timeout),
            ("ttl", ttl),
            ("min_ttl", min_ttl),
            ("max_ttl", max_ttl),
            ("refresh_interval", refresh_interval),
            ("max_bytes", max_bytes),
            ("max_keys", max_keys),
        ):
            if not value > 0:
                message = f"{parameter} must be positive, not {value!r}"
                raise ConfigurationError(message, parameter=parameter, value=value)
        if min_ttl > max_ttl:
            message = f"min_ttl ({min_ttl}) must not exceed max_ttl ({max_ttl})"
            raise ConfigurationError(message, parameter="min_ttl", value=min_ttl)
        if max_stale < 0:
            message = f"max_stale must not be negative, not {max_stale!r}"
            raise ConfigurationError(message, parameter="max_stale", value=max_stale)

        self.timeout = timeout
        self.ttl = ttl
        self.min_ttl = min_ttl
        self.max_ttl = max_ttl
        self.refresh_interval = refresh_interval
        self.max_stale = max_stale
        self.max_bytes = max_bytes
        self.max_keys = max_keys
        self._client = client
        self._index: KeyIndex = {}
        self._fresh_until = 0.0
        self._usable_until = 0.0
        self._last_attempt = float("-inf")
        self._last_error: str | None = None
        self._inflight: tuple[asyncio.AbstractEventLoop, asyncio.Future[None]] | None = None

    @property
    def last_error(self) -> str | None:
        """Why the most recent fetch failed, or ``None`` if it succeeded."""
        return self._last_error

    def lookup_cached(self, kid: str | None, alg: str) -> jwt.PyJWK | None:
        now = time.monotonic()
        if now >= self._fresh_until or now >= self._usable_until:
            return None
        return _find(self._index, kid, alg)

    async def get_key(self, kid: str | None, alg: str) -> jwt.PyJWK:
        now = time.monotonic()
        if now >= self._fresh_until:
            await self.refresh()

        key = _find(self._index, kid, alg) if time.monotonic() < self._usable_until else None
        if (
            key is None
            and self._usable_until > 0
            and time.monotonic() - self._last_attempt >= self.refresh_interval
        ):
            await self.refresh()
            key = _find(self._index, kid, alg)
        if key is not None:
            return key
        if time.monotonic() >= self._usable_until:
            raise KeySetUnavailableError(self.url, self._last_error or "no key set fetched yet")

        raise UnknownKeyError(kid)

    async def refresh(self) -> None:
        """Fetch the key set now, sharing one fetch between concurrent callers. Never raises."""
        loop = asyncio.get_running_loop()
        inflight = self._inflight
        if inflight is not None and inflight[0] is loop and not inflight[1].done():
            await asyncio.shield(inflight[1])
            return

        future: asyncio.Future[None] = loop.create_future()
        self._inflight = (loop, future)
        try:
            await self._fetch()
        finally:
            future.set_result(None)

    async def _fetch(self) -> None:
        self._last_attempt = time.monotonic()
        try:
            body, max_age = await self._download()
            keys = _parse_jwks(body, self.max_keys)
            index = _index_keys(keys, self.algorithms, self.url)
            if not index:
                raise ValueError(f"no usable key for {sorted(self.algorithms)}")
        except Exception as error:  # noqa: BLE001 -- any failure keeps the last good keys
            self._last_error = f"{type(error).__name__}: {error}"[:300]
            logger.warning("refreshing the JWKS from %s failed: %s", self.url, self._last_error)
            # Keep using the last good keys until max_stale runs out, and retry after a short
            # delay rather than on every request, so an outage does not become a fetch storm.
            self._fresh_until = time.monotonic() + min(self.refresh_interval, _RETRY_DELAY)
            return

        lifetime = self.ttl if max_age is None else min(max(max_age, self.min_ttl), self.max_ttl)
        now = time.monotonic()
        self._index = index
        self._fresh_until = now + lifetime
        self._usable_until = now + lifetime + self.max_stale
        self._last_error = None

    async def _download(self) -> tuple[bytes, float | None]:
        client = self._client or httpx.AsyncClient(
            timeout=self.timeout, trust_env=False, follow_redirects=False
        )
        try:
            async with asyncio.timeout(self.timeout):
                async with client.stream(
                    "GET", self.url, headers={"accept": "application/json"}
                ) as response:
                    if response.status_code != 200:
                        raise ValueError(f"HTTP status {response.status_code}")
                    chunks: list[bytes] = []
                    size = 0
                    async for chunk in response.aiter_bytes():
                        size += len(chunk)
                        if size > self.max_bytes:
                            raise ValueError(f"response larger than {self.max_bytes} bytes")
                        chunks.append(chunk)
                    cache_control = response.headers.get("cache-control", "")
        except TimeoutError:
            raise ValueError(f"timed out after {self.timeout:g} s") from None
        finally:
            if self._client is None:
                await client.aclose()

        return b"".join(chunks), _parse_max_age(cache_control)


def _parse_max_age(cache_control: str) -> float | None:
    lowered = cache_control.lower()
    if "no-store" in lowered or "no-cache" in lowered:
        return 0.0
    match = _MAX_AGE.search(lowered)
    return float(match[1]) if match else None


def _parse_jwks(body: bytes, max_keys: int) -> list[Mapping[str, Any]]:
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise ValueError("response is not JSON") from None
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("response is not a JWKS object with a 'keys' list")
    keys: list[Mapping[str, Any]] = document["keys"]
    if len(keys) > max_keys:
        raise ValueError(f"response has {len(keys)} keys, more than {max_keys}")

    return keys
