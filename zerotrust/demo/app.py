# SPDX-License-Identifier: Apache-2.0
"""The demo's sample application: five segments behind `ZeroTrustMiddleware`, from a policy file."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ..asgi import ZeroTrustMiddleware, get_access
from ..config import LoadedPolicy, load_policy
from ..events import EventEmitter, Sink
from ..exceptions import ConfigurationError
from ..grants import GrantStore, GrantVerifier
from ..monitor import MonitorSink, RiskSignals
from ..verifiers import GeoVerifier, TimeWindowVerifier

__all__ = [
    "AUDIENCE",
    "BURST_THRESHOLD",
    "DEVICE_AUDIENCE",
    "GRANT_ISSUER",
    "GRANT_VERIFIER",
    "INTERNAL_PATH",
    "OFFICE_HOURS_VERIFIER",
    "OFFICE_TIME_ZONE",
    "POLICY_VARIABLES",
    "REPORT_PATH",
    "STUFFING_ACCOUNTS",
    "TRUSTED_PROXIES",
    "WORKSPACE_COUNTRIES",
    "DemoApp",
    "DemoClock",
    "build_demo_app",
    "default_policy_path",
    "policy_environ",
]

# What the script expects of the policy in examples/policy.toml. The file sets these values
# itself, and a test checks that both agree.
AUDIENCE = "api"
DEVICE_AUDIENCE = "workspace"
WORKSPACE_COUNTRIES = ("DE", "AT", "CH")
OFFICE_TIME_ZONE = ZoneInfo("Europe/Berlin")
TRUSTED_PROXIES = ("127.0.0.1", "::1")
GRANT_ISSUER = "zerotrust-demo-grants"
# Denials of one subject, and failing accounts from one address, that are still normal. Before
# the attack the script denies the reader and alice 6 times each and fails 6 tokens from
# loopback, so only the attack crosses these limits.
BURST_THRESHOLD = 7
STUFFING_ACCOUNTS = 8
# In the admin area, so only the admin role or a just-in-time grant opens it.
REPORT_PATH = "/admin/reports/daily"
# A service-to-service route: the database tier, which only the app tier's workload may call.
INTERNAL_PATH = "/internal/orders"

POLICY_VARIABLES = (
    "ZT_DEMO_ISSUER",
    "ZT_DEMO_JWKS_URL",
    "ZT_DEMO_DEVICE_ISSUER",
    "ZT_DEMO_DEVICE_KEYS",
    "ZT_DEMO_GRANT_KEYS",
)
"""The environment variables through which the demo passes its run's values to the policy."""

# The verifiers the runner drives, by their [verifiers.NAME] in the policy file.
OFFICE_HOURS_VERIFIER = "office_hours"
GRANT_VERIFIER = "grants"
_V = TypeVar("_V")
_PACKAGED_POLICY = Path(__file__).with_name("policy.toml")
# A checkout has no packaged copy: the wheel build adds it (see pyproject.toml).
_CHECKOUT_POLICY = Path(__file__).resolve().parents[2] / "examples" / "policy.toml"


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
        policy: The loaded policy file.
        events: The emitter; closing it flushes every event to the sinks.
        clock: The clock of the office-hours check.
        grant_store: The store of the policy's grant verifier, where the grant broker records
            and revokes grants.
        geo: The country checks of the policy, whose data the app loads at start-up.
        monitor: The sink that runs the detectors on the access events, or ``None`` when the
            policy has no ``[monitor]`` table.
        signals: The risk signals the detectors raise and the ``api`` segment reads.
        geo_load_seconds: How long loading the geo data took at start-up, once it has run.
    """

    middleware: ZeroTrustMiddleware
    policy: LoadedPolicy
    events: EventEmitter
    clock: DemoClock
    grant_store: GrantStore
    geo: tuple[GeoVerifier, ...]
    monitor: MonitorSink | None
    signals: RiskSignals
    geo_load_seconds: float | None = None


def default_policy_path() -> Path:
    """
    Return the policy file the demo runs by default: examples/policy.toml.

    An installed wheel contains a copy next to this module. A checkout, or an editable install of
    one, reads the file in the checkout's examples/ directory.
    """
    if _PACKAGED_POLICY.is_file():
        return _PACKAGED_POLICY
    return _CHECKOUT_POLICY


def policy_environ(
    *,
    issuer: str,
    jwks_url: str,
    device_issuer: str,
    device_keys: Mapping[str, Any],
    grant_keys: Mapping[str, Any],
    base: Mapping[str, str],
) -> dict[str, str]:
    """
    Return ``base`` with the `POLICY_VARIABLES` set to one run's values.

    ``device_keys`` and ``grant_keys`` are public JWKS, written as JSON. The result goes to
    `load_policy` as its ``environ``, so the process environment stays unchanged.
    """
    return {
        **base,
        "ZT_DEMO_ISSUER": issuer,
        "ZT_DEMO_JWKS_URL": jwks_url,
        "ZT_DEMO_DEVICE_ISSUER": device_issuer,
        "ZT_DEMO_DEVICE_KEYS": json.dumps(device_keys),
        "ZT_DEMO_GRANT_KEYS": json.dumps(grant_keys),
    }


def build_demo_app(
    policy_path: Path,
    *,
    environ: Mapping[str, str],
    clock: DemoClock,
    sinks: Sequence[Sink],
) -> DemoApp:
    """
    Load the policy file and build the protected app around it.

    The file's own ``[[events.sinks]]`` are checked but not built, so they write nothing
    into the report. The events go to ``sinks`` instead, then to the file's monitor. Two
    objects that a file cannot hold are set after loading: the office-hours verifier
    (``[verifiers.office_hours]``) judges ``clock``, and the grant verifier
    (``[verifiers.grants]``) provides the store the runner's grant broker writes to.

    Raises:
        PolicyFileError: if the policy file cannot be read or is invalid.
        ConfigurationError: if the file does not declare those two verifiers.
    """
    loaded = load_policy(policy_path, environ=environ, extra_sinks=sinks, build_sinks=False)
    try:
        office_hours = _declared(loaded, OFFICE_HOURS_VERIFIER, TimeWindowVerifier, "time_window")
        grants = _declared(loaded, GRANT_VERIFIER, GrantVerifier, "grant")
    except ConfigurationError:
        loaded.events.close()
        raise
    office_hours.clock = clock
    geo = _geo_verifiers(loaded)
    demo: DemoApp

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        # Loading the geo data takes a few tenths of a second. uvicorn accepts connections only
        # after start-up, so loading here keeps that time off the first request.
        started = perf_counter()
        for verifier in geo:
            await asyncio.to_thread(verifier.preload)
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
    middleware = ZeroTrustMiddleware(app, **loaded.middleware_options())
    demo = DemoApp(
        middleware=middleware,
        policy=loaded,
        events=loaded.events,
        clock=clock,
        grant_store=grants.store,
        geo=geo,
        monitor=loaded.monitor,
        signals=loaded.signals,
    )

    return demo


def _declared(loaded: LoadedPolicy, name: str, kind: type[_V], type_name: str) -> _V:
    """Return the verifier declared as ``[verifiers.NAME]``, checking its class."""
    verifier = loaded.verifiers.get(name)
    if not isinstance(verifier, kind):
        message = (
            f"the demo needs a [verifiers.{name}] table of type {type_name!r} in "
            f"{loaded.path}: the demo drives that verifier during its run"
        )
        raise ConfigurationError(message, parameter=f"verifiers.{name}", value=verifier)
    return verifier


def _geo_verifiers(loaded: LoadedPolicy) -> tuple[GeoVerifier, ...]:
    """Return every country check in the policy's segments, each once."""
    found: dict[int, GeoVerifier] = {}
    for segment in loaded.policy.segments:
        for verifier in segment.verifiers:
            if isinstance(verifier, GeoVerifier):
                found[id(verifier)] = verifier
    return tuple(found.values())


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
