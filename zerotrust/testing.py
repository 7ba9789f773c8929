# SPDX-License-Identifier: Apache-2.0
"""Helpers for testing applications and policies that use zerotrust."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from typing import Any, Literal

from ._policy_cases import (
    CaseResult,
    Expectation,
    PolicyCase,
    assert_decisions,
    check_policy,
    check_policy_async,
)
from .events import emitter as _emitter
from .request import AccessRequest
from .verifiers.base import Outcome, Principal, Verdict, VerificationContext, Verifier

__all__ = [
    "CaseResult",
    "Expectation",
    "PolicyCase",
    "StaticVerifier",
    "TokenIssuer",
    "abstain",
    "allow",
    "assert_decisions",
    "capture_events",
    "check_policy",
    "check_policy_async",
    "deny",
    "serve",
]


@contextlib.contextmanager
def capture_events() -> Iterator[list[dict[str, Any]]]:
    """
    Collect every event emitted inside the ``with`` block, already redacted.

    Events are captured synchronously when the middleware finishes a request, without waiting
    for the writer thread, so in-process tests (``httpx.ASGITransport``) find them in the list
    once the call returns. Over a real server the client may read the response a moment before
    the middleware records the event. Sinks still receive every event too.

    Example::

        with capture_events() as events:
            client.get("/api/items")
        assert events[0]["decision"] == "deny"
    """
    events: list[dict[str, Any]] = []
    _emitter._capture_lists.append(events)
    try:
        yield events
    finally:
        _emitter._capture_lists.remove(events)


class StaticVerifier(Verifier):
    """
    A verifier that always returns the same verdict, for policy tests.

    Args:
        outcome: ``pass``, ``fail`` or ``not_applicable``.
        reason: Reason code for ``fail`` or ``not_applicable``.
        subject: With ``pass``, the subject of the principal to establish (as an identity
            verifier); ``None`` establishes no principal.
        scopes: Scopes of that principal.
        roles: Roles of that principal.
        identity: Whether the verifier counts as an identity verifier (failures return 401).
    """

    name = "static"

    def __init__(
        self,
        outcome: Outcome = "pass",
        *,
        reason: str | None = None,
        subject: str | None = None,
        scopes: Any = (),
        roles: Any = (),
        identity: bool | None = None,
        facts: dict[str, Any] | None = None,
        name: str | None = None,
        required: bool = True,
    ) -> None:
        super().__init__(name=name, required=required)
        if outcome == "pass":
            principal = None
            if subject is not None:
                principal = Principal(subject, scopes=frozenset(scopes), roles=frozenset(roles))
            self.verdict = Verdict.passed(principal=principal, **(facts or {}))
        elif outcome == "fail":
            self.verdict = Verdict.failed(reason or "static_failure", **(facts or {}))
        else:
            self.verdict = Verdict.not_applicable(reason, **(facts or {}))
        is_identity = subject is not None if identity is None else identity
        self.kind = "identity" if is_identity else "context"  # type: ignore[misc]

    def verify_cached(self, request: AccessRequest, context: VerificationContext) -> Verdict:
        return self.verdict

    async def verify(self, request: AccessRequest, context: VerificationContext) -> Verdict:
        return self.verdict


def allow(
    subject: str = "tester", *, scopes: Any = (), roles: Any = (), name: str = "allow"
) -> StaticVerifier:
    """Return a verifier that authenticates ``subject`` with the given scopes and roles."""
    return StaticVerifier("pass", subject=subject, scopes=scopes, roles=roles, name=name)


def deny(
    reason: str = "denied_by_test", *, identity: bool = False, name: str = "deny"
) -> StaticVerifier:
    """Return a verifier that always fails with ``reason``."""
    return StaticVerifier("fail", reason=reason, identity=identity, name=name)


def abstain(*, required: bool = False, name: str = "abstain") -> StaticVerifier:
    """Return a verifier that is never applicable."""
    return StaticVerifier("not_applicable", required=required, name=name)


class TokenIssuer:
    """
    A local token issuer with fresh signing keys, for tests and demos.

    It mints signed JWTs and serves its public keys as a JWKS through `jwks_app`, an ASGI
    app with ``/.well-known/jwks.json`` and ``/.well-known/openid-configuration``.

    Args:
        issuer: The ``iss`` claim of minted tokens.
        algorithms: Algorithms to create a key for. Each key's ``kid`` is the algorithm and a
            random suffix, such as ``RS256-5f3a9c1e``. A restarted issuer therefore has new key
            ids, which a running app fetches at once instead of trusting its cached key set.
        kid_suffix: The suffix of every key id; random by default. Give another issuer's
            `kid_suffix` to mint tokens that claim its key ids with different keys.
    """

    def __init__(
        self,
        issuer: str = "https://issuer.test",
        algorithms: Any = ("RS256", "ES256"),
        *,
        kid_suffix: str | None = None,
    ) -> None:
        from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

        self.issuer = issuer
        self.private_keys: dict[str, Any] = {}
        for alg in algorithms:
            if alg.startswith(("RS", "PS")):
                self.private_keys[alg] = rsa.generate_private_key(
                    public_exponent=65537, key_size=2048
                )
            elif alg == "ES256":
                self.private_keys[alg] = ec.generate_private_key(ec.SECP256R1())
            elif alg == "ES384":
                self.private_keys[alg] = ec.generate_private_key(ec.SECP384R1())
            elif alg == "EdDSA":
                self.private_keys[alg] = ed25519.Ed25519PrivateKey.generate()
            else:
                message = f"TokenIssuer cannot create a key for {alg!r}"
                raise ValueError(message)
        self.cache_control = "max-age=300"
        self.kid_suffix = kid_suffix if kid_suffix is not None else os.urandom(4).hex()

    def kid(self, alg: str) -> str:
        """Return the key id of the key for ``alg``."""
        return f"{alg}-{self.kid_suffix}"

    def jwks(self) -> dict[str, Any]:
        """Return the public keys as a JWKS dict."""
        import json

        from jwt.algorithms import get_default_algorithms

        keys = []
        for alg, private_key in self.private_keys.items():
            algorithm = get_default_algorithms()[alg]
            jwk = json.loads(algorithm.to_jwk(private_key.public_key()))
            jwk.update({"kid": self.kid(alg), "alg": alg, "use": "sig"})
            keys.append(jwk)
        return {"keys": keys}

    def token(
        self,
        subject: str = "alice",
        *,
        audience: str | list[str] = "api",
        scopes: Any = (),
        roles: Any = (),
        lifetime: float = 300.0,
        alg: str | None = None,
        kid: str | None = None,
        headers: dict[str, Any] | None = None,
        now: float | None = None,
        **claims: Any,
    ) -> str:
        """
        Mint a signed token. Extra keyword arguments become claims; a claim set to ``None``
        is removed, so ``exp=None`` mints a token without an expiry.
        """
        import jwt

        alg = alg or next(iter(self.private_keys))
        issued = time.time() if now is None else now
        payload: dict[str, Any] = {
            "iss": self.issuer,
            "sub": subject,
            "aud": audience,
            "iat": int(issued),
            "exp": int(issued + lifetime),
            "jti": os.urandom(8).hex(),
        }
        if scopes:
            payload["scope"] = " ".join(scopes)
        if roles:
            payload["roles"] = list(roles)
        payload.update(claims)
        payload = {key: value for key, value in payload.items() if value is not None}
        header = {"kid": kid or self.kid(alg), **(headers or {})}

        return jwt.encode(payload, self.private_keys[alg], algorithm=alg, headers=header)

    def jwks_app(self) -> Any:
        """Return an ASGI app serving the JWKS and a minimal OpenID configuration."""
        from starlette.applications import Starlette
        from starlette.responses import JSONResponse
        from starlette.routing import Route

        async def jwks(_request: Any) -> JSONResponse:
            return JSONResponse(self.jwks(), headers={"cache-control": self.cache_control})

        async def configuration(request: Any) -> JSONResponse:
            base = str(request.base_url).rstrip("/")
            return JSONResponse(
                {"issuer": self.issuer, "jwks_uri": f"{base}/.well-known/jwks.json"}
            )

        return Starlette(
            routes=[
                Route("/.well-known/jwks.json", jwks),
                Route("/.well-known/openid-configuration", configuration),
            ]
        )


@contextlib.contextmanager
def serve(
    app: Any,
    *,
    host: str = "127.0.0.1",
    lifespan: Literal["auto", "on", "off"] = "auto",
    **options: Any,
) -> Iterator[str]:
    """
    Serve an ASGI app with uvicorn on a free port of ``host`` in a background thread.

    Yields the base URL, such as ``http://127.0.0.1:54321``, once the server accepts
    connections, and stops the server when the block ends. Needs the ``cli`` extra (uvicorn).
    """
    try:
        import uvicorn
    except ImportError:
        from .exceptions import MissingExtraError

        raise MissingExtraError("zerotrust.testing.serve", "cli") from None

    # uvicorn would otherwise believe X-Forwarded-For from 127.0.0.1 itself and rewrite the
    # client address before the middleware sees it.
    options.setdefault("proxy_headers", False)
    config = uvicorn.Config(
        app, host=host, port=0, log_level="warning", lifespan=lifespan, **options
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="zerotrust-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            message = f"uvicorn did not start on {host} within 10 seconds"
            raise RuntimeError(message)
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
