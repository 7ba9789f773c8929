# SPDX-License-Identifier: Apache-2.0
"""The Redis state store: state shared by every worker and host, with automatic pipelining."""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from ..exceptions import ConfigurationError, MissingExtraError

try:
    import redis
    import redis.asyncio
    from redis.backoff import NoBackoff
    from redis.exceptions import NoScriptError, RedisError, ResponseError, WatchError
except ImportError:  # pragma: no cover -- exercised in a subprocess without redis
    raise MissingExtraError("zerotrust.state.RedisStateStore", "redis") from None

from .base import (
    RecordUpdate,
    StateHealth,
    StateStore,
    StateUnavailableError,
    check_namespace,
    key_digest,
)

if TYPE_CHECKING:
    from ..events.emitter import EventEmitter

__all__ = ["RedisStateStore"]

Result = TypeVar("Result")

# Errors that mean the server is unreachable, slow or broken, as opposed to a caller mistake.
_OUTAGE_ERRORS = (RedisError, OSError, TimeoutError)
_MAX_WATCH_RETRIES = 100
_SCAN_BATCH = 500
_MGET_BATCH = 1000

# Window scripts run on the server so that prune, add, trim and read are one atomic step.
_EVENT_SCRIPT = """
local key = KEYS[1]
redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. ARGV[3])
redis.call('ZADD', key, ARGV[1], ARGV[2])
redis.call('ZREMRANGEBYRANK', key, 0, -(tonumber(ARGV[4]) + 1))
redis.call('PEXPIRE', key, ARGV[5])
return redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
"""
_DISTINCT_SCRIPT = """
local zset, infos = KEYS[1], KEYS[2]
local old = redis.call('ZRANGEBYSCORE', zset, '-inf', '(' .. ARGV[4])
for _, member in ipairs(old) do
  redis.call('ZREM', zset, member)
  redis.call('HDEL', infos, member)
end
if ARGV[7] == '1' then
  redis.call('ZADD', zset, ARGV[1], ARGV[2])
  redis.call('HSET', infos, ARGV[2], ARGV[3])
end
local over = redis.call('ZRANGE', zset, 0, -(tonumber(ARGV[5]) + 1))
for _, member in ipairs(over) do
  redis.call('ZREM', zset, member)
  redis.call('HDEL', infos, member)
end
if redis.call('EXISTS', zset) == 1 then
  redis.call('PEXPIRE', zset, ARGV[6])
  redis.call('PEXPIRE', infos, ARGV[6])
end
local entries = redis.call('ZRANGE', zset, 0, -1, 'WITHSCORES')
local members = {}
for index = 1, #entries, 2 do
  members[#members + 1] = entries[index]
end
local found = {}
if #members > 0 then
  found = redis.call('HMGET', infos, unpack(members))
end
return {entries, found}
"""
# A flag lives until the latest expiry of its fields: the key's TTL only ever grows.
_FLAG_SCRIPT = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local ttl = tonumber(ARGV[3])
if redis.call('PTTL', KEYS[1]) < ttl then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
"""
# Reads the flags of every key in one call, so a batch of flag reads is one command. pcall keeps
# a key of the wrong type from failing the reads of other keys: its entry is an error reply.
_FLAGS_READ_SCRIPT = """
local found = {}
for position, key in ipairs(KEYS) do
  found[position] = redis.pcall('HGETALL', key)
end
return found
"""
_FLAGS_READ_SHA = hashlib.sha1(_FLAGS_READ_SCRIPT.encode()).hexdigest()  # noqa: S324 -- script id
# The index of a table maps record keys to their expiry, so listing never scans the keyspace.
_INDEX_SCRIPT = """
local index = KEYS[1]
local now, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', index, '-inf', now)
for position = 3, #ARGV do
  redis.call('ZADD', index, now + ttl, ARGV[position])
end
if redis.call('PTTL', index) < ttl then
  redis.call('PEXPIRE', index, ttl)
end
"""


class RedisStateStore(StateStore):
    """
    State in Redis, shared by every worker process and host that uses the same namespace.

    Every key starts with ``namespace`` and expires. Keys derived from client input (subjects,
    addresses, token ids) embed a digest (see `key_digest`), so their length is fixed.

    The request path uses ``redis.asyncio`` with automatic pipelining: the commands that
    coroutines issue during one iteration of the event loop go to Redis as one pipeline. The
    verifiers of one request run side by side, so their reads (risk flags, a grant's
    revocation, a device entry, a replay mark) share one round trip without knowing about each
    other. The flag reads of a pipeline go as one script call and its record reads as one
    ``MGET``, so concurrent requests add keys rather than commands. Each event loop gets its own
    connection pool. Detectors and the grant broker run in
    threads and use a synchronous client with its own pool.

    Every call is bounded by ``connect_timeout`` and ``timeout``. A failure raises
    `StateUnavailableError` and emits ``state_degraded`` once per outage. Later calls then
    fail at once for ``retry_interval`` seconds. After that the next call tries again and
    reconnects as needed, and the first success emits ``state_recovered``.

    Args:
        url: The server, such as ``redis://127.0.0.1:6379/0`` or ``rediss://`` for TLS.
        namespace: Prefix of every key; give each application its own.
        connect_timeout: Seconds to wait for a connection.
        timeout: Seconds to wait for a reply.
        max_connections: Most connections of each pool (the synchronous one, and one per
            event loop); a caller waits up to ``timeout`` for a free one.
        retry_interval: Seconds between tries while the server fails.
        max_pending: Most commands queued for the next pipeline; more fail at once.
        events: Where ``state_degraded`` and ``state_recovered`` go.

    Raises:
        ConfigurationError: for an invalid namespace, timeout or size.
        MissingExtraError: at import, when the ``redis`` extra is not installed.

    .. versionadded:: 0.7
    """

    shared = True
    local_reads = False

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        namespace: str = "zerotrust",
        connect_timeout: float = 0.5,
        timeout: float = 0.5,
        max_connections: int = 32,
        retry_interval: float = 1.0,
        max_pending: int = 10_000,
        events: EventEmitter | None = None,
    ) -> None:
        if not isinstance(url, str) or not url.startswith(("redis://", "rediss://", "unix://")):
            message = f"url must be a redis://, rediss:// or unix:// URL, not {url!r}"
            raise ConfigurationError(message, parameter="url", value=url)
        for name, value in (
            ("connect_timeout", connect_timeout),
            ("timeout", timeout),
            ("retry_interval", retry_interval),
        ):
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 60:
                message = f"{name} must be a positive number of seconds below 60, not {value!r}"
                raise ConfigurationError(message, parameter=name, value=value)
        for name, size in (("max_connections", max_connections), ("max_pending", max_pending)):
            if isinstance(size, bool) or not isinstance(size, int) or size < 1:
                message = f"{name} must be a positive integer, not {size!r}"
                raise ConfigurationError(message, parameter=name, value=size)

        self.url = url
        self.namespace = check_namespace(namespace)
        self.connect_timeout = float(connect_timeout)
        self.timeout = float(timeout)
        self.max_connections = max_connections
        self.max_pending = max_pending
        self.health = StateHealth(
            "redis", self.namespace, events=events, retry_interval=float(retry_interval)
        )
        self.round_trips = 0
        """Pipelines sent from the event loop, for measurements and tests."""
        self._options: dict[str, Any] = {
            "socket_connect_timeout": self.connect_timeout,
            "socket_timeout": self.timeout,
            "decode_responses": True,
            "max_connections": max_connections,
            "timeout": self.timeout,
        }
        sync_pool = redis.BlockingConnectionPool.from_url(
            url, retry=redis.retry.Retry(NoBackoff(), 0), **self._options
        )
        # Typed as Any: with decode_responses=True replies are str, which the stubs do not model.
        self._sync: Any = redis.Redis(connection_pool=sync_pool)
        self._event_script = self._sync.register_script(_EVENT_SCRIPT)
        self._distinct_script = self._sync.register_script(_DISTINCT_SCRIPT)
        self._flag_script = self._sync.register_script(_FLAG_SCRIPT)
        self._index_script = self._sync.register_script(_INDEX_SCRIPT)
        self._batchers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Batcher] = (
            weakref.WeakKeyDictionary()
        )

    # Keys ---------------------------------------------------------------------------------------

    def key(self, *parts: str) -> str:
        """Return the Redis key of ``parts``; the last part is client input, so it is hashed."""
        *fixed, variable = parts
        return ":".join((self.namespace, *fixed, key_digest(variable)))

    def _index_key(self, table: str) -> str:
        return f"{self.namespace}:index:{table}"

    # Plumbing -----------------------------------------------------------------------------------

    def _run(self, operation: Callable[[], Result]) -> Result:
        self.health.check()
        try:
            result = operation()
        except _OUTAGE_ERRORS as error:
            raise self.health.failed(error) from error
        self.health.succeeded()
        return result

    def _batcher(self) -> _Batcher:
        loop = asyncio.get_running_loop()
        batcher = self._batchers.get(loop)
        if batcher is None:
            pool = redis.asyncio.BlockingConnectionPool.from_url(
                self.url, retry=redis.asyncio.retry.Retry(NoBackoff(), 0), **self._options
            )
            batcher = _Batcher(self, loop, redis.asyncio.Redis(connection_pool=pool))
            self._batchers[loop] = batcher
        return batcher

    async def _call(self, *command: Any) -> Any:
        self.health.check()
        return await self._batcher().submit(_COMMAND, command, 1)

    async def aclose(self) -> None:
        """Close the connections of the running event loop; later calls reconnect."""
        batcher = self._batchers.pop(asyncio.get_running_loop(), None)
        if batcher is not None:
            await batcher.aclose()

    def close(self) -> None:
        """Close the synchronous connections; call `aclose` on each event loop as well."""
        self._sync.close()
        self._sync.connection_pool.disconnect()

    def ping(self) -> bool:
        """Return ``True`` when the server responds; raise `StateUnavailableError` otherwise."""
        return bool(self._run(self._sync.ping))

    # Risk flags ---------------------------------------------------------------------------------

    def set_flag(self, kind: str, key: str, field: str, value: str, expires_at: float) -> None:
        ttl = max(1, int((expires_at - time.time()) * 1000))
        name = self.key("flag", kind, key)
        self._run(lambda: self._flag_script(keys=[name], args=[field, value, ttl]))

    def get_flags(self, kind: str, key: str) -> dict[str, str]:
        name = self.key("flag", kind, key)
        return dict(self._run(lambda: self._sync.hgetall(name)))

    async def get_flags_many(self, items: Sequence[tuple[str, str]]) -> list[dict[str, str]]:
        self.health.check()
        if not items:
            return []
        names = tuple(self.key("flag", kind, key) for kind, key in items)
        found: list[dict[str, str]] = await self._batcher().submit(_FLAGS, names, len(names))
        return found

    def delete_flags(self, kind: str, key: str) -> None:
        name = self.key("flag", kind, key)
        self._run(lambda: self._sync.delete(name))

    def scan_flags(self, limit: int = 10_000) -> list[str]:
        def scan() -> list[str]:
            values: list[str] = []
            pattern = f"{self.namespace}:flag:*"
            for name in self._sync.scan_iter(match=pattern, count=_SCAN_BATCH):
                values.extend(self._sync.hvals(name))
                if len(values) >= limit:
                    break
            return values[:limit]

        return self._run(scan)

    # Records ------------------------------------------------------------------------------------

    def get_record(self, table: str, key: str) -> str | None:
        name = self.key("record", table, key)
        result: str | None = self._run(lambda: self._sync.get(name))
        return result

    async def get_records(self, table: str, keys: Sequence[str]) -> list[str | None]:
        if not keys:
            return []
        self.health.check()
        names = tuple(self.key("record", table, key) for key in keys)
        result: list[str | None] = await self._batcher().submit(_RECORDS, names, 1)
        return result

    def update_record(self, table: str, key: str, update: RecordUpdate) -> str | None:
        name = self.key("record", table, key)
        index = self._index_key(table)

        def transaction() -> str | None:
            with self._sync.pipeline() as pipe:
                for _ in range(_MAX_WATCH_RETRIES):
                    try:
                        pipe.watch(name)
                        current: str | None = pipe.get(name)
                        change = update(current)
                        if change is None:
                            pipe.unwatch()
                            return current
                        value, ttl = change
                        ttl_ms = max(1, int(ttl * 1000))
                        pipe.multi()
                        pipe.set(name, value, px=ttl_ms)
                        pipe.execute()
                    except WatchError:
                        # Another writer changed the record first: wait a moment and read again.
                        time.sleep(random.uniform(0, 0.002))  # noqa: S311 -- jitter, not a secret
                        continue
                    self._index_script(
                        keys=[index], args=[int(time.time() * 1000), ttl_ms, key_digest(key)]
                    )
                    return value
            message = f"record {table}/{key[:64]!r} changed {_MAX_WATCH_RETRIES} times in a row"
            raise StateUnavailableError(message)

        return self._run(transaction)

    def put_records(self, table: str, values: dict[str, str], ttl: float) -> None:
        if not values:
            return
        ttl_ms = max(1, int(ttl * 1000))
        index = self._index_key(table)

        def write() -> None:
            with self._sync.pipeline() as pipe:
                for key, value in values.items():
                    pipe.set(self.key("record", table, key), value, px=ttl_ms)
                pipe.execute()
            digests = [key_digest(key) for key in values]
            self._index_script(keys=[index], args=[int(time.time() * 1000), ttl_ms, *digests])

        self._run(write)

    def delete_records(self, table: str, keys: Sequence[str]) -> None:
        if not keys:
            return
        names = [self.key("record", table, key) for key in keys]
        digests = [key_digest(key) for key in keys]
        index = self._index_key(table)

        def delete() -> None:
            with self._sync.pipeline() as pipe:
                pipe.delete(*names)
                pipe.zrem(index, *digests)
                pipe.execute()

        self._run(delete)

    def list_records(self, table: str, limit: int = 100_000) -> list[str]:
        prefix = f"{self.namespace}:record:{table}:"
        index = self._index_key(table)

        def read() -> list[str]:
            now = int(time.time() * 1000)
            digests = self._sync.zrangebyscore(index, now, "+inf", start=0, num=limit)
            values: list[str] = []
            for start in range(0, len(digests), _MGET_BATCH):
                names = [prefix + digest for digest in digests[start : start + _MGET_BATCH]]
                values.extend(value for value in self._sync.mget(names) if value is not None)
            return values

        return self._run(read)

    # Marks --------------------------------------------------------------------------------------

    def claim(self, table: str, key: str, ttl: float) -> bool:
        name = self.key("mark", table, key)
        ttl_ms = max(1, int(ttl * 1000))
        return bool(self._run(lambda: self._sync.set(name, "1", nx=True, px=ttl_ms)))

    async def claim_async(self, table: str, key: str, ttl: float) -> bool:
        ttl_ms = max(1, int(ttl * 1000))
        result = await self._call("SET", self.key("mark", table, key), "1", "NX", "PX", ttl_ms)
        return bool(result)

    # Windows ------------------------------------------------------------------------------------

    def add_event(
        self, name: str, key: str, at: float, member: str, *, window: float, maxlen: int
    ) -> list[tuple[float, str]]:
        zset = self.key("window", name, key)
        args: list[str | int] = [repr(at), member, repr(at - window), maxlen, _ttl_ms(window)]
        flat = self._run(lambda: self._event_script(keys=[zset], args=args))
        return [(float(flat[index + 1]), flat[index]) for index in range(0, len(flat), 2)]

    def add_distinct(
        self,
        name: str,
        key: str,
        at: float,
        member: str | None,
        info: str,
        *,
        window: float,
        max_values: int,
    ) -> list[tuple[str, float, str]]:
        digest = key_digest(key)
        # One hash tag for both keys keeps them in one Redis Cluster slot, as scripts require.
        zset = f"{self.namespace}:window:{{{name}:{digest}}}"
        infos = f"{self.namespace}:window-info:{{{name}:{digest}}}"
        args: list[str | int] = [
            repr(at),
            member or "",
            info,
            repr(at - window),
            max_values,
            _ttl_ms(window),
            "1" if member is not None else "0",
        ]
        flat, found = self._run(lambda: self._distinct_script(keys=[zset, infos], args=args))
        return [
            (flat[index], float(flat[index + 1]), found[index // 2] or "")
            for index in range(0, len(flat), 2)
        ]

    def swap(self, name: str, key: str, value: str, ttl: float) -> str | None:
        latest = self.key("latest", name, key)
        ttl_ms = max(1, int(ttl * 1000))
        previous: str | None = self._run(lambda: self._sync.set(latest, value, px=ttl_ms, get=True))
        return previous

    def __repr__(self) -> str:
        return f"<RedisStateStore namespace={self.namespace!r}>"


def _ttl_ms(window: float) -> int:
    # Windows use event time, which trails the clock by the delivery delay: keep a margin.
    return max(1000, int(window * 1000) + 60_000)


# Kinds of queued reads. However many requests queue them, the flag reads of one batch become
# one script call and its record reads one MGET. Other commands go as they are.
_FLAGS, _RECORDS, _COMMAND = 0, 1, 2

_Entry = tuple[int, tuple[Any, ...], "asyncio.Future[Any]"]


class _Batcher:
    """The automatic pipeline of one event loop: commands queued in one iteration go together."""

    def __init__(
        self, store: RedisStateStore, loop: asyncio.AbstractEventLoop, client: redis.asyncio.Redis
    ) -> None:
        self.store = store
        self.loop = loop
        self.client = client
        self.queue: list[_Entry] = []
        # Commands that the queue would cost unmerged: one per flag key, MGET and other command.
        self.pending = 0
        # Whether the flag script is known to be on the server. Until it is, the next batch
        # loads it first, in the same round trip.
        self.script_loaded = False
        self.tasks: set[asyncio.Task[None]] = set()

    def submit(self, kind: int, arguments: tuple[Any, ...], weight: int) -> asyncio.Future[Any]:
        """
        Queue a read for the next pipeline and return the future of its result.

        ``arguments`` are the flag keys for ``_FLAGS`` (the result is one dict per key), the
        record keys for ``_RECORDS`` (one value or ``None`` per key), or the command itself
        for ``_COMMAND`` (its reply). ``weight`` is the number of commands it counts for.
        """
        future: asyncio.Future[Any] = self.loop.create_future()
        if self.pending + weight > self.store.max_pending:
            message = f"more than {self.store.max_pending} Redis commands are waiting"
            future.set_exception(StateUnavailableError(message))
            return future
        self.queue.append((kind, arguments, future))
        self.pending += weight
        if len(self.queue) == 1:
            # call_soon runs after every callback already scheduled for this iteration, so the
            # other verifiers of the same request add their commands before the flush.
            self.loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        batch, self.queue, self.pending = self.queue, [], 0
        task = self.loop.create_task(self._send(batch))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _send(self, batch: list[_Entry]) -> None:
        live = [entry for entry in batch if not entry[2].done()]
        if not live:
            return
        flag_keys: list[str] = []
        record_keys: list[str] = []
        others: list[tuple[Any, ...]] = []
        for kind, arguments, _ in live:
            if kind == _FLAGS:
                flag_keys.extend(arguments)
            elif kind == _RECORDS:
                record_keys.extend(arguments)
            else:
                others.append(arguments)

        commands: list[tuple[Any, ...]] = []
        load_script = bool(flag_keys) and not self.script_loaded
        if load_script:
            commands.append(("SCRIPT", "LOAD", _FLAGS_READ_SCRIPT))
        first = len(commands)
        if flag_keys:
            commands.append(("EVALSHA", _FLAGS_READ_SHA, len(flag_keys), *flag_keys))
        if record_keys:
            commands.append(("MGET", *record_keys))
        commands.extend(others)

        store = self.store
        try:
            async with asyncio.timeout(store.connect_timeout + store.timeout * 2):
                replies = await self._execute(commands)
                store.round_trips += 1
                if load_script:
                    self.script_loaded = not isinstance(replies[0], ResponseError)
                if flag_keys and isinstance(replies[first], NoScriptError):
                    # The server lost its scripts, such as after a restart or SCRIPT FLUSH:
                    # EVAL sends the script along and stores it again.
                    evaluate = ("EVAL", _FLAGS_READ_SCRIPT, len(flag_keys), *flag_keys)
                    (replies[first],) = await self._execute([evaluate])
                    store.round_trips += 1
                    self.script_loaded = not isinstance(replies[first], ResponseError)
        except _OUTAGE_ERRORS as error:
            # A server that comes back may have lost its scripts.
            self.script_loaded = False
            failure = store.health.failed(error)
            for _, _, future in live:
                if not future.done():
                    future.set_exception(failure)
            return

        store.health.succeeded()
        replies = replies[first:]
        flags = replies.pop(0) if flag_keys else None
        records = replies.pop(0) if record_keys else None
        _resolve(live, flags, records, replies)

    async def _execute(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Send ``commands`` in one write and return their replies, error replies included."""
        # Typed as Any: the pool methods have no annotations.
        pool: Any = self.client.connection_pool
        connection = await pool.get_connection()
        try:
            await connection.send_packed_command(connection.pack_commands(commands))
            replies: list[Any] = []
            for _ in commands:
                try:
                    replies.append(await connection.read_response())
                except ResponseError as error:
                    # The reply was read in full, so the connection stays in step.
                    replies.append(error)
        except BaseException:
            # Replies may still be on the way: the connection cannot be reused as it is.
            await connection.disconnect(nowait=True)
            raise
        finally:
            await pool.release(connection)
        return replies

    async def aclose(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await self.client.aclose()
        await self.client.connection_pool.disconnect()


def _resolve(live: list[_Entry], flags: Any, records: Any, others: list[Any]) -> None:
    """Hand each queued read its share of the replies: the flag script's, MGET's or its own."""
    flag_position = record_position = 0
    replies = iter(others)
    for kind, arguments, future in live:
        result: Any
        if kind == _FLAGS:
            end = flag_position + len(arguments)
            result = _flag_maps(flags, flag_position, end)
            flag_position = end
        elif kind == _RECORDS:
            end = record_position + len(arguments)
            if isinstance(records, Exception):
                result = _failure("MGET", records)
            else:
                result = records[record_position:end]
            record_position = end
        else:
            reply = next(replies)
            result = _failure(arguments[0], reply) if isinstance(reply, Exception) else reply
        if future.done():
            continue
        if isinstance(result, StateUnavailableError):
            future.set_exception(result)
        else:
            future.set_result(result)


def _flag_maps(reply: Any, start: int, end: int) -> list[dict[str, str]] | StateUnavailableError:
    """Return the flags of keys ``start`` to ``end`` of a flag script reply, or its error."""
    if isinstance(reply, Exception):
        return _failure("EVALSHA", reply)
    maps: list[dict[str, str]] = []
    for fields in reply[start:end]:
        if isinstance(fields, Exception):
            return _failure("HGETALL", fields)
        # HGETALL in a script returns field, value, field, value...
        maps.append(dict(zip(fields[::2], fields[1::2], strict=True)))
    return maps


def _failure(command: str, error: Exception) -> StateUnavailableError:
    return StateUnavailableError(f"Redis {command} failed: {error}"[:300])
