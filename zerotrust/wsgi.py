# SPDX-License-Identifier: Apache-2.0
"""The policy enforcement point for WSGI applications."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
import time
import urllib.parse
import weakref
from collections.abc import Callable, Coroutine, Generator, Iterable, Iterator, Sequence
from http import HTTPStatus
from time import perf_counter
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from starlette.datastructures import Headers

from ._enforcement import (
    STATE_KEY,
    AccessContext,
    DenialResponse,
    DenyHandler,
    PathNormalization,
    build_denial,
    check_path,
    check_path_normalization,
    default_denial,
    get_access,
    unreadable_request,
)
from ._reload import ActivePolicy, BlockingPolicyReload, split_policy
from .engine import Decision, deny
from .events import EventEmitter, Sink
from .exceptions import ConfigurationError
from .policy import Policy, Segment
from .request import (
    AccessRequest,
    ForwardedHeader,
    TrustedProxies,
    accept_request_id,
    parse_host,
    parse_peer,
)

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

    from .config import LoadedPolicy

__all__ = [
    "STATE_KEY",
    "AccessContext",
    "DenialResponse",
    "DenyHandler",
    "ZeroTrustWSGIMiddleware",
    "default_denial",
    "get_access",
]

logger = logging.getLogger("zerotrust.wsgi")

_T = TypeVar("_T")
# Seconds a decision may take beyond the slowest verifier's timeout before it is abandoned.
_DECISION_MARGIN = 1.0
_RAW_URI_KEYS = ("REQUEST_URI", "RAW_URI")
_middlewares: weakref.WeakSet[ZeroTrustWSGIMiddleware] = weakref.WeakSet()


class ZeroTrustWSGIMiddleware(BlockingPolicyReload):
    """
    Verify every request against a policy before it reaches a WSGI app.

    The parameters and their meaning are those of `zerotrust.ZeroTrustMiddleware`; the engine,
    policy, verifiers and access events are the same. On allow the app finds the
    `AccessContext` in ``environ["zerotrust"]``; `get_access` reads it from the environ or the
    framework's request object.

    Decisions that every verifier can make from its cache (a known token, a CIDR list) run on
    the request's own thread. The others, such as the first token before the JWKS is fetched,
    run on one event loop in a daemon thread of this middleware, started at first use and
    again in each process after a ``fork``. Verifiers never run on two threads at once: the
    middleware holds a lock around the cached decisions and around every step of the loop.

    Args:
        app: The WSGI application to protect.
        policy: A `Policy`, a list of `Segment` objects to build one from, or the
            `zerotrust.config.LoadedPolicy` of a policy file, which `reload` reads again.
        trusted_proxies: Addresses or CIDR networks of reverse proxies whose forwarding header
            names the client. Empty by default: ``REMOTE_ADDR`` is the client.
        forwarded_header: ``x-forwarded-for`` or ``forwarded``; the header the proxies set.
        events: An `EventEmitter`, or sinks to build one from; JSON lines on standard error by
            default.
        path_normalization: ``reject`` (deny, the default) or ``rewrite`` (decide on the
            normalised path and hand that same path to the app as ``PATH_INFO``).
        on_deny: Builds the response for a denied request; defaults to `default_denial`.
        realm: The ``realm`` in ``WWW-Authenticate`` challenges.
        decision_timeout: Seconds a request waits for its decision, lock and event loop
            included, before it is denied with ``engine_timeout``. Defaults to the longest
            verifier timeout in the policy plus one second.
        reload_on_sighup: Read the policy file again when the process receives SIGHUP, as
            `reload` does. Only for a middleware built from a policy file, in the main thread.
        check_routes: Check that every route of the app falls in a segment (see
            `zerotrust.coverage.check_routes`) when the first request arrives, once routes are
            registered. When the check fails, the problems are logged and every request is
            denied with ``route_check_failed``, because WSGI has no startup to refuse.
        public_routes: Path rules for the routes meant to be public, read by ``check_routes``.

    .. warning::
       Only list proxies you operate in ``trusted_proxies``: any peer in that list can claim
       any client address.

    .. versionadded:: 0.1.0
    """

    def __init__(
        self,
        app: WSGIApplication,
        *,
        policy: Policy | Sequence[Segment] | LoadedPolicy,
        trusted_proxies: Iterable[str] | TrustedProxies = (),
        forwarded_header: ForwardedHeader = "x-forwarded-for",
        events: EventEmitter | Sink | Sequence[Sink] | None = None,
        path_normalization: PathNormalization = "reject",
        on_deny: DenyHandler | None = None,
        realm: str = "zerotrust",
        decision_timeout: float | None = None,
        reload_on_sighup: bool = False,
        check_routes: bool = False,
        public_routes: Iterable[str] = (),
    ) -> None:
        policy, loaded = split_policy(policy)
        route_check = _RouteCheckOnce(public_routes) if check_routes else None
        if route_check is None and public_routes:
            message = (
                "public_routes is only read by the route check: pass check_routes=True as well"
            )
            raise ConfigurationError(message, parameter="public_routes", value=public_routes)
        check_path_normalization(path_normalization)
        if not isinstance(trusted_proxies, TrustedProxies):
            trusted_proxies = TrustedProxies(trusted_proxies, header=forwarded_header)
        if isinstance(events, Sink):
            events = [events]
        if not isinstance(events, EventEmitter):
            events = EventEmitter(events)
        if decision_timeout is None:
            timeouts = [v.timeout for segment in policy.segments for v in segment.verifiers]
            decision_timeout = max(timeouts, default=0.0) + _DECISION_MARGIN
        elif (
            isinstance(decision_timeout, bool)
            or not isinstance(decision_timeout, int | float)
            or not 0 < decision_timeout < float("inf")
        ):
            message = (
                "decision_timeout must be a positive, finite number of seconds, "
                f"not {decision_timeout!r}"
            )
            raise ConfigurationError(message, parameter="decision_timeout", value=decision_timeout)

        self.app = app
        self._init_policy(
            policy,
            events,
            loaded=loaded,
            reload_on_sighup=reload_on_sighup,
            run_blocking=lambda coroutine: self._runner.run(coroutine, time.monotonic() + 60),
        )
        self.trusted_proxies = trusted_proxies
        self.events = events
        self.path_normalization = path_normalization
        self.on_deny = on_deny
        self.realm = realm
        self.decision_timeout = float(decision_timeout)
        self._route_check = route_check
        self._runner = _LoopRunner()
        _middlewares.add(self)

    @classmethod
    def from_policy_file(
        cls, app: WSGIApplication, path: str | os.PathLike[str], **overrides: Any
    ) -> ZeroTrustWSGIMiddleware:
        """
        Protect ``app`` with the policy and settings of a TOML policy file (docs/policy-files.md).

        Keyword ``overrides`` replace the file's settings, such as ``on_deny=``.

        Raises:
            PolicyFileError: listing every problem of the file.

        .. versionadded:: 0.3.0
        """
        from .config import middleware_from_policy_file

        return middleware_from_policy_file(cls, app, path, **overrides)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        started = perf_counter()
        try:
            request = self._access_request(environ)
        except Exception:
            logger.exception("reading the request failed; denying it")
            request = unreadable_request(environ.get("REQUEST_METHOD", "GET"))
        route_check = self._route_check
        if route_check is not None and not route_check.passed(self.app, self.policy):
            decision = deny("route_check_failed")
        else:
            decision = self._decide(request)
        decided = perf_counter()

        if not decision.lets_through:
            response = build_denial(self.on_deny, self.realm, request, decision, logger)
            headers = [*response.headers, ("content-length", str(len(response.body)))]
            start_response(_status_line(response.status), headers)
            self.events.emit_access(
                request,
                decision,
                status=response.status,
                latency=perf_counter() - started,
                decision_time=decided - started,
            )
            return [b"" if request.method == "HEAD" else response.body]

        environ[STATE_KEY] = AccessContext(decision.principal, decision, request)
        exchange = _Exchange(start_response)

        def finish() -> None:
            self.events.emit_access(
                request,
                decision,
                status=exchange.final_status(),
                latency=perf_counter() - started,
                decision_time=decided - started,
            )

        try:
            body = self.app(environ, exchange.start_response)
        except BaseException:
            exchange.failed = True
            finish()
            raise

        return _ClosingBody(body, exchange, finish)

    def _access_request(self, environ: WSGIEnvironment) -> AccessRequest:
        """Build the access request, rewriting ``PATH_INFO`` when so configured."""
        raw_headers: list[tuple[bytes, bytes]] = []
        for key, value in environ.items():
            if key.startswith("HTTP_"):
                # A server may also copy these two into HTTP_*; the CGI names are the real ones.
                if key in ("HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH"):
                    continue
                name = key[5:]
            elif key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                name = key
            else:
                continue
            if isinstance(value, str):
                raw_headers.append(
                    (name.replace("_", "-").lower().encode("latin-1"), value.encode("latin-1"))
                )
        headers = Headers(raw=raw_headers)

        # WSGI strings carry the request's bytes as latin-1 code points (PEP 3333).
        root_path = _from_wsgi(environ.get("SCRIPT_NAME", ""))
        path = root_path + _from_wsgi(environ.get("PATH_INFO", ""))
        raw_uri = next((environ[key] for key in _RAW_URI_KEYS if environ.get(key)), None)
        if isinstance(raw_uri, str):
            raw_path = _path_of_target(raw_uri.encode("latin-1"))
        else:
            raw_path = path.encode("utf-8", "surrogateescape")

        host_value = environ.get("HTTP_HOST")
        host, host_problem = parse_host([host_value] if isinstance(host_value, str) else [])
        peer = parse_peer((environ.get("REMOTE_ADDR") or "",))
        client_ip, forwarded_problem = self.trusted_proxies.resolve_client(peer, headers)
        problem, normalised, rewrite = check_path(
            raw_path,
            path,
            root_path,
            raw_from_server=isinstance(raw_uri, str),
            normalization=self.path_normalization,
        )
        if rewrite:
            _rewrite_path(environ, root_path, normalised)
        problem = problem or host_problem or forwarded_problem
        if problem is not None:
            # Bytes that are not UTF-8 stay escaped for the checks above; events must be text.
            normalised = _printable(normalised)
            root_path = _printable(root_path)

        scheme = environ.get("wsgi.url_scheme", "http")

        return AccessRequest(
            method=str(environ.get("REQUEST_METHOD", "GET")).upper(),
            path=normalised,
            raw_path=raw_path.decode("latin-1"),
            host=host,
            headers=headers,
            client_ip=client_ip,
            peer_ip=peer,
            request_id=accept_request_id(environ.get("HTTP_X_REQUEST_ID")),
            time=time.time(),
            scheme=scheme if scheme in ("http", "https") else "http",
            protocol="http",
            root_path=root_path,
            problem=problem,
            from_trusted_proxy=peer in self.trusted_proxies,
        )

    def _decide(self, request: AccessRequest) -> Decision:
        """Decide on this thread from the verifiers' caches, else on the middleware's loop."""
        deadline = time.monotonic() + self.decision_timeout
        lock = self._runner.lock
        # One read of the policy in force, so a reload between the two steps changes nothing.
        engine = self.engine
        if not lock.acquire(timeout=self.decision_timeout):
            logger.error("no decision on request %s: verifiers busy too long", request.request_id)
            return deny("engine_timeout")
        try:
            decision = engine.decide_cached(request)
        except Exception:
            logger.exception("deciding request %s failed; denying it", request.request_id)
            return deny("engine_error")
        finally:
            lock.release()
        if decision is not None:
            return decision

        try:
            return self._runner.run(engine.decide(request), deadline)
        except TimeoutError:
            logger.error(
                "no decision on request %s within %g s; denying it",
                request.request_id,
                self.decision_timeout,
            )
            return deny("engine_timeout")
        except Exception:
            logger.exception("deciding request %s failed; denying it", request.request_id)
            return deny("engine_error")

    def warm_up(self, timeout: float = 10.0) -> bool:
        """
        Fetch every remote key set once, so the first requests need not wait.

        Call it after the app is built, or in each worker (gunicorn's ``post_fork``). With
        ``preload_app`` a call at import fetches once in the arbiter and every worker inherits
        the keys. Never raises.

        Returns:
            ``True`` when every fetch finished within ``timeout`` seconds (a failed fetch
            counts as finished; it is logged, and requests retry it).
        """
        key_sets = self._reloader.active.key_sets
        if not key_sets:
            return True

        async def refresh_all() -> None:
            await asyncio.gather(*(key_set.refresh() for key_set in key_sets))

        try:
            self._runner.run(refresh_all(), time.monotonic() + timeout)
        except Exception:
            logger.exception("fetching the JWKS at warm-up failed")
            return False

        return True

    def _run_reload(self, coroutine: Coroutine[Any, Any, ActivePolicy], timeout: float) -> Any:
        return self._runner.run(coroutine, time.monotonic() + timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the event loop thread and deliver the queued access events."""
        self._runner.stop(timeout)
        self.events.flush(timeout)


class _LoopRunner:
    """
    One event loop in a daemon thread, started at first use and again after a ``fork``.

    Every task on the loop holds `lock` while it runs a step, so code on the loop and code
    under the same lock on request threads never interleave. Verifiers keep unsynchronised
    caches because under ASGI they only ever run on one thread.
    """

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._start_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    def run(self, coroutine: Coroutine[Any, Any, _T], deadline: float) -> _T:
        """Run ``coroutine`` on the loop; raise `TimeoutError` at ``deadline`` (monotonic)."""
        future = asyncio.run_coroutine_threadsafe(coroutine, self._ensure_loop())
        try:
            return future.result(timeout=max(0.0, deadline - time.monotonic()))
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError from None

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is not None and self._pid == os.getpid():
            return loop
        with self._start_lock:
            loop = self._loop
            if loop is None or self._pid != os.getpid():
                loop = self._start()
            return loop

    def _start(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.new_event_loop()
        lock = self.lock

        def task_factory(
            loop: asyncio.AbstractEventLoop, coroutine: Any, **options: Any
        ) -> asyncio.Task[Any]:
            return asyncio.Task(_StepsUnderLock(coroutine, lock), loop=loop, **options)

        loop.set_task_factory(task_factory)
        ready = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            try:
                loop.run_forever()
            finally:
                loop.close()

        thread = threading.Thread(target=serve, name="zerotrust-wsgi-loop", daemon=True)
        thread.start()
        ready.wait(5.0)
        self._loop = loop
        self._thread = thread
        self._pid = os.getpid()

        return loop

    def stop(self, timeout: float) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or self._pid != os.getpid():
            return
        self._loop = None
        self._thread = None
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)

    def forget_after_fork(self) -> None:
        # The child has the parent's objects but not its threads; a lock held by one of those
        # threads at the fork would never be released.
        self.lock = threading.RLock()
        self._start_lock = threading.Lock()
        self._loop = None
        self._thread = None


class _StepsUnderLock(Coroutine[Any, Any, Any]):
    """Wrap a coroutine so that each of its steps runs with ``lock`` held."""

    __slots__ = ("_coroutine", "_lock")

    def __init__(self, coroutine: Coroutine[Any, Any, Any], lock: threading.RLock) -> None:
        self._coroutine = coroutine
        self._lock = lock

    def send(self, value: Any) -> Any:
        with self._lock:
            return self._coroutine.send(value)

    def throw(
        self,
        typ: type[BaseException] | BaseException,
        val: object = None,
        tb: TracebackType | None = None,
    ) -> Any:
        with self._lock:
            if val is None and tb is None:
                return self._coroutine.throw(typ)
            return self._coroutine.throw(typ, val, tb)  # type: ignore[arg-type]

    def close(self) -> None:
        with self._lock:
            self._coroutine.close()

    def __await__(self) -> Generator[Any, None, Any]:
        return self._coroutine.__await__()

    def __repr__(self) -> str:
        return f"<locked {self._coroutine!r}>"


class _Exchange:
    """The app's side of one allowed request: its status line and whether it failed."""

    __slots__ = ("_start_response", "body_started", "failed", "status")

    def __init__(self, start_response: StartResponse) -> None:
        self._start_response = start_response
        self.status: int | None = None
        self.body_started = False
        self.failed = False

    def start_response(
        self,
        status: str,
        headers: list[tuple[str, str]],
        exc_info: Any = None,
    ) -> Callable[[bytes], object]:
        write = self._start_response(status, headers, exc_info)
        self.status = _parse_status(status)

        def write_body(data: bytes) -> object:
            if data:
                self.body_started = True
            return write(data)

        return write_body

    def final_status(self) -> int | None:
        # The server sends a 500 itself when the app fails before any body byte was sent.
        if self.failed and not self.body_started:
            return 500
        return self.status


class _ClosingBody:
    """The app's response body, which records the access event when the server closes it."""

    __slots__ = ("_body", "_exchange", "_finish", "_finished", "_iterator")

    def __init__(
        self, body: Iterable[bytes], exchange: _Exchange, finish: Callable[[], None]
    ) -> None:
        self._body = body
        self._exchange = exchange
        self._finish = finish
        self._finished = False
        self._iterator: Iterator[bytes] | None = None

    def __iter__(self) -> Iterator[bytes]:
        try:
            self._iterator = iter(self._body)
        except Exception:
            self._exchange.failed = True
            raise
        return self

    def __next__(self) -> bytes:
        if self._iterator is None:
            self._iterator = iter(self._body)
        try:
            chunk = next(self._iterator)
        except StopIteration:
            raise
        except Exception:
            self._exchange.failed = True
            raise
        if chunk:
            self._exchange.body_started = True
        return chunk

    def close(self) -> None:
        if self._finished:
            return
        self._finished = True
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        except Exception:
            self._exchange.failed = True
            raise
        finally:
            self._finish()


def _from_wsgi(value: object) -> str:
    """Turn a WSGI string (bytes as latin-1 code points) into text, keeping bad bytes escaped."""
    if not isinstance(value, str):
        return ""
    return value.encode("latin-1").decode("utf-8", "surrogateescape")


def _printable(text: str) -> str:
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _path_of_target(target: bytes) -> bytes:
    """Return the path of a request target: origin form, or absolute form from a proxy."""
    target = target.split(b"?", 1)[0]
    scheme, separator, rest = target.partition(b"://")
    if separator and scheme.lower() in (b"http", b"https"):
        slash = rest.find(b"/")
        return rest[slash:] if slash >= 0 else b"/"
    return target


def _rewrite_path(environ: WSGIEnvironment, root_path: str, path: str) -> None:
    environ["PATH_INFO"] = path.encode("utf-8", "surrogateescape").decode("latin-1")
    query = environ.get("QUERY_STRING")
    uri = urllib.parse.quote(root_path + path) + (f"?{query}" if query else "")
    for key in _RAW_URI_KEYS:
        if key in environ:
            environ[key] = uri


def _parse_status(status: str) -> int | None:
    code = status[:3]
    return int(code) if code.isdigit() else None


def _status_line(status: int) -> str:
    return f"{status} {HTTPStatus(status).phrase}"


def _forget_threads() -> None:
    for middleware in list(_middlewares):
        middleware._runner.forget_after_fork()


os.register_at_fork(after_in_child=_forget_threads)


class _RouteCheckOnce:
    """
    The route check of a WSGI middleware, run once when the first request arrives.

    A Flask app is usually wrapped before its routes are registered, so the check cannot run
    when the middleware is built.
    """

    def __init__(self, public_routes: Iterable[str]) -> None:
        from .coverage import _parse_public_routes

        # Parsed here, so a malformed rule is a ConfigurationError when the middleware is built.
        _parse_public_routes(public_routes)
        self.public_routes = tuple(public_routes)
        self._lock = threading.Lock()
        self._result: bool | None = None

    def passed(self, app: Any, policy: Policy) -> bool:
        """Return whether every route of ``app`` falls in a segment, checking on first use."""
        result = self._result
        if result is not None:
            return result
        with self._lock:
            if self._result is None:
                self._result = self._check(app, policy)
            return self._result

    def _check(self, app: Any, policy: Policy) -> bool:
        from .coverage import check_routes

        try:
            report = check_routes(app, policy, public_routes=self.public_routes)
        except Exception:
            logger.exception("the route check could not run; denying every request")
            return False
        if not report.ok:
            logger.error(
                "route check failed for %d route(s); denying every request "
                "with route_check_failed:\n  %s",
                len(report.problems),
                "\n  ".join(report.problems),
            )
        return report.ok
