# SPDX-License-Identifier: Apache-2.0
"""Helpers for the tests that use the Redis server at 127.0.0.1:6379."""

from __future__ import annotations

import os
import socket
import uuid

import pytest

REDIS_URL = "redis://127.0.0.1:6379/0"


def redis_or_skip() -> None:
    """Skip without a Redis server at 127.0.0.1:6379, except under CI=true, where it fails."""
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=2):
            pass
    except OSError as error:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Redis at 127.0.0.1:6379 is unreachable in CI: {error}")
        pytest.skip(f"Redis at 127.0.0.1:6379 is unreachable: {error}")


def new_namespace() -> str:
    """Return a key namespace no other test run uses."""
    return f"zt-test-{uuid.uuid4().hex[:12]}"


def delete_namespace(namespace: str) -> list[str]:
    """Delete every key of ``namespace`` and return the keys with their TTLs checked."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_timeout=5, decode_responses=True)
    try:
        keys = list(client.scan_iter(match=f"{namespace}:*", count=500))
        if keys:
            client.delete(*keys)
    finally:
        client.close()
    return keys


def free_port() -> int:
    """Return a loopback port that nothing listens on at the moment."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port
