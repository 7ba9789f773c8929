# SPDX-License-Identifier: Apache-2.0
"""The apps the benchmarks compare: one trivial route, bare or behind access control."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from starlette.applications import Starlette
from starlette.authentication import (
    AuthCredentials,
    AuthenticationBackend,
    AuthenticationError,
    SimpleUser,
)
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp

from zerotrust import (
    DeviceVerifier,
    EventEmitter,
    GeoVerifier,
    JsonLinesSink,
    JWTVerifier,
    NetworkVerifier,
    Segment,
    Sink,
    TimeWindowVerifier,
    Verifier,
    ZeroTrustMiddleware,
)
from zerotrust.testing import TokenIssuer

__all__ = [
    "AUDIENCE",
    "CLIENT_ADDRESS",
    "ISSUER",
    "PATH",
    "SCOPE",
    "VARIANTS",
    "BenchApp",
    "Credentials",
    "DiscardSink",
    "PyJWTBackend",
    "bare_app",
    "build_variant",
    "full_chain_app",
    "request_headers",
    "served_app",
    "starlette_auth_app",
    "zerotrust_app",
]

ISSUER = "https://issuer.bench"
DEVICE_ISSUER = "https://mdm.bench"
AUDIENCE = "api"
PATH = "/api/items"
SCOPE = "items:read"
SUBJECT = "alice"
DEVICE_ID = "laptop-0042"

# The full chain reads the client address from X-Forwarded-For, set by a proxy on 127.0.0.1.
# The GeoLite2 data bundled with geoip2fast 1.2.2 places this public address in GB. The
# benchmarks only put it in a header and never send anything to it.
TRUSTED_PROXY = "127.0.0.1"
CLIENT_ADDRESS = "81.2.69.142"
CLIENT_NETWORK = "81.2.69.0/24"
CLIENT_COUNTRY = "GB"

# Environment variables through which bench_served.py configures each uvicorn child process.
CREDENTIALS_ENV = "ZEROTRUST_BENCH_CREDENTIALS"
EVENTS_ENV = "ZEROTRUST_BENCH_EVENTS"
VARIANT_ENV = "ZEROTRUST_BENCH_VARIANT"

# Key of each variant, as the harnesses accept it on the command line, and its label in reports.
VARIANTS: dict[str, str] = {
    "bare": "bare Starlette",
    "rs256-cached": "zerotrust RS256 cached",
    "es256-cached": "zerotrust ES256 cached",
    "rs256-uncached": "zerotrust RS256 uncached",
    "es256-uncached": "zerotrust ES256 uncached",
    "rs256-discard": "zerotrust RS256 cached, events discarded",
    "full-chain": "zerotrust full chain (JWT + device + geo + time + network), cached",
    "starlette-auth": "Starlette AuthenticationMiddleware + pyjwt RS256 uncached",
}


async def list_items(_request: Request) -> JSONResponse:
    return JSONResponse({"items": [{"id": 1, "name": "first"}, {"id": 2, "name": "second"}]})


def bare_app(middleware: list[Middleware] | None = None) -> Starlette:
    """Build the Starlette app with the one route that every variant serves."""
    return Starlette(routes=[Route(PATH, list_items)], middleware=middleware)


@dataclass
class Credentials:
    """
    Signing keys and the tokens the clients send, shared by every harness.

    ``identity`` signs the bearer tokens (RS256 and ES256 keys) and ``device`` signs the device
    posture assertion (ES256). `save` and `load` pass the same keys and tokens to child
    processes, so no child spends time or instructions generating keys.
    """

    identity: TokenIssuer
    device: TokenIssuer
    tokens: dict[str, str]

    @classmethod
    def generate(cls) -> Credentials:
        identity = TokenIssuer(issuer=ISSUER, algorithms=("RS256", "ES256"))
        device = TokenIssuer(issuer=DEVICE_ISSUER, algorithms=("ES256",))
        tokens = {
            alg: identity.token(SUBJECT, audience=AUDIENCE, scopes=[SCOPE], alg=alg, lifetime=3600)
            for alg in ("RS256", "ES256")
        }
        # DeviceVerifier rejects assertions that live longer than 3600 s by default.
        tokens["device"] = device.token(
            DEVICE_ID,
            audience=AUDIENCE,
            alg="ES256",
            lifetime=3000,
            user=SUBJECT,
            managed=True,
            os="macOS",
            os_version="14.4.1",
            disk_encrypted=True,
            screen_lock=True,
        )
        return cls(identity, device, tokens)

    def save(self, directory: Path) -> None:
        """Write the private keys as PEM files and the tokens as JSON into ``directory``."""
        for prefix, issuer in (("identity", self.identity), ("device", self.device)):
            for alg, key in issuer.private_keys.items():
                pem = key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
                (directory / f"{prefix}-{alg}.pem").write_bytes(pem)
        (directory / "tokens.json").write_text(json.dumps(self.tokens), encoding="utf-8")

    @classmethod
    def load(cls, directory: Path) -> Credentials:
        """Read the keys and tokens that `save` wrote into ``directory``."""
        identity = TokenIssuer(issuer=ISSUER, algorithms=())
        device = TokenIssuer(issuer=DEVICE_ISSUER, algorithms=())
        for prefix, issuer in (("identity", identity), ("device", device)):
            for path in sorted(directory.glob(f"{prefix}-*.pem")):
                alg = path.stem.removeprefix(f"{prefix}-")
                issuer.private_keys[alg] = serialization.load_pem_private_key(
                    path.read_bytes(), password=None
                )
        tokens = json.loads((directory / "tokens.json").read_text(encoding="utf-8"))
        return cls(identity, device, tokens)


@dataclass
class BenchApp:
    """One variant ready to call: the app, its event emitter, and the file the events go to."""

    key: str
    app: ASGIApp
    emitter: EventEmitter | None = None
    events_path: Path | None = None

    @property
    def label(self) -> str:
        return VARIANTS[self.key]


def _protect(
    verifiers: list[Verifier],
    *,
    events_path: str | os.PathLike[str] | None,
    max_queue: int,
    app: ASGIApp | None,
    sink: Sink | None,
    trusted_proxies: Sequence[str] = (),
) -> tuple[ZeroTrustMiddleware, EventEmitter]:
    if sink is None:
        sink = DiscardSink() if events_path is None else JsonLinesSink(events_path)
    emitter = EventEmitter([sink], max_queue=max_queue)
    segment = Segment("api", paths=["/api/"], verifiers=verifiers, scopes=[SCOPE])
    middleware = ZeroTrustMiddleware(
        app or bare_app(), policy=[segment], events=emitter, trusted_proxies=trusted_proxies
    )

    return middleware, emitter


def zerotrust_app(
    jwks: Mapping[str, Any],
    *,
    algorithm: str,
    events_path: str | os.PathLike[str] | None,
    cached: bool = True,
    max_queue: int = 10_000,
    app: ASGIApp | None = None,
    sink: Sink | None = None,
) -> tuple[ZeroTrustMiddleware, EventEmitter]:
    """
    Wrap ``app`` (the bare app by default) in `ZeroTrustMiddleware` with one JWT verifier.

    The verifier uses static keys from ``jwks``. Returns the middleware and its event emitter,
    which writes JSON lines to ``events_path``, or builds the events and discards them when
    ``events_path`` is ``None``. A given ``sink`` replaces both.
    """
    verifier = JWTVerifier(
        issuer=ISSUER,
        audience=AUDIENCE,
        algorithms=[algorithm],
        keys=jwks,
        cache_size=10_000 if cached else 0,
    )
    return _protect([verifier], events_path=events_path, max_queue=max_queue, app=app, sink=sink)


def full_chain_app(
    jwks: Mapping[str, Any],
    device_jwks: Mapping[str, Any],
    *,
    events_path: str | os.PathLike[str] | None,
    max_queue: int = 10_000,
    app: ASGIApp | None = None,
    sink: Sink | None = None,
) -> tuple[ZeroTrustMiddleware, EventEmitter]:
    """
    Wrap ``app`` in `ZeroTrustMiddleware` with all five verifiers in one segment.

    The verifiers are:

    - a cached RS256 `JWTVerifier`;
    - a `DeviceVerifier` for ES256 posture assertions that requires a managed device;
    - a `GeoVerifier` with the default geoip2fast backend, whose data is loaded here, before
      any timing;
    - a `TimeWindowVerifier` whose window is always open;
    - a `NetworkVerifier` that allows the client's network.

    The middleware trusts ``X-Forwarded-For`` from 127.0.0.1.
    """
    geo = GeoVerifier(allow_countries=[CLIENT_COUNTRY])
    geo.preload()
    verifiers: list[Verifier] = [
        JWTVerifier(issuer=ISSUER, audience=AUDIENCE, algorithms=["RS256"], keys=jwks),
        DeviceVerifier(
            issuer=DEVICE_ISSUER,
            audience=AUDIENCE,
            algorithms=["ES256"],
            keys=device_jwks,
            require_managed=True,
        ),
        geo,
        TimeWindowVerifier(windows=["mon-sun 00:00-24:00"], timezone="Europe/Berlin"),
        NetworkVerifier(allow={"bench-clients": CLIENT_NETWORK}),
    ]
    return _protect(
        verifiers,
        events_path=events_path,
        max_queue=max_queue,
        app=app,
        sink=sink,
        trusted_proxies=[TRUSTED_PROXY],
    )


def build_variant(
    key: str, credentials: Credentials, *, events_dir: Path, max_queue: int = 10_000
) -> BenchApp:
    """Build the app of variant ``key`` (a key of `VARIANTS`); events go to ``events_dir``."""
    if key not in VARIANTS:
        message = f"unknown variant {key!r}; choose one of {', '.join(VARIANTS)}"
        raise ValueError(message)
    if key == "bare":
        return BenchApp(key, bare_app())
    if key == "starlette-auth":
        public_key = credentials.identity.private_keys["RS256"].public_key()
        return BenchApp(key, starlette_auth_app(public_key))

    jwks = credentials.identity.jwks()
    events_path = events_dir / f"{key}.jsonl"
    if key == "full-chain":
        app, emitter = full_chain_app(
            jwks, credentials.device.jwks(), events_path=events_path, max_queue=max_queue
        )
        return BenchApp(key, app, emitter, events_path)
    if key == "rs256-discard":
        app, emitter = zerotrust_app(jwks, algorithm="RS256", events_path=None, max_queue=max_queue)
        return BenchApp(key, app, emitter)

    algorithm, mode = key.split("-")
    app, emitter = zerotrust_app(
        jwks,
        algorithm=algorithm.upper(),
        events_path=events_path,
        cached=mode == "cached",
        max_queue=max_queue,
    )
    return BenchApp(key, app, emitter, events_path)


def request_headers(key: str, credentials: Credentials) -> list[tuple[str, str]]:
    """Return the credential headers a client of variant ``key`` sends."""
    algorithm = "ES256" if key.startswith("es256") else "RS256"
    headers = [("authorization", f"Bearer {credentials.tokens[algorithm]}")]
    if key == "full-chain":
        headers.append(("x-forwarded-for", CLIENT_ADDRESS))
        headers.append(("x-device-assertion", credentials.tokens["device"]))
    return headers


class DiscardSink(Sink):
    """A sink that drops every event: the events are still built, but never redacted or written."""

    name = "discard"

    def write(self, events: Sequence[dict[str, Any]]) -> None:
        return None


class PyJWTBackend(AuthenticationBackend):
    """
    A hand-written Starlette authentication backend: one ``jwt.decode`` per request, no cache.

    The public key object is parsed once here. Code that passes PEM text to ``jwt.decode``
    parses the key on every request as well, so it is slower still.
    """

    def __init__(self, public_key: Any, *, algorithm: str = "RS256") -> None:
        self.public_key = public_key
        self.algorithm = algorithm

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, SimpleUser]:
        scheme, _, token = conn.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise AuthenticationError("missing bearer token")
        try:
            claims = jwt.decode(
                token,
                self.public_key,
                algorithms=[self.algorithm],
                audience=AUDIENCE,
                issuer=ISSUER,
                options={"require": ["exp", "sub", "iss", "aud"]},
            )
        except jwt.InvalidTokenError as error:
            raise AuthenticationError(str(error)) from None
        scopes = str(claims.get("scope", "")).split()
        if SCOPE not in scopes:
            raise AuthenticationError(f"missing scope {SCOPE}")

        return AuthCredentials(scopes), SimpleUser(claims["sub"])


def starlette_auth_app(public_key: Any, *, algorithm: str = "RS256") -> Starlette:
    """Build the app behind Starlette's `AuthenticationMiddleware` and `PyJWTBackend`."""
    backend = PyJWTBackend(public_key, algorithm=algorithm)
    return bare_app([Middleware(AuthenticationMiddleware, backend=backend)])


def served_app() -> ASGIApp:
    """
    Build the app for a uvicorn child process (``--factory``), configured from the environment.

    bench_served.py sets the variant key, the directory that `Credentials.save` wrote, and the
    directory for event files.
    """
    credentials = Credentials.load(Path(os.environ[CREDENTIALS_ENV]))
    bench = build_variant(
        os.environ[VARIANT_ENV], credentials, events_dir=Path(os.environ[EVENTS_ENV])
    )
    return bench.app
