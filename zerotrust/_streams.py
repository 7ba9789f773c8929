# SPDX-License-Identifier: Apache-2.0
"""Re-verification of long-lived connections: open websockets and streaming HTTP responses."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from time import perf_counter
from typing import Any

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocketDisconnect

from .engine import Decision, deny
from .events import EventEmitter
from .events.access import build_access_event
from .exceptions import ConfigurationError, ConnectionEndedError
from .request import AccessRequest

__all__ = ["MAX_INTERVAL", "MIN_INTERVAL", "ConnectionEndedError", "StreamGuard", "check_interval"]

logger = logging.getLogger("zerotrust.asgi")

MIN_INTERVAL = 0.1
"""Minimum re-verification interval in seconds. Shorter ones would turn each connection into a
busy loop of decisions."""
MAX_INTERVAL = 86_400.0
"""Maximum re-verification interval in seconds, one day."""

_POLICY_VIOLATION = 1008
_DISCONNECTS = frozenset({"websocket.disconnect", "http.disconnect"})
# How far back the exception chain is searched for the error this module raised into the app.
_MAX_CHAIN = 8

Decide = Callable[[AccessRequest], Awaitable[Decision]]


def check_interval(value: object) -> float | None:
    """
    Validate a ``reverify_every`` setting and return it as a float, or ``None`` when unset.

    Raises:
        ConfigurationError: when the value is not a number of seconds between `MIN_INTERVAL`
            and `MAX_INTERVAL`.
    """
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not MIN_INTERVAL <= value <= MAX_INTERVAL
    ):
        message = (
            f"reverify_every must be a number of seconds from {MIN_INTERVAL:g} to "
            f"{MAX_INTERVAL:g}, or None to turn re-verification off, not {value!r}"
        )
        raise ConfigurationError(message, parameter="reverify_every", value=value)

    return float(value)


class StreamGuard:
    """
    Re-run the access decision for open websockets and streaming responses, and end them on a deny.

    A connection is watched from the moment it becomes long-lived: a websocket when the app
    accepts it, an HTTP response when the app sends a body chunk with ``more_body`` set. Each
    watched connection has one timer task, which decides the original request again with the
    current time once every ``interval`` seconds. The first check comes after a random part of
    the interval, from half to all of it, so connections opened together do not all check at
    once. A second task reads from the server once the app first calls ``receive``, so that an
    end can wake an app waiting there. The timer is cancelled when the response is complete or
    the client disconnects, and both tasks are cancelled and awaited when the app returns.

    On a deny in an enforce-mode segment the connection ends. A websocket gets a close frame with
    code 1008 (policy violation, RFC 6455), and an HTTP response gets its final, empty body chunk
    or, when it declared a ``Content-Length``, is cut off.
    The app's ``receive`` then returns ``websocket.disconnect`` or ``http.disconnect``, and its
    ``send`` raises `ConnectionEndedError`. In a monitor-mode segment the connection stays open.
    Either way an access event with ``reverified: true`` records the decision, once per change
    from allow to deny.

    Args:
        interval: Seconds between two decisions on one connection, as checked by
            `check_interval`.
        decide: Decides one request; called again on every check, so a reloaded policy applies.
        events: Where the access events of re-verification go.
    """

    def __init__(self, interval: float, decide: Decide, events: EventEmitter) -> None:
        self.interval = interval
        self.decide = decide
        self.events = events

    async def run(
        self,
        app: ASGIApp,
        scope: Scope,
        receive: Receive,
        send: Send,
        request: AccessRequest,
        decision: Decision,
    ) -> None:
        """Call the app for one allowed request, watching the connection while it is open."""
        connection = _WatchedConnection(self, scope, receive, send, request, decision)
        try:
            await app(scope, connection.receive, connection.send)
        except Exception as error:
            # Apps turn the error of a closed send into their own, such as WebSocketDisconnect.
            # The end was ours, so it is not a failure of the app.
            if not connection.ended or not _caused_by_end(error):
                raise
        finally:
            await connection.stop()

        if connection.abort:
            # A response that could not be finished can only be cut off. Servers drop the
            # connection when the app raises after the response started.
            # NOTE: uvicorn and hypercorn log this as an exception in the ASGI application.
            raise ConnectionEndedError


class _WatchedConnection:
    """The state of one connection under re-verification; it lives for one call of the app."""

    def __init__(
        self,
        guard: StreamGuard,
        scope: Scope,
        receive: Receive,
        send: Send,
        request: AccessRequest,
        decision: Decision,
    ) -> None:
        self.guard = guard
        self.is_websocket = scope["type"] == "websocket"
        self.request = request
        self.started = perf_counter()
        self.denied = not decision.allowed
        self.ended = False
        self.finished = False
        self.abort = False
        self.length_declared = False
        self.status: int | None = None
        self._receive = receive
        self._send = send
        self._lock = asyncio.Lock()
        self._inbox: asyncio.Queue[Message | Exception] = asyncio.Queue(maxsize=1)
        self._disconnect: Message | None = None
        self._reader: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None

    async def receive(self) -> Message:
        if self.ended:
            return self._disconnect_message()
        if self._disconnect is not None:
            return self._disconnect
        if self._reader is None:
            self._reader = asyncio.create_task(self._read(), name="zerotrust-receive")

        item = await self._inbox.get()
        if isinstance(item, BaseException):
            raise item
        if item["type"] in _DISCONNECTS:
            self._disconnect = item
            self._finish()

        return item

    async def _read(self) -> None:
        """Move messages from the server to the app, so that an end can overtake them."""
        # The inbox contains one message and this task one more, so the server's flow control
        # still applies: at most two messages are read ahead of the app.
        while True:
            try:
                message = await self._receive()
            except Exception as error:  # noqa: BLE001 -- handed to the app, which gets it raised
                await self._inbox.put(error)
                return
            await self._inbox.put(message)
            if message["type"] in _DISCONNECTS:
                return

    async def send(self, message: Message) -> None:
        if self.ended:
            raise ConnectionEndedError
        async with self._lock:
            # The end may have come while this send waited for the lock.
            if self.ended:
                raise ConnectionEndedError
            await self._send(message)

        message_type = message["type"]
        if message_type == "websocket.accept":
            self.status = 101
            self._watch()
        elif message_type == "http.response.start":
            self.status = message["status"]
            self.length_declared = any(
                name.lower() == b"content-length" for name, _ in message.get("headers", ())
            )
        elif message_type == "http.response.body":
            if message.get("more_body", False):
                self._watch()
            else:
                self._finish()
        elif message_type == "websocket.close":
            self._finish()

    async def stop(self) -> None:
        """Cancel the background tasks and wait for them, so none outlives the connection."""
        tasks = [task for task in (self._watcher, self._reader) if task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._watcher = None
        self._reader = None

    def _watch(self) -> None:
        if self._watcher is None and not self.finished:
            self._watcher = asyncio.create_task(
                self._check_periodically(), name="zerotrust-reverify"
            )

    def _finish(self) -> None:
        self.finished = True
        watcher = self._watcher
        if watcher is not None and watcher is not asyncio.current_task():
            watcher.cancel()

    async def _check_periodically(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.guard.interval
        next_check = loop.time() + interval * random.uniform(0.5, 1.0)  # noqa: S311 -- spreads load
        while True:
            await asyncio.sleep(max(0.0, next_check - loop.time()))
            request = dataclasses.replace(self.request, time=time.time())
            started = perf_counter()
            try:
                decision = await self.guard.decide(request)
            except Exception:
                logger.exception("re-deciding request %s failed; ending it", request.request_id)
                decision = deny("engine_error")
            decision_time = perf_counter() - started
            # A check that took longer than the interval moves the schedule instead of
            # starting the next one at once.
            next_check = max(next_check + interval, loop.time())

            if decision.allowed:
                self.denied = False
                continue
            if decision.lets_through:
                if not self.denied:
                    self._emit(request, decision, decision_time, close_code=None)
                self.denied = True
                continue

            await self._end(request, decision, decision_time)
            return

    async def _end(self, request: AccessRequest, decision: Decision, decision_time: float) -> None:
        """End the connection after a deny and record the reason."""
        self.ended = True
        if self._reader is not None:
            self._reader.cancel()
        if self._inbox.empty():
            # This wakes an app that waits in receive. A full inbox means the app does not wait.
            self._inbox.put_nowait(self._disconnect_message())
        close_code: int | None = None
        try:
            async with self._lock:
                if self.is_websocket:
                    await self._send({"type": "websocket.close", "code": _POLICY_VIOLATION})
                    close_code = _POLICY_VIOLATION
                elif self.length_declared:
                    # Finishing the body before its Content-Length is a protocol error.
                    self.abort = True
                else:
                    await self._send({"type": "http.response.body", "body": b""})
        except Exception:
            # The client may be gone already, so the server refuses the message. No more data
            # goes out either way, and an HTTP connection is cut off when the app returns.
            logger.warning(
                "ending request %s after a deny failed", request.request_id, exc_info=True
            )
            self.abort = not self.is_websocket
        finally:
            self.finished = True
            self._emit(request, decision, decision_time, close_code=close_code)

    def _emit(
        self,
        request: AccessRequest,
        decision: Decision,
        decision_time: float,
        *,
        close_code: int | None,
    ) -> None:
        event: dict[str, Any] = build_access_event(
            request,
            decision,
            status=self.status,
            latency=perf_counter() - self.started,
            decision_time=decision_time,
            close_code=close_code,
        )
        event["reverified"] = True
        self.guard.events.emit(event)

    def _disconnect_message(self) -> Message:
        if self.is_websocket:
            return {"type": "websocket.disconnect", "code": _POLICY_VIOLATION, "reason": ""}
        return {"type": "http.disconnect"}


def _caused_by_end(error: BaseException) -> bool:
    """Return whether ``error`` comes from the end of the connection that this module made."""
    if isinstance(error, WebSocketDisconnect | ClientDisconnect):
        return True
    current: BaseException | None = error
    for _ in range(_MAX_CHAIN):
        if current is None:
            return False
        if isinstance(current, ConnectionEndedError):
            return True
        current = current.__cause__ or current.__context__

    return False
