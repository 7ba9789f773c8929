# SPDX-License-Identifier: Apache-2.0
"""The state stores against one contract, and the Redis store when the server fails or is slow."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from redis_helpers import REDIS_URL, delete_namespace, free_port, new_namespace, redis_or_skip

from zerotrust import Policy, Segment, ZeroTrustMiddleware
from zerotrust.devices import DeviceRecord, DeviceRegistryError, StateDeviceRegistry
from zerotrust.events import EventEmitter, MemorySink
from zerotrust.exceptions import ConfigurationError
from zerotrust.grants import GrantBroker, GrantStoreError, GrantVerifier, generate_signing_key
from zerotrust.grants.store import StateGrantStore
from zerotrust.monitor import RiskSignal, RiskSignals, RiskVerifier
from zerotrust.state import MemoryStateStore, StateStore, StateUnavailableError
from zerotrust.testing import TokenIssuer, capture_events
from zerotrust.verifiers import DeviceVerifier

BACKENDS = ["memory", "redis"]


def make_store(backend: str, namespace: str) -> StateStore:
    if backend == "memory":
        return MemoryStateStore()
    redis_or_skip()
    from zerotrust.state import RedisStateStore

    return RedisStateStore(REDIS_URL, namespace=namespace)


@pytest.fixture(name="namespace")
def fixture_namespace() -> Iterator[str]:
    """A fresh key namespace, deleted after the test."""
    namespace = new_namespace()
    yield namespace
    delete_namespace(namespace)


@pytest.fixture(name="store", params=BACKENDS)
def fixture_store(request: pytest.FixtureRequest, namespace: str) -> Iterator[StateStore]:
    """Each state store, used from synchronous code."""
    store = make_store(request.param, namespace)
    yield store
    store.close()


@pytest.fixture(name="async_store", params=BACKENDS)
async def fixture_async_store(
    request: pytest.FixtureRequest, namespace: str
) -> AsyncIterator[StateStore]:
    """Each state store, used from the event loop and closed on it."""
    store = make_store(request.param, namespace)
    yield store
    if hasattr(store, "aclose"):
        await store.aclose()
    store.close()


class TestFlags:
    def test_fields_side_by_side(self, store: StateStore) -> None:
        """Fields of one flag are kept side by side and a field is replaced by its new value."""
        expires = time.time() + 60
        store.set_flag("subject", "alice", "burst", "one", expires)
        store.set_flag("subject", "alice", "travel", "two", expires)
        store.set_flag("subject", "alice", "burst", "three", expires)

        assert {"burst": "three", "travel": "two"} == store.get_flags("subject", "alice")
        assert {} == store.get_flags("subject", "bob")

    def test_expiry(self, store: StateStore) -> None:
        """A flag disappears once its latest field expires."""
        store.set_flag("client_ip", "192.0.2.1", "burst", "x", time.time() + 0.2)
        time.sleep(0.35)

        assert {} == store.get_flags("client_ip", "192.0.2.1")

    async def test_many_in_order(self, async_store: StateStore) -> None:
        """get_flags_many returns one map per query, in order."""
        async_store.set_flag("subject", "a", "d", "1", time.time() + 60)
        async_store.set_flag("network", "n", "d", "2", time.time() + 60)

        found = await async_store.get_flags_many(
            [("network", "n"), ("subject", "x"), ("subject", "a")]
        )

        assert [{"d": "2"}, {}, {"d": "1"}] == found

    def test_delete_and_scan(self, store: StateStore) -> None:
        """Deleted flags are gone and scan lists the others."""
        store.set_flag("subject", "a", "d", "1", time.time() + 60)
        store.set_flag("subject", "b", "d", "2", time.time() + 60)
        store.delete_flags("subject", "a")

        assert ["2"] == store.scan_flags()


class TestRecords:
    def test_update_put_list_delete(self, store: StateStore) -> None:
        """Records are written, updated, listed and deleted."""
        store.put_records("t", {"a": "1", "b": "2"}, 60)
        result = store.update_record("t", "a", lambda current: (f"{current}+", 60))
        unchanged = store.update_record("t", "b", lambda current: None)
        store.delete_records("t", ["b", "missing"])

        assert "1+" == result
        assert "2" == unchanged
        assert ["1+"] == store.list_records("t")
        assert store.get_record("t", "b") is None

    async def test_get_many(self, async_store: StateStore) -> None:
        """get_records returns values in the order of the keys, None for missing ones."""
        async_store.put_records("t", {"a": "1"}, 60)

        assert ["1", None] == await async_store.get_records("t", ["a", "z"])

    def test_concurrent_updates(self, store: StateStore) -> None:
        """Updates from several threads are atomic: no increment is lost."""
        store.put_records("t", {"n": "0"}, 60)

        def increment() -> None:
            for _ in range(10):
                store.update_record("t", "n", lambda current: (str(int(current or 0) + 1), 60))

        threads = [threading.Thread(target=increment) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)

        assert "80" == store.get_record("t", "n")

    def test_expiry(self, store: StateStore) -> None:
        """A record disappears after its time to live, from reads and from the list."""
        store.put_records("t", {"a": "1"}, 0.2)
        time.sleep(0.35)

        assert store.get_record("t", "a") is None
        assert [] == store.list_records("t")


class TestMarks:
    async def test_claim_once(self, async_store: StateStore) -> None:
        """A mark is claimed once until it expires, from threads and from the event loop."""
        assert async_store.claim("q", "k", 0.3)
        assert not async_store.claim("q", "k", 0.3)
        assert not await async_store.claim_async("q", "k", 0.3)
        await asyncio.sleep(0.45)
        assert await async_store.claim_async("q", "k", 0.3)


class TestWindows:
    def test_event_window(self, store: StateStore) -> None:
        """An event window drops old entries and keeps the latest ``maxlen``, oldest first."""
        for at, member in ((100.0, "a"), (150.0, "b"), (160.0, "c"), (170.0, "d")):
            entries = store.add_event("burst", "k", at, member, window=60, maxlen=2)

        assert [(160.0, "c"), (170.0, "d")] == entries
        # The cutoff is 220 - 60 = 160, and an entry at the cutoff stays.
        assert [(160.0, "c"), (170.0, "d"), (220.0, "e")] == store.add_event(
            "burst", "k", 220.0, "e", window=60, maxlen=5
        )

    def test_distinct_window(self, store: StateStore) -> None:
        """A distinct window keeps each member's latest sighting and at most ``max_values``."""
        store.add_distinct("lat", "k", 100.0, "s1", "i1", window=60, max_values=2)
        store.add_distinct("lat", "k", 110.0, "s2", "i2", window=60, max_values=2)
        store.add_distinct("lat", "k", 120.0, "s1", "i3", window=60, max_values=2)
        entries = store.add_distinct("lat", "k", 130.0, "s3", "i4", window=60, max_values=2)

        assert [("s1", 120.0, "i3"), ("s3", 130.0, "i4")] == entries
        assert [("s3", 130.0, "i4")] == store.add_distinct(
            "lat", "k", 185.0, None, "", window=60, max_values=2
        )

    def test_swap(self, store: StateStore) -> None:
        """swap returns the previous value."""
        assert store.swap("travel", "k", "one", 60) is None
        assert "one" == store.swap("travel", "k", "two", 60)


class TestRedisKeys:
    def test_every_key_expires_and_is_bounded(self, namespace: str) -> None:
        """Every key the store writes has a TTL, and client input is hashed into a short key."""
        store = make_store("redis", namespace)
        subject = "x" * 5000 + "{tag}:*"
        store.set_flag("subject", subject, "d", "v", time.time() + 60)
        store.put_records("grant", {subject: "v"}, 60)
        store.claim("quiet", subject, 60)
        store.add_event("burst", subject, time.time(), "m", window=60, maxlen=3)
        store.add_distinct("lat", subject, time.time(), "m", "i", window=60, max_values=3)
        store.swap("travel", subject, "v", 60)
        import redis

        client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
        keys = list(client.scan_iter(match=f"{namespace}:*", count=500))
        ttls = {key: client.pttl(key) for key in keys}
        client.close()
        store.close()

        assert 8 == len(keys)
        assert all(ttl > 0 for ttl in ttls.values()), ttls
        assert all(len(key) < 120 for key in keys)


class TestAutoPipelining:
    async def test_concurrent_reads_share_a_round_trip(self, namespace: str) -> None:
        """Reads issued by concurrent coroutines go to Redis as one pipeline."""
        store: Any = make_store("redis", namespace)
        store.put_records("grant", {"g": "v"}, 60)
        await store.get_records("grant", ["warm-up"])
        before = store.round_trips

        results = await asyncio.gather(
            store.get_flags_many([("subject", "a"), ("client_ip", "b")]),
            store.get_records("grant", ["g"]),
            store.claim_async("use", "g", 60),
        )
        await store.aclose()
        store.close()

        assert [[{}, {}], ["v"], True] == results
        assert 1 == store.round_trips - before

    async def test_one_round_trip_per_request(self, namespace: str, issuer: TokenIssuer) -> None:
        """Risk, grant and device checks of one request cost one Redis round trip together."""
        store: Any = make_store("redis", namespace)
        device_issuer = TokenIssuer(issuer="https://mdm.test", algorithms=("ES256",))
        grants = StateGrantStore(store)
        broker = GrantBroker(signing_key=generate_signing_key(), store=grants)
        registry = StateDeviceRegistry(store)
        registry.put(DeviceRecord("pc-1", owner="alice", managed=True))
        issued = broker.mint(
            subject="alice",
            segment="ops",
            methods=["GET"],
            paths=["/ops/"],
            reason="maintenance",
            requested_by="alice",
            duration=600,
        )
        from zerotrust.verifiers import JWTVerifier

        identity = JWTVerifier(
            issuer=issuer.issuer, audience="api", algorithms=["RS256"], keys=issuer.jwks()
        )
        policy = Policy(
            [
                Segment(
                    "ops",
                    paths=["/ops/"],
                    roles=["operator"],
                    verifiers=[
                        identity,
                        RiskVerifier(RiskSignals(store)),
                        GrantVerifier(keys=broker.public_jwks(), store=grants),
                        DeviceVerifier(
                            issuer="https://mdm.test",
                            audience="devices",
                            algorithms=["ES256"],
                            keys=device_issuer.jwks(),
                            registry=registry,
                        ),
                    ],
                )
            ]
        )

        async def app(scope: Any, receive: Any, send: Any) -> None:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})

        headers = {
            "authorization": f"Bearer {issuer.token('alice', alg='RS256')}",
            "x-zerotrust-grant": issued.token,
            "x-device-assertion": device_issuer.token(
                "pc-1", audience="devices", alg="ES256", user="alice"
            ),
        }
        middleware = ZeroTrustMiddleware(app, policy=policy, events=EventEmitter([MemorySink()]))
        transport = httpx.ASGITransport(app=middleware)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            first = await client.get("/ops/restart", headers=headers)
            before = store.round_trips
            second = await client.get("/ops/restart", headers=headers)
            after = store.round_trips
        await store.aclose()
        store.close()

        assert 200 == first.status_code
        assert 200 == second.status_code
        assert 1 == after - before


class TestGrantStoreContract:
    def test_revoke_survives_save(self, store: StateStore) -> None:
        """A revocation survives a later save, keeps its first revoker, and is listed."""
        grants = StateGrantStore(store)
        broker = GrantBroker(signing_key=generate_signing_key(), store=grants)
        issued = broker.mint(
            subject="bob",
            segment="ops",
            methods=["GET"],
            paths=["/ops/"],
            reason="fix",
            requested_by="bob",
            duration=600,
        )
        grants.revoke(issued.grant_id, time.time(), "carol")
        grants.revoke(issued.grant_id, time.time(), "dave")
        grants.save(issued.grant)

        stored = grants.get(issued.grant_id)
        assert stored is not None
        assert "carol" == stored.revoked_by
        assert "revoked" == grants.revocation_state(issued.grant_id)
        assert "unknown" == grants.revocation_state("no-such-grant")
        assert [] == grants.list()
        assert [issued.grant_id] == [g.grant_id for g in grants.list(include_inactive=True)]
        assert grants.mark_reaped(issued.grant_id, time.time())
        assert not grants.mark_reaped(issued.grant_id, time.time())


class TestDeviceRegistryContract:
    async def test_lookup_revoke_remove(self, async_store: StateStore) -> None:
        """Devices are found by id and fingerprint, revoked, and removed with their keys."""
        registry = StateDeviceRegistry(async_store)
        fingerprint = "ab" * 32
        registry.put(
            DeviceRecord("pc-1", owner="alice", certificate_fingerprints=frozenset({fingerprint}))
        )

        by_id = await registry.get("pc-1")
        by_fingerprint = await registry.get(fingerprint)
        revoked = registry.revoke("pc-1", at=1.0)
        after = await registry.get(fingerprint)
        registry.remove("pc-1")

        assert by_id is not None
        assert by_id == by_fingerprint
        assert revoked is not None
        assert after is not None
        assert after.is_revoked(2.0)
        assert await registry.get("pc-1") is None
        assert await registry.get(fingerprint) is None

    def test_fingerprint_conflict(self, store: StateStore) -> None:
        """A fingerprint that belongs to another device is rejected."""
        registry = StateDeviceRegistry(store)
        fingerprint = "cd" * 32
        registry.put(DeviceRecord("pc-1", certificate_fingerprints=frozenset({fingerprint})))

        with pytest.raises(ConfigurationError, match="belongs to device 'pc-1'"):
            registry.put(DeviceRecord("pc-2", certificate_fingerprints=frozenset({fingerprint})))


class TestSharedSignals:
    async def test_raised_in_one_seen_by_another(self, namespace: str) -> None:
        """A signal raised through one RiskSignals is active in another on the same namespace."""
        writer_store: Any = make_store("redis", namespace)
        reader_store: Any = make_store("redis", namespace)
        now = time.time()
        RiskSignals(writer_store).raise_signal(
            RiskSignal("subject", "eve", "denied_burst", "denied_burst", now, now + 60, "a1")
        )

        found = await RiskSignals(reader_store).active_many([("subject", "eve"), ("subject", "x")])
        await reader_store.aclose()
        writer_store.close()
        reader_store.close()

        assert ["denied_burst"] == [signal.detector for signal in found[0]]
        assert () == found[1]


# Failures -----------------------------------------------------------------------------------


def unreachable_store(**options: Any) -> Any:
    from zerotrust.state import RedisStateStore

    return RedisStateStore(f"redis://127.0.0.1:{free_port()}/0", namespace="zt-nowhere", **options)


class _SilentServer:
    """A loopback TCP server that accepts connections and never answers."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> int:
        async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.writers.append(writer)
            await reader.read(65536)

        self.server = await asyncio.start_server(hold, "127.0.0.1", 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def __aexit__(self, *_: object) -> None:
        assert self.server is not None
        for writer in self.writers:
            writer.close()
        self.server.close()
        await self.server.wait_closed()


class _Proxy:
    """A loopback TCP proxy to the real Redis server that can be cut and restored."""

    def __init__(self) -> None:
        self.port = free_port()
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                writer.close()

        async def connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", 6379)
            self.writers += [writer, upstream_writer]
            await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

        self.server = await asyncio.start_server(connect, "127.0.0.1", self.port)

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.transport.abort()
        self.writers.clear()
        await self.server.wait_closed()


class TestUnavailable:
    async def test_closed_port_fails_fast(self) -> None:
        """A store on a closed port raises StateUnavailableError, then fails at once."""
        store = unreachable_store(retry_interval=5)
        events = EventEmitter([MemorySink()])
        store.health.events = events
        started = time.monotonic()
        with capture_events() as captured:
            with pytest.raises(StateUnavailableError):
                await store.get_records("grant", ["g"])
            with pytest.raises(StateUnavailableError, match="retrying shortly"):
                store.get_record("grant", "g")
        elapsed = time.monotonic() - started
        await store.aclose()
        store.close()
        events.close()

        assert elapsed < 2
        assert ["state_degraded"] == [event["event"] for event in captured]
        assert 1 == store.health.failures

    async def test_slow_server_times_out(self) -> None:
        """A server that never answers costs at most the configured timeouts."""
        from zerotrust.state import RedisStateStore

        async with _SilentServer() as port:
            store = RedisStateStore(
                f"redis://127.0.0.1:{port}/0", namespace="zt-slow", timeout=0.2, connect_timeout=0.2
            )
            started = time.monotonic()
            with pytest.raises(StateUnavailableError):
                await store.get_flags_many([("subject", "a")])
            elapsed = time.monotonic() - started
            with pytest.raises(StateUnavailableError):
                await asyncio.to_thread(store.get_flags, "subject", "a")
            await store.aclose()
            store.close()

        assert elapsed < 1.0

    async def test_recovers_without_restart(self, namespace: str) -> None:
        """After an outage the store reconnects by itself and reports the recovery."""
        redis_or_skip()
        from zerotrust.state import RedisStateStore

        proxy = _Proxy()
        await proxy.start()
        store = RedisStateStore(
            f"redis://127.0.0.1:{proxy.port}/0", namespace=namespace, retry_interval=0.1
        )
        events = EventEmitter([MemorySink()])
        store.health.events = events
        with capture_events() as captured:
            assert [None] == await store.get_records("t", ["a"])
            await proxy.stop()
            with pytest.raises(StateUnavailableError):
                await store.get_records("t", ["a"])
            await proxy.start()
            await asyncio.sleep(0.15)
            recovered = await store.get_records("t", ["a"])
        await store.aclose()
        store.close()
        await proxy.stop()
        events.close()

        assert [None] == recovered
        assert ["state_degraded", "state_recovered"] == [event["event"] for event in captured]
        assert "redis" == captured[1]["backend"]

    async def test_risk_fails_closed(self) -> None:
        """The risk verifier denies with state_unavailable while the store fails closed."""
        store = unreachable_store()
        verifier = RiskVerifier(RiskSignals(store))

        verdict = await verifier.verify(make_request(), _context())
        await store.aclose()
        store.close()

        assert "state_unavailable" == verdict.reason
        assert verdict.forbidden

    async def test_risk_degrades_to_local(self) -> None:
        """With degrade, the risk verifier answers from the signals this process raised."""
        store = unreachable_store()
        signals = RiskSignals(store, on_failure="degrade")
        now = time.time()
        with pytest.raises(StateUnavailableError):
            signals.raise_signal(
                RiskSignal("client_ip", "192.0.2.9", "burst", "burst", now, now + 60)
            )
        verifier = RiskVerifier(signals)

        flagged = await verifier.verify(make_request("192.0.2.9"), _context())
        clean = await verifier.verify(make_request("192.0.2.10"), _context())
        await store.aclose()
        store.close()

        assert "risk_flagged_client_ip" == flagged.reason
        assert "pass" == clean.outcome

    async def test_grants_fail_closed_or_degrade(self) -> None:
        """Revocation checks raise while failing closed; degrade answers from the last read."""
        store = unreachable_store()
        memory = MemoryStateStore()
        known = StateGrantStore(memory, on_failure="degrade")
        memory.put_records("grant", {"g1": _grant_json("g1")}, 600)
        assert "valid" == await known.revocation_state_async("g1")
        known.state = store

        with pytest.raises(GrantStoreError):
            await StateGrantStore(store).revocation_state_async("g1")
        degraded = await known.revocation_state_async("g1")
        with pytest.raises(GrantStoreError):
            await known.revocation_state_async("never-read")
        await store.aclose()
        store.close()

        assert "valid" == degraded

    async def test_devices_fail_closed(self) -> None:
        """A device lookup raises DeviceRegistryError while the store fails closed."""
        store = unreachable_store()

        with pytest.raises(DeviceRegistryError):
            await StateDeviceRegistry(store).get("pc-1")
        await store.aclose()
        store.close()


class TestSingleUseGrants:
    async def test_second_use_replayed(self, async_store: StateStore) -> None:
        """A single-use grant passes once; the next request, on any verifier, is refused."""
        grants = StateGrantStore(async_store)
        broker = GrantBroker(signing_key=generate_signing_key(), store=grants)
        issued = broker.mint(
            subject="bob",
            segment="ops",
            methods=["GET"],
            paths=["/ops/"],
            reason="one shot",
            requested_by="bob",
            duration=600,
        )
        first_worker = GrantVerifier(
            keys=broker.public_jwks(), store=grants, single_use=async_store
        )
        second_worker = GrantVerifier(
            keys=broker.public_jwks(), store=grants, single_use=async_store
        )
        request = make_request(grant=issued.token)

        assert first_worker.verify_cached(request, _context("ops")) is None
        first = await first_worker.verify(request, _context("ops"))
        second = await second_worker.verify(request, _context("ops"))

        assert "pass" == first.outcome
        assert "grant_replayed" == second.reason


class TestConfiguration:
    @pytest.mark.parametrize(
        ("options", "parameter"),
        [
            ({"namespace": "has space"}, "namespace"),
            ({"namespace": ""}, "namespace"),
            ({"url": "http://127.0.0.1:6379"}, "url"),
            ({"timeout": 0}, "timeout"),
            ({"connect_timeout": float("inf")}, "connect_timeout"),
            ({"max_connections": 0}, "max_connections"),
        ],
    )
    def test_invalid_redis_options(self, options: dict[str, Any], parameter: str) -> None:
        """Invalid Redis settings raise ConfigurationError naming the parameter."""
        from zerotrust.state import RedisStateStore

        with pytest.raises(ConfigurationError) as error:
            RedisStateStore(**options)

        assert parameter == error.value.parameter

    def test_invalid_failure_mode(self) -> None:
        """An unknown on_failure is rejected."""
        with pytest.raises(ConfigurationError, match="fail_closed"):
            RiskSignals(MemoryStateStore(), on_failure="open")  # type: ignore[arg-type]

    def test_missing_extra(self) -> None:
        """Importing the Redis store without redis-py raises MissingExtraError naming the extra."""
        code = (
            "import sys; sys.modules['redis'] = None\n"
            "try:\n"
            "    from zerotrust.state import RedisStateStore\n"
            "except ImportError as error:\n"
            "    print(type(error).__name__, error)\n"
        )
        result = subprocess.run(  # noqa: S603 -- a fixed argv
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
        )

        assert result.stdout.startswith("MissingExtraError")
        assert "zerotrust-middleware[redis]" in result.stdout


# Helpers ------------------------------------------------------------------------------------


def make_request(client_ip: str = "192.0.2.1", grant: str | None = None) -> Any:
    import ipaddress

    from starlette.datastructures import Headers

    from zerotrust.request import AccessRequest

    raw = [(b"x-zerotrust-grant", grant.encode())] if grant else []
    return AccessRequest(
        method="GET",
        path="/ops/restart",
        raw_path="/ops/restart",
        host="api.test",
        headers=Headers(raw=raw),
        client_ip=ipaddress.ip_address(client_ip),
        peer_ip=None,
        request_id="req-1",
        time=time.time(),
    )


def _context(segment: str = "api") -> Any:
    from zerotrust.verifiers.base import VerificationContext

    return VerificationContext(Segment(segment, paths=[f"/{segment}/"], public=True))


def _grant_json(grant_id: str) -> str:
    import orjson

    now = time.time()
    return orjson.dumps(
        {
            "grant_id": grant_id,
            "subject": "bob",
            "segment": "ops",
            "methods": ["GET"],
            "paths": ["/ops/"],
            "not_before": now,
            "expires_at": now + 600,
            "reason": "fix",
            "requested_by": "bob",
            "approved_by": None,
            "created_at": now,
            "revoked_at": None,
            "revoked_by": None,
            "pending": False,
            "issued_at": now,
            "revocation_reason": None,
            "reaped_at": None,
        }
    ).decode()
