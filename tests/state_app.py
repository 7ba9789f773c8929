# SPDX-License-Identifier: Apache-2.0
"""An app whose workers share state on Redis, started by the multi-process tests with uvicorn."""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from zerotrust import EventEmitter, JsonLinesSink, Policy, Segment, ZeroTrustMiddleware
from zerotrust.devices import StateDeviceRegistry
from zerotrust.grants import GrantVerifier
from zerotrust.grants.store import StateGrantStore
from zerotrust.monitor import DeniedBurstDetector, MonitorSink, RiskSignals, RiskVerifier
from zerotrust.state import RedisStateStore
from zerotrust.verifiers import DeviceVerifier, JWTVerifier

IDENTITY_ISSUER = "https://issuer.test"
DEVICE_ISSUER = "https://mdm.test"
DEVICE_AUDIENCE = "devices"


def create_app() -> Any:
    """Build the app from ``ZT_*`` environment variables; uvicorn calls it with ``--factory``."""
    settings = os.environ
    state = RedisStateStore(settings["ZT_REDIS_URL"], namespace=settings["ZT_NAMESPACE"])
    signals = RiskSignals(state)
    monitor = MonitorSink(
        [DeniedBurstDetector(threshold=int(settings["ZT_BURST_THRESHOLD"]), window=120)],
        store=state,
        signals=signals,
        cooldown=120,
    )
    events = EventEmitter([monitor, JsonLinesSink(settings["ZT_EVENTS_FILE"])], flush_interval=0.05)
    monitor.emitter = events
    state.health.events = events

    identity = JWTVerifier(
        issuer=IDENTITY_ISSUER,
        audience="api",
        algorithms=["RS256"],
        keys=json.loads(settings["ZT_IDENTITY_JWKS"]),
    )
    grants = StateGrantStore(state)
    policy = Policy(
        [
            Segment("health", paths=["/healthz"], public=True),
            Segment("control", paths=["/control/"], public=True, methods=["POST"]),
            Segment(
                "api",
                paths=["/api/"],
                verifiers=[identity, RiskVerifier(signals, kinds=["subject"])],
                roles=["reader"],
            ),
            Segment(
                "ops",
                paths=["/ops/"],
                verifiers=[
                    identity,
                    GrantVerifier(keys=json.loads(settings["ZT_GRANT_JWKS"]), store=grants),
                ],
                roles=["operator"],
            ),
            Segment(
                "device",
                paths=["/device/"],
                verifiers=[
                    identity,
                    DeviceVerifier(
                        issuer=DEVICE_ISSUER,
                        audience=DEVICE_AUDIENCE,
                        algorithms=["ES256"],
                        keys=json.loads(settings["ZT_DEVICE_JWKS"]),
                        registry=StateDeviceRegistry(state),
                        cache_size=0,
                    ),
                ],
            ),
        ]
    )

    async def ok(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True, "port": request.url.port})

    async def revoke(request: Request) -> JSONResponse:
        grant_id = request.path_params["grant_id"]
        grant = await asyncio.to_thread(grants.revoke, grant_id, time.time(), "worker")
        return JSONResponse({"revoked": grant is not None})

    app = Starlette(
        routes=[
            Route("/control/revoke/{grant_id}", revoke, methods=["POST"]),
            Route("/{path:path}", ok),
        ]
    )
    return ZeroTrustMiddleware(app, policy=policy, events=events)
