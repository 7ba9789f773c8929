# SPDX-License-Identifier: Apache-2.0
"""A geo backend on MaxMind DB (``.mmdb``) files, such as GeoLite2 Country and GeoLite2 ASN."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..exceptions import ConfigurationError, MissingExtraError
from .base import GeoBackend, GeoResult

if TYPE_CHECKING:
    from ..request import IPAddress

__all__ = ["MaxMindBackend"]


class MaxMindBackend(GeoBackend):
    """
    Look up countries and autonomous systems in MaxMind DB files.

    Each database is opened once, at construction, in ``MODE_AUTO`` (the C extension with a
    memory map when available), so a missing or corrupt file fails at start-up. A database that
    has both layouts, such as GeoIP2 Enterprise, can be passed as both arguments.

    Args:
        country_db: Path of a database with GeoIP2 Country records
            (``{"country": {"iso_code": "DE"}}``): GeoLite2/GeoIP2 Country, City or Enterprise.
        asn_db: Path of a database with GeoIP2 ASN records (``autonomous_system_number`` and
            ``autonomous_system_organization``): GeoLite2/GeoIP2 ASN or ISP.

    Raises:
        ConfigurationError: if neither path is given, or a file cannot be opened as a MaxMind DB.
        MissingExtraError: if ``maxminddb`` is not installed.

    .. versionadded:: 0.2.0
    """

    def __init__(
        self,
        country_db: str | os.PathLike[str] | None = None,
        asn_db: str | os.PathLike[str] | None = None,
    ) -> None:
        try:
            import maxminddb
        except ImportError:
            raise MissingExtraError("GeoVerifier", "geo") from None
        if country_db is None and asn_db is None:
            message = "MaxMindBackend needs country_db=, asn_db= or both: paths of .mmdb files"
            raise ConfigurationError(message, parameter="country_db", value=None)

        self.country_db = os.fspath(country_db) if country_db is not None else None
        self.asn_db = os.fspath(asn_db) if asn_db is not None else None
        self._country = _open(maxminddb, self.country_db, "country_db")
        if self.asn_db is not None and self.asn_db == self.country_db:
            self._asn = self._country
        else:
            self._asn = _open(maxminddb, self.asn_db, "asn_db")
        self.provides_country = self._country is not None
        self.provides_asn = self._asn is not None
        # An IPv4-only database raises ValueError for an IPv6 address; it simply has no data.
        self._country_has_ipv6 = _has_ipv6(self._country)
        self._asn_has_ipv6 = _has_ipv6(self._asn)

    def lookup(self, address: IPAddress) -> GeoResult | None:
        country = None
        if self._country is not None and (address.version == 4 or self._country_has_ipv6):
            country = _country_code(self._country.get(address))
        asn = as_name = None
        if self._asn is not None and (address.version == 4 or self._asn_has_ipv6):
            asn, as_name = _autonomous_system(self._asn.get(address))
        if country is None and asn is None and as_name is None:
            return None

        return GeoResult(country=country, asn=asn, as_name=as_name)

    def close(self) -> None:
        """Close the database files; lookups fail afterwards."""
        for reader in {id(r): r for r in (self._country, self._asn) if r is not None}.values():
            reader.close()

    def __repr__(self) -> str:
        return f"<MaxMindBackend country_db={self.country_db!r} asn_db={self.asn_db!r}>"


def _open(maxminddb: Any, path: str | None, parameter: str) -> Any:
    if path is None:
        return None
    try:
        return maxminddb.open_database(path, maxminddb.MODE_AUTO)
    except OSError as error:
        message = f"{parameter} {path!r} cannot be opened: {error}"
        raise ConfigurationError(message, parameter=parameter, value=path) from error
    except (maxminddb.InvalidDatabaseError, ValueError) as error:
        message = f"{parameter} {path!r} is not a valid MaxMind DB: {error}"
        raise ConfigurationError(message, parameter=parameter, value=path) from error


def _has_ipv6(reader: Any) -> bool:
    return reader is not None and reader.metadata().ip_version == 6


def _country_code(record: Any) -> str | None:
    if record is None:
        return None
    country = _mapping(record, "record").get("country")
    if country is None:
        return None
    code = _mapping(country, "country").get("iso_code")
    if code is None:
        return None
    if not isinstance(code, str):
        message = f"country.iso_code is {type(code).__name__}, not a string"
        raise TypeError(message)

    return code


def _autonomous_system(record: Any) -> tuple[int | None, str | None]:
    if record is None:
        return None, None
    record = _mapping(record, "record")
    number = record.get("autonomous_system_number")
    name = record.get("autonomous_system_organization")
    if number is not None and (isinstance(number, bool) or not isinstance(number, int)):
        message = f"autonomous_system_number is {type(number).__name__}, not an integer"
        raise TypeError(message)
    if name is not None and not isinstance(name, str):
        message = f"autonomous_system_organization is {type(name).__name__}, not a string"
        raise TypeError(message)

    return number, name or None


def _mapping(value: Any, field: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        message = f"{field} is {type(value).__name__}, not a map"
        raise TypeError(message)
    return value
