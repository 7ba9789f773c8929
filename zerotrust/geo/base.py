# SPDX-License-Identifier: Apache-2.0
"""The geo lookup contract: a backend maps an IP address to a country and autonomous system."""

from __future__ import annotations

import abc
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cachetools import LRUCache

from ..exceptions import ConfigurationError

if TYPE_CHECKING:
    from ..request import IPAddress

__all__ = ["GeoBackend", "GeoResult", "LookupCache"]


@dataclass(frozen=True, slots=True)
class GeoResult:
    """
    The country and autonomous system that a geo database stores for one IP address.

    Attributes:
        country: The country code as the database stores it, normally ISO 3166-1 alpha-2
            (``DE``); ``None`` when the database has no country for the address.
        asn: The autonomous system number, such as ``3320``; ``None`` when unknown.
        as_name: The autonomous system's organisation name, such as ``GOOGLE``; ``None`` when
            unknown.

    .. versionadded:: 0.2.0
    """

    country: str | None = None
    asn: int | None = None
    as_name: str | None = None


class GeoBackend(abc.ABC):
    """
    Base class of geo lookup backends; subclass it to plug in another database.

    A backend is shared by concurrent requests, so `lookup` must be thread-safe and keep no
    per-request state. Lookups run on the event loop, so they must be CPU-only and fast: no I/O
    beyond a memory-mapped file.

    .. versionadded:: 0.2.0
    """

    provides_country: bool = True
    """Whether lookups can return a country, so country rules can be enforced."""
    provides_asn: bool = False
    """Whether lookups can return an AS number, so ASN rules can be enforced."""

    @property
    def ready(self) -> bool:
        """Whether `lookup` can run without loading data first."""
        return True

    def load(self) -> None:  # noqa: B027 -- optional hook, most backends load in __init__
        """
        Load the data now; a no-op when it is already loaded.

        Blocking and thread-safe. The verifier calls it in a worker thread before the first
        lookup when `ready` is ``False``.
        """

    @abc.abstractmethod
    def lookup(self, address: IPAddress) -> GeoResult | None:
        """
        Look up one address. The verifier passes IPv4-mapped IPv6 addresses in their IPv4 form.

        Returns:
            A `GeoResult`, or ``None`` when the database has no data for the address.

        Raises:
            Exception: Any error fails the request with ``geo_lookup_failed``.
        """


class LookupCache:
    """
    A bounded, thread-safe LRU cache of lookup results keyed by IP address.

    Misses (``None``) are cached too. Errors are not, so a failing lookup is retried on the
    next request.
    """

    def __init__(self, maxsize: int) -> None:
        if isinstance(maxsize, bool) or not isinstance(maxsize, int) or maxsize < 1:
            message = f"cache_size must be a positive integer or 0 to disable, not {maxsize!r}"
            raise ConfigurationError(message, parameter="cache_size", value=maxsize)

        # Keyed by (version, integer): hashing an ipaddress object formats it as hex first.
        self._cache: LRUCache[tuple[int, int], GeoResult | None] = LRUCache(maxsize=maxsize)
        # cachetools caches are not thread-safe, and a read reorders the LRU list.
        self._lock = threading.Lock()

    def get(self, address: IPAddress) -> tuple[bool, GeoResult | None]:
        """Return ``(True, result)`` on a hit and ``(False, None)`` on a miss."""
        key = (address.version, int(address))
        with self._lock:
            try:
                return True, self._cache[key]
            except KeyError:
                return False, None

    def put(self, address: IPAddress, result: GeoResult | None) -> None:
        key = (address.version, int(address))
        with self._lock:
            self._cache[key] = result

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()

    def __len__(self) -> int:
        return len(self._cache)
