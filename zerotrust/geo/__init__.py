# SPDX-License-Identifier: Apache-2.0
"""Geo lookup backends for `GeoVerifier`; subclass `GeoBackend` to add one."""

from __future__ import annotations

from .base import GeoBackend, GeoResult, LookupCache
from .countries import COUNTRY_CODES
from .geoip2fast_backend import GeoIP2FastBackend
from .internal import INTERNAL_NETWORKS, internal_network
from .maxmind_backend import MaxMindBackend

__all__ = [
    "COUNTRY_CODES",
    "INTERNAL_NETWORKS",
    "GeoBackend",
    "GeoIP2FastBackend",
    "GeoResult",
    "LookupCache",
    "MaxMindBackend",
    "internal_network",
]
