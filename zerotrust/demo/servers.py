# SPDX-License-Identifier: Apache-2.0
"""Serving the demo's ASGI apps with uvicorn in background threads."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["ServedApp", "ServerStartError", "serve_in_thread"]

_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 5.0


class ServerStartError(RuntimeError):
    """uvicorn did not start, for example because the port is in use."""


@dataclass(frozen=True, slots=True)
class ServedApp:
    """The address of a served app."""

    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


@contextlib.contextmanager
def serve_in_thread(app: Any, *, name: str, host: str, port: int = 0) -> Iterator[ServedApp]:
    """
    Serve ``app`` on ``host``:``port`` (0 picks a free port) until the block ends.

    The server runs its own event loop in a daemon thread, so the caller's own event loop stays free
    to send requests. Lifespan events are sent, which lets the middleware fetch
    the JWKS at start-up and flush its events at shutdown.

    Raises:
        ServerStartError: if uvicorn is not accepting connections within 10 seconds.
    """
    import uvicorn

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan="on",
        log_level="error",
        access_log=False,
        timeout_graceful_shutdown=2,
        # The middleware's trusted_proxies decides which forwarding headers count, not uvicorn.
        proxy_headers=False,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"zerotrust-demo-{name}", daemon=True)
    thread.start()

    deadline = time.monotonic() + _START_TIMEOUT
    while not server.started:
        if not thread.is_alive():
            message = (
                f"the {name} server did not start on {host} port {port}; "
                "if the port is in use, pass another --port, or 0 for a free one"
            )
            raise ServerStartError(message)
        if time.monotonic() > deadline:
            server.should_exit = True
            message = f"the {name} server did not start within {_START_TIMEOUT:g} seconds"
            raise ServerStartError(message)
        time.sleep(0.01)

    bound_port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield ServedApp(host, bound_port)
    finally:
        server.should_exit = True
        thread.join(_STOP_TIMEOUT)
