# SPDX-License-Identifier: Apache-2.0
"""Geo verification: allow or deny a request by the country and autonomous system of its client."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from ..exceptions import ConfigurationError
from ..geo.base import GeoBackend, GeoResult, LookupCache
from ..geo.countries import COUNTRY_CODES
from ..geo.internal import internal_network
from .base import Verdict, VerificationContext, Verifier, shared_verdict

if TYPE_CHECKING:
    from ..request import AccessRequest, IPAddress

__all__ = ["GeoVerifier"]

InternalPolicy: TypeAlias = Literal["allow", "deny", "lookup"]
UnknownPolicy: TypeAlias = Literal["allow", "deny"]

logger = logging.getLogger("zerotrust.verifiers.geo")

_MAX_ASN = 2**32 - 1  # AS numbers are 32-bit (RFC 6793)
_MAX_DETAIL = 200


class GeoVerifier(Verifier):
    """
    Allow or deny a request by the country and AS number of its client address.

    The client address is `AccessRequest.client_ip`, already resolved through the trusted
    proxies. Deny-lists win over allow-lists, and the deny-lists are checked before anything
    else, so an address in a denied country or AS is denied even when other data is missing.

    Args:
        allow_countries: ISO 3166-1 alpha-2 codes (``DE``, any case) the client must be in.
        deny_countries: Country codes that are always denied.
        allow_asns: AS numbers (``3320`` or ``"AS3320"``) the client must be in.
        deny_asns: AS numbers that are always denied.
        internal: What to do with an address that is not globally routable, such as a private,
            loopback, link-local, CGNAT, multicast or documentation address (the ranges are in
            `zerotrust.geo.INTERNAL_NETWORKS`). ``deny`` (the default) denies it and ``allow``
            passes it, both without a lookup. ``lookup`` treats it like any other address, for
            a database that maps your own networks.
        unknown: What to do when the database has no data for the address, or lacks the
            country or AS number a rule needs: ``deny`` (the default) or ``allow``.
        backend: The `GeoBackend` to look up addresses in; `GeoIP2FastBackend` by default.
        cache_size: Maximum number of lookup results kept in an LRU cache, and of verdicts
            kept per address; 0 disables both.

    .. warning::
       With ``unknown="allow"``, a deny-list only denies addresses the database knows.

    Raises:
        ConfigurationError: for an invalid country code or AS number, an empty list, an
            unknown ``internal`` or ``unknown`` value, or a rule the backend has no data for
            (ASN rules with `GeoIP2FastBackend`).
        MissingExtraError: if the default backend is used and ``geoip2fast`` is not installed.

    Reason codes: ``client_ip_unknown``, ``internal_address_denied``, ``geo_lookup_failed``,
    ``country_denied``, ``asn_denied``, ``geo_unknown``, ``country_not_allowed``,
    ``asn_not_allowed``.

    .. versionadded:: 0.2.0
    """

    name = "geo"
    kind = "context"

    def __init__(
        self,
        *,
        allow_countries: str | Iterable[str] | None = None,
        deny_countries: str | Iterable[str] | None = None,
        allow_asns: int | str | Iterable[int | str] | None = None,
        deny_asns: int | str | Iterable[int | str] | None = None,
        internal: InternalPolicy = "deny",
        unknown: UnknownPolicy = "deny",
        backend: GeoBackend | None = None,
        cache_size: int = 10_000,
        name: str | None = None,
        timeout: float = 2.0,
        required: bool = True,
    ) -> None:
        super().__init__(name=name, timeout=timeout, required=required)
        if internal not in ("allow", "deny", "lookup"):
            message = f"internal must be 'allow', 'deny' or 'lookup', not {internal!r}"
            raise ConfigurationError(message, parameter="internal", value=internal)
        if unknown not in ("allow", "deny"):
            message = f"unknown must be 'allow' or 'deny', not {unknown!r}"
            raise ConfigurationError(message, parameter="unknown", value=unknown)
        if backend is None:
            from ..geo.geoip2fast_backend import GeoIP2FastBackend

            backend = GeoIP2FastBackend()
        elif not isinstance(backend, GeoBackend):
            message = f"backend must be a GeoBackend instance, not {type(backend).__name__}"
            raise ConfigurationError(message, parameter="backend", value=backend)

        self.allow_countries = _parse_countries(allow_countries, "allow_countries")
        self.deny_countries = _parse_countries(deny_countries, "deny_countries")
        self.allow_asns = _parse_asns(allow_asns, "allow_asns")
        self.deny_asns = _parse_asns(deny_asns, "deny_asns")
        self._needs_country = self.allow_countries is not None or self.deny_countries is not None
        self._needs_asn = self.allow_asns is not None or self.deny_asns is not None
        if self._needs_country and not backend.provides_country:
            message = f"country rules need a backend with country data, and {backend!r} has none"
            raise ConfigurationError(message, parameter="backend", value=backend)
        if self._needs_asn and not backend.provides_asn:
            message = (
                f"ASN rules need a backend with AS numbers, and {backend!r} has none; "
                "use MaxMindBackend(asn_db=...) with a GeoLite2 ASN database"
            )
            raise ConfigurationError(message, parameter="backend", value=backend)
        if isinstance(cache_size, int) and not isinstance(cache_size, bool) and cache_size == 0:
            self.cache = None
        else:
            self.cache = LookupCache(cache_size)
        # The verdict on an address depends only on the lookup result and the rules, so the
        # verdicts of cached lookups are kept too, at most cache_size of them. Reads and writes
        # of a dict are atomic in CPython, so concurrent requests need no lock here.
        self._verdicts: dict[tuple[int, int], Verdict] | None = None if self.cache is None else {}
        self._max_verdicts = cache_size

        self.internal: InternalPolicy = internal
        self.unknown: UnknownPolicy = unknown
        self.backend = backend

    def preload(self) -> None:
        """Load the backend's data now, such as at application start-up. Blocking."""
        self.backend.load()

    def verify_cached(self, request: AccessRequest, context: VerificationContext) -> Verdict | None:
        # Until the data is loaded, verify() loads it in a thread under the engine's timeout.
        if not self.backend.ready:
            return None
        return self.check(request.client_ip)

    async def verify(self, request: AccessRequest, context: VerificationContext) -> Verdict:
        if not self.backend.ready:
            try:
                await asyncio.to_thread(self.backend.load)
            except Exception as error:  # noqa: BLE001 -- a broken database denies, never allows
                return _lookup_failed(self.name, error)

        return self.check(request.client_ip)

    def check(self, address: IPAddress | None) -> Verdict:
        """Judge one client address; the backend's data must be loaded or loadable on the spot."""
        if address is None:
            return Verdict.failed("client_ip_unknown", "the client address is unknown")
        verdicts = self._verdicts
        if verdicts is None:
            return self._judge(address)
        key = (address.version, int(address))
        verdict = verdicts.get(key)
        if verdict is None:
            verdict = self._judge(address)
            if verdict.reason != "geo_lookup_failed":
                # A failed lookup is tried again on the next request, as the lookup cache does.
                if len(verdicts) >= self._max_verdicts:
                    verdicts.clear()
                verdict = shared_verdict(verdict)
                verdicts[key] = verdict
        return verdict

    def _judge(self, address: IPAddress) -> Verdict:
        if address.version == 6 and address.ipv4_mapped is not None:
            address = address.ipv4_mapped

        if self.internal != "lookup":
            network = internal_network(address)
            if network is not None:
                if self.internal == "allow":
                    return Verdict.passed(region="internal")
                detail = f"{address} is in the non-global network {network}"
                return Verdict.failed("internal_address_denied", detail, region="internal")

        result = self._lookup(address)
        if isinstance(result, Verdict):
            return result

        return self._apply_rules(result)

    def _lookup(self, address: IPAddress) -> GeoResult | Verdict | None:
        if self.cache is not None:
            hit, cached = self.cache.get(address)
            if hit:
                return cached

        try:
            result = self.backend.lookup(address)
        except Exception as error:  # noqa: BLE001 -- a broken database denies, never allows
            return _lookup_failed(self.name, error)
        if result is not None and not isinstance(result, GeoResult):
            error = TypeError(f"backend returned {type(result).__name__}, not a GeoResult")
            return _lookup_failed(self.name, error)

        if self.cache is not None:
            self.cache.put(address, result)

        return result

    def _apply_rules(self, result: GeoResult | None) -> Verdict:
        raw_country = result.country if result is not None else None
        country = raw_country if raw_country in COUNTRY_CODES else None
        asn = result.asn if result is not None else None
        facts: dict[str, Any] = {}
        if country is not None:
            facts["country"] = country
        if asn is not None:
            facts["asn"] = asn
        if result is not None and result.as_name:
            facts["as_name"] = result.as_name

        if self.deny_countries is not None and country in self.deny_countries:
            return Verdict.failed("country_denied", f"country {country} is denied", **facts)
        if self.deny_asns is not None and asn in self.deny_asns:
            return Verdict.failed("asn_denied", f"AS{asn} is denied", **facts)

        missing = _missing_data(result, country, raw_country, self._needs_country, self._needs_asn)
        if missing is not None:
            if self.unknown == "allow":
                return Verdict.passed(region="unknown", **facts)
            return Verdict.failed("geo_unknown", missing, **facts)

        if self.allow_countries is not None and country not in self.allow_countries:
            detail = f"country {country} is not in allow_countries"
            return Verdict.failed("country_not_allowed", detail, **facts)
        if self.allow_asns is not None and asn not in self.allow_asns:
            return Verdict.failed("asn_not_allowed", f"AS{asn} is not in allow_asns", **facts)

        return Verdict.passed(**facts)


def _missing_data(
    result: GeoResult | None,
    country: str | None,
    raw_country: str | None,
    needs_country: bool,
    needs_asn: bool,
) -> str | None:
    """Describe the data a rule needs and the lookup lacks, or return ``None``."""
    if result is None:
        return "the geo database has no data for the address"
    if needs_country and country is None:
        if raw_country is None:
            return "the geo database has no country for the address"
        # Databases use EU or AP for networks known only by continent.
        return f"the geo database returned {raw_country[:8]!r}, which is not a country code"
    if needs_asn and result.asn is None:
        return "the geo database has no AS number for the address"

    return None


def _lookup_failed(verifier: str, error: Exception) -> Verdict:
    logger.warning(
        "geo lookup in verifier %r failed with %s; denying the request",
        verifier,
        type(error).__name__,
        exc_info=error,
        extra={"verifier": verifier},
    )
    detail = f"{type(error).__name__}: {error}"[:_MAX_DETAIL]

    return Verdict.failed("geo_lookup_failed", detail)


def _parse_countries(value: str | Iterable[str] | None, parameter: str) -> frozenset[str] | None:
    if value is None:
        return None
    items = [value] if isinstance(value, str) else list(value)
    if not items:
        message = f"{parameter} is empty; pass None to have no {parameter} rule"
        raise ConfigurationError(message, parameter=parameter, value=value)

    codes = set()
    for item in items:
        code = item.upper() if isinstance(item, str) else item
        if code not in COUNTRY_CODES:
            hint = " (the code for the United Kingdom is GB)" if code == "UK" else ""
            message = (
                f"{parameter} contains {item!r}, which is not an ISO 3166-1 alpha-2 country "
                f"code such as 'DE'{hint}"
            )
            raise ConfigurationError(message, parameter=parameter, value=item)
        codes.add(code)

    return frozenset(codes)


def _parse_asns(
    value: int | str | Iterable[int | str] | None, parameter: str
) -> frozenset[int] | None:
    if value is None:
        return None
    items = [value] if isinstance(value, int | str) else list(value)
    if not items:
        message = f"{parameter} is empty; pass None to have no {parameter} rule"
        raise ConfigurationError(message, parameter=parameter, value=value)

    numbers = set()
    for item in items:
        number = _parse_asn(item)
        if number is None:
            message = (
                f"{parameter} contains {item!r}, which is not an AS number from 1 to "
                f"{_MAX_ASN} such as 3320 or 'AS3320'"
            )
            raise ConfigurationError(message, parameter=parameter, value=item)
        numbers.add(number)

    return frozenset(numbers)


def _parse_asn(item: object) -> int | None:
    if isinstance(item, str):
        text = item.strip()
        if text[:2].upper() == "AS":
            text = text[2:]
        if not text.isascii() or not text.isdigit():
            return None
        item = int(text)
    if isinstance(item, bool) or not isinstance(item, int) or not 1 <= item <= _MAX_ASN:
        return None

    return item
