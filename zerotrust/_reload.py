# SPDX-License-Identifier: Apache-2.0
"""Replacing the policy of a running middleware atomically: by a call, or on SIGHUP."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter
from types import FrameType
from typing import Any, Literal

from ._enforcement import remote_key_sets
from .engine import Engine
from .events import EventEmitter
from .events.access import format_timestamp, new_event_id
from .events.redaction import redact_text
from .exceptions import ConfigurationError, KeySetUnavailableError
from .policy import Policy, Segment
from .verifiers.jwks import RemoteKeySet

__all__ = [
    "ActivePolicy",
    "AsyncPolicyReload",
    "BlockingPolicyReload",
    "PolicyLoader",
    "PolicyReloader",
    "ReloadTrigger",
    "ReloadablePolicy",
    "activate",
    "file_sha256",
    "split_policy",
]

logger = logging.getLogger("zerotrust.reload")

PolicyLoader = Callable[[Path], Any]
"""Loads a policy file: returns a `Policy`, or an object whose ``policy`` attribute is one."""

ReloadTrigger = Literal["call", "signal", "replace"]

# A policy file is configuration: anything larger is a mistake, not a policy.
MAX_POLICY_FILE_BYTES = 4 * 1024 * 1024
_MAX_ERROR = 1000
_MAX_NAMES = 100


@dataclass(frozen=True, slots=True)
class ActivePolicy:
    """
    The policy in force and everything derived from it, replaced as one object.

    A request reads the middleware's active policy once and decides with that object only, so
    it sees either the old policy or the new one, never parts of both.

    Attributes:
        policy: The policy.
        engine: The decision engine built for ``policy``.
        key_sets: The remote JWKS key sets the policy's verifiers use.
        sha256: SHA-256 of the policy file, in hex; ``None`` for a policy built in Python.
        source: The file the policy was loaded from, if any.
        loaded: What the loader returned for ``source``, such as its middleware settings.
    """

    policy: Policy
    engine: Engine
    key_sets: tuple[RemoteKeySet, ...]
    sha256: str | None = None
    source: Path | None = None
    loaded: Any = None


def activate(
    policy: Policy, *, sha256: str | None = None, source: Path | None = None, loaded: Any = None
) -> ActivePolicy:
    """Build the engine and find the key sets of ``policy``."""
    key_sets = tuple(remote_key_sets(policy))
    return ActivePolicy(policy, Engine(policy), key_sets, sha256, source, loaded)


def file_sha256(data: bytes) -> str:
    """Return the SHA-256 of a policy file's bytes, in hex."""
    return hashlib.sha256(data).hexdigest()


class PolicyReloader:
    """
    Hold the active policy of one middleware and replace it.

    `active` is replaced by a single assignment only after the new policy is built and its
    JWKS key sets are fetched, so a request that read it keeps a consistent policy. A reload
    that fails leaves `active` unchanged. Either outcome is an event: ``policy_reloaded`` or
    ``policy_reload_failed``.

    Args:
        active: The policy in force at start.
        events: Where the reload events go.
        loader: Loads the policy file, for `reload`.
        run_blocking: Runs a coroutine to completion from a plain thread. A signal reload
            uses it when no event loop is bound, as in a WSGI server.
    """

    def __init__(
        self,
        active: ActivePolicy,
        *,
        events: EventEmitter,
        loader: PolicyLoader | None = None,
        run_blocking: Callable[[Coroutine[Any, Any, None]], Any] = asyncio.run,
    ) -> None:
        self.active = active
        self.events = events
        self.loader = loader
        self.run_blocking = run_blocking
        self._tickets = itertools.count(1)
        self._swapped_ticket = 0
        self._swap_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._signal_hook: _SignalHook | None = None
        self._signal_lock = threading.Lock()
        self._signal_running = False
        self._signal_again = False
        self._tasks: set[asyncio.Task[Any]] = set()

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run reloads caused by a signal on ``loop``, the loop that serves requests."""
        self._loop = loop

    async def reload(self, *, trigger: ReloadTrigger = "call") -> ActivePolicy:
        """
        Load the policy file again and make it active.

        The file is read and parsed in a worker thread, off the event loop.

        Raises:
            ConfigurationError: if the policy was not loaded from a file, or the file is
                invalid; the old policy stays in force.
            OSError: if the file cannot be read; the old policy stays in force.
            KeySetUnavailableError: if a JWKS of the new policy cannot be fetched; the old
                policy stays in force.
        """
        self._loop = self._loop or asyncio.get_running_loop()
        source = self.active.source
        if source is None or self.loader is None:
            message = (
                "this middleware was not built from a policy file, so there is nothing to "
                "reload: build it from a file, or call replace_policy() with a new Policy"
            )
            raise ConfigurationError(message, parameter="policy_file")

        ticket = next(self._tickets)
        started = perf_counter()
        result = await asyncio.to_thread(_load_file, source, self.loader)
        try:
            if result.error is not None:
                raise result.error
            policy = _policy_of(result.loaded, source)
            carry_over_state(self.active.loaded, result.loaded)
        except Exception as error:
            self._emit_failure(trigger, source, error, result.sha256)
            raise

        return await self._install(
            ticket,
            trigger,
            activate(policy, sha256=result.sha256, source=source, loaded=result.loaded),
            started,
        )

    async def replace(self, policy: Policy, *, trigger: ReloadTrigger = "replace") -> ActivePolicy:
        """
        Make ``policy`` active, keeping the file it came from for a later `reload`.

        Raises:
            KeySetUnavailableError: if a JWKS of the new policy cannot be fetched; the old
                policy stays in force.
        """
        if not isinstance(policy, Policy):
            message = f"replace_policy() takes a Policy, not {type(policy).__name__}"
            raise ConfigurationError(message, parameter="policy", value=type(policy).__name__)
        ticket = next(self._tickets)
        started = perf_counter()
        source = self.active.source
        return await self._install(ticket, trigger, activate(policy, source=source), started)

    async def _install(
        self, ticket: int, trigger: ReloadTrigger, new: ActivePolicy, started: float
    ) -> ActivePolicy:
        try:
            await _warm(new.key_sets)
        except KeySetUnavailableError as error:
            self._emit_failure(trigger, new.source, error, new.sha256)
            raise

        with self._swap_lock:
            old = self.active
            if ticket < self._swapped_ticket:
                # A reload that started later has already been installed; this one is stale.
                logger.info(
                    "policy reload %d finished after reload %d and was discarded",
                    ticket,
                    self._swapped_ticket,
                )
                return old
            self.active = new
            self._swapped_ticket = ticket

        self.events.emit(_reloaded_event(trigger, old, new, perf_counter() - started))
        logger.info(
            "policy reloaded (%s): %d segments, sha256 %s",
            trigger,
            len(new.policy),
            new.sha256 or "-",
        )
        return new

    def _emit_failure(
        self, trigger: ReloadTrigger, source: Path | None, error: BaseException, sha256: str | None
    ) -> None:
        self.events.emit(_failed_event(trigger, source, error, sha256, self.active))

    # Signals

    def install_signal_handler(self, signum: int | None = None) -> None:
        """
        Reload the policy file when the process receives ``signum`` (SIGHUP by default).

        The handler only schedules the reload: on the bound event loop when it runs, else in a
        thread of its own. Signals that arrive while a reload runs start one more reload after
        it. A handler installed earlier is still called after ours.

        Raises:
            ConfigurationError: when not called from the main thread, where Python runs signal
                handlers, or on a platform without SIGHUP.
        """
        if signum is None:
            signum = getattr(signal, "SIGHUP", None)
            if signum is None:
                message = "reload_on_sighup needs SIGHUP, which this platform does not have"
                raise ConfigurationError(message, parameter="reload_on_sighup", value=True)
        if self._signal_hook is not None:
            return
        hook = _SignalHook(signum, self._on_signal)
        hook.install()
        self._signal_hook = hook

    def uninstall_signal_handler(self) -> None:
        """Put back the handler that was there before, if ours is still the installed one."""
        hook, self._signal_hook = self._signal_hook, None
        if hook is not None:
            hook.uninstall()

    def _on_signal(self) -> None:
        with self._signal_lock:
            if self._signal_running:
                self._signal_again = True
                return
            self._signal_running = True

        loop = self._loop
        if loop is not None and loop.is_running():
            try:
                loop.call_soon_threadsafe(self._start_task, loop)
                return
            except RuntimeError:
                pass  # The loop closed after the check; reload in a thread instead.
        thread = threading.Thread(
            target=self._reload_in_thread, name="zerotrust-policy-reload", daemon=True
        )
        thread.start()

    def _start_task(self, loop: asyncio.AbstractEventLoop) -> None:
        task = loop.create_task(self._signal_reloads())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _reload_in_thread(self) -> None:
        try:
            self.run_blocking(self._signal_reloads())
        except Exception:
            logger.exception("the policy reload on a signal did not run")
            with self._signal_lock:
                self._signal_running = self._signal_again = False

    async def _signal_reloads(self) -> None:
        """Reload once, then again while signals arrived during the previous reload."""
        while True:
            try:
                await self.reload(trigger="signal")
            except Exception as error:  # noqa: BLE001 -- the event records it; keep serving
                logger.error(
                    "reloading the policy from %s on a signal failed, so the old policy "
                    "stays in force: %s",
                    self.active.source,
                    redact_text(_describe(error)),
                )
            with self._signal_lock:
                if not self._signal_again:
                    self._signal_running = False
                    return
                self._signal_again = False


class _SignalHook:
    """A signal handler that calls ``callback`` and then the handler installed before it."""

    def __init__(self, signum: int, callback: Callable[[], None]) -> None:
        self.signum = signum
        self.callback = callback
        self.previous: Any = None

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            message = (
                "reload_on_sighup must be set up in the main thread, where Python runs signal "
                "handlers: build the middleware there, or call reload() yourself"
            )
            raise ConfigurationError(message, parameter="reload_on_sighup", value=True)
        self.previous = signal.getsignal(self.signum)
        signal.signal(self.signum, self.handle)

    def handle(self, signum: int, frame: FrameType | None) -> None:
        try:
            self.callback()
        except Exception:
            logger.exception("scheduling the policy reload on signal %d failed", signum)
        previous = self.previous
        # SIG_DFL would end the process and SIG_IGN is not callable; only a function chains.
        if callable(previous):
            previous(signum, frame)

    def uninstall(self) -> None:
        if signal.getsignal(self.signum) != self.handle:
            return  # Someone installed another handler since; leave theirs in place.
        previous = self.previous if self.previous is not None else signal.SIG_DFL
        signal.signal(self.signum, previous)


@dataclass(frozen=True, slots=True)
class _LoadResult:
    sha256: str | None
    loaded: Any = None
    error: Exception | None = None


def _load_file(path: Path, loader: PolicyLoader) -> _LoadResult:
    """
    Load ``path`` with ``loader``. The hash is the loader's own (``sha256`` of the bytes it
    parsed) when it reports one, else that of the bytes read just before loading.
    """
    sha256: str | None = None
    try:
        sha256 = file_sha256(_read(path))
        loaded = loader(path)
    except Exception as error:  # noqa: BLE001 -- returned to the caller, which raises it
        return _LoadResult(sha256, error=error)

    reported = getattr(loaded, "sha256", None)
    return _LoadResult(reported if isinstance(reported, str) and reported else sha256, loaded)


def _read(path: Path) -> bytes:
    with path.open("rb") as handle:
        data = handle.read(MAX_POLICY_FILE_BYTES + 1)
    if len(data) > MAX_POLICY_FILE_BYTES:
        message = (
            f"the policy file {str(path)!r} is larger than {MAX_POLICY_FILE_BYTES} bytes; "
            "check that the path names a policy file"
        )
        raise ConfigurationError(message, parameter="policy_file", value=str(path))
    return data


def _policy_of(loaded: Any, source: Path) -> Policy:
    policy = loaded if isinstance(loaded, Policy) else getattr(loaded, "policy", None)
    if not isinstance(policy, Policy):
        message = (
            f"the policy loader returned {type(loaded).__name__} for {str(source)!r}, "
            "not a Policy or an object with a policy attribute"
        )
        raise ConfigurationError(message, parameter="policy_loader")
    return policy


async def _warm(key_sets: tuple[RemoteKeySet, ...]) -> None:
    """Fetch every key set; raise if any of them has no usable keys afterwards."""
    if not key_sets:
        return
    await asyncio.gather(*(key_set.refresh() for key_set in key_sets))
    for key_set in key_sets:
        if key_set.last_error is not None:
            raise KeySetUnavailableError(key_set.url, key_set.last_error)


def _describe(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return text[:_MAX_ERROR]


def _segment_names(active: ActivePolicy) -> list[str]:
    return [segment.name for segment in active.policy.segments]


def _base_event(kind: str, trigger: ReloadTrigger, source: Path | None) -> dict[str, Any]:
    now = time.time()
    return {
        "event": kind,
        "timestamp": format_timestamp(now),
        "event_id": new_event_id(now),
        "trigger": trigger,
        "source": os.fspath(source) if source is not None else None,
        "pid": os.getpid(),
    }


def _reloaded_event(
    trigger: ReloadTrigger, old: ActivePolicy, new: ActivePolicy, seconds: float
) -> dict[str, Any]:
    old_names, new_names = _segment_names(old), _segment_names(new)
    event = _base_event("policy_reloaded", trigger, new.source)
    event.update(
        {
            "old_sha256": old.sha256,
            "new_sha256": new.sha256,
            "old_segments": len(old_names),
            "new_segments": len(new_names),
            "segments_added": [name for name in new_names if name not in old_names][:_MAX_NAMES],
            "segments_removed": [name for name in old_names if name not in new_names][:_MAX_NAMES],
            "key_sets": len(new.key_sets),
            "reload_ms": round(seconds * 1000, 3),
        }
    )
    return event


def _failed_event(
    trigger: ReloadTrigger,
    source: Path | None,
    error: BaseException,
    sha256: str | None,
    active: ActivePolicy,
) -> dict[str, Any]:
    event = _base_event("policy_reload_failed", trigger, source)
    event.update(
        {
            "error": redact_text(_describe(error)),
            "error_type": type(error).__name__,
            "sha256": sha256,
            "active_sha256": active.sha256,
            "active_segments": len(active.policy),
        }
    )
    return event


def load_policy_file(path: Path) -> Any:
    """
    Load a policy file again for a running middleware, with `zerotrust.config.load_policy`.

    The file's event sinks are checked but not opened: the middleware keeps delivering to the
    sinks it started with.
    """
    from .config import load_policy

    return load_policy(path, build_sinks=False)


def carry_over_state(old: Any, new: Any) -> None:
    """
    Connect the verifiers of a freshly loaded policy file to the running state of the old one.

    A reload builds new objects for the whole file, but the middleware keeps its event emitter
    and with it the monitor that raises risk signals. So every new verifier that reads risk
    signals reads the running ones, and a verifier that emits events (such as grant uses)
    emits where its predecessor of the same name did. A grant verifier with a new in-memory
    store keeps its predecessor's store, so revocations survive the reload. The new file's
    emitter, which nothing uses, is closed.
    """
    from .events import EventEmitter
    from .grants.store import MemoryGrantStore
    from .monitor import RiskSignals

    policy = getattr(new, "policy", None)
    if not isinstance(policy, Policy) or old is None:
        return
    old_verifiers: Mapping[str, Any] = getattr(old, "verifiers", None) or {}
    new_names = {
        id(verifier): name for name, verifier in (getattr(new, "verifiers", None) or {}).items()
    }
    running_signals = _running_signals(old)
    old_events = getattr(old, "events", None)

    for segment in policy.segments:
        for verifier in segment.verifiers:
            previous = old_verifiers.get(new_names.get(id(verifier), ""))
            if running_signals is not None and isinstance(
                getattr(verifier, "signals", None), RiskSignals
            ):
                verifier.signals = running_signals  # type: ignore[attr-defined]
            if isinstance(getattr(verifier, "events", None), EventEmitter):
                events = getattr(previous, "events", None) or old_events
                if isinstance(events, EventEmitter):
                    verifier.events = events  # type: ignore[attr-defined]
            store = getattr(verifier, "store", None)
            previous_store = getattr(previous, "store", None)
            if isinstance(store, MemoryGrantStore) and isinstance(previous_store, MemoryGrantStore):
                verifier.store = previous_store  # type: ignore[attr-defined]

    # The store of a [state] table reports outages through the running emitter, too.
    health = getattr(getattr(new, "state", None), "health", None)
    if health is not None and isinstance(old_events, EventEmitter):
        health.events = old_events
    new_events = getattr(new, "events", None)
    if isinstance(new_events, EventEmitter) and new_events is not old_events:
        new_events.close()


def _running_signals(loaded: Any) -> Any:
    """Return the risk signals that the running monitor raises and the running verifiers read."""
    signals = getattr(getattr(loaded, "monitor", None), "signals", None)
    if signals is not None:
        return signals
    for verifier in (getattr(loaded, "verifiers", None) or {}).values():
        if getattr(verifier, "signals", None) is not None:
            return verifier.signals
    return getattr(loaded, "signals", None)


def split_policy(policy: Any) -> tuple[Policy, Any]:
    """
    Return the `Policy` of a middleware's ``policy`` argument, and the loaded policy file it
    came from (a `zerotrust.config.LoadedPolicy`) or ``None``.
    """
    if isinstance(policy, Policy):
        return policy, None
    inner = getattr(policy, "policy", None)
    if isinstance(inner, Policy):
        return inner, policy
    return Policy(policy), None


def source_of(loaded: Any) -> Path | None:
    """Return the file a loader result came from, if it names one."""
    for name in ("path", "source"):
        value = getattr(loaded, name, None)
        if isinstance(value, str | os.PathLike):
            return Path(value)
    return None


class ReloadablePolicy:
    """
    The policy of an enforcement point, replaceable while the app serves requests.

    Requests already deciding finish on the policy they started with.
    """

    _reloader: PolicyReloader

    def _init_policy(
        self,
        policy: Policy,
        events: EventEmitter,
        *,
        loaded: Any = None,
        reload_on_sighup: bool = False,
        run_blocking: Callable[[Coroutine[Any, Any, None]], Any] = asyncio.run,
    ) -> None:
        source = source_of(loaded) if loaded is not None else None
        sha256 = getattr(loaded, "sha256", None) if loaded is not None else None
        if source is not None and not isinstance(sha256, str):
            try:
                sha256 = file_sha256(_read(source))
            except (OSError, ConfigurationError):
                sha256 = None
        active = activate(policy, sha256=sha256, source=source, loaded=loaded)
        self._reloader = PolicyReloader(
            active, events=events, loader=load_policy_file, run_blocking=run_blocking
        )
        if reload_on_sighup:
            if source is None:
                message = (
                    "reload_on_sighup needs a middleware built from a policy file, because a "
                    "reload reads that file again: pass the result of load_policy() as policy"
                )
                raise ConfigurationError(message, parameter="reload_on_sighup", value=True)
            self._reloader.install_signal_handler()

    @property
    def policy(self) -> Policy:
        """The policy in force."""
        return self._reloader.active.policy

    @property
    def engine(self) -> Engine:
        """The decision engine of the policy in force."""
        return self._reloader.active.engine

    @property
    def active_policy(self) -> ActivePolicy:
        """The policy in force with its engine, key sets, file and file hash."""
        return self._reloader.active


class AsyncPolicyReload(ReloadablePolicy):
    """`reload` and `replace_policy` as coroutines, for the ASGI middleware."""

    async def reload(self) -> ActivePolicy:
        """
        Read the policy file this middleware was built from again, and enforce the new policy.

        The file is read and parsed in a worker thread, and the JWKS key sets of the new policy
        are fetched before the swap. Every request that starts afterwards is decided by the new
        policy. On failure the old policy stays in force and a ``policy_reload_failed`` event
        records why, with the SHA-256 of the file that was read.

        Returns:
            The policy now in force.

        Raises:
            ConfigurationError: if the middleware was not built from a policy file, or the file
                is invalid (`zerotrust.config.PolicyFileError` lists every problem).
            OSError: if the file cannot be read.
            KeySetUnavailableError: if a JWKS of the new policy cannot be fetched.
        """
        return await self._reloader.reload(trigger="call")

    async def replace_policy(self, policy: Policy | Sequence[Segment]) -> ActivePolicy:
        """
        Enforce ``policy`` from now on; the Python counterpart of `reload`.

        The JWKS key sets of ``policy`` are fetched before the swap, and a ``policy_reloaded``
        event records it. A later `reload` reads the policy file again, if there is one.

        Raises:
            ConfigurationError: if ``policy`` is not a `Policy` or a list of segments that
                builds one.
            KeySetUnavailableError: if a JWKS of ``policy`` cannot be fetched; the old policy
                stays in force.
        """
        if not isinstance(policy, Policy):
            policy = Policy(policy)
        return await self._reloader.replace(policy)


class BlockingPolicyReload(ReloadablePolicy):
    """`reload` and `replace_policy` as blocking calls, for the WSGI middleware."""

    def _run_reload(self, coroutine: Coroutine[Any, Any, ActivePolicy], timeout: float) -> Any:
        """Run ``coroutine`` on the event loop the middleware decides on."""
        raise NotImplementedError

    def reload(self, timeout: float = 30.0) -> ActivePolicy:
        """
        Read the policy file this middleware was built from again, and enforce the new policy.

        Blocks for at most ``timeout`` seconds; otherwise the same as
        `zerotrust.ZeroTrustMiddleware.reload`.
        """
        result: ActivePolicy = self._run_reload(self._reloader.reload(trigger="call"), timeout)
        return result

    def replace_policy(
        self, policy: Policy | Sequence[Segment], timeout: float = 30.0
    ) -> ActivePolicy:
        """
        Enforce ``policy`` from now on; the Python counterpart of `reload`.

        Blocks for at most ``timeout`` seconds; otherwise the same as
        `zerotrust.ZeroTrustMiddleware.replace_policy`.
        """
        if not isinstance(policy, Policy):
            policy = Policy(policy)
        result: ActivePolicy = self._run_reload(self._reloader.replace(policy), timeout)
        return result
