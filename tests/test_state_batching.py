# SPDX-License-Identifier: Apache-2.0
"""How the Redis store merges the reads of concurrent requests into few commands."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
from redis_helpers import REDIS_URL, delete_namespace, new_namespace, redis_or_skip

from zerotrust.state import StateUnavailableError


@pytest.fixture(name="namespace")
def fixture_namespace() -> Iterator[str]:
    """A fresh key namespace, deleted after the test."""
    namespace = new_namespace()
    yield namespace
    delete_namespace(namespace)


def redis_store(namespace: str) -> Any:
    redis_or_skip()
    from zerotrust.state import RedisStateStore

    return RedisStateStore(REDIS_URL, namespace=namespace)


async def test_merged_reads_keep_order(namespace: str) -> None:
    """Flag and record reads of 32 requests share one round trip and each gets its own values."""
    store = redis_store(namespace)
    expires = time.time() + 60
    store.set_flag("subject", "user-7", "burst", "seven", expires)
    store.put_records("grant", {f"g{index}": f"value-{index}" for index in range(0, 32, 2)}, 60)
    await store.get_flags_many([("subject", "warm-up")])
    before = store.round_trips

    flags, records = await asyncio.gather(
        asyncio.gather(
            *(
                store.get_flags_many([("client_ip", f"ip-{index}"), ("subject", f"user-{index}")])
                for index in range(32)
            )
        ),
        asyncio.gather(*(store.get_records("grant", [f"g{index}"]) for index in range(32))),
    )
    trips = store.round_trips - before
    await store.aclose()
    store.close()

    assert 1 == trips
    assert [{}, {"burst": "seven"}] == flags[7]
    assert all([{}, {}] == found for index, found in enumerate(flags) if index != 7)
    assert [[f"value-{index}" if index % 2 == 0 else None] for index in range(32)] == records


async def test_wrong_type_fails_own_read(namespace: str) -> None:
    """A flag key holding another type fails the read that asked for it, not its neighbours."""
    store = redis_store(namespace)
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    client.set(store.key("flag", "subject", "broken"), "not a hash", px=60_000)
    client.close()

    broken, intact = await asyncio.gather(
        store.get_flags_many([("subject", "broken")]),
        store.get_flags_many([("subject", "intact")]),
        return_exceptions=True,
    )
    await store.aclose()
    store.close()

    assert isinstance(broken, StateUnavailableError)
    assert "HGETALL" in str(broken)
    assert [{}] == intact


async def test_missing_script_falls_back(namespace: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """When the server does not know the flag script, the read sends it along and succeeds."""
    from zerotrust.state import redis as redis_module

    store = redis_store(namespace)
    store.set_flag("subject", "alice", "burst", "one", time.time() + 60)
    # No script has this digest, so EVALSHA fails with NOSCRIPT as after a server restart.
    monkeypatch.setattr(redis_module, "_FLAGS_READ_SHA", "0" * 40)
    before = store.round_trips

    found = await store.get_flags_many([("subject", "alice")])
    trips = store.round_trips - before
    await store.aclose()
    store.close()

    assert [{"burst": "one"}] == found
    assert 2 == trips
    assert store.health.available


async def test_queue_limit_counts_flag_keys(namespace: str) -> None:
    """A flag read that would exceed max_pending fails at once without reaching Redis."""
    redis_or_skip()
    from zerotrust.state import RedisStateStore

    store = RedisStateStore(REDIS_URL, namespace=namespace, max_pending=3)
    before = store.round_trips

    with pytest.raises(StateUnavailableError, match="more than 3 Redis commands"):
        await store.get_flags_many([("subject", str(index)) for index in range(4)])
    found = await store.get_flags_many([("subject", str(index)) for index in range(3)])
    trips = store.round_trips - before
    await store.aclose()
    store.close()

    assert [{}, {}, {}] == found
    assert 1 == trips
