# SPDX-License-Identifier: Apache-2.0
"""A plain WSGI app behind ZeroTrustWSGIMiddleware, for the gunicorn tests in test_wsgi_served.py.

Settings come from the environment: ``ZT_ISSUER``, ``ZT_JWKS_URL``, ``ZT_EVENTS_FILE``, and
optionally ``ZT_TRUSTED_PROXIES`` (comma-separated), ``ZT_FLUSH_INTERVAL`` (seconds) and
``ZT_WARM_UP`` (``1`` fetches the JWKS at import, in the arbiter under ``--preload``).
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterable
from typing import Any

import orjson

from zerotrust import (
    EventEmitter,
    JsonLinesSink,
    JWTVerifier,
    Principal,
    Segment,
    Verdict,
    Verifier,
    ZeroTrustWSGIMiddleware,
    get_access,
)

LOOPS_SEEN: set[int] = set()


class AwaitingVerifier(Verifier):
    """Pass every request, but only after awaiting, so the decision runs on the event loop."""

    name = "awaiting"

    async def verify(self, request: Any, context: Any) -> Verdict:
        LOOPS_SEEN.add(id(asyncio.get_running_loop()))
        await asyncio.sleep(0.001)
        return Verdict.passed(principal=Principal("loop-user"))


def json_response(start_response: Any, status: str, body: dict[str, Any]) -> Iterable[bytes]:
    content = orjson.dumps(body)
    start_response(status, [("content-type", "application/json")])
    return [content]


def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "")
    access = get_access(environ)
    if path == "/healthz":
        return json_response(start_response, "200 OK", {"status": "ok"})
    if path == "/boom":
        raise RuntimeError("the app failed")
    if path == "/whoami":
        assert access is not None
        client = access.request.client_ip
        return json_response(start_response, "200 OK", {"client": str(client)})
    if path == "/slow":
        threads = [t for t in threading.enumerate() if t.name == "zerotrust-wsgi-loop"]
        body = {"pid": os.getpid(), "loops": len(LOOPS_SEEN), "loop_threads": len(threads)}
        return json_response(start_response, "200 OK", body)
    if path.startswith("/api/"):
        assert access is not None
        body = {"subject": access.subject, "pid": os.getpid()}
        status = "201 Created" if environ["REQUEST_METHOD"] == "POST" else "200 OK"
        return json_response(start_response, status, body)
    return json_response(start_response, "404 Not Found", {"error": "not found"})


identity = JWTVerifier(
    issuer=os.environ["ZT_ISSUER"],
    audience="api",
    algorithms=["RS256"],
    jwks_url=os.environ["ZT_JWKS_URL"],
)
policy = [
    Segment("health", paths=["/healthz", "/whoami", "/boom"], public=True),
    Segment("slow", paths=["/slow"], verifiers=[AwaitingVerifier()]),
    Segment(
        "api",
        paths=["/api/"],
        verifiers=[identity],
        scopes={"GET": ["api:read"], "POST": ["api:write"]},
    ),
]
events = EventEmitter(
    [JsonLinesSink(os.environ["ZT_EVENTS_FILE"])],
    flush_interval=float(os.environ.get("ZT_FLUSH_INTERVAL", "0.2")),
)
proxies = [entry for entry in os.environ.get("ZT_TRUSTED_PROXIES", "").split(",") if entry]

application = ZeroTrustWSGIMiddleware(app, policy=policy, events=events, trusted_proxies=proxies)
if os.environ.get("ZT_WARM_UP") == "1":
    application.warm_up(timeout=5)
