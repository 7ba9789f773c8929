# SPDX-License-Identifier: Apache-2.0
"""Network verification: allow or deny a request by the CIDR network its client address is in."""

from __future__ import annotations

import bisect
import dataclasses
import ipaddress
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeAlias

from ..exceptions import ConfigurationError
from .base import Verdict, VerificationContext, Verifier

if TYPE_CHECKING:
    from ..request import AccessRequest, IPAddress

__all__ = ["NetworkSet", "NetworkVerifier"]

Network: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network
NetworkEntry: TypeAlias = str | Network
NetworkList: TypeAlias = NetworkEntry | Iterable[NetworkEntry] | Mapping[str, Any]

# IPv4 clients of a dual-stack socket appear as ::ffff:a.b.c.d (RFC 4291, section 2.5.5.2).
# Such addresses, and configured networks inside this range, are compared in IPv4 form.
_IPV4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")

Label: TypeAlias = tuple[str, str]
"""The name of a network and its CIDR text, as recorded in facts."""


class NetworkSet:
    """
    An immutable set of named CIDR networks that finds the network containing an address.

    The networks are flattened at construction into sorted, disjoint address ranges, each
    labelled with the most specific network that covers it, so a lookup is one binary search
    whatever the number of networks.

    Args:
        networks: CIDR strings or addresses, each named by its own CIDR text, or a mapping of
            a name (such as ``office``) to one CIDR string or a list of them.
        strict: When ``True`` (the default), a network with host bits set, such as
            ``10.1.2.3/8``, raises `ConfigurationError`. When ``False``, the host bits are
            cleared (``10.0.0.0/8``).
        parameter: The parameter name that error messages quote.

    Raises:
        ConfigurationError: if an entry is not a valid network, has host bits set (with
            ``strict=True``) or a zone index (``fe80::1%eth0``), or one network is listed under
            two names.

    .. versionadded:: 0.2.0
    """

    def __init__(
        self, networks: NetworkList = (), *, strict: bool = True, parameter: str = "networks"
    ) -> None:
        named = _parse_networks(networks, strict=strict, parameter=parameter)

        self.networks: tuple[tuple[str, Network], ...] = tuple(
            (label[0], network) for network, label in named.items()
        )
        self._ipv4 = _RangeTable([(n, label) for n, label in named.items() if n.version == 4])
        self._ipv6 = _RangeTable([(n, label) for n, label in named.items() if n.version == 6])

    @property
    def labels(self) -> tuple[Label, ...]:
        """The (name, CIDR) label of every network, in the order given."""
        return tuple((name, str(network)) for name, network in self.networks)

    def lookup(self, address: IPAddress) -> Label | None:
        """
        Return the name and CIDR of the most specific network containing ``address``.

        An IPv4-mapped IPv6 address (``::ffff:10.0.0.1``) is looked up as its IPv4 address.
        Returns ``None`` when no network contains it.
        """
        if address.version == 6:
            mapped = address.ipv4_mapped
            if mapped is None:
                return self._ipv6.lookup(int(address))
            address = mapped

        return self._ipv4.lookup(int(address))

    def __contains__(self, address: object) -> bool:
        if not isinstance(address, ipaddress.IPv4Address | ipaddress.IPv6Address):
            return False
        return self.lookup(address) is not None

    def __len__(self) -> int:
        return len(self.networks)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def __repr__(self) -> str:
        return f"<NetworkSet networks={len(self.networks)}>"


class NetworkVerifier(Verifier):
    """
    Allow or deny requests by the network of the client address.

    The client address is `AccessRequest.client_ip`, already resolved through the middleware's
    trusted proxies. A client in a ``deny`` network fails even when an ``allow`` network also
    contains it. With an ``allow`` list, a client outside every allowed network fails; with
    only a ``deny`` list, every other client passes. When networks nest, the most specific one
    names the match.

    Args:
        allow: Networks whose clients may pass: CIDR strings, or a mapping of a name to CIDR
            strings, such as ``{"office": ["192.0.2.0/24"], "vpn": "10.8.0.0/16"}``. The name
            appears in facts and details instead of the CIDR.
        deny: Networks whose clients always fail, in the same forms.
        strict: Reject a CIDR with host bits set (the default), or clear the host bits.

    Raises:
        ConfigurationError: if both lists are empty, or an entry is invalid (see `NetworkSet`).

    Reason codes: ``client_ip_unknown``, ``network_denied``, ``network_not_allowed``.

    Facts: ``network`` (the name, or the CIDR of an unnamed network) and ``network_cidr``, for
    the allowed network that matched.

    .. versionadded:: 0.2.0
    """

    name = "network"
    kind = "context"

    def __init__(
        self,
        allow: NetworkList = (),
        deny: NetworkList = (),
        *,
        strict: bool = True,
        name: str | None = None,
        timeout: float = 2.0,
        required: bool = True,
    ) -> None:
        super().__init__(name=name, timeout=timeout, required=required)
        if not isinstance(strict, bool):
            message = f"strict must be True or False, not {strict!r}"
            raise ConfigurationError(message, parameter="strict", value=strict)

        self.allow = NetworkSet(allow, strict=strict, parameter="allow")
        self.deny = NetworkSet(deny, strict=strict, parameter="deny")
        if not self.allow and not self.deny:
            message = "NetworkVerifier needs at least one network in allow= or deny="
            raise ConfigurationError(message, parameter="allow", value=allow)

        # Every possible verdict is built here rather than per request. One verdict object then
        # serves many requests, so its facts are made read-only.
        self._denied = {label: _read_only(_denied_verdict(label)) for label in self.deny.labels}
        self._allowed = {
            label: _read_only(Verdict.passed(network=label[0], network_cidr=label[1]))
            for label in self.allow.labels
        }
        self._unknown = Verdict.failed("client_ip_unknown", "the request has no client address")
        self._not_allowed = Verdict.failed("network_not_allowed", "client is in no allowed network")
        self._passed = Verdict.passed()

    def verify_cached(self, request: AccessRequest, context: VerificationContext) -> Verdict:
        address = request.client_ip
        if address is None:
            return self._unknown

        denied = self.deny.lookup(address)
        if denied is not None:
            return self._denied[denied]
        if not self.allow:
            return self._passed

        allowed = self.allow.lookup(address)
        if allowed is None:
            return self._not_allowed

        return self._allowed[allowed]

    async def verify(self, request: AccessRequest, context: VerificationContext) -> Verdict:
        return self.verify_cached(request, context)


def _denied_verdict(label: Label) -> Verdict:
    name, cidr = label
    where = repr(name) if name == cidr else f"{name!r} ({cidr})"
    detail = f"client is in denied network {where}"

    return Verdict.failed("network_denied", detail, network=name, network_cidr=cidr)


def _read_only(verdict: Verdict) -> Verdict:
    return dataclasses.replace(verdict, facts=MappingProxyType(dict(verdict.facts)))


class _RangeTable:
    """Disjoint, sorted integer ranges of one IP version, each with the label of its network."""

    def __init__(self, entries: list[tuple[Network, Label]]) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        self._labels: list[Label] = []

        # CIDR blocks either nest or are disjoint, so sorting by start and then by size (largest
        # first) visits each block after every block that contains it.
        spans = sorted(
            (
                (int(network.network_address), int(network.broadcast_address), label)
                for network, label in entries
            ),
            key=lambda span: (span[0], -span[1]),
        )
        enclosing: list[tuple[int, Label]] = []
        cursor = 0
        for first, last, label in spans:
            while enclosing and enclosing[-1][0] < first:
                end, outer = enclosing.pop()
                self._add(cursor, end, outer)
                cursor = end + 1
            if enclosing:
                self._add(cursor, first - 1, enclosing[-1][1])
            cursor = first
            enclosing.append((last, label))
        while enclosing:
            end, outer = enclosing.pop()
            self._add(cursor, end, outer)
            cursor = end + 1

    def _add(self, first: int, last: int, label: Label) -> None:
        if first <= last:
            self._starts.append(first)
            self._ends.append(last)
            self._labels.append(label)

    def lookup(self, value: int) -> Label | None:
        index = bisect.bisect_right(self._starts, value) - 1
        if index >= 0 and value <= self._ends[index]:
            return self._labels[index]
        return None


def _parse_networks(networks: NetworkList, *, strict: bool, parameter: str) -> dict[Network, Label]:
    """Parse every entry into a network mapped to its (name, CIDR) label."""
    pairs: list[tuple[str | None, object]] = []
    if isinstance(networks, str | ipaddress.IPv4Network | ipaddress.IPv6Network):
        pairs.append((None, networks))
    elif isinstance(networks, Mapping):
        for label, value in networks.items():
            if not isinstance(label, str) or not label.strip():
                message = f"{parameter} network name {label!r} must be a non-empty string"
                raise ConfigurationError(message, parameter=parameter, value=label)
            values = [value] if isinstance(value, str) else _as_list(value, parameter)
            if not values:
                message = f"{parameter} network {label!r} lists no CIDR: add one or remove the name"
                raise ConfigurationError(message, parameter=f"{parameter}.{label}", value=value)
            pairs.extend((label, entry) for entry in values)
    else:
        pairs.extend((None, entry) for entry in _as_list(networks, parameter))

    named: dict[Network, Label] = {}
    for label, entry in pairs:
        network = _parse_network(entry, strict=strict, parameter=parameter)
        cidr = str(network)
        previous = named.get(network)
        if previous is not None and previous[0] != (label or cidr):
            message = (
                f"{parameter} network {cidr!r} is listed under both {previous[0]!r} and "
                f"{label or cidr!r}: keep one name"
            )
            raise ConfigurationError(message, parameter=parameter, value=cidr)
        named[network] = (label or cidr, cidr)

    return named


def _as_list(value: object, parameter: str) -> list[object]:
    if isinstance(value, Iterable) and not isinstance(value, bytes | Mapping):
        return list(value)
    message = f"{parameter} must be CIDR strings or a mapping of names to CIDRs, not {value!r}"
    raise ConfigurationError(message, parameter=parameter, value=value)


def _parse_network(entry: object, *, strict: bool, parameter: str) -> Network:
    if isinstance(entry, ipaddress.IPv4Network | ipaddress.IPv6Network):
        network = entry
    elif isinstance(entry, str):
        text = entry.strip()
        try:
            network = ipaddress.ip_network(text, strict=True)
        except ValueError:
            network = _parse_loose(entry, text, strict=strict, parameter=parameter)
    else:
        message = f"{parameter} entry {entry!r} must be a CIDR string such as '192.0.2.0/24'"
        raise ConfigurationError(message, parameter=parameter, value=entry)

    if isinstance(network, ipaddress.IPv6Network):
        if network.network_address.scope_id is not None:
            message = f"{parameter} entry {entry!r} has a zone index: remove the '%...' part"
            raise ConfigurationError(message, parameter=parameter, value=entry)
        if network.subnet_of(_IPV4_MAPPED):
            # Compared in IPv4 form, like the IPv4-mapped client addresses.
            low_bits = int(network.network_address) & 0xFFFFFFFF
            return ipaddress.IPv4Network((low_bits, network.prefixlen - 96))

    return network


def _parse_loose(entry: str, text: str, *, strict: bool, parameter: str) -> Network:
    """Handle a CIDR that the strict parser rejected: host bits set, or not a network at all."""
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        message = (
            f"{parameter} entry {entry!r} is not a valid IP address or CIDR network, "
            "such as '192.0.2.0/24' or '2001:db8::/32'"
        )
        raise ConfigurationError(message, parameter=parameter, value=entry) from None
    if strict:
        message = (
            f"{parameter} entry {entry!r} has host bits set: write {str(network)!r}, "
            "or pass strict=False to clear them"
        )
        raise ConfigurationError(message, parameter=parameter, value=entry)

    return network
