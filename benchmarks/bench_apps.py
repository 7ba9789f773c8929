# SPDX-License-Identifier: Apache-2.0
"""The apps the benchmarks compare: one trivial route, bare or behind access control."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
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
from zerotrust.grants import (
    Grant,
    GrantBroker,
    GrantVerifier,
    MemoryGrantStore,
    generate_signing_key,
    load_signing_key,
)
from zerotrust.grants.keys import private_key_to_pem
from zerotrust.monitor import RiskSignal, RiskSignals, RiskVerifier
from zerotrust.testing import TokenIssuer

__all__ = [
    "AUDIENCE",
    "CLIENT_ADDRESS",
    "COLD_VARIANTS",
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
    "cold_request_headers",
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
# The GeoLite2 data bundled with geoip2fast 1.2.2 places every address of CLIENT_NETWORK in GB.
# The benchmarks only put these addresses in a header and never send anything to them. The cold
# variant gives each request its own address from that network, so the geo and address caches
# miss as well.
TRUSTED_PROXY = "127.0.0.1"
CLIENT_ADDRESS = "81.2.69.142"
CLIENT_NETWORK = "81.2.64.0/19"
CLIENT_COUNTRY = "GB"
# The full chain's segment needs this role. The bearer token does not carry it, so the request
# passes through the just-in-time grant that GrantVerifier accepts in its place.
ROLE = "operator"
GRANT_SEGMENT = "api"
GRANT_HEADER = "x-zerotrust-grant"

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
    "full-chain": "zerotrust full chain, warm caches",
    "full-chain-cold": (
        "zerotrust full chain, cold caches (new credentials and address per request)"
    ),
    "starlette-auth": "Starlette AuthenticationMiddleware + pyjwt RS256 uncached",
}
# Variants whose every request carries credentials and an address that the app has not seen.
COLD_VARIANTS = frozenset({"full-chain-cold"})


async def list_items(_request: Request) -> JSONResponse:
    return JSONResponse({"items": [{"id": 1, "name": "first"}, {"id": 2, "name": "second"}]})


def bare_app(middleware: list[Middleware] | None = None) -> Starlette:
    """Build the Starlette app with the one route that every variant serves."""
    return Starlette(routes=[Route(PATH, list_items)], middleware=middleware)


@dataclass
class CredentialSet:
    """
    The credentials of one client of the full chain: what it sends and the grant it holds.

    Attributes:
        tokens: The RS256 bearer token, the device assertion and the grant token, by the keys
            ``RS256``, ``device`` and ``grant``.
        grant: The grant record that the grant store must hold for the grant token to pass.
        client: The client address the request claims in ``X-Forwarded-For``.
    """

    tokens: dict[str, str]
    grant: Grant
    client: str = CLIENT_ADDRESS


@dataclass
class Credentials:
    """
    Signing keys and the tokens the clients send, shared by every harness.

    ``identity`` signs the bearer tokens (RS256 and ES256 keys), ``device`` signs the device
    posture assertion (ES256) and ``grant_key`` signs the just-in-time grant (Ed25519). `save`
    and `load` pass the same keys, tokens and grant records to child processes, so no child
    spends time or instructions generating keys. ``cold`` holds the credential sets of the cold
    variant, one per request, when `add_cold` made them.
    """

    identity: TokenIssuer
    device: TokenIssuer
    grant_key: Any
    tokens: dict[str, str]
    grant: Grant
    cold: list[CredentialSet] = field(default_factory=list)

    @classmethod
    def generate(cls) -> Credentials:
        # Fixed key ids, because the server processes rebuild the issuers from the saved keys.
        identity = TokenIssuer(issuer=ISSUER, algorithms=("RS256", "ES256"), kid_suffix="1")
        device = TokenIssuer(issuer=DEVICE_ISSUER, algorithms=("ES256",), kid_suffix="1")
        credentials = cls(identity, device, generate_signing_key(), {}, _placeholder_grant())
        tokens = {
            alg: identity.token(SUBJECT, audience=AUDIENCE, scopes=[SCOPE], alg=alg, lifetime=3600)
            for alg in ("RS256", "ES256")
        }
        warm = credentials.credential_set(DEVICE_ID, CLIENT_ADDRESS, tokens["RS256"])
        credentials.tokens = {
            **tokens,
            "device": warm.tokens["device"],
            "grant": warm.tokens["grant"],
        }
        credentials.grant = warm.grant
        return credentials

    @property
    def grant_jwks(self) -> dict[str, Any]:
        """The public JWKS of the grant signing key, as `GrantBroker.public_jwks` returns it."""
        return _broker(self.grant_key, MemoryGrantStore()).public_jwks()

    def credential_set(
        self, device_id: str, client: str, bearer: str | None = None
    ) -> CredentialSet:
        """Sign a new bearer token (unless given), device assertion and grant for one client."""
        if bearer is None:
            bearer = self.identity.token(
                SUBJECT, audience=AUDIENCE, scopes=[SCOPE], alg="RS256", lifetime=3600
            )
        # DeviceVerifier rejects assertions that live longer than 3600 s by default.
        assertion = self.device.token(
            device_id,
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
        issued = _broker(self.grant_key, MemoryGrantStore()).mint(
            subject=SUBJECT,
            segment=GRANT_SEGMENT,
            methods=["GET"],
            paths=[PATH],
            reason="benchmark",
            requested_by=SUBJECT,
            duration=3600,
        )
        tokens = {"RS256": bearer, "device": assertion, "grant": issued.token}
        return CredentialSet(tokens, issued.grant, client)

    def add_cold(self, count: int) -> None:
        """Make ``count`` credential sets for the cold variant, each with its own client address."""
        network = ipaddress.ip_network(CLIENT_NETWORK)
        if count > network.num_addresses - 2:
            message = f"the cold variant has {network.num_addresses - 2} addresses, not {count}"
            raise ValueError(message)
        hosts = network.hosts()
        self.cold = [
            self.credential_set(f"laptop-{index:05d}", str(next(hosts))) for index in range(count)
        ]

    def grants(self) -> list[Grant]:
        """Every grant record the grant store must hold: the warm client's and the cold ones."""
        return [self.grant, *(entry.grant for entry in self.cold)]

    def save(self, directory: Path) -> None:
        """Write the keys as PEM files and the tokens and grants as JSON into ``directory``."""
        for prefix, issuer in (("identity", self.identity), ("device", self.device)):
            for alg, key in issuer.private_keys.items():
                pem = key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
                (directory / f"{prefix}-{alg}.pem").write_bytes(pem)
        (directory / "grant-key.pem").write_bytes(private_key_to_pem(self.grant_key))
        document = {
            "tokens": self.tokens,
            "grant": dataclasses.asdict(self.grant),
            "cold": [
                {
                    "tokens": entry.tokens,
                    "grant": dataclasses.asdict(entry.grant),
                    "client": entry.client,
                }
                for entry in self.cold
            ],
        }
        (directory / "tokens.json").write_text(json.dumps(document), encoding="utf-8")

    @classmethod
    def load(cls, directory: Path) -> Credentials:
        """Read the keys, tokens and grants that `save` wrote into ``directory``."""
        identity = TokenIssuer(issuer=ISSUER, algorithms=(), kid_suffix="1")
        device = TokenIssuer(issuer=DEVICE_ISSUER, algorithms=(), kid_suffix="1")
        for prefix, issuer in (("identity", identity), ("device", device)):
            for path in sorted(directory.glob(f"{prefix}-*.pem")):
                alg = path.stem.removeprefix(f"{prefix}-")
                issuer.private_keys[alg] = serialization.load_pem_private_key(
                    path.read_bytes(), password=None
                )
        grant_key = load_signing_key((directory / "grant-key.pem").read_bytes())
        document = json.loads((directory / "tokens.json").read_text(encoding="utf-8"))
        cold = [
            CredentialSet(entry["tokens"], _grant_from_json(entry["grant"]), entry["client"])
            for entry in document["cold"]
        ]
        return cls(
            identity,
            device,
            grant_key,
            document["tokens"],
            _grant_from_json(document["grant"]),
            cold,
        )


def _broker(key: Any, store: MemoryGrantStore) -> GrantBroker:
    return GrantBroker(signing_key=key, store=store)


def _placeholder_grant() -> Grant:
    now = time.time()
    return Grant("-", SUBJECT, GRANT_SEGMENT, ("GET",), (PATH,), now, now, "-", SUBJECT)


def _grant_from_json(data: dict[str, Any]) -> Grant:
    return Grant(**{**data, "methods": tuple(data["methods"]), "paths": tuple(data["paths"])})


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
    roles: Sequence[str] = (),
) -> tuple[ZeroTrustMiddleware, EventEmitter]:
    if sink is None:
        sink = DiscardSink() if events_path is None else JsonLinesSink(events_path)
    emitter = EventEmitter([sink], max_queue=max_queue)
    segment = Segment("api", paths=["/api/"], verifiers=verifiers, scopes=[SCOPE], roles=roles)
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
    credentials: Credentials,
    *,
    events_path: str | os.PathLike[str] | None,
    max_queue: int = 10_000,
    app: ASGIApp | None = None,
    sink: Sink | None = None,
) -> tuple[ZeroTrustMiddleware, EventEmitter]:
    """
    Wrap ``app`` in `ZeroTrustMiddleware` with the seven verifiers of the full chain.

    One segment ``/api/`` requires scope ``items:read`` and role ``operator``, and runs:

    - a cached RS256 `JWTVerifier`, whose tokens carry the scope but not the role;
    - a `DeviceVerifier` for ES256 posture assertions that requires a managed device;
    - a `GeoVerifier` with the default geoip2fast backend, whose data is loaded here, before
      any timing;
    - a `TimeWindowVerifier` whose window is always open;
    - a `NetworkVerifier` that allows the client's network;
    - a `GrantVerifier` in ``alternative`` mode with a `MemoryGrantStore` that holds every
      grant of ``credentials``: the grant stands in for the role;
    - a `RiskVerifier` on `RiskSignals` in memory, which hold one signal about another client.

    The middleware trusts ``X-Forwarded-For`` from 127.0.0.1.
    """
    geo = GeoVerifier(allow_countries=[CLIENT_COUNTRY])
    geo.preload()
    grants = MemoryGrantStore()
    for grant in credentials.grants():
        grants.save(grant)
    signals = RiskSignals()
    now = time.time()
    # A flagged address elsewhere, so the signal lookups search a store that is not empty.
    signals.raise_signal(
        RiskSignal("client_ip", "203.0.113.9", "bench", "denied_burst", now, now + 86_400)
    )
    verifiers: list[Verifier] = [
        JWTVerifier(
            issuer=ISSUER, audience=AUDIENCE, algorithms=["RS256"], keys=credentials.identity.jwks()
        ),
        DeviceVerifier(
            issuer=DEVICE_ISSUER,
            audience=AUDIENCE,
            algorithms=["ES256"],
            keys=credentials.device.jwks(),
            require_managed=True,
        ),
        geo,
        TimeWindowVerifier(windows=["mon-sun 00:00-24:00"], timezone="Europe/Berlin"),
        NetworkVerifier(allow={"bench-clients": CLIENT_NETWORK}),
        GrantVerifier(keys=credentials.grant_jwks, store=grants, header=GRANT_HEADER),
        RiskVerifier(signals),
    ]
    return _protect(
        verifiers,
        events_path=events_path,
        max_queue=max_queue,
        app=app,
        sink=sink,
        trusted_proxies=[TRUSTED_PROXY],
        roles=[ROLE],
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
    if key in ("full-chain", "full-chain-cold"):
        app, emitter = full_chain_app(credentials, events_path=events_path, max_queue=max_queue)
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
    if key.startswith("full-chain"):
        headers.append(("x-forwarded-for", CLIENT_ADDRESS))
        headers.append(("x-device-assertion", credentials.tokens["device"]))
        headers.append((GRANT_HEADER, credentials.tokens["grant"]))
    return headers


def cold_request_headers(credentials: Credentials) -> list[list[tuple[str, str]]]:
    """Return the headers of each request of the cold variant, one credential set each."""
    return [
        [
            ("authorization", f"Bearer {entry.tokens['RS256']}"),
            ("x-forwarded-for", entry.client),
            ("x-device-assertion", entry.tokens["device"]),
            (GRANT_HEADER, entry.tokens["grant"]),
        ]
        for entry in credentials.cold
    ]


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
