# SPDX-License-Identifier: Apache-2.0
"""
Attack class: forged, altered and replayed bearer tokens.

Each case presents a hostile JWT to a Starlette route protected by `JWTVerifier`, through the
real middleware, and expects a 401 or 403 with a precise reason code, an app that never ran
and an event that carries the token's fingerprint, never the token. The cases follow the
bypasses that JWT libraries have shipped: ``alg: none``, HMAC keyed with the public key
(algorithm confusion), ``kid`` injection, keys named by the token itself (``jku``, ``x5u``,
``jwk``, ``x5c``), ``crit``, ECDSA signatures of zeros (CVE-2022-21449), lax time and
audience checks, oversized or deeply nested input, and grants reused after revocation.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import hashlib
import hmac
import itertools
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from jwt.algorithms import get_default_algorithms
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from zerotrust import (
    ConfigurationError,
    GrantBroker,
    GrantVerifier,
    JWTVerifier,
    MemoryGrantStore,
    MemorySink,
    Segment,
    ZeroTrustMiddleware,
)
from zerotrust.grants import generate_signing_key
from zerotrust.testing import TokenIssuer, capture_events, serve
from zerotrust.verifiers.identity import token_fingerprint

from .support import AUDIENCE, asgi_call, encode_json, encode_segment, http_scope, sign_raw

# The order n of the P-256 group (SEC 2, section 2.4.2).
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
GRANT_HEADER = "x-zerotrust-grant"


# Key material ------------------------------------------------------------------------------------


@functools.cache
def attacker_keys() -> dict[str, Any]:
    """Private keys that the attacker owns and the service has never seen."""
    return {
        "RS256": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ES256": ec.generate_private_key(ec.SECP256R1()),
    }


def public_jwk(private_key: Any, alg: str, kid: str) -> dict[str, Any]:
    jwk: dict[str, Any] = json.loads(get_default_algorithms()[alg].to_jwk(private_key.public_key()))
    jwk.update(kid=kid, alg=alg, use="sig")
    return jwk


def self_signed_pem(private_key: Any) -> str:
    """Return a self-signed certificate for ``private_key``, as an attacker would make one."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "issuer.test")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(private_key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


def claims_for(issuer: TokenIssuer, **overrides: Any) -> dict[str, Any]:
    """Return valid claims for the protected route; an override set to ``None`` removes a claim."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": issuer.issuer,
        "sub": "mallory",
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 300,
        "scope": "read",
    }
    claims.update(overrides)
    return {name: value for name, value in claims.items() if value is not None}


def header_for(alg: str = "RS256", **overrides: Any) -> dict[str, Any]:
    header: dict[str, Any] = {"alg": alg, "typ": "JWT", "kid": f"{alg}-1"}
    header.update(overrides)
    return {name: value for name, value in header.items() if value is not None}


def sign_with(private_key: Any, header: dict[str, Any], claims: dict[str, Any], alg: str) -> str:
    signing_input = f"{encode_json(header)}.{encode_json(claims)}"
    signature = get_default_algorithms()[alg].sign(signing_input.encode(), private_key)
    return f"{signing_input}.{encode_segment(signature)}"


def hmac_token(secret: bytes, claims: dict[str, Any], kid: str | None = "RS256-1") -> str:
    """Return an HS256 token keyed with ``secret``, such as a published public key."""
    header = header_for("HS256", kid=kid)
    signing_input = f"{encode_json(header)}.{encode_json(claims)}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{encode_segment(signature)}"


def public_key_forms(issuer: TokenIssuer) -> dict[str, bytes]:
    """Every form in which the issuer's public keys are published or easy to derive."""
    forms: dict[str, bytes] = {}
    for alg in ("RS256", "ES256"):
        public_key = issuer.private_keys[alg].public_key()
        forms[f"{alg}-spki-pem"] = public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        forms[f"{alg}-openssh"] = public_key.public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        jwk = public_jwk(issuer.private_keys[alg], alg, f"{alg}-1")
        forms[f"{alg}-jwk-json"] = json.dumps(jwk).encode()
        forms[f"{alg}-jwk-compact"] = json.dumps(jwk, separators=(",", ":")).encode()
    forms["RS256-pkcs1-pem"] = (
        issuer.private_keys["RS256"]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1)
    )
    forms["jwks-json"] = json.dumps(issuer.jwks()).encode()
    return forms


# The protected app ------------------------------------------------------------------------------


class Protected:
    """A route under ``/api`` behind one identity verifier, and the requests that reached it."""

    def __init__(
        self,
        verifier: JWTVerifier,
        *extra: Any,
        roles: list[str] | None = None,
        keys_have_kid: bool = True,
    ) -> None:
        self.reached: list[str | None] = []
        # A key configured without a kid (PEM text) verifies tokens whatever kid they name, so
        # a made-up kid then fails on the signature instead of the key lookup.
        self.unknown_kid_reason = "unknown_kid" if keys_have_kid else "invalid_signature"

        async def handler(request: Request) -> JSONResponse:
            self.reached.append(request.headers.get("authorization"))
            return JSONResponse({"ok": True})

        app = Starlette(routes=[Route("/api/{rest:path}", handler)])
        segment = Segment("api", paths=["/api/"], verifiers=[verifier, *extra], roles=roles or [])
        self.app = ZeroTrustMiddleware(app, policy=[segment], events=MemorySink())

    async def send(
        self, token: str | None, headers: dict[str, str] | None = None
    ) -> tuple[httpx.Response, dict[str, Any]]:
        """Send one GET with ``token``; return the response and the access event."""
        all_headers = dict(headers or {})
        if token is not None:
            all_headers["authorization"] = f"Bearer {token}"
        transport = httpx.ASGITransport(app=self.app)
        with capture_events() as events:
            async with httpx.AsyncClient(transport=transport, base_url="http://app.test") as client:
                response = await client.get("/api/items", headers=all_headers)
        access = [event for event in events if event["event"] == "access"]
        assert 1 == len(access)

        return response, access[0]

    async def expect_denied(self, token: str, reason: str, status: int = 401) -> dict[str, Any]:
        """Assert a denial with ``reason``, an untouched app and an event without the token."""
        self.reached.clear()

        response, event = await self.send(token)

        assert status == response.status_code
        assert reason in event["reasons"]
        assert "deny" == event["decision"]
        assert [] == self.reached
        rendered = json.dumps(event, default=str)
        assert token not in rendered
        if len(token) <= 8192:
            assert token_fingerprint(token) in rendered
        return event


def static_verifier(issuer: TokenIssuer, **options: Any) -> JWTVerifier:
    settings: dict[str, Any] = {
        "issuer": issuer.issuer,
        "audience": AUDIENCE,
        "algorithms": ["RS256", "ES256"],
        "keys": issuer.jwks(),
    }
    settings.update(options)
    return JWTVerifier(**settings)


@pytest.fixture(name="remote_verifier", scope="module")
def fixture_remote_verifier(issuer: TokenIssuer, jwks_url: str) -> JWTVerifier:
    """One verifier on the served JWKS for the module, so the key set is fetched once."""
    # A generous timeout keeps a loaded test machine from turning a slow fetch into a denial.
    return static_verifier(issuer, keys=None, jwks_url=jwks_url, jwks_options={"timeout": 10.0})


@pytest.fixture(name="protected", params=["jwks-dict", "pem", "jwks-url"])
def fixture_protected(
    request: pytest.FixtureRequest, issuer: TokenIssuer, remote_verifier: JWTVerifier
) -> Protected:
    """The protected route, with the issuer's keys as a JWKS dict, PEM text or a served JWKS."""
    if request.param == "jwks-dict":
        verifier = static_verifier(issuer)
    elif request.param == "pem":
        pem = [
            issuer.private_keys[alg]
            .public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            for alg in ("RS256", "ES256")
        ]
        return Protected(static_verifier(issuer, keys=pem), keys_have_kid=False)
    else:
        verifier = remote_verifier
    return Protected(verifier)


# Tests ------------------------------------------------------------------------------------------


class TestBaseline:
    async def test_valid_token_passes(self, issuer: TokenIssuer, protected: Protected) -> None:
        """A correctly signed token reaches the app, so every denial below is the guard's doing."""
        token = sign_raw(issuer, header_for(), claims_for(issuer))

        response, event = await protected.send(token)

        assert 200 == response.status_code
        assert "allow" == event["decision"]
        assert 1 == len(protected.reached)


NONE_SPELLINGS = sorted(
    {"".join(letters) for letters in itertools.product(*zip("none", "NONE", strict=True))}
)


class TestAlgNone:
    @pytest.mark.parametrize("alg", NONE_SPELLINGS)
    async def test_unsigned(self, issuer: TokenIssuer, protected: Protected, alg: str) -> None:
        """An unsigned token fails in every case spelling of ``none``."""
        token = f"{encode_json(header_for(alg, kid=None))}.{encode_json(claims_for(issuer))}."

        await protected.expect_denied(token, "algorithm_not_allowed")

    @pytest.mark.parametrize("alg", ["none", "None", "none ", " none", "none\u0000", "", None, 0])
    async def test_signature_kept(
        self, issuer: TokenIssuer, protected: Protected, alg: object
    ) -> None:
        """A ``none`` variant with a real signature left in place still fails."""
        valid = sign_raw(issuer, header_for(), claims_for(issuer))
        header = {"alg": alg, "typ": "JWT", "kid": "RS256-1"}
        token = f"{encode_json(header)}.{valid.split('.', 1)[1]}"

        await protected.expect_denied(token, "algorithm_not_allowed")

    def test_all_spellings_listed(self) -> None:
        """The table above contains all 16 case spellings of ``none``."""
        assert 16 == len(NONE_SPELLINGS)


class TestAlgorithmConfusion:
    @pytest.mark.parametrize(
        "form",
        [
            "RS256-spki-pem",
            "RS256-pkcs1-pem",
            "RS256-openssh",
            "RS256-jwk-json",
            "RS256-jwk-compact",
            "ES256-spki-pem",
            "ES256-openssh",
            "ES256-jwk-json",
            "ES256-jwk-compact",
            "jwks-json",
        ],
    )
    @pytest.mark.parametrize("kid", ["RS256-1", "ES256-1", None])
    async def test_hmac_keyed_with_public_key(
        self, issuer: TokenIssuer, protected: Protected, form: str, kid: str | None
    ) -> None:
        """HS256 keyed with any form of the public key fails on the algorithm allow-list."""
        secret = public_key_forms(issuer)[form]

        await protected.expect_denied(
            hmac_token(secret, claims_for(issuer), kid), "algorithm_not_allowed"
        )

    @pytest.mark.parametrize(
        "form",
        ["RS256-spki-pem", "RS256-pkcs1-pem", "RS256-openssh", "ES256-jwk-json", "jwks-json"],
    )
    def test_public_key_as_hmac_secret_rejected(self, issuer: TokenIssuer, form: str) -> None:
        """Configuring a public key as an HMAC secret raises at construction."""
        secret = public_key_forms(issuer)[form]

        with pytest.raises(ConfigurationError, match="not a public key"):
            static_verifier(issuer, algorithms=["HS256"], keys=secret)
        with pytest.raises(ConfigurationError, match="not a public key"):
            static_verifier(issuer, algorithms=["HS256"], keys=secret.decode())

    def test_mixed_families_rejected(self, issuer: TokenIssuer) -> None:
        """An allow-list that mixes HMAC and public-key algorithms raises at construction."""
        with pytest.raises(ConfigurationError, match="mixes HMAC"):
            static_verifier(issuer, algorithms=["RS256", "HS256"])

    def test_hmac_with_jwks_rejected(self, issuer: TokenIssuer) -> None:
        """HMAC with a JWKS URL raises, since a JWKS publishes only public keys."""
        with pytest.raises(ConfigurationError, match="HMAC"):
            static_verifier(
                issuer, algorithms=["HS256"], keys=None, jwks_url="https://issuer.test/jwks"
            )

    async def test_other_allowed_algorithm(self, issuer: TokenIssuer) -> None:
        """A token signed with an algorithm outside a one-algorithm allow-list fails."""
        protected = Protected(static_verifier(issuer, algorithms=["ES256"]))
        token = sign_raw(issuer, header_for("RS256"), claims_for(issuer))

        await protected.expect_denied(token, "algorithm_not_allowed")


class TestKeyId:
    @pytest.mark.parametrize(
        "kid",
        [
            "../../../../../../dev/null",
            "/dev/null",
            "..\\..\\..\\windows\\win.ini",
            "RS256-1/../RS256-1",
            "RS256-1\u0000",
            "RS256-1 ",
            "' OR '1'='1",
            "RS256-1' UNION SELECT 'secret' --",
            "x'; DROP TABLE keys; --",
            "http://127.0.0.1:9/key.pem",
            "file:///etc/hostname",
            "|cat /etc/hostname",
            "$(id)",
            "",
            "A" * 2000,
        ],
    )
    async def test_hostile_kid(self, issuer: TokenIssuer, protected: Protected, kid: str) -> None:
        """A kid is only a lookup key: any hostile value is an unknown key, or too large."""
        token = sign_with(
            attacker_keys()["RS256"], header_for(kid=kid), claims_for(issuer), "RS256"
        )
        reason = "token_malformed" if len(kid) > 1000 else protected.unknown_kid_reason

        await protected.expect_denied(token, reason)

    @pytest.mark.parametrize("kid", [7, None, ["RS256-1"], {"$ne": ""}, True])
    async def test_kid_types(self, issuer: TokenIssuer, protected: Protected, kid: object) -> None:
        """A kid that is not a string is malformed, and a JSON null kid is invalid."""
        header = {"alg": "RS256", "typ": "JWT", "kid": kid}
        token = sign_with(attacker_keys()["RS256"], header, claims_for(issuer), "RS256")
        reason = "token_invalid" if kid is None else "token_malformed"

        await protected.expect_denied(token, reason)

    async def test_real_kid_foreign_key(self, issuer: TokenIssuer, protected: Protected) -> None:
        """A token that names the real kid but is signed by another key fails its signature."""
        token = sign_with(
            attacker_keys()["ES256"], header_for("ES256"), claims_for(issuer), "ES256"
        )

        await protected.expect_denied(token, "invalid_signature")


class KeyServer:
    """A loopback HTTP server that serves the attacker's keys and records every request."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        keys = attacker_keys()
        self.jwks = {"keys": [public_jwk(keys["RS256"], "RS256", "attacker-1")]}
        self.certificate = self_signed_pem(keys["RS256"])

        async def anything(request: Request) -> Response:
            self.requests.append(request.url.path)
            if request.url.path.endswith(".json"):
                return JSONResponse(self.jwks)
            return Response(self.certificate, media_type="application/x-pem-file")

        self.app = Starlette(routes=[Route("/{rest:path}", anything)])


@pytest.fixture(name="key_server", scope="module")
def fixture_key_server() -> Iterator[tuple[KeyServer, str]]:
    server = KeyServer()
    with serve(server.app) as base_url:
        yield server, base_url


def embedded_key_headers(server: KeyServer, base_url: str) -> dict[str, dict[str, Any]]:
    keys = attacker_keys()
    certificate_der = x509.load_pem_x509_certificate(server.certificate.encode()).public_bytes(
        serialization.Encoding.DER
    )
    x5c = [encode_segment(certificate_der).replace("-", "+").replace("_", "/")]
    return {
        "jku": {"jku": f"{base_url}/jwks.json"},
        "x5u": {"x5u": f"{base_url}/cert.pem"},
        "jwk": {"jwk": public_jwk(keys["RS256"], "RS256", "attacker-1")},
        "x5c": {"x5c": x5c},
        "all": {
            "jku": f"{base_url}/jwks.json",
            "x5u": f"{base_url}/cert.pem",
            "jwk": public_jwk(keys["RS256"], "RS256", "attacker-1"),
            "x5c": x5c,
        },
    }


class TestEmbeddedKeys:
    @pytest.mark.parametrize("parameter", ["jku", "x5u", "jwk", "x5c", "all"])
    @pytest.mark.parametrize("kid", ["attacker-1", "RS256-1"])
    async def test_key_from_token_ignored(
        self,
        issuer: TokenIssuer,
        protected: Protected,
        key_server: tuple[KeyServer, str],
        parameter: str,
        kid: str,
    ) -> None:
        """A token signed by a key it names itself fails, and the named URL is never fetched."""
        server, base_url = key_server
        server.requests.clear()
        header = {**header_for(kid=kid), **embedded_key_headers(server, base_url)[parameter]}
        token = sign_with(attacker_keys()["RS256"], header, claims_for(issuer), "RS256")
        reason = protected.unknown_kid_reason if kid == "attacker-1" else "invalid_signature"

        await protected.expect_denied(token, reason)
        await asyncio.sleep(0.05)  # a fetch started in the background would show up by now

        assert [] == server.requests

    @pytest.mark.parametrize("parameter", ["jku", "x5u", "all"])
    async def test_genuine_token_with_urls(
        self,
        issuer: TokenIssuer,
        protected: Protected,
        key_server: tuple[KeyServer, str],
        parameter: str,
    ) -> None:
        """A genuine token that also names key URLs passes without anything being fetched."""
        server, base_url = key_server
        server.requests.clear()
        header = {**header_for(), **embedded_key_headers(server, base_url)[parameter]}
        token = sign_raw(issuer, header, claims_for(issuer))

        response, _ = await protected.send(token)

        assert 200 == response.status_code
        assert [] == server.requests


class TestCritical:
    @pytest.mark.parametrize(
        ("extra", "reason"),
        [
            pytest.param({"crit": ["b64"], "b64": False}, "unsupported_critical_header", id="b64"),
            pytest.param({"crit": ["exp"], "exp": 0}, "unsupported_critical_header", id="exp"),
            pytest.param({"crit": ["jku"], "jku": "x"}, "unsupported_critical_header", id="jku"),
            pytest.param({"crit": ["zz"]}, "unsupported_critical_header", id="absent-name"),
            pytest.param({"crit": "b64", "b64": False}, "unsupported_critical_header", id="string"),
            pytest.param({"crit": [1]}, "unsupported_critical_header", id="number-in-list"),
            pytest.param({"crit": {"b64": 1}}, "unsupported_critical_header", id="object"),
            # RFC 7515 forbids an empty list; PyJWT rejects it after the signature check.
            pytest.param({"crit": []}, "token_invalid", id="empty-list"),
        ],
    )
    async def test_critical_header(
        self, issuer: TokenIssuer, protected: Protected, extra: dict[str, Any], reason: str
    ) -> None:
        """A genuine token with a critical header zerotrust does not understand fails."""
        token = sign_raw(issuer, {**header_for(), **extra}, claims_for(issuer))

        await protected.expect_denied(token, reason)


class TestEcdsaSignatures:
    @pytest.mark.parametrize(
        ("r", "s"),
        [
            pytest.param(0, 0, id="r0-s0"),
            pytest.param(0, 1, id="r0"),
            pytest.param(1, 0, id="s0"),
            pytest.param(P256_ORDER, 1, id="r-order"),
            pytest.param(1, P256_ORDER, id="s-order"),
            pytest.param(P256_ORDER, P256_ORDER, id="r-s-order"),
            pytest.param(P256_ORDER, 0, id="r-order-s0"),
            pytest.param(1, 1, id="r1-s1"),
        ],
    )
    async def test_degenerate_signature(
        self, issuer: TokenIssuer, protected: Protected, r: int, s: int
    ) -> None:
        """An ES256 signature with r or s zero or equal to the group order fails."""
        signing_input = f"{encode_json(header_for('ES256'))}.{encode_json(claims_for(issuer))}"
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")

        await protected.expect_denied(
            f"{signing_input}.{encode_segment(signature)}", "invalid_signature"
        )

    @pytest.mark.parametrize("length", [0, 1, 63, 65, 70])
    async def test_wrong_length(
        self, issuer: TokenIssuer, protected: Protected, length: int
    ) -> None:
        """An ES256 signature that is not 64 bytes, such as a DER one, fails."""
        signing_input = f"{encode_json(header_for('ES256'))}.{encode_json(claims_for(issuer))}"
        signature = encode_segment(bytes([1]) * length)
        token = f"{signing_input}.{signature}"
        await protected.expect_denied(token, "invalid_signature")


class TestTimeClaims:
    @pytest.mark.parametrize(
        ("claims", "reason"),
        [
            pytest.param({"exp": -100}, "token_expired", id="expired-long-ago"),
            pytest.param({"exp": "now"}, "token_malformed", id="exp-word"),
            pytest.param({"exp": [1]}, "token_malformed", id="exp-list"),
            pytest.param({"exp": True}, "token_expired", id="exp-true"),
            pytest.param({"exp": None}, "missing_claim", id="exp-missing"),
            pytest.param({"nbf": "soon"}, "token_malformed", id="nbf-word"),
            pytest.param({"iat": "today"}, "invalid_claim", id="iat-word"),
        ],
    )
    async def test_bad_time_claim(
        self, issuer: TokenIssuer, protected: Protected, claims: dict[str, Any], reason: str
    ) -> None:
        """A genuine token with a missing, wrong-typed or past time claim fails."""
        await protected.expect_denied(
            sign_raw(issuer, header_for(), claims_for(issuer, **claims)), reason
        )

    @pytest.mark.parametrize(
        ("offset", "claim", "reason"),
        [
            pytest.param(-31, "exp", "token_expired", id="expired-beyond-leeway"),
            pytest.param(31, "nbf", "token_not_yet_valid", id="nbf-beyond-leeway"),
            pytest.param(31, "iat", "token_not_yet_valid", id="iat-beyond-leeway"),
        ],
    )
    async def test_outside_leeway(
        self, issuer: TokenIssuer, protected: Protected, offset: int, claim: str, reason: str
    ) -> None:
        """A token just outside the 30 seconds of leeway fails."""
        claims = claims_for(issuer, **{claim: int(time.time()) + offset})

        await protected.expect_denied(sign_raw(issuer, header_for(), claims), reason)

    async def test_numeric_string_exp(self, issuer: TokenIssuer, protected: Protected) -> None:
        """A numeric string exp fails, so the cache never outlives an expiry it cannot read."""
        claims = claims_for(issuer, exp=str(int(time.time()) + 5))

        await protected.expect_denied(sign_raw(issuer, header_for(), claims), "invalid_claim")


class TestAudienceAndIssuer:
    @pytest.mark.parametrize(
        ("claims", "reason"),
        [
            # Audience: only an exact member of a list of strings matches
            pytest.param({"aud": "ap"}, "invalid_audience", id="aud-prefix"),
            pytest.param({"aud": "apis"}, "invalid_audience", id="aud-extended"),
            pytest.param({"aud": "my-api"}, "invalid_audience", id="aud-contains"),
            pytest.param({"aud": "API"}, "invalid_audience", id="aud-case"),
            pytest.param({"aud": " api"}, "invalid_audience", id="aud-space"),
            pytest.param({"aud": "api\u0000"}, "invalid_audience", id="aud-nul"),
            pytest.param({"aud": "api other"}, "invalid_audience", id="aud-space-list"),
            pytest.param({"aud": ["api", 1]}, "invalid_audience", id="aud-list-number"),
            pytest.param({"aud": [1, "api"]}, "invalid_audience", id="aud-number-first"),
            pytest.param({"aud": ["api", None]}, "invalid_audience", id="aud-list-null"),
            pytest.param({"aud": ["api", ["api"]]}, "invalid_audience", id="aud-nested-list"),
            pytest.param({"aud": {"api": True}}, "invalid_audience", id="aud-object"),
            pytest.param({"aud": 1}, "invalid_audience", id="aud-number"),
            pytest.param({"aud": []}, "missing_claim", id="aud-empty-list"),
            # Issuer: only the exact string matches
            pytest.param({"iss": "https://issuer.tes"}, "invalid_issuer", id="iss-prefix"),
            pytest.param({"iss": "https://issuer.test.evil"}, "invalid_issuer", id="iss-extended"),
            pytest.param({"iss": "https://issuer.test/"}, "invalid_issuer", id="iss-slash"),
            pytest.param(
                {"iss": "https://evil/https://issuer.test"}, "invalid_issuer", id="iss-contains"
            ),
            pytest.param({"iss": "HTTPS://ISSUER.TEST"}, "invalid_issuer", id="iss-case"),
            pytest.param({"iss": ["https://issuer.test"]}, "invalid_issuer", id="iss-list"),
            pytest.param(
                {"iss": ["x", "https://issuer.test"]}, "invalid_issuer", id="iss-list-second"
            ),
            pytest.param({"iss": {"https://issuer.test": 1}}, "invalid_issuer", id="iss-object"),
            pytest.param({"iss": 1}, "invalid_issuer", id="iss-number"),
            # Subject
            pytest.param({"sub": ["root"]}, "invalid_claim", id="sub-list"),
            pytest.param({"sub": None}, "missing_claim", id="sub-missing"),
        ],
    )
    async def test_near_miss(
        self, issuer: TokenIssuer, protected: Protected, claims: dict[str, Any], reason: str
    ) -> None:
        """A genuine token for an almost-matching audience or issuer fails."""
        assert "https://issuer.test" == issuer.issuer

        await protected.expect_denied(
            sign_raw(issuer, header_for(), claims_for(issuer, **claims)), reason
        )


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


OVERSIZED: dict[str, Callable[[TokenIssuer], str]] = {
    "9-kib-token": lambda i: sign_raw(i, header_for(), claims_for(i, pad="x" * 9000)),
    "1-mib-token": lambda i: "eyJ" + "A" * (1 << 20),
    "header-nested-arrays": lambda i: f"{encode_segment(nested(1000).encode())}.e30.c2ln",
    "header-nested-in-object": lambda i: (
        encode_segment(('{"alg":"RS256","x":' + nested(700) + "}").encode()) + ".e30.c2ln"
    ),
    "header-over-2-kib": lambda i: (
        encode_json({"alg": "RS256", "kid": "RS256-1", "pad": "x" * 3000}) + ".e30.c2ln"
    ),
    "payload-nested-unsigned": lambda i: (
        f"{encode_json(header_for())}.{encode_segment(nested(2900).encode())}.c2ln"
    ),
    "payload-nested-signed": lambda i: sign_raw(i, header_for(), json.loads(nested(50))),
    "many-dots": lambda i: "a." * 4000,
    "huge-kid": lambda i: (
        encode_segment(b'{"alg":"RS256","kid":"' + b"9" * 1400 + b'"}') + ".e30.c2ln"
    ),
}
OVERSIZED_REASONS = {
    "9-kib-token": "token_too_large",
    "1-mib-token": "token_too_large",
    "header-nested-arrays": "token_malformed",
    "header-nested-in-object": "invalid_signature",
    "header-over-2-kib": "token_malformed",
    "payload-nested-unsigned": "invalid_signature",
    "payload-nested-signed": "token_malformed",
    "many-dots": "token_malformed",
    "huge-kid": "unknown_kid",
}


class TestOversizedInput:
    @pytest.mark.parametrize("case", sorted(OVERSIZED))
    async def test_denied(self, issuer: TokenIssuer, protected: Protected, case: str) -> None:
        """Huge or deeply nested tokens are denied with a reason, not a crash."""
        reason = OVERSIZED_REASONS[case]
        if reason == "unknown_kid":
            reason = protected.unknown_kid_reason

        await protected.expect_denied(OVERSIZED[case](issuer), reason)

    @pytest.mark.parametrize("case", sorted(OVERSIZED))
    async def test_fast(self, issuer: TokenIssuer, protected: Protected, case: str) -> None:
        """Twenty denials of a huge or deeply nested token take under a second of CPU time."""
        token = OVERSIZED[case](issuer)
        scope = http_scope("/api/items", headers=[(b"authorization", f"Bearer {token}".encode())])
        await asgi_call(protected.app, dict(scope))

        # CPU time of this process, unlike wall-clock time, does not grow with machine load.
        started = time.process_time()
        for _ in range(20):
            sent = await asgi_call(protected.app, dict(scope))
        elapsed = time.process_time() - started

        assert 401 == sent[0]["status"]
        assert elapsed < 1.0


class TestRemoteKeySetFlood:
    async def test_made_up_kids_refresh_once(self, issuer: TokenIssuer) -> None:
        """Fifty tokens with made-up kids cause at most one refresh of the JWKS."""
        fetches: list[str] = []
        jwks_app = issuer.jwks_app()

        async def counting(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http":
                fetches.append(scope["path"])
            await jwks_app(scope, receive, send)

        with serve(counting) as base_url:
            verifier = static_verifier(
                issuer, keys=None, jwks_url=f"{base_url}/.well-known/jwks.json"
            )
            protected = Protected(verifier)
            for number in range(50):
                token = sign_raw(issuer, header_for(kid=f"made-up-{number}"), claims_for(issuer))
                await protected.expect_denied(token, "unknown_kid")

        assert 1 <= len(fetches) <= 2


class TestGrantReplay:
    async def test_revoked_grant(self, issuer: TokenIssuer) -> None:
        """A grant that worked once is denied on its next use after revocation."""
        store = MemoryGrantStore()
        broker = GrantBroker(signing_key=generate_signing_key(), store=store)
        grants = GrantVerifier(keys=broker.public_jwks(), store=store)
        protected = Protected(static_verifier(issuer), grants, roles=["admin"])
        issued = broker.mint(
            subject="bob",
            segment="api",
            methods=["GET"],
            paths=["/api/"],
            reason="INC-7: read the item list",
            requested_by="bob",
        )
        access_token = issuer.token("bob", audience=AUDIENCE)
        headers = {GRANT_HEADER: issued.token}

        before, _ = await protected.send(access_token, headers)
        broker.revoke(issued.grant.grant_id, revoked_by="alice")
        protected.reached.clear()
        after, event = await protected.send(access_token, headers)

        assert 200 == before.status_code
        assert 403 == after.status_code
        assert "grant_revoked" in event["reasons"]
        assert [] == protected.reached
        assert issued.token not in json.dumps(event, default=str)

    async def test_grant_of_other_subject(self, issuer: TokenIssuer) -> None:
        """Bob's grant replayed with Mallory's access token is denied."""
        store = MemoryGrantStore()
        broker = GrantBroker(signing_key=generate_signing_key(), store=store)
        grants = GrantVerifier(keys=broker.public_jwks(), store=store)
        protected = Protected(static_verifier(issuer), grants, roles=["admin"])
        issued = broker.mint(
            subject="bob",
            segment="api",
            methods=["GET"],
            paths=["/api/"],
            reason="INC-8: read the item list",
            requested_by="bob",
        )

        response, event = await protected.send(
            issuer.token("mallory", audience=AUDIENCE), {GRANT_HEADER: issued.token}
        )

        assert 403 == response.status_code
        assert "subject_binding_mismatch" in event["reasons"]
        assert [] == protected.reached
