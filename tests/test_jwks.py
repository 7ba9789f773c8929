# SPDX-License-Identifier: Apache-2.0
"""Tests for key sets: the algorithm allow-list, static keys and JWKS from local servers."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from zerotrust.exceptions import ConfigurationError, KeySetUnavailableError
from zerotrust.policy import Segment
from zerotrust.request import AccessRequest
from zerotrust.testing import TokenIssuer, serve
from zerotrust.verifiers.base import VerificationContext
from zerotrust.verifiers.identity import JWTVerifier, token_fingerprint
from zerotrust.verifiers.jwks import RemoteKeySet, StaticKeySet, UnknownKeyError, check_algorithms

HMAC_SECRET = "0123456789abcdef0123456789abcdef"  # exactly the 32-byte minimum


class KeyServer:
    """
    A JWKS endpoint whose response a test can change while it is being served.

    Attributes:
        hits: How many requests reached the endpoint.
        status: HTTP status of the next responses.
        body: Body of the next responses.
        headers: Headers of the next responses.
        delay: Seconds the handler waits before it responds.
    """

    def __init__(self, jwks: dict[str, Any]) -> None:
        self.hits = 0
        self.status = 200
        self.body = json.dumps(jwks).encode()
        self.headers: dict[str, str] = {}
        self.delay = 0.0

    def publish(self, jwks: dict[str, Any]) -> None:
        self.body = json.dumps(jwks).encode()

    async def handle(self, _request: Request) -> Response:
        self.hits += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        return Response(
            self.body, status_code=self.status, headers=self.headers, media_type="application/json"
        )

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/jwks.json", self.handle)])


@pytest.fixture(name="key_server")
def fixture_key_server(issuer: TokenIssuer) -> KeyServer:
    """A key server publishing the issuer's keys, not started yet."""
    return KeyServer(issuer.jwks())


@pytest.fixture(name="key_url")
def fixture_key_url(key_server: KeyServer) -> Iterator[str]:
    """The key server's JWKS URL, served by uvicorn on 127.0.0.1 for the test."""
    with serve(key_server.app()) as base_url:
        yield f"{base_url}/jwks.json"


@pytest.fixture(name="refused_url")
def fixture_refused_url() -> Iterator[str]:
    """A loopback URL whose port is reserved but not listening, so connections are refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        yield f"http://127.0.0.1:{port}/jwks.json"


def make_key_set(url: str, **options: Any) -> RemoteKeySet:
    settings: dict[str, Any] = {"algorithms": ["RS256", "ES256", "EdDSA"], "timeout": 5.0}
    settings.update(options)

    return RemoteKeySet(url, **settings)


def make_request(token: str) -> AccessRequest:
    return AccessRequest(
        method="GET",
        path="/api/items",
        raw_path="/api/items",
        host="api.test",
        headers=Headers({"authorization": f"Bearer {token}"}),
        client_ip=None,
        peer_ip=None,
        request_id="test-request",
        time=time.time(),
    )


@pytest.fixture(name="context")
def fixture_context() -> VerificationContext:
    return VerificationContext(Segment("api", paths=["/api/"], public=True))


def rotated_keys() -> tuple[TokenIssuer, dict[str, Any]]:
    """Return a new issuer and its JWKS, with the key published under kid ``RS256-2``."""
    new_issuer = TokenIssuer(algorithms=("RS256",))
    jwks = new_issuer.jwks()
    jwks["keys"][0]["kid"] = "RS256-2"

    return new_issuer, jwks


class TestCheckAlgorithms:
    def test_list(self) -> None:
        """A list of algorithms becomes a frozenset."""
        assert frozenset({"RS256", "EdDSA"}) == check_algorithms(["RS256", "EdDSA", "RS256"])

    def test_string(self) -> None:
        """A single algorithm name is one algorithm, not a set of letters."""
        assert frozenset({"ES256"}) == check_algorithms("ES256")

    def test_hmac_only(self) -> None:
        """HMAC algorithms alone are accepted."""
        assert frozenset({"HS256", "HS512"}) == check_algorithms(["HS256", "HS512"])

    @pytest.mark.parametrize(
        ("algorithms", "text"),
        [
            ([], "at least one algorithm"),
            (["none"], "'none'"),
            (["NONE"], "'NONE'"),
            (["rs256"], "'rs256'"),
            (["XS256"], "'XS256'"),
            (["RS256", "HS256"], "['HS256', 'RS256']"),
            (["ES256", "HS512"], "['ES256', 'HS512']"),
        ],
    )
    def test_invalid(self, algorithms: list[str], text: str) -> None:
        """An empty, unknown or mixed allow-list raises ConfigurationError quoting it."""
        with pytest.raises(ConfigurationError) as info:
            check_algorithms(algorithms)

        assert "algorithms" == info.value.parameter
        assert text in str(info.value)


class TestStaticKeySet:
    async def test_jwks_dict(self, issuer: TokenIssuer) -> None:
        """A JWKS dict provides each key under its kid and algorithm."""
        key_set = StaticKeySet(issuer.jwks(), algorithms=["RS256", "ES256", "EdDSA"])

        for alg in ("RS256", "ES256", "EdDSA"):
            key = await key_set.get_key(issuer.kid(alg), alg)
            assert issuer.kid(alg) == key.key_id
            assert key is key_set.lookup_cached(issuer.kid(alg), alg)

    async def test_keeps_allowed_algorithms(self, issuer: TokenIssuer) -> None:
        """Keys for algorithms outside the allow-list are not used."""
        key_set = StaticKeySet(issuer.jwks(), algorithms=["ES256"])

        assert key_set.lookup_cached(issuer.kid("RS256"), "RS256") is None

    async def test_unknown_kid(self, issuer: TokenIssuer) -> None:
        """get_key raises UnknownKeyError for a kid that is not configured."""
        key_set = StaticKeySet(issuer.jwks(), algorithms=["RS256"])

        with pytest.raises(UnknownKeyError):
            await key_set.get_key("RS256-9", "RS256")

    async def test_key_for_other_algorithm(self, issuer: TokenIssuer) -> None:
        """A kid is not served for an algorithm its key does not fit."""
        key_set = StaticKeySet(issuer.jwks(), algorithms=["RS256", "ES256"])

        with pytest.raises(UnknownKeyError):
            await key_set.get_key(issuer.kid("RS256"), "ES256")

    def test_pem_key_without_kid(self, issuer: TokenIssuer) -> None:
        """A PEM key has no kid and serves tokens with or without one."""
        pem = (
            issuer.private_keys["ES256"]
            .public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        key_set = StaticKeySet(pem.decode(), algorithms=["ES256"])

        assert key_set.lookup_cached(None, "ES256") is not None
        assert key_set.lookup_cached("any-kid", "ES256") is not None

    def test_public_key_object(self, issuer: TokenIssuer) -> None:
        """A cryptography public key object is accepted."""
        key_set = StaticKeySet(issuer.private_keys["EdDSA"].public_key(), algorithms=["EdDSA"])

        assert key_set.lookup_cached(None, "EdDSA") is not None

    def test_no_guess_between_anonymous_keys(self, issuer: TokenIssuer) -> None:
        """With two keys without a kid, no key is picked for a token's kid."""
        public_keys = [TokenIssuer(algorithms=("ES256",)).private_keys["ES256"].public_key()]
        public_keys.append(issuer.private_keys["ES256"].public_key())
        key_set = StaticKeySet(public_keys, algorithms=["ES256"])

        assert key_set.lookup_cached("ES256-1", "ES256") is None
        assert key_set.lookup_cached(None, "ES256") is None

    def test_hmac_secret(self) -> None:
        """An HMAC secret of 32 bytes is accepted."""
        key_set = StaticKeySet(HMAC_SECRET, algorithms=["HS256"])

        assert key_set.lookup_cached(None, "HS256") is not None

    def test_encryption_key_skipped(self, issuer: TokenIssuer) -> None:
        """A key marked for encryption ("use": "enc") is not used for signatures."""
        jwks = issuer.jwks()
        for jwk in jwks["keys"]:
            jwk["use"] = "enc"

        with pytest.raises(ConfigurationError) as info:
            StaticKeySet(jwks, algorithms=["RS256"])

        assert "['RS256']" in str(info.value)

    def test_declared_alg_mismatch(self, issuer: TokenIssuer) -> None:
        """A key that declares RS256 is not used for PS256."""
        with pytest.raises(ConfigurationError) as info:
            StaticKeySet(issuer.jwks(), algorithms=["PS256"])

        assert "['PS256']" in str(info.value)

    def test_private_key(self, issuer: TokenIssuer) -> None:
        """A private key object raises ConfigurationError."""
        with pytest.raises(ConfigurationError) as info:
            StaticKeySet(issuer.private_keys["ES256"], algorithms=["ES256"])

        assert "private key" in str(info.value)

    def test_unusable_key(self) -> None:
        """A value that is not a key raises ConfigurationError."""
        with pytest.raises(ConfigurationError) as info:
            StaticKeySet("not a key", algorithms=["RS256"])

        assert "keys" == info.value.parameter

    def test_broken_jwk(self) -> None:
        """A JWK with invalid parameters raises ConfigurationError, not a PyJWT error."""
        broken = {"kty": "RSA", "kid": "broken", "alg": "RS256", "n": "AQ", "e": "AQAB"}

        with pytest.raises(ConfigurationError):
            StaticKeySet([broken], algorithms=["RS256"])


@pytest.mark.served
class TestRemoteKeySetCaching:
    async def test_fetched_once(
        self, issuer: TokenIssuer, key_server: KeyServer, key_url: str
    ) -> None:
        """Keys are fetched on first use and then served from the cache."""
        key_set = make_key_set(key_url)

        first = await key_set.get_key(issuer.kid("RS256"), "RS256")
        second = await key_set.get_key(issuer.kid("ES256"), "ES256")

        assert 1 == key_server.hits
        assert issuer.kid("RS256") == first.key_id
        assert issuer.kid("ES256") == second.key_id
        assert key_set.last_error is None

    async def test_lookup_cached_before_fetch(self, issuer: TokenIssuer, key_url: str) -> None:
        """lookup_cached returns None until the key set has been fetched, and never fetches."""
        key_set = make_key_set(key_url)

        before = key_set.lookup_cached(issuer.kid("RS256"), "RS256")
        await key_set.get_key(issuer.kid("RS256"), "RS256")
        after = key_set.lookup_cached(issuer.kid("RS256"), "RS256")

        assert before is None
        assert after is not None

    async def test_max_age_honoured(
        self, issuer: TokenIssuer, key_server: KeyServer, key_url: str
    ) -> None:
        """Cache-Control max-age sets the key set lifetime in place of ttl."""
        key_server.headers = {"cache-control": "public, max-age=1"}
        key_set = make_key_set(key_url, ttl=0.1, min_ttl=0.01, max_ttl=60)
        kid = issuer.kid("RS256")

        await key_set.get_key(kid, "RS256")
        await asyncio.sleep(0.3)
        fresh_after_ttl = key_set.lookup_cached(kid, "RS256")
        await asyncio.sleep(0.8)
        fresh_after_max_age = key_set.lookup_cached(kid, "RS256")
        await key_set.get_key(kid, "RS256")

        assert fresh_after_ttl is not None
        assert fresh_after_max_age is None
        assert 2 == key_server.hits

    @pytest.mark.parametrize("cache_control", ["max-age=0", "no-cache", "no-store"])
    async def test_min_ttl_clamp(
        self, issuer: TokenIssuer, key_server: KeyServer, key_url: str, cache_control: str
    ) -> None:
        """A max-age below min_ttl, or no-cache, keeps the keys for min_ttl."""
        key_server.headers = {"cache-control": cache_control}
        key_set = make_key_set(key_url, ttl=0.01, min_ttl=0.4, max_ttl=60)
        kid = issuer.kid("RS256")

        await key_set.get_key(kid, "RS256")
        await asyncio.sleep(0.1)
        await key_set.get_key(kid, "RS256")
        hits_within_min_ttl = key_server.hits
        await asyncio.sleep(0.4)
        await key_set.get_key(kid, "RS256")

        assert 1 == hits_within_min_ttl
        assert 2 == key_server.hits

    async def test_max_ttl_clamp(
        self, issuer: TokenIssuer, key_server: KeyServer, key_url: str
    ) -> None:
        """A max-age above max_ttl keeps the keys for max_ttl only."""
        key_server.headers = {"cache-control": "max-age=86400"}
        key_set = make_key_set(key_url, min_ttl=0.01, max_ttl=0.2)
        kid = issuer.kid("RS256")

        await key_set.get_key(kid, "RS256")
        await asyncio.sleep(0.3)
        await key_set.get_key(kid, "RS256")

        assert 2 == key_server.hits

    async def test_ttl_without_max_age(
        self, issuer: TokenIssuer, key_server: KeyServer, key_url: str
    ) -> None:
        """Without Cache-Control, the keys are kept for ttl seconds."""
        key_set = make_key_set(key_url, ttl=0.2)
        kid = issuer.kid("RS256")

        await key_set.get_key(kid, "RS256")
        await key_set.get_key(kid, "RS256")
        hits_within_ttl = key_server.hits
        await asyncio.sleep(0.3)
        await key_set.get_key(kid, "RS256")

        assert 1 == hits_within_ttl
        assert 2 == key_server.hits

    async def test_key_verifies_token(self, issuer: TokenIssuer, jwks_url: str) -> None:
        """A key fetched from the shared issuer endpoint verifies the issuer's token."""
        key = await make_key_set(jwks_url).get_key(issuer.kid("EdDSA"), "EdDSA")

        claims = jwt.decode(issuer.token(alg="EdDSA"), key, algorithms=["EdDSA"], audience="api")

        assert "alice" == claims["sub"]

    async def test_concurrent_calls_share_fetch(
        self, issuer: TokenIssuer, key_server: KeyServer, key_url: str
    ) -> None:
        """Concurrent get_key calls on a cold key set wait for one shared fetch."""
        key_server.delay = 0.2
        key_set = make_key_set(key_url)
        kid = issuer.kid("ES256")

        keys = await asyncio.gather(*(key_set.get_key(kid, "ES256") for _ in range(20)))

        assert 1 == key_server.hits
        assert {kid} == {key.key_id for key in keys}


@pytest.mark.served
class TestRemoteKeySetUnknownKid:
    async def test_no_refresh_within_interval(
        self, issuer: TokenIssuer, key_server: KeyServer, key_url: str
    ) -> None:
        """An unknown kid right after a fetch fails without another fetch."""
        key_set = make_key_set(key_url, refresh_interval=10)
        await key_set.get_key(issuer.kid("RS256"), "RS256")

        for _ in range(10):
            with pytest.raises(UnknownKeyError):
                await key_set.get_key("made-up", "RS256")

        assert 1 == key_server.hits

    async def test_one_refresh_per_interval(
        self, issuer: TokenIssuer, key_server: KeyServer, key_url: str
    ) -> None:
        """A burst of unknown kids after refresh_interval causes exactly one refresh."""
        key_set = make_key_set(key_url, refresh_interval=0.2)
        await key_set.get_key(issuer.kid("RS256"), "RS256")
        await asyncio.sleep(0.25)

        for index in range(10):
            with pytest.raises(UnknownKeyError):
                await key_set.get_key(f"made-up-{index}", "RS256")

        assert 2 == key_server.hits

    async def test_concurrent_unknown_kids_share_refresh(
        self, issuer: TokenIssuer, key_server: KeyServer, key_url: str
    ) -> None:
        """Concurrent lookups of unknown kids share one refresh."""
        key_set = make_key_set(key_url, refresh_interval=0.2)
        await key_set.get_key(issuer.kid("RS256"), "RS256")
        await asyncio.sleep(0.25)
        key_server.delay = 0.2

        results = await asyncio.gather(
            *(key_set.get_key(f"made-up-{index}", "RS256") for index in range(10)),
            return_exceptions=True,
        )

        assert 2 == key_server.hits
        assert all(isinstance(result, UnknownKeyError) for result in results)

    async def test_key_rotation(
        self,
        issuer: TokenIssuer,
        key_server: KeyServer,
        key_url: str,
        context: VerificationContext,
    ) -> None:
        """A token signed with a newly published key verifies once the interval allows a refresh."""
        # Generate the new key first: RSA key generation can outlast the refresh interval.
        new_issuer, new_jwks = rotated_keys()
        new_request = make_request(new_issuer.token(alg="RS256", kid="RS256-2"))
        verifier = JWTVerifier(
            issuer=issuer.issuer,
            audience="api",
            algorithms=["RS256"],
            jwks_url=key_url,
            jwks_options={"refresh_interval": 0.3},
        )

        old_verdict = await verifier.verify(make_request(issuer.token(alg="RS256")), context)
        key_server.publish(new_jwks)
        too_early = await verifier.verify(new_request, context)
        await asyncio.sleep(0.35)
        after_interval = await verifier.verify(new_request, context)

        assert "pass" == old_verdict.outcome
        assert "unknown_kid" == too_early.reason
        assert "pass" == after_interval.outcome
        assert 2 == key_server.hits


@pytest.mark.served
class TestRemoteKeySetFailures:
    async def test_server_down_from_start(self, refused_url: str) -> None:
        """With no key set ever fetched, get_key raises KeySetUnavailableError."""
        key_set = make_key_set(refused_url)

        with pytest.raises(KeySetUnavailableError) as info:
            await key_set.get_key("RS256-1", "RS256")

        assert refused_url == info.value.url
        assert key_set.last_error is not None
        assert key_set.last_error.startswith("ConnectError")
        assert key_set.last_error == info.value.reason

    async def test_server_down_verdict(
        self, issuer: TokenIssuer, refused_url: str, context: VerificationContext
    ) -> None:
        """The verifier fails with jwks_unavailable and the token's fingerprint."""
        verifier = JWTVerifier(
            issuer=issuer.issuer, audience="api", algorithms=["RS256"], jwks_url=refused_url
        )
        token = issuer.token(alg="RS256")

        cached = verifier.verify_cached(make_request(token), context)
        verdict = await verifier.verify(make_request(token), context)

        assert cached is None
        assert "jwks_unavailable" == verdict.reason
        assert token_fingerprint(token) == verdict.facts.get("credential_fingerprint")
        assert token not in repr(verdict)
        # A key-server outage says nothing about the token, so the challenge has no error.
        assert verdict.challenge is not None
        assert {} == dict(verdict.challenge)

    async def test_stale_keys_until_max_stale(
        self, issuer: TokenIssuer, key_server: KeyServer
    ) -> None:
        """After the server goes down, the last good keys serve until max_stale runs out."""
        kid = issuer.kid("RS256")
        with serve(key_server.app()) as base_url:
            key_set = make_key_set(
                f"{base_url}/jwks.json", ttl=0.1, refresh_interval=0.1, max_stale=0.8
            )
            await key_set.get_key(kid, "RS256")
            fetched_at = time.monotonic()

        await asyncio.sleep(max(0.0, fetched_at + 0.15 - time.monotonic()))
        stale_key = await key_set.get_key(kid, "RS256")
        stale_error = key_set.last_error
        await asyncio.sleep(max(0.0, fetched_at + 1.0 - time.monotonic()))

        with pytest.raises(KeySetUnavailableError):
            await key_set.get_key(kid, "RS256")
        assert kid == stale_key.key_id
        assert stale_error is not None
        assert stale_error.startswith("ConnectError")

    async def test_stale_verdict(
        self, issuer: TokenIssuer, key_server: KeyServer, context: VerificationContext
    ) -> None:
        """A verifier keeps passing tokens on stale keys while the key server is down."""
        token = issuer.token(alg="ES256")
        with serve(key_server.app()) as base_url:
            verifier = JWTVerifier(
                issuer=issuer.issuer,
                audience="api",
                algorithms=["ES256"],
                jwks_url=f"{base_url}/jwks.json",
                # A long timeout, so a busy machine cannot make the one good fetch fail.
                jwks_options={"ttl": 0.1, "refresh_interval": 0.1, "timeout": 10.0},
                cache_size=0,
            )
            first = await verifier.verify(make_request(token), context)
            assert "pass" == first.outcome

        await asyncio.sleep(0.15)
        verdict = await verifier.verify(make_request(token), context)

        assert "pass" == verdict.outcome
        assert verifier.key_set.last_error is not None  # type: ignore[attr-defined]

    @pytest.mark.parametrize(
        ("status", "body", "options", "error"),
        [
            pytest.param(500, b'{"keys": []}', {}, "HTTP status 500", id="http-500"),
            pytest.param(404, b"not found", {}, "HTTP status 404", id="http-404"),
            pytest.param(200, b"\x00\xff\xfe garbage", {}, "not JSON", id="garbage"),
            pytest.param(200, b"<html>login</html>", {}, "not JSON", id="html"),
            pytest.param(200, b'{"key": []}', {}, "'keys' list", id="no-keys-member"),
            pytest.param(200, b'{"keys": {}}', {}, "'keys' list", id="keys-not-list"),
            pytest.param(200, b"[]", {}, "'keys' list", id="json-array"),
            pytest.param(200, b'{"keys": []}', {}, "no usable key", id="empty-keys"),
            pytest.param(
                200,
                b'{"keys": [{"kty": "RSA", "kid": "x", "n": "AQAB", "e": "AQAB", "use": "enc"}]}',
                {},
                "no usable key",
                id="only-encryption-key",
            ),
            pytest.param(
                200,
                json.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0"}] * 3}).encode(),
                {"max_keys": 2},
                "3 keys, more than 2",
                id="too-many-keys",
            ),
            pytest.param(
                200,
                b'{"keys": []}' + b" " * 200,
                {"max_bytes": 100},
                "larger than 100 bytes",
                id="body-over-max-bytes",
            ),
        ],
    )
    async def test_bad_response(
        self,
        key_server: KeyServer,
        key_url: str,
        status: int,
        body: bytes,
        options: dict[str, Any],
        error: str,
    ) -> None:
        """A bad response fails with KeySetUnavailableError and a clear last_error."""
        key_server.status = status
        key_server.body = body
        key_set = make_key_set(key_url, **options)

        with pytest.raises(KeySetUnavailableError) as info:
            await key_set.get_key("RS256-1", "RS256")

        assert key_set.last_error is not None
        assert error in key_set.last_error
        assert key_set.last_error == info.value.reason
        assert 1 == key_server.hits

    async def test_redirect_not_followed(self, issuer: TokenIssuer) -> None:
        """A redirect, even to a valid JWKS, is a failure: the configured URL is the only source."""
        good = KeyServer(issuer.jwks())

        async def redirect(_request: Request) -> Response:
            return Response(status_code=302, headers={"location": target})

        with (
            serve(good.app()) as good_url,
            serve(Starlette(routes=[Route("/jwks.json", redirect)])) as redirect_url,
        ):
            target = f"{good_url}/jwks.json"
            key_set = make_key_set(f"{redirect_url}/jwks.json")

            with pytest.raises(KeySetUnavailableError):
                await key_set.get_key(issuer.kid("RS256"), "RS256")

        assert 0 == good.hits
        assert "HTTP status 302" in (key_set.last_error or "")

    async def test_slow_server_times_out(self, key_server: KeyServer, key_url: str) -> None:
        """A server slower than timeout fails after about timeout seconds."""
        key_server.delay = 0.8
        key_set = make_key_set(key_url, timeout=0.2)

        started = time.monotonic()
        with pytest.raises(KeySetUnavailableError):
            await key_set.get_key("RS256-1", "RS256")
        elapsed = time.monotonic() - started

        assert elapsed < 0.6
        assert key_set.last_error is not None
        assert "timed out" in key_set.last_error.lower() or "Timeout" in key_set.last_error

    async def test_no_fetch_storm(self, key_server: KeyServer, key_url: str) -> None:
        """While the server fails, many lookups cause one fetch until the retry delay passes."""
        key_server.status = 500
        key_set = make_key_set(key_url)

        for _ in range(20):
            with pytest.raises(KeySetUnavailableError):
                await key_set.get_key("RS256-1", "RS256")

        assert 1 == key_server.hits

    async def test_retry_after_interval(
        self, issuer: TokenIssuer, key_server: KeyServer, key_url: str
    ) -> None:
        """A failed fetch is retried after refresh_interval, and a success clears last_error."""
        key_server.status = 500
        key_set = make_key_set(key_url, refresh_interval=0.2)
        with pytest.raises(KeySetUnavailableError):
            await key_set.get_key(issuer.kid("RS256"), "RS256")
        key_server.status = 200
        await asyncio.sleep(0.25)

        key = await key_set.get_key(issuer.kid("RS256"), "RS256")

        assert issuer.kid("RS256") == key.key_id
        assert key_set.last_error is None
        assert 2 == key_server.hits

    async def test_stale_no_fetch_storm(
        self, issuer: TokenIssuer, key_server: KeyServer, key_url: str
    ) -> None:
        """With stale keys and a failing server, many lookups cause one failed fetch."""
        key_set = make_key_set(key_url, ttl=0.1)
        kid = issuer.kid("RS256")
        await key_set.get_key(kid, "RS256")
        key_server.status = 500
        await asyncio.sleep(0.15)

        for _ in range(20):
            await key_set.get_key(kid, "RS256")

        assert 2 == key_server.hits
        assert "HTTP status 500" in (key_set.last_error or "")

    async def test_invalid_key_skipped(
        self, issuer: TokenIssuer, key_server: KeyServer, key_url: str
    ) -> None:
        """A broken key in the set is skipped and the valid keys are still served."""
        jwks = issuer.jwks()
        jwks["keys"].append({"kty": "RSA", "kid": "broken", "alg": "RS256", "n": "!", "e": "?"})
        jwks["keys"].append("not an object")
        key_server.publish(jwks)
        key_set = make_key_set(key_url)

        key = await key_set.get_key(issuer.kid("RS256"), "RS256")

        assert issuer.kid("RS256") == key.key_id
        with pytest.raises(UnknownKeyError):
            await key_set.get_key("broken", "RS256")


class TestRemoteKeySetConfiguration:
    @pytest.mark.parametrize(
        "url",
        [
            "http://idp.example/jwks",
            "http://10.0.0.1/jwks",
            "http://localhost.example/jwks",
            "http://127.0.0.1.nip.io/jwks",
            "file:///etc/jwks.json",
            "https:///jwks",
            "jwks.json",
        ],
    )
    def test_url_rejected(self, url: str) -> None:
        """Plain http to a non-loopback host, and other schemes, raise without connecting."""
        with pytest.raises(ConfigurationError) as info:
            make_key_set(url)

        assert "jwks_url" == info.value.parameter
        assert repr(url) in str(info.value)

    @pytest.mark.parametrize(
        ("options", "parameter", "text"),
        [
            ({"timeout": 0}, "timeout", "0"),
            ({"ttl": -1}, "ttl", "-1"),
            ({"min_ttl": 0}, "min_ttl", "0"),
            ({"max_ttl": 0}, "max_ttl", "0"),
            ({"refresh_interval": 0}, "refresh_interval", "0"),
            ({"max_bytes": 0}, "max_bytes", "0"),
            ({"max_keys": 0}, "max_keys", "0"),
            ({"min_ttl": 10, "max_ttl": 5}, "min_ttl", "10"),
            ({"max_stale": -1}, "max_stale", "-1"),
        ],
    )
    def test_invalid_options(self, options: dict[str, Any], parameter: str, text: str) -> None:
        """A non-positive limit or inverted TTL bounds raise ConfigurationError naming the value."""
        with pytest.raises(ConfigurationError) as info:
            make_key_set("https://idp.example/jwks", **options)

        assert parameter == info.value.parameter
        assert text in str(info.value)

    def test_hmac_rejected(self) -> None:
        """A key set fetched from a URL rejects HMAC algorithms, whose keys are secrets."""
        with pytest.raises(ConfigurationError):
            make_key_set("https://idp.example/jwks", algorithms=["HS256"])

    def test_no_fetch_at_construction(self) -> None:
        """Constructing a key set does no I/O: lookups return None until a fetch."""
        key_set = make_key_set("https://idp.example/jwks")

        assert key_set.lookup_cached("RS256-1", "RS256") is None
        assert key_set.last_error is None
