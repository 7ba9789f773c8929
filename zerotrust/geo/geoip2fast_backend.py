# SPDX-License-Identifier: Apache-2.0
"""A geo backend on the data bundled with the ``geoip2fast`` package, loaded once per process."""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import threading
import time
from typing import TYPE_CHECKING, Any

from ..exceptions import MissingExtraError
from .base import GeoBackend, GeoResult

if TYPE_CHECKING:
    from ..request import IPAddress

__all__ = ["GeoIP2FastBackend"]

# Country and AS name for IPv4 and IPv6. The package ships no AS numbers, only names.
DATA_FILE = "geoip2fast-asn-ipv6.dat.gz"

# geoip2fast marks lookups that failed inside the library with this country name.
_INTERNAL_ERROR = "<internal lookup error>"


class _SharedData:
    """The process-wide geoip2fast instance, created on first use under a lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.instance: Any = None
        self.load_seconds: float | None = None

    def load(self) -> Any:
        instance = self.instance
        if instance is not None:
            return instance

        with self._lock:
            if self.instance is None:
                started = time.perf_counter()
                self.instance = _open_bundled_data()
                self.load_seconds = time.perf_counter() - started

        return self.instance


# geoip2fast keeps the loaded tables in module globals, so a second GeoIP2Fast object would
# replace the first one's data. One shared instance per process avoids that.
_SHARED = _SharedData()


class GeoIP2FastBackend(GeoBackend):
    """
    Look up countries and AS names in the data bundled with ``geoip2fast``, offline.

    The data (GeoLite2 Country and ASN, IPv4 and IPv6, as packaged by geoip2fast) is loaded on
    the first lookup and then shared by every instance in the process. Loading takes about
    0.2 s and 110 MiB of memory; call `load` at start-up to keep that off the first request.

    geoip2fast data has AS names but no AS numbers, so ASN rules need `MaxMindBackend`.

    Raises:
        MissingExtraError: if ``geoip2fast`` is not installed.

    .. versionadded:: 0.2.0
    """

    provides_country = True
    provides_asn = False

    def __init__(self) -> None:
        if importlib.util.find_spec("geoip2fast") is None:
            raise MissingExtraError("GeoVerifier", "geo")

    @property
    def ready(self) -> bool:
        return _SHARED.instance is not None

    @property
    def load_seconds(self) -> float | None:
        """Seconds the process took to load the data, or ``None`` before it is loaded."""
        return _SHARED.load_seconds

    def load(self) -> None:
        _SHARED.load()

    def lookup(self, address: IPAddress) -> GeoResult | None:
        detail = _SHARED.load().lookup(str(address))
        if detail.country_name == _INTERNAL_ERROR:
            message = f"geoip2fast failed to look up {address}"
            raise RuntimeError(message)
        # Reserved ranges come back with is_private set and "--" for a network not found.
        if detail.is_private or not detail.country_code or detail.country_code == "--":
            return None

        as_name = detail.asn_name or None
        # NOTE: geoip2fast 1.2.2 checks the end of an AS range with the IPv6 range size when the
        # data includes IPv6, so an IPv4 address between two AS ranges gets the name of the one
        # below it. Keeping only names whose range contains the address undoes that.
        if as_name is not None and address not in ipaddress.ip_network(detail.asn_cidr):
            as_name = None

        return GeoResult(country=detail.country_code, as_name=as_name)


def _open_bundled_data() -> Any:
    # geoip2fast sets PYTHONWARNINGS and PYTHONIOENCODING in os.environ when imported, which
    # child processes would inherit; put back what was there before.
    saved = {name: os.environ.get(name) for name in ("PYTHONWARNINGS", "PYTHONIOENCODING")}
    try:
        import geoip2fast  # type: ignore[import-untyped]
    except ImportError:
        raise MissingExtraError("GeoVerifier", "geo") from None
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

    # An absolute path, because for a bare file name geoip2fast looks in the working directory
    # first, and it unpickles whatever file it finds there.
    path = os.path.join(os.path.dirname(geoip2fast.__file__), DATA_FILE)

    # NOTE: geoip2fast 1.2.2 runs `ps` twice while loading, to log its own memory use.
    return geoip2fast.GeoIP2Fast(geoip2fast_data_file=path)
