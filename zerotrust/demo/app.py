# SPDX-License-Identifier: Apache-2.0
"""The demo's sample application: five segments behind `ZeroTrustMiddleware`."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from time import perf_counter
from typing import Any
from zoneinfo import ZoneInfo

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ..asgi import ZeroTrustMiddleware, get_access
from ..events import EventEmitter, Sink
from ..grants import GrantStore, GrantVerifier
from ..monitor import (
    CredentialStuffingDetector,
    DeniedBurstDetector,
    Detector,
    MonitorSink,
    RiskSignals,
    RiskVerifier,
)
from ..policy import Segment
from ..verifiers import (
    DeviceVerifier,
    GeoVerifier,
    JWTVerifier,
    NetworkVerifier,
    TimeWindowVerifier,
    WorkloadVerifier,
)
from .workloads import CLIENT_CERTIFICATE_HEADER, INTERNAL_CALLERS

__all__ = [
    "AUDIENCE",
    "BURST_THRESHOLD",
    "DEVICE_AUDIENCE",
    "GRANT_ISSUER",
    "INTERNAL_PATH",
    "OFFICE_HOURS",
    "OFFICE_TIME_ZONE",
    "REPORT_PATH",
    "STUFFING_ACCOUNTS",
    "TRUSTED_PROXIES",
    "WORKSPACE_COUNTRIES",
    "DemoApp",
    "DemoClock",
    "build_demo_app",
    "build_detectors",
    "build_segments",
    "build_workload_verifier",
]

AUDIENCE = "api"
DEVICE_AUDIENCE = "workspace"
WORKSPACE_COUNTRIES = ("DE", "AT", "CH")
OFFICE_HOURS = "mon-fri 08:00-18:00"
OFFICE_TIME_ZONE = ZoneInfo("Europe/Berlin")
# Both servers listen on loopback, so the scripted client is the only proxy hop there is.
TRUSTED_PROXIES = ("127.0.0.1", "::1")
MAX_POSTURE_AGE = 3600.0
GRANT_ISSUER = "zerotrust-demo-grants"
# In the admin area, so only the admin role or a just-in-time grant opens it.
REPORT_PATH = "/admin/reports/daily"
# A service-to-service route: the database tier, which only the app tier's workload may call.
INTERNAL_PATH = "/internal/orders"
# Denials of one subject, and failing accounts from one address, that are still normal. Before
# the attack the script denies the reader and alice 6 times each and fails 6 tokens from
# loopback, so only the attack crosses these limits.
BURST_THRESHOLD = 7
STUFFING_ACCOUNTS = 8
# Seconds each detector looks back; the whole demo takes a few seconds.
DETECTOR_WINDOW = 3600.0


class DemoClock:
    """
    The instant the office-hours check judges, set by the demo runner before each request.

    A real deployment judges the request's arrival time. The demo fixes the instant instead, so
    that its requests fall inside or outside office hours whenever it runs. Only the runner
    sets it, and nothing in a request can change it.
    """

    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


@dataclass(slots=True)
class DemoApp:
    """
    The protected app and the parts of it that the runner drives or reports on.

    Attributes:
        middleware: The ASGI app to serve.
        events: The emitter; closing it flushes every event to the sinks.
        clock: The clock of the office-hours check.
        geo: The country check, whose data the app loads at start-up.
        monitor: The sink that runs the detectors on the access events.
        signals: The risk signals the detectors raise and the ``api`` segment reads.
        geo_load_seconds: How long loading the geo data took at start-up, once it has run.
    """

    middleware: ZeroTrustMiddleware
    events: EventEmitter
    clock: DemoClock
    geo: GeoVerifier
    monitor: MonitorSink
    signals: RiskSignals
    geo_load_seconds: float | None = None


def build_segments(
    *,
    issuer: str,
    jwks_url: str,
    device_issuer: str,
    device_keys: Mapping[str, Any],
    clock: DemoClock,
    geo: GeoVerifier,
    grant_keys: Mapping[str, Any],
    grant_store: GrantStore,
    events: EventEmitter,
    signals: RiskSignals,
) -> list[Segment]:
    """
    Build the demo policy: a public health check, a scoped API, an admin area, a workspace
    and an internal segment for service-to-service calls.

    One `JWTVerifier` serves every user-facing segment, so the JWKS is fetched once. The API
    also denies requests that an active risk signal in ``signals`` is about. The admin
    area also requires a loopback client, and the admin role or a just-in-time grant signed by
    one of ``grant_keys`` and not revoked in ``grant_store``. The workspace requires a managed
    device with fresh posture bound to the user, a client in one of `WORKSPACE_COUNTRIES`, and
    office hours. The internal segment requires a client certificate whose SPIFFE ID is one of
    `INTERNAL_CALLERS`, forwarded by a trusted proxy in `CLIENT_CERTIFICATE_HEADER`.
    """
    identity = JWTVerifier(
        issuer=issuer,
        audience=AUDIENCE,
        algorithms=["RS256", "ES256"],
        jwks_url=jwks_url,
    )
    local_network = NetworkVerifier(allow={"loopback": ["127.0.0.0/8", "::1/128"]})
    device = DeviceVerifier(
        issuer=device_issuer,
        audience=DEVICE_AUDIENCE,
        algorithms=["ES256"],
        keys=device_keys,
        require_managed=True,
        max_posture_age=MAX_POSTURE_AGE,
    )
    office_hours = TimeWindowVerifier(windows=OFFICE_HOURS, timezone=OFFICE_TIME_ZONE, clock=clock)
    # A valid grant replaces the admin role. The demo records every use, not one a minute.
    grants = GrantVerifier(
        keys=grant_keys,
        store=grant_store,
        issuer=GRANT_ISSUER,
        mode="alternative",
        events=events,
        use_event_interval=0,
    )
    workload = build_workload_verifier()

    return [
        Segment("public", paths=["/healthz"], public=True),
        Segment(
            "api",
            paths=["/api/"],
            verifiers=[identity, RiskVerifier(signals)],
            scopes={"GET": ["api:read"], "POST": ["api:write"]},
        ),
        Segment(
            "admin",
            paths=["/admin/"],
            verifiers=[identity, local_network, grants],
            roles=["admin"],
        ),
        Segment(
            "workspace",
            paths=["/workspace/"],
            verifiers=[identity, device, geo, office_hours],
            scopes={"GET": ["workspace:read"]},
        ),
        Segment("internal", paths=["/internal/"], verifiers=[workload]),
    ]


def build_detectors() -> list[Detector]:
    """
    Build the detectors the demo's monitor runs, with limits small enough for a short attack.

    A denied burst flags the subject only for the addresses the denials came from, and
    credential stuffing flags the client address, so neither locks out a user elsewhere.
    """
    return [
        DeniedBurstDetector(threshold=BURST_THRESHOLD, window=DETECTOR_WINDOW),
        CredentialStuffingDetector(subjects=STUFFING_ACCOUNTS, window=DETECTOR_WINDOW),
    ]


def build_workload_verifier() -> WorkloadVerifier:
    """
    Build the internal segment's check: a client certificate for one of `INTERNAL_CALLERS`.

    The demo serves plain HTTP, so the certificate can only come from a proxy that terminated
    mutual TLS and verified the chain. The middleware accepts `CLIENT_CERTIFICATE_HEADER` only
    from `TRUSTED_PROXIES`.
    """
    return WorkloadVerifier(
        allowed_ids=INTERNAL_CALLERS,
        proxy_header=CLIENT_CERTIFICATE_HEADER,
        proxy_format="pem",
    )


def build_demo_app(
    *,
    issuer: str,
    jwks_url: str,
    device_issuer: str,
    device_keys: Mapping[str, Any],
    clock: DemoClock,
    sinks: Sequence[Sink],
    grant_keys: Mapping[str, Any],
    grant_store: GrantStore,
) -> DemoApp:
    """
    Build the protected app, trusting `TRUSTED_PROXIES` to name the client.

    ``grant_keys`` are the public keys of the grant broker, so the app can verify grants but
    never mint them. A `MonitorSink` after ``sinks`` runs `build_detectors` on the access
    events and emits each anomaly through the same emitter, so it reaches ``sinks`` too.
    """
    geo = GeoVerifier(allow_countries=WORKSPACE_COUNTRIES)
    signals = RiskSignals()
    monitor = MonitorSink(detectors=build_detectors(), signals=signals)
    emitter = EventEmitter([*sinks, monitor], flush_interval=0.05)
    # The emitter takes its sinks at construction, so the monitor learns of it afterwards.
    monitor.emitter = emitter
    segments = build_segments(
        issuer=issuer,
        jwks_url=jwks_url,
        device_issuer=device_issuer,
        device_keys=device_keys,
        clock=clock,
        geo=geo,
        grant_keys=grant_keys,
        grant_store=grant_store,
        events=emitter,
        signals=signals,
    )
    demo: DemoApp

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        # Loading the geo data takes a few tenths of a second. uvicorn accepts connections only
        # after start-up, so loading here keeps that time off the first request.
        started = perf_counter()
        await asyncio.to_thread(geo.preload)
        demo.geo_load_seconds = perf_counter() - started
        yield

    app = Starlette(
        routes=[
            Route("/healthz", _health),
            Route("/api/items", _list_items, methods=["GET"]),
            Route("/api/items", _create_item, methods=["POST"]),
            Route("/admin/users", _list_users),
            Route(REPORT_PATH, _daily_report),
            Route("/workspace/documents", _list_documents),
            Route(INTERNAL_PATH, _list_orders),
            # No segment covers /secret, so the middleware denies it although the route exists.
            Route("/secret", _secret),
        ],
        lifespan=lifespan,
    )
    middleware = ZeroTrustMiddleware(
        app, policy=segments, trusted_proxies=TRUSTED_PROXIES, events=emitter
    )
    demo = DemoApp(middleware, emitter, clock, geo, monitor, signals)

    return demo


async def _health(_request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def _list_items(request: Request) -> JSONResponse:
    access = get_access(request)
    subject = access.subject if access is not None else None
    return JSONResponse({"items": ["alpha", "beta"], "subject": subject})


async def _create_item(_request: Request) -> JSONResponse:
    return JSONResponse({"created": "gamma"}, status_code=201)


async def _list_users(_request: Request) -> JSONResponse:
    return JSONResponse({"users": ["alice", "bob", "root"]})


async def _daily_report(request: Request) -> JSONResponse:
    access = get_access(request)
    subject = access.subject if access is not None else None
    return JSONResponse({"report": "daily", "logins": 42, "denials": 7, "reader": subject})


async def _list_documents(_request: Request) -> JSONResponse:
    return JSONResponse({"documents": ["roadmap.md", "budget.xlsx"]})


async def _list_orders(request: Request) -> JSONResponse:
    access = get_access(request)
    caller = access.subject if access is not None else None
    return JSONResponse({"orders": [1001, 1002], "caller": caller})


async def _secret(_request: Request) -> JSONResponse:
    return JSONResponse({"secret": "never served"})
