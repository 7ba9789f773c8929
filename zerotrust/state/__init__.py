# SPDX-License-Identifier: Apache-2.0
"""Shared state for every worker: risk flags, detector windows, grants, devices, replay marks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import (
    FailureMode,
    StateHealth,
    StateStore,
    StateUnavailableError,
    check_failure_mode,
    key_digest,
)
from .memory import MemoryStateStore

if TYPE_CHECKING:
    from .redis import RedisStateStore

__all__ = [
    "FailureMode",
    "MemoryStateStore",
    "RedisStateStore",
    "StateHealth",
    "StateStore",
    "StateUnavailableError",
    "check_failure_mode",
    "key_digest",
]


def __getattr__(name: str) -> Any:
    # The Redis store imports redis-py, an optional extra, so it loads on first use only.
    if name == "RedisStateStore":
        from .redis import RedisStateStore

        return RedisStateStore
    message = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(message)
