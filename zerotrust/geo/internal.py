# SPDX-License-Identifier: Apache-2.0
"""The address ranges that are not globally routable, so no geo database can place them."""

from __future__ import annotations

import bisect
import ipaddress
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..request import IPAddress

__all__ = ["INTERNAL_NETWORKS", "internal_network"]

# From the IANA IPv4 and IPv6 Special-Purpose Address Registries (entries not globally
# reachable), plus multicast and the reserved 240.0.0.0/4. A fixed list rather than
# ipaddress.is_global, whose tables differ between Python releases and which costs
# several microseconds per call on Python 3.11.
INTERNAL_NETWORKS: tuple[str, ...] = (
    "0.0.0.0/8",  # "this network"
    "10.0.0.0/8",  # private (RFC 1918)
    "100.64.0.0/10",  # shared address space, carrier-grade NAT (RFC 6598)
    "127.0.0.0/8",  # loopback
    "169.254.0.0/16",  # link-local
    "172.16.0.0/12",  # private (RFC 1918)
    "192.0.0.0/24",  # IETF protocol assignments
    "192.0.2.0/24",  # documentation (TEST-NET-1)
    "192.168.0.0/16",  # private (RFC 1918)
    "198.18.0.0/15",  # benchmarking
    "198.51.100.0/24",  # documentation (TEST-NET-2)
    "203.0.113.0/24",  # documentation (TEST-NET-3)
    "224.0.0.0/4",  # multicast
    "240.0.0.0/4",  # reserved, including the limited broadcast address
    "::/127",  # unspecified and loopback
    "::ffff:0:0/96",  # IPv4-mapped; the verifier looks these up as IPv4
    "64:ff9b:1::/48",  # local-use IPv4/IPv6 translation
    "100::/64",  # discard-only
    "2001::/23",  # IETF protocol assignments
    "2001:db8::/32",  # documentation
    "3fff::/20",  # documentation (RFC 9637)
    "5f00::/16",  # segment routing SIDs (RFC 9602)
    "fc00::/7",  # unique local
    "fe80::/10",  # link-local
    "fec0::/10",  # deprecated site-local
    "ff00::/8",  # multicast
)


class _RangeTable:
    """Sorted, non-overlapping integer ranges of one address family, searched by bisection."""

    def __init__(self, networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> None:
        networks = sorted(networks, key=lambda network: int(network.network_address))
        self._starts = [int(network.network_address) for network in networks]
        self._ends = [int(network.broadcast_address) for network in networks]
        self._labels = [str(network) for network in networks]

    def find(self, value: int) -> str | None:
        index = bisect.bisect_right(self._starts, value) - 1
        if index >= 0 and value <= self._ends[index]:
            return self._labels[index]
        return None


_PARSED = [ipaddress.ip_network(cidr) for cidr in INTERNAL_NETWORKS]
_IPV4 = _RangeTable([network for network in _PARSED if network.version == 4])
_IPV6 = _RangeTable([network for network in _PARSED if network.version == 6])


def internal_network(address: IPAddress) -> str | None:
    """Return the non-global network containing ``address``, such as ``10.0.0.0/8``, or ``None``."""
    table = _IPV4 if address.version == 4 else _IPV6
    return table.find(int(address))
