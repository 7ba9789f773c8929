# SPDX-License-Identifier: Apache-2.0
"""Tests for JWT verification: reason codes, principals, the token cache and configuration."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import math
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from jwt.algorithms import get_default_algorithms
from starlette.datastructures import Headers

from zerotrust.exceptions import ConfigurationError, InsecureConfigurationWarning
from zerotrust.policy import Segment
from zerotrust.request import AccessRequest
from zerotrust.testing import TokenIssuer
from zerotrust.verifiers.base import Principal, Verdict, VerificationContext
from zerotrust.verifiers.identity import JWTVerifier, TokenCache, token_fingerprint

ALGORITHMS = ["RS256", "ES256", "EdDSA"]
HMAC_SECRET = "0123456789abcdef0123456789abcdef"  # exactly the 32-byte minimum

Evaluate = Callable[[JWTVerifier, AccessRequest], Awaitable[Verdict]]


# Token building ---------------------------------------------------------------------------------


def encode_segment(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def encode_json(value: Any) -> str:
    return encode_segment(json.dumps(value).encode())


def make_claims(issuer: TokenIssuer, **overrides: Any) -> dict[str, Any]:
    """Return valid claims for ``issuer``. An override set to ``None`` removes that claim."""
    now = int(time.time())
    claims = {"iss": issuer.issuer, "sub": "alice", "aud": "api", "iat": now, "exp": now + 300}
    claims.update(overrides)
    return {name: value for name, value in claims.items() if value is not None}


def sign(
    issuer: TokenIssuer,
    claims: dict[str, Any],
    *,
    alg: str = "RS256",
    header: dict[str, Any] | None = None,
) -> str:
    """
    Sign ``claims`` with the issuer's key for ``alg``.

    Unlike ``jwt.encode``, this accepts any header and any claim types, so tests can build
    tokens that a careful encoder would refuse to produce.
    """
    full_header = {"alg": alg, "typ": "JWT", "kid": issuer.kid(alg), **(header or {})}
    full_header = {name: value for name, value in full_header.items() if value is not None}
    signing_input = f"{encode_json(full_header)}.{encode_json(claims)}"
    algorithm = get_default_algorithms()[alg]
    signature = algorithm.sign(signing_input.encode(), issuer.private_keys[alg])

    return f"{signing_input}.{encode_segment(signature)}"


def unsigned(issuer: TokenIssuer, alg: str) -> str:
    """Return a token with an empty signature and the given ``alg`` header."""
    header = {"alg": alg, "typ": "JWT"}
    return f"{encode_json(header)}.{encode_json(make_claims(issuer))}."


def public_pem(issuer: TokenIssuer, alg: str = "RS256") -> bytes:
    return (
        issuer.private_keys[alg]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def hmac_with_public_key(issuer: TokenIssuer) -> str:
    """Return an HS256 token whose HMAC secret is the issuer's RSA public key in PEM form."""
    header = {"alg": "HS256", "typ": "JWT", "kid": issuer.kid("RS256")}
    signing_input = f"{encode_json(header)}.{encode_json(make_claims(issuer))}"
    signature = hmac.new(public_pem(issuer), signing_input.encode(), hashlib.sha256).digest()

    return f"{signing_input}.{encode_segment(signature)}"


def tamper_payload(token: str) -> str:
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = "mallory"

    return f"{header}.{encode_json(claims)}.{signature}"


def tamper_signature(token: str) -> str:
    # Change a character in the middle: the last one may only carry padding bits.
    head, _, signature = token.rpartition(".")
    middle = len(signature) // 2
    replacement = "A" if signature[middle] != "A" else "B"

    return f"{head}.{signature[:middle]}{replacement}{signature[middle + 1 :]}"


@functools.cache
def foreign_issuer() -> TokenIssuer:
    """An issuer with the same name and ``kid`` values but different keys."""
    return TokenIssuer(algorithms=("RS256",))


# Fixtures ---------------------------------------------------------------------------------------


def make_request(
    token: str | None = None,
    *,
    headers: list[tuple[str, str]] | None = None,
    at: float | None = None,
) -> AccessRequest:
    """Build a GET request carrying ``token`` as a bearer token, plus any raw ``headers``."""
    raw = [(name.lower().encode(), value.encode()) for name, value in headers or []]
    if token is not None:
        raw.append((b"authorization", f"Bearer {token}".encode()))

    return AccessRequest(
        method="GET",
        path="/api/items",
        raw_path="/api/items",
        host="api.test",
        headers=Headers(raw=raw),
        client_ip=None,
        peer_ip=None,
        request_id="test-request",
        time=time.time() if at is None else at,
    )


def make_verifier(token_issuer: TokenIssuer, /, **options: Any) -> JWTVerifier:
    settings: dict[str, Any] = {
        "issuer": token_issuer.issuer,
        "audience": "api",
        "algorithms": ALGORITHMS,
        "keys": token_issuer.jwks(),
    }
    settings.update(options)

    return JWTVerifier(**settings)


@pytest.fixture(name="context")
def fixture_context() -> VerificationContext:
    return VerificationContext(Segment("api", paths=["/api/"], public=True))


@pytest.fixture(name="verifier")
def fixture_verifier(issuer: TokenIssuer) -> JWTVerifier:
    """A verifier with the issuer's static keys, all three algorithms and 30 s of leeway."""
    return make_verifier(issuer)


@pytest.fixture(name="evaluate", params=["verify_cached", "verify"])
def fixture_evaluate(request: pytest.FixtureRequest, context: VerificationContext) -> Evaluate:
    """
    Run a verifier the way the engine does (``verify_cached``, then ``verify`` on ``None``), or
    through ``verify`` alone, so each case covers both entry points.
    """

    async def evaluate(verifier: JWTVerifier, access_request: AccessRequest) -> Verdict:
        if request.param == "verify_cached":
            verdict = verifier.verify_cached(access_request, context)
            if verdict is not None:
                return verdict
        return await verifier.verify(access_request, context)

    return evaluate


@pytest.fixture(name="decode_calls")
def fixture_decode_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Count calls of ``jwt.decode``: each call is one full signature and claims check."""
    calls: list[str] = []
    real_decode = jwt.decode

    def counting_decode(token: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(token)
        return real_decode(token, *args, **kwargs)

    monkeypatch.setattr(jwt, "decode", counting_decode)

    return calls


# Tests ------------------------------------------------------------------------------------------


class TestJWTVerifierPass:
    @pytest.mark.parametrize("alg", ALGORITHMS)
    async def test_algorithm_passes(
        self, issuer: TokenIssuer, verifier: JWTVerifier, evaluate: Evaluate, alg: str
    ) -> None:
        """A valid token signed with each allowed algorithm passes."""
        verdict = await evaluate(verifier, make_request(issuer.token(alg=alg)))

        assert "pass" == verdict.outcome
        assert verdict.reason is None

    async def test_principal_fields(
        self, issuer: TokenIssuer, verifier: JWTVerifier, context: VerificationContext
    ) -> None:
        """The principal carries subject, issuer, scopes, roles, expiry and claims."""
        token = issuer.token("alice", scopes=["read", "write"], roles=["admin"])
        claims = jwt.decode(token, options={"verify_signature": False})

        verdict = await verifier.verify(make_request(token), context)
        principal = verdict.principal

        assert isinstance(principal, Principal)
        assert "alice" == principal.subject
        assert issuer.issuer == principal.issuer
        assert frozenset({"read", "write"}) == principal.scopes
        assert frozenset({"admin"}) == principal.roles
        assert float(claims["exp"]) == principal.expires_at
        assert claims["jti"] == principal.claims["jti"]

    def test_credential_fingerprint(
        self, issuer: TokenIssuer, verifier: JWTVerifier, context: VerificationContext
    ) -> None:
        """The fingerprint is 16 hex digits of the token's SHA-256, never the token."""
        token = issuer.token()

        verdict = verifier.verify_cached(make_request(token), context)
        fingerprint = verdict.principal.credential_fingerprint  # type: ignore[union-attr]

        assert re.fullmatch(r"[0-9a-f]{16}", fingerprint or "")
        assert hashlib.sha256(token.encode()).hexdigest()[:16] == fingerprint
        assert token_fingerprint(token) == fingerprint
        assert fingerprint not in token
        assert token not in repr(verdict)

    async def test_scopes_from_scp_list(self, issuer: TokenIssuer, evaluate: Evaluate) -> None:
        """With scopes_claim="scp", scopes are read from a list claim."""
        verifier = make_verifier(issuer, scopes_claim="scp")
        token = issuer.token(scp=["orders:read", "orders:write"])

        verdict = await evaluate(verifier, make_request(token))

        assert frozenset({"orders:read", "orders:write"}) == verdict.principal.scopes  # type: ignore[union-attr]

    async def test_roles_from_nested_claim(self, issuer: TokenIssuer, evaluate: Evaluate) -> None:
        """A dotted roles_claim reads roles from a nested object, as Keycloak issues them."""
        verifier = make_verifier(issuer, roles_claim="realm_access.roles")
        token = issuer.token(realm_access={"roles": ["auditor", "operator"]}, roles=["ignored"])

        verdict = await evaluate(verifier, make_request(token))

        assert frozenset({"auditor", "operator"}) == verdict.principal.roles  # type: ignore[union-attr]

    async def test_nested_roles_missing(self, issuer: TokenIssuer, evaluate: Evaluate) -> None:
        """A token without the nested roles object passes with no roles."""
        verifier = make_verifier(issuer, roles_claim="realm_access.roles")

        verdict = await evaluate(verifier, make_request(issuer.token()))

        assert frozenset() == verdict.principal.roles  # type: ignore[union-attr]

    async def test_no_scopes_or_roles(self, issuer: TokenIssuer, evaluate: Evaluate) -> None:
        """A token without scope and roles claims passes with empty sets."""
        verdict = await evaluate(make_verifier(issuer), make_request(issuer.token()))

        assert frozenset() == verdict.principal.scopes  # type: ignore[union-attr]
        assert frozenset() == verdict.principal.roles  # type: ignore[union-attr]

    @pytest.mark.parametrize("audience", ["api", ["other", "api"]])
    async def test_any_configured_audience(
        self, issuer: TokenIssuer, evaluate: Evaluate, audience: Any
    ) -> None:
        """A token passes when its audience is any one of the configured audiences."""
        verifier = make_verifier(issuer, audience=["api", "admin"])

        verdict = await evaluate(verifier, make_request(issuer.token(audience=audience)))

        assert "pass" == verdict.outcome

    def test_bearer_scheme_case(
        self, issuer: TokenIssuer, verifier: JWTVerifier, context: VerificationContext
    ) -> None:
        """The Bearer scheme name is case-insensitive (RFC 7235 section 2.1)."""
        request = make_request(headers=[("Authorization", f"bEaReR {issuer.token()}")])

        verdict = verifier.verify_cached(request, context)

        assert "pass" == verdict.outcome  # type: ignore[union-attr]

    async def test_hmac_static_secret(self, issuer: TokenIssuer, evaluate: Evaluate) -> None:
        """An HS256 token passes with a static secret of 32 bytes."""
        verifier = make_verifier(issuer, algorithms=["HS256"], keys=HMAC_SECRET)
        token = jwt.encode(make_claims(issuer), HMAC_SECRET, algorithm="HS256")

        verdict = await evaluate(verifier, make_request(token))

        assert "pass" == verdict.outcome

    async def test_pem_static_key(self, issuer: TokenIssuer, evaluate: Evaluate) -> None:
        """A PEM public key without a kid verifies tokens that carry a kid."""
        verifier = make_verifier(issuer, algorithms=["RS256"], keys=public_pem(issuer))

        verdict = await evaluate(verifier, make_request(issuer.token(alg="RS256")))

        assert "pass" == verdict.outcome

    @pytest.mark.served
    async def test_remote_key_set(
        self, issuer: TokenIssuer, jwks_url: str, context: VerificationContext
    ) -> None:
        """With jwks_url, the first call needs I/O and later calls are served from the cache."""
        verifier = make_verifier(issuer, keys=None, jwks_url=jwks_url)
        request = make_request(issuer.token(alg="ES256"))

        first = verifier.verify_cached(request, context)
        second = await verifier.verify(request, context)
        third = verifier.verify_cached(request, context)

        assert first is None
        assert "pass" == second.outcome
        assert "pass" == third.outcome  # type: ignore[union-attr]


class TestJWTVerifierLeeway:
    async def test_expired_within_leeway(self, issuer: TokenIssuer, evaluate: Evaluate) -> None:
        """A token that expired 5 s ago passes with 30 s of leeway."""
        token = issuer.token(now=time.time() - 65, lifetime=60)

        verdict = await evaluate(make_verifier(issuer, leeway=30), make_request(token))

        assert "pass" == verdict.outcome

    async def test_expired_without_leeway(self, issuer: TokenIssuer, evaluate: Evaluate) -> None:
        """The same token fails with no leeway."""
        token = issuer.token(now=time.time() - 65, lifetime=60)

        verdict = await evaluate(make_verifier(issuer, leeway=0), make_request(token))

        assert "token_expired" == verdict.reason

    async def test_not_before_within_leeway(self, issuer: TokenIssuer, evaluate: Evaluate) -> None:
        """A token valid from 10 s ahead passes with 30 s of leeway."""
        token = issuer.token(nbf=int(time.time()) + 10)

        verdict = await evaluate(make_verifier(issuer, leeway=30), make_request(token))

        assert "pass" == verdict.outcome


# Tokens that fail after extraction, so each verdict must carry the token's fingerprint.
REJECTED_TOKENS = [
    # Header
    pytest.param(lambda i: "a.e30.c", "token_malformed", id="header-bad-base64"),
    pytest.param(
        lambda i: f"{encode_segment(b'not json')}.e30.c", "token_malformed", id="header-not-json"
    ),
    pytest.param(lambda i: f"{encode_json([1])}.e30.c", "token_malformed", id="header-json-array"),
    pytest.param(
        lambda i: sign(i, make_claims(i), header={"kid": 7}),
        "token_malformed",
        id="kid-not-string",
    ),
    # Algorithm
    pytest.param(lambda i: unsigned(i, "none"), "algorithm_not_allowed", id="alg-none"),
    pytest.param(lambda i: unsigned(i, "None"), "algorithm_not_allowed", id="alg-None"),
    pytest.param(lambda i: unsigned(i, "NONE"), "algorithm_not_allowed", id="alg-NONE"),
    pytest.param(
        lambda i: sign(i, make_claims(i), header={"alg": None}),
        "algorithm_not_allowed",
        id="alg-missing",
    ),
    pytest.param(
        lambda i: jwt.encode(make_claims(i), HMAC_SECRET, algorithm="HS256"),
        "algorithm_not_allowed",
        id="alg-HS256",
    ),
    pytest.param(hmac_with_public_key, "algorithm_not_allowed", id="alg-HS256-public-key-secret"),
    # Critical headers
    pytest.param(
        lambda i: sign(i, make_claims(i), header={"crit": ["b64"], "b64": True}),
        "unsupported_critical_header",
        id="crit-b64",
    ),
    pytest.param(
        lambda i: sign(i, make_claims(i), header={"crit": ["exp"]}),
        "unsupported_critical_header",
        id="crit-unknown",
    ),
    pytest.param(
        lambda i: sign(i, make_claims(i), header={"crit": "b64", "b64": True}),
        "unsupported_critical_header",
        id="crit-not-list",
    ),
    # Key and signature
    pytest.param(lambda i: i.token(kid="RS256-9"), "unknown_kid", id="kid-unknown"),
    pytest.param(lambda i: tamper_payload(i.token()), "invalid_signature", id="tampered-payload"),
    pytest.param(
        lambda i: tamper_signature(i.token()), "invalid_signature", id="tampered-signature"
    ),
    pytest.param(
        lambda i: tamper_signature(i.token(alg="EdDSA")),
        "invalid_signature",
        id="tampered-signature-eddsa",
    ),
    pytest.param(
        lambda i: foreign_issuer().token(kid=i.kid("RS256")),
        "invalid_signature",
        id="foreign-key-same-kid",
    ),
    # Time
    pytest.param(lambda i: i.token(lifetime=-100), "token_expired", id="expired"),
    pytest.param(
        lambda i: i.token(nbf=int(time.time()) + 120), "token_not_yet_valid", id="nbf-future"
    ),
    pytest.param(
        lambda i: i.token(iat=int(time.time()) + 120), "token_not_yet_valid", id="iat-future"
    ),
    # Issuer: only the exact string matches
    pytest.param(lambda i: i.token(iss=i.issuer + "/"), "invalid_issuer", id="iss-slash-suffix"),
    pytest.param(lambda i: i.token(iss=i.issuer + ".evil"), "invalid_issuer", id="iss-suffix"),
    pytest.param(lambda i: i.token(iss=i.issuer[:-1]), "invalid_issuer", id="iss-prefix"),
    pytest.param(lambda i: i.token(iss=i.issuer.upper()), "invalid_issuer", id="iss-upper-case"),
    pytest.param(
        lambda i: i.token(iss=i.issuer.replace("https", "http")),
        "invalid_issuer",
        id="iss-http",
    ),
    pytest.param(
        lambda i: sign(i, make_claims(i, iss=[i.issuer])), "invalid_issuer", id="iss-list"
    ),
    # Audience: only an exact member matches
    pytest.param(lambda i: i.token(audience="ap"), "invalid_audience", id="aud-prefix"),
    pytest.param(lambda i: i.token(audience="apis"), "invalid_audience", id="aud-suffix"),
    pytest.param(lambda i: i.token(audience="my-api-gw"), "invalid_audience", id="aud-superstring"),
    pytest.param(lambda i: i.token(audience="API"), "invalid_audience", id="aud-upper-case"),
    pytest.param(lambda i: i.token(audience=["a", "p", "i"]), "invalid_audience", id="aud-letters"),
    pytest.param(lambda i: i.token(audience=["other"]), "invalid_audience", id="aud-other"),
    # Required claims
    pytest.param(lambda i: i.token(exp=None), "missing_claim", id="no-exp"),
    pytest.param(lambda i: i.token(sub=None), "missing_claim", id="no-sub"),
    pytest.param(lambda i: i.token(iss=None), "missing_claim", id="no-iss"),
    pytest.param(lambda i: i.token(aud=None), "missing_claim", id="no-aud"),
    # Claim types
    pytest.param(
        lambda i: sign(i, make_claims(i, sub=123)),
        "invalid_claim",
        id="sub-number",
    ),
    pytest.param(lambda i: i.token(sub=""), "invalid_claim", id="sub-empty"),
    pytest.param(lambda i: i.token(scope=123), "invalid_claim", id="scope-number"),
    pytest.param(lambda i: i.token(scope=["read", 1]), "invalid_claim", id="scope-mixed-list"),
    pytest.param(
        lambda i: sign(i, make_claims(i, roles={"admin": True})),
        "invalid_claim",
        id="roles-object",
    ),
    pytest.param(lambda i: i.token(iat="yesterday"), "invalid_claim", id="iat-string"),
]


class TestJWTVerifierReasons:
    @pytest.mark.parametrize(("build", "reason"), REJECTED_TOKENS)
    async def test_rejected_token(
        self,
        issuer: TokenIssuer,
        verifier: JWTVerifier,
        evaluate: Evaluate,
        build: Callable[[TokenIssuer], str],
        reason: str,
    ) -> None:
        """A bad token fails with its reason code and a fingerprint, never the token."""
        token = build(issuer)

        verdict = await evaluate(verifier, make_request(token))

        assert "fail" == verdict.outcome
        assert reason == verdict.reason
        assert token_fingerprint(token) == verdict.facts.get("credential_fingerprint")
        assert token not in repr(verdict)
        assert verdict.principal is None

    async def test_alg_outside_allow_list(self, issuer: TokenIssuer, evaluate: Evaluate) -> None:
        """A validly signed ES256 token fails when only RS256 is allowed."""
        verifier = make_verifier(issuer, algorithms=["RS256"])

        verdict = await evaluate(verifier, make_request(issuer.token(alg="ES256")))

        assert "algorithm_not_allowed" == verdict.reason

    async def test_hmac_with_public_pem(self, issuer: TokenIssuer, evaluate: Evaluate) -> None:
        """An HS256 token keyed with the configured RSA public key PEM fails."""
        verifier = make_verifier(issuer, algorithms=["RS256"], keys=public_pem(issuer))

        verdict = await evaluate(verifier, make_request(hmac_with_public_key(issuer)))

        assert "algorithm_not_allowed" == verdict.reason


class TestTokenExtraction:
    async def test_missing(self, verifier: JWTVerifier, evaluate: Evaluate) -> None:
        """No Authorization header fails with token_missing and an empty challenge."""
        verdict = await evaluate(verifier, make_request())

        assert "token_missing" == verdict.reason
        assert {} == verdict.challenge
        assert {} == dict(verdict.facts)

    async def test_empty_bearer(self, verifier: JWTVerifier, evaluate: Evaluate) -> None:
        """A Bearer header without a token fails with token_missing."""
        request = make_request(headers=[("authorization", "Bearer ")])

        verdict = await evaluate(verifier, request)

        assert "token_missing" == verdict.reason

    async def test_two_authorization_headers(
        self, issuer: TokenIssuer, verifier: JWTVerifier, evaluate: Evaluate
    ) -> None:
        """Two Authorization headers fail, even when both contain a valid token."""
        token = issuer.token()
        request = make_request(
            headers=[("authorization", f"Bearer {token}"), ("authorization", f"Bearer {token}")]
        )

        verdict = await evaluate(verifier, request)

        assert "malformed_authorization" == verdict.reason

    async def test_basic_scheme(self, verifier: JWTVerifier, evaluate: Evaluate) -> None:
        """Basic credentials fail with malformed_authorization and stay out of the verdict."""
        credentials = base64.b64encode(b"alice:secret-password").decode()
        request = make_request(headers=[("authorization", f"Basic {credentials}")])

        verdict = await evaluate(verifier, request)

        assert "malformed_authorization" == verdict.reason
        assert credentials not in repr(verdict)

    async def test_token_too_large(self, issuer: TokenIssuer, evaluate: Evaluate) -> None:
        """A token over max_token_bytes fails before any parsing."""
        verifier = make_verifier(issuer, max_token_bytes=64)

        verdict = await evaluate(verifier, make_request(issuer.token()))

        assert "token_too_large" == verdict.reason

    @pytest.mark.parametrize("token", ["garbage", "a.b", "a.b.c.d", "a..c", "a.b.c=", "é.b.c"])
    async def test_not_compact_jws(
        self, verifier: JWTVerifier, evaluate: Evaluate, token: str
    ) -> None:
        """A value that is not three base64url parts fails with token_malformed."""
        verdict = await evaluate(verifier, make_request(token))

        assert "token_malformed" == verdict.reason
        assert token not in repr(verdict)

    async def test_too_large_fingerprint(self, issuer: TokenIssuer, evaluate: Evaluate) -> None:
        """An oversized token is reported with its fingerprint."""
        verifier = make_verifier(issuer, max_token_bytes=64)
        token = issuer.token()

        verdict = await evaluate(verifier, make_request(token))

        assert token_fingerprint(token) == verdict.facts.get("credential_fingerprint")

    async def test_not_compact_fingerprint(self, verifier: JWTVerifier, evaluate: Evaluate) -> None:
        """A token that is not a compact JWS is reported with its fingerprint."""
        verdict = await evaluate(verifier, make_request("garbage"))

        assert token_fingerprint("garbage") == verdict.facts.get("credential_fingerprint")

    async def test_cookie(self, issuer: TokenIssuer, evaluate: Evaluate) -> None:
        """With cookie= set, a token in that cookie passes."""
        verifier = make_verifier(issuer, cookie="session")
        request = make_request(headers=[("cookie", f"theme=dark; session={issuer.token('bob')}")])

        verdict = await evaluate(verifier, request)

        assert "bob" == verdict.principal.subject  # type: ignore[union-attr]

    async def test_header_wins_over_cookie(self, issuer: TokenIssuer, evaluate: Evaluate) -> None:
        """The Authorization header is used when both it and the cookie carry a token."""
        verifier = make_verifier(issuer, cookie="session")
        request = make_request(
            issuer.token("carol"), headers=[("cookie", f"session={issuer.token('bob')}")]
        )

        verdict = await evaluate(verifier, request)

        assert "carol" == verdict.principal.subject  # type: ignore[union-attr]

    async def test_cookie_not_configured(
        self, issuer: TokenIssuer, verifier: JWTVerifier, evaluate: Evaluate
    ) -> None:
        """Without cookie=, a token in a cookie is ignored."""
        request = make_request(headers=[("cookie", f"session={issuer.token()}")])

        verdict = await evaluate(verifier, request)

        assert "token_missing" == verdict.reason

    async def test_other_cookie(self, issuer: TokenIssuer, evaluate: Evaluate) -> None:
        """A token in a cookie of another name is ignored."""
        verifier = make_verifier(issuer, cookie="session")
        request = make_request(headers=[("cookie", f"token={issuer.token()}")])

        verdict = await evaluate(verifier, request)

        assert "token_missing" == verdict.reason

    async def test_bad_cookie_token(self, issuer: TokenIssuer, evaluate: Evaluate) -> None:
        """An expired token in the cookie fails like one in the header."""
        verifier = make_verifier(issuer, cookie="session")
        token = issuer.token(lifetime=-100)
        request = make_request(headers=[("cookie", f"session={token}")])

        verdict = await evaluate(verifier, request)

        assert "token_expired" == verdict.reason
        assert token_fingerprint(token) == verdict.facts.get("credential_fingerprint")


class TestTokenCache:
    def test_second_call_skips_decode(
        self,
        issuer: TokenIssuer,
        verifier: JWTVerifier,
        context: VerificationContext,
        decode_calls: list[str],
    ) -> None:
        """A second verification of one token is served by verify_cached without decoding."""
        request = make_request(issuer.token())

        first = verifier.verify_cached(request, context)
        second = verifier.verify_cached(request, context)

        assert 1 == len(decode_calls)
        assert "pass" == second.outcome  # type: ignore[union-attr]
        assert first.principal == second.principal  # type: ignore[union-attr]

    async def test_verify_fills_cache(
        self,
        issuer: TokenIssuer,
        verifier: JWTVerifier,
        context: VerificationContext,
        decode_calls: list[str],
    ) -> None:
        """A token verified by verify is then served by verify_cached."""
        request = make_request(issuer.token())

        await verifier.verify(request, context)
        verdict = verifier.verify_cached(request, context)

        assert 1 == len(decode_calls)
        assert "pass" == verdict.outcome  # type: ignore[union-attr]

    def test_failures_not_cached(
        self,
        issuer: TokenIssuer,
        verifier: JWTVerifier,
        context: VerificationContext,
        decode_calls: list[str],
    ) -> None:
        """A failed token is decoded again on every call."""
        request = make_request(issuer.token(audience="other"))

        verifier.verify_cached(request, context)
        verifier.verify_cached(request, context)

        assert 2 == len(decode_calls)
        assert 0 == len(verifier.cache)  # type: ignore[arg-type]

    def test_cache_holds_no_token(
        self, issuer: TokenIssuer, verifier: JWTVerifier, context: VerificationContext
    ) -> None:
        """The cache keys are SHA-256 digests, not tokens."""
        token = issuer.token()

        verifier.verify_cached(make_request(token), context)

        assert [hashlib.sha256(token.encode()).digest()] == list(verifier.cache._cache)  # type: ignore[union-attr]

    def test_request_after_exp_not_served(
        self,
        issuer: TokenIssuer,
        verifier: JWTVerifier,
        context: VerificationContext,
        decode_calls: list[str],
    ) -> None:
        """A cached principal is not served for a request that arrives after the token's exp."""
        exp = int(time.time()) + 60
        token = issuer.token(exp=exp)

        verifier.verify_cached(make_request(token), context)
        verifier.verify_cached(make_request(token, at=exp + 1), context)

        assert 2 == len(decode_calls)

    def test_entry_expires_with_token(
        self,
        issuer: TokenIssuer,
        context: VerificationContext,
        decode_calls: list[str],
    ) -> None:
        """A cached token is rejected once its exp passes."""
        verifier = make_verifier(issuer, leeway=0)
        # exp is a whole second, 0.5 to 1.5 s ahead.
        exp = math.ceil(time.time() + 0.5)
        token = issuer.token(exp=exp)

        first = verifier.verify_cached(make_request(token), context)
        cached = verifier.verify_cached(make_request(token), context)
        time.sleep(max(0.0, exp - time.time()) + 0.05)
        after = verifier.verify_cached(make_request(token), context)

        assert "pass" == first.outcome  # type: ignore[union-attr]
        assert "pass" == cached.outcome  # type: ignore[union-attr]
        assert "token_expired" == after.reason  # type: ignore[union-attr]
        assert 2 == len(decode_calls)

    def test_disabled(
        self,
        issuer: TokenIssuer,
        context: VerificationContext,
        decode_calls: list[str],
    ) -> None:
        """cache_size=0 disables the cache: every call decodes."""
        verifier = make_verifier(issuer, cache_size=0)
        request = make_request(issuer.token())

        verifier.verify_cached(request, context)
        verifier.verify_cached(request, context)

        assert verifier.cache is None
        assert 2 == len(decode_calls)

    def test_bounded(self, issuer: TokenIssuer, context: VerificationContext) -> None:
        """The cache never contains more than cache_size tokens."""
        verifier = make_verifier(issuer, cache_size=2)

        for subject in ("alice", "bob", "carol", "dave"):
            verifier.verify_cached(make_request(issuer.token(subject)), context)

        assert 2 == len(verifier.cache)  # type: ignore[arg-type]


class TestTokenCacheUnit:
    def test_get_put(self) -> None:
        """A stored principal is returned for its digest."""
        cache = TokenCache()
        principal = Principal("alice", expires_at=time.time() + 60)

        cache.put(b"digest", principal)

        assert principal == cache.get(b"digest")
        assert cache.get(b"other") is None

    def test_expires_at_exp(self) -> None:
        """An entry is gone once the principal's expires_at passes, whatever the ttl."""
        cache = TokenCache(ttl=300)
        cache.put(b"digest", Principal("alice", expires_at=time.time() + 0.2))

        time.sleep(0.3)

        assert cache.get(b"digest") is None

    def test_expires_at_ttl(self) -> None:
        """An entry is gone after ttl seconds even when the token lives longer."""
        cache = TokenCache(ttl=0.2)
        cache.put(b"digest", Principal("alice", expires_at=time.time() + 300))

        time.sleep(0.3)

        assert cache.get(b"digest") is None

    def test_already_expired_not_stored(self) -> None:
        """A principal whose expiry has passed is not stored."""
        cache = TokenCache()

        cache.put(b"digest", Principal("alice", expires_at=time.time() - 1))

        assert 0 == len(cache)

    def test_maxsize(self) -> None:
        """The cache evicts entries beyond maxsize."""
        cache = TokenCache(maxsize=3)

        for index in range(10):
            cache.put(bytes([index]), Principal(f"user{index}", expires_at=time.time() + 60))

        assert 3 == len(cache)

    def test_clear(self) -> None:
        """clear() removes every entry."""
        cache = TokenCache()
        cache.put(b"digest", Principal("alice", expires_at=time.time() + 60))

        cache.clear()

        assert 0 == len(cache)

    @pytest.mark.parametrize(
        ("options", "parameter"),
        [
            ({"maxsize": 0}, "cache_size"),
            ({"ttl": 0}, "cache_ttl"),
            ({"ttl": -1}, "cache_ttl"),
        ],
    )
    def test_invalid_settings(self, options: dict[str, Any], parameter: str) -> None:
        """A non-positive maxsize or ttl raises ConfigurationError naming the value."""
        with pytest.raises(ConfigurationError) as info:
            TokenCache(**options)

        assert parameter == info.value.parameter
        assert repr(next(iter(options.values()))) in str(info.value)


def private_pem(issuer: TokenIssuer) -> bytes:
    return issuer.private_keys["ES256"].private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


# (options, parameter, text the message must contain)
INVALID_SETTINGS = [
    pytest.param(
        {"jwks_url": "https://idp.example/jwks"},
        "jwks_url",
        "exactly one of jwks_url",
        id="both-jwks-url-and-keys",
    ),
    pytest.param({"keys": None}, "jwks_url", "exactly one of jwks_url", id="no-key-source"),
    pytest.param({"algorithms": []}, "algorithms", "at least one algorithm", id="no-algorithms"),
    pytest.param(
        {"algorithms": ["HS256", "RS256"], "keys": HMAC_SECRET},
        "algorithms",
        "['HS256', 'RS256']",
        id="mixed-hmac-rsa",
    ),
    pytest.param(
        {"algorithms": ["HS256"], "keys": None, "jwks_url": "https://idp.example/jwks"},
        "algorithms",
        "HMAC algorithms cannot be used",
        id="hmac-with-jwks-url",
    ),
    pytest.param({"algorithms": ["XS256"]}, "algorithms", "'XS256'", id="unknown-algorithm"),
    pytest.param({"algorithms": ["none"]}, "algorithms", "'none'", id="alg-none"),
    pytest.param(
        {"keys": None, "jwks_url": "http://idp.example/jwks"},
        "jwks_url",
        "'http://idp.example/jwks'",
        id="http-remote-host",
    ),
    pytest.param(
        {"keys": None, "jwks_url": "http://127.0.0.1.nip.io/jwks"},
        "jwks_url",
        "'http://127.0.0.1.nip.io/jwks'",
        id="http-loopback-lookalike",
    ),
    pytest.param(
        {"keys": None, "jwks_url": "ftp://idp.example/jwks"},
        "jwks_url",
        "'ftp://idp.example/jwks'",
        id="ftp-url",
    ),
    pytest.param({"leeway": 301}, "leeway", "301", id="leeway-above-300"),
    pytest.param({"leeway": -1}, "leeway", "-1", id="leeway-negative"),
    pytest.param(
        {"algorithms": ["HS256"], "keys": "short-secret"},
        "keys",
        "at least 32 bytes",
        id="short-hmac-secret",
    ),
    pytest.param({"issuer": ""}, "issuer", "''", id="empty-issuer"),
    pytest.param({"audience": ""}, "audience", "''", id="empty-audience"),
    pytest.param({"audience": []}, "audience", "[]", id="no-audience"),
    pytest.param({"audience": ["api", ""]}, "audience", "['api', '']", id="empty-audience-item"),
    pytest.param({"max_token_bytes": 10}, "max_token_bytes", "10", id="max-token-bytes-small"),
    pytest.param({"cache_size": -1}, "cache_size", "-1", id="cache-size-negative"),
    pytest.param({"cache_ttl": 0}, "cache_ttl", "0", id="cache-ttl-zero"),
    pytest.param({"timeout": 0}, "timeout", "0", id="timeout-zero"),
    pytest.param({"name": "bad name!"}, "name", "'bad name!'", id="name-invalid"),
]


class TestJWTVerifierConfiguration:
    @pytest.mark.parametrize(("options", "parameter", "text"), INVALID_SETTINGS)
    def test_invalid(
        self, issuer: TokenIssuer, options: dict[str, Any], parameter: str, text: str
    ) -> None:
        """An invalid setting raises ConfigurationError naming the parameter and value."""
        with pytest.raises(ConfigurationError) as info:
            make_verifier(issuer, **options)

        assert parameter == info.value.parameter
        assert text in str(info.value)

    def test_short_secret_not_echoed(self, issuer: TokenIssuer) -> None:
        """The error for a short HMAC secret does not contain the secret."""
        with pytest.raises(ConfigurationError) as info:
            make_verifier(issuer, algorithms=["HS256"], keys="short-secret")

        assert "short-secret" not in str(info.value)
        assert "short-secret" != info.value.value

    def test_private_key_object(self, issuer: TokenIssuer) -> None:
        """A private key object passed as a static key raises ConfigurationError."""
        with pytest.raises(ConfigurationError) as info:
            make_verifier(issuer, algorithms=["RS256"], keys=issuer.private_keys["RS256"])

        assert "keys" == info.value.parameter
        assert "private key" in str(info.value)

    def test_private_key_pem(self, issuer: TokenIssuer) -> None:
        """A private key PEM passed as a static key raises without echoing the key."""
        pem = private_pem(issuer)

        with pytest.raises(ConfigurationError) as info:
            make_verifier(issuer, algorithms=["ES256"], keys=pem)

        assert "private key" in str(info.value)
        assert pem.decode() not in str(info.value)
        assert pem != info.value.value

    def test_private_key_jwk(self, issuer: TokenIssuer) -> None:
        """A private JWK dict passed as a static key raises ConfigurationError."""
        jwk = json.loads(get_default_algorithms()["RS256"].to_jwk(issuer.private_keys["RS256"]))

        with pytest.raises(ConfigurationError):
            make_verifier(issuer, algorithms=["RS256"], keys=[jwk])

    def test_hmac_jwks_url_names_algorithm(self, issuer: TokenIssuer) -> None:
        """The error for HMAC with jwks_url quotes the HMAC algorithm."""
        with pytest.raises(ConfigurationError) as info:
            make_verifier(
                issuer, algorithms=["HS512"], keys=None, jwks_url="https://idp.example/jwks"
            )

        assert "HS512" in str(info.value)

    def test_algorithms_generator(self, issuer: TokenIssuer) -> None:
        """algorithms may be any iterable, a generator included."""
        verifier = make_verifier(
            issuer,
            algorithms=(alg for alg in ["RS256"]),
            keys=None,
            jwks_url="https://idp.example/jwks",
        )

        assert frozenset({"RS256"}) == verifier.algorithms

    @pytest.mark.parametrize(
        "url",
        [
            "https://idp.example/jwks",
            "http://127.0.0.1:9/jwks",
            "http://127.8.9.10/jwks",
            "http://localhost/jwks",
            "http://[::1]:9/jwks",
        ],
    )
    def test_jwks_url_accepted(self, issuer: TokenIssuer, url: str) -> None:
        """https, and plain http on a loopback host, are accepted without connecting."""
        verifier = make_verifier(issuer, keys=None, jwks_url=url)

        assert url == verifier.key_set.url  # type: ignore[attr-defined]

    def test_algorithm_string(self, issuer: TokenIssuer) -> None:
        """A single algorithm may be given as a string."""
        verifier = make_verifier(issuer, algorithms="ES256")

        assert frozenset({"ES256"}) == verifier.algorithms

    def test_leeway_warning(self, issuer: TokenIssuer) -> None:
        """A leeway over 60 s warns that expired tokens are accepted for over a minute."""
        with pytest.warns(InsecureConfigurationWarning, match="61"):
            make_verifier(issuer, leeway=61)

    def test_leeway_60_no_warning(self, issuer: TokenIssuer) -> None:
        """A leeway of 60 s is accepted without a warning."""
        verifier = make_verifier(issuer, leeway=60)

        assert 60.0 == verifier.leeway
