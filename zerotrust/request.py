# SPDX-License-Identifier: Apache-2.0
"""The access request: the facts about one HTTP request that the engine decides on."""

from __future__ import annotations

import functools
import ipaddress
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from starlette.datastructures import Headers

from ._ids import random_bits
from .exceptions import ConfigurationError, InsecureConfigurationWarning

__all__ = [
    "AccessRequest",
    "ForwardedHeader",
    "IPAddress",
    "PathProblem",
    "TrustedProxies",
    "check_raw_path",
    "new_request_id",
    "normalize_path",
    "parse_host",
    "parse_peer",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
ForwardedHeader = Literal["x-forwarded-for", "forwarded"]

# A request id from the client is kept only when it is short and made of safe characters, so it
# cannot smuggle CR/LF or markup into logs and response headers.
_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}")
_PERCENT_TRIPLET = re.compile(rb"%[0-9A-Fa-f]{2}")
_STRAY_PERCENT = re.compile(rb"%(?![0-9A-Fa-f]{2})")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MAX_PATH_BYTES = 8192
_MAX_REMEMBERED_PEERS = 4096
# Unreserved and sub-delimiter characters only: nothing to decode and nothing to reject.
_PLAIN_PATH = re.compile(rb"/[A-Za-z0-9\-._~!$&'()*+,;=:@/]*")


class PathProblem(ValueError):
    """
    A raw request path is ambiguous: servers, proxies and routers may read it differently.

    Attributes:
        reason: A reason code for the access event, such as ``encoded_slash``.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class AccessRequest:
    """
    One request, as the input of the policy decision point.

    The enforcement point builds it once per request. Verifiers read it and never change it.

    Attributes:
        method: Upper-case HTTP method; ``GET`` for a websocket handshake.
        path: The normalised path inside the app (after ``root_path``), the one segments match.
        raw_path: The path as the client sent it, percent-encoding intact, without the query.
        host: Lower-case host name from the ``Host`` header, without the port.
        headers: Case-insensitive request headers.
        client_ip: The client address, resolved through the trusted proxies; ``None`` if unknown.
        peer_ip: The address of the socket peer, which may be a proxy.
        request_id: The validated incoming ``X-Request-ID`` or a generated one.
        time: Wall-clock time of arrival, seconds since the epoch.
        scheme: ``http``, ``https``, ``ws`` or ``wss``.
        protocol: ``http`` or ``websocket``.
        root_path: The mount prefix of the app, if any.
        problem: Reason code when the request is malformed (ambiguous path, spoofed or
            malformed forwarding header); such a request is always denied.
        tls_client_chain: The client certificate chain from the ASGI ``tls`` extension, as PEM
            strings with the leaf first; empty without mutual TLS at this server.
        from_trusted_proxy: Whether the socket peer is a configured trusted proxy, so headers it
            sets (forwarding, client certificate) may be believed.
    """

    method: str
    path: str
    raw_path: str
    host: str
    headers: Headers
    client_ip: IPAddress | None
    peer_ip: IPAddress | None
    request_id: str
    time: float
    scheme: str = "http"
    protocol: Literal["http", "websocket"] = "http"
    root_path: str = ""
    problem: str | None = None
    tls_client_chain: tuple[str, ...] = ()
    from_trusted_proxy: bool = False

    @property
    def user_agent(self) -> str:
        return self.headers.get("user-agent", "")


def new_request_id() -> str:
    """
    Generate a random 128-bit request id as 32 hex digits.

    Request ids correlate log lines and need to be unique, not secret; see `zerotrust._ids`.
    """
    return f"{random_bits(128):032x}"


def accept_request_id(value: str | None) -> str:
    """Return ``value`` if it is a well-formed request id, else a fresh one."""
    # An id that looks like a JWT would be redacted in events and so could not be correlated.
    if value and _REQUEST_ID.fullmatch(value) and "eyJ" not in value:
        return value

    return new_request_id()


def check_raw_path(raw_path: bytes) -> str:
    """
    Decode a raw request path once, rejecting every form that routers may read differently.

    Returns:
        The decoded path.

    Raises:
        PathProblem: for an encoded slash or backslash, a literal backslash, NUL or another
            control character, a stray ``%``, double encoding, invalid UTF-8 or an oversized path.
    """
    if len(raw_path) > _MAX_PATH_BYTES:
        raise PathProblem("path_too_long")
    if _PLAIN_PATH.fullmatch(raw_path):
        return raw_path.decode("ascii")
    if not raw_path.startswith(b"/"):
        raise PathProblem("path_not_absolute")
    if b"\\" in raw_path:
        raise PathProblem("backslash_in_path")
    if _STRAY_PERCENT.search(raw_path):
        raise PathProblem("malformed_percent_encoding")

    lowered = raw_path.lower()
    if b"%2f" in lowered:
        raise PathProblem("encoded_slash")
    if b"%5c" in lowered:
        raise PathProblem("encoded_backslash")

    decoded_bytes = _PERCENT_TRIPLET.sub(lambda match: bytes([int(match[0][1:], 16)]), raw_path)
    try:
        decoded = decoded_bytes.decode("utf-8")
    except UnicodeDecodeError:
        raise PathProblem("invalid_utf8_in_path") from None

    if _CONTROL.search(decoded):
        raise PathProblem("control_character_in_path")
    # "%252e" decodes to "%2e": a second decoder further down the stack would see a dot.
    if _PERCENT_TRIPLET.search(decoded_bytes):
        raise PathProblem("double_encoding")

    return decoded


def normalize_path(path: str) -> str:
    """
    Collapse repeated slashes and resolve ``.`` and ``..`` segments (RFC 3986, section 5.2.4).

    A ``..`` never climbs above the root. A trailing slash, or a trailing ``.`` or ``..``
    segment, leaves a trailing slash, as browsers do. The result always starts with ``/``, and
    normalising it again returns it unchanged.
    """
    if "//" not in path and "/." not in path and path.startswith("/"):
        return path

    output: list[str] = []
    segments = path.split("/")
    for segment in segments[1:-1]:
        if segment in ("", "."):
            continue
        if segment == "..":
            if output:
                output.pop()
            continue
        output.append(segment)

    last = segments[-1] if len(segments) > 1 else ""
    if last == "..":
        if output:
            output.pop()
        last = ""
    elif last == ".":
        last = ""

    return "/" + "/".join([*output, last]) if output else "/" + last


class TrustedProxies:
    """
    The set of proxy addresses whose forwarding headers are believed.

    Only a socket peer inside this set may name the client in ``X-Forwarded-For`` or
    ``Forwarded``. Any other peer is the client, whatever its headers claim.

    Args:
        networks: IP addresses or CIDR networks, such as ``["10.0.0.0/8", "127.0.0.1"]``.
        header: Which forwarding header the proxies set: ``x-forwarded-for`` or ``forwarded``
            (RFC 7239). The other one is ignored.

    Raises:
        ConfigurationError: if an entry is not a valid address or network.
    """

    def __init__(
        self, networks: Iterable[str] = (), *, header: ForwardedHeader = "x-forwarded-for"
    ) -> None:
        if isinstance(networks, str):
            networks = [networks]
        if header not in ("x-forwarded-for", "forwarded"):
            message = f"header must be 'x-forwarded-for' or 'forwarded', not {header!r}"
            raise ConfigurationError(message, parameter="header", value=header)

        parsed: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for entry in networks:
            parsed.append(_parse_proxy_network(entry))

        self.networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = tuple(parsed)
        self.header: ForwardedHeader = header
        # Whether each peer seen so far is trusted. Each request checks twice, and peers repeat.
        # Cleared when full, so it stays bounded. Dict reads and writes need no lock.
        self._trusted: dict[IPAddress, bool] = {}

    def __bool__(self) -> bool:
        return bool(self.networks)

    def __contains__(self, address: IPAddress | None) -> bool:
        if address is None:
            return False
        trusted = self._trusted.get(address)
        if trusted is None:
            trusted = self._check(address)
            if len(self._trusted) >= _MAX_REMEMBERED_PEERS:
                self._trusted.clear()
            self._trusted[address] = trusted
        return trusted

    def _check(self, address: IPAddress) -> bool:
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped

        return any(address in network for network in self.networks)

    def resolve_client(
        self, peer: IPAddress | None, headers: Headers
    ) -> tuple[IPAddress | None, str | None]:
        """
        Find the client address for a request received from ``peer``.

        Returns:
            The client address and ``None``, or the peer and a reason code when a trusted
            proxy sent a forwarding header that cannot be parsed.
        """
        if not self.networks or peer not in self:
            return peer, None

        values = headers.getlist(self.header)
        if not values:
            return peer, None

        resolved = self._resolve_chain(tuple(values))
        if resolved is None:
            return peer, "malformed_forwarded_header"
        return resolved, None

    @functools.lru_cache(maxsize=1024)  # noqa: B019 -- bounded, and instances live as long as apps
    def _resolve_chain(self, values: tuple[str, ...]) -> IPAddress | None:
        # Proxies send the same few chains again and again, and parsing them costs microseconds.
        try:
            hops = _parse_hops(values, self.header)
        except ValueError:
            return None

        # Walk from the right: each trusted proxy vouches only for the hop just before it.
        for hop in reversed(hops):
            if hop not in self:
                return hop

        return hops[0]


def _parse_proxy_network(entry: object) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    text = entry.strip() if isinstance(entry, str) else ""
    try:
        network = ipaddress.ip_network(text)
    except ValueError:
        try:
            # Host bits set, as in 10.0.0.1/8: probably a typo, and widening it silently could
            # trust millions of addresses.
            wide = ipaddress.ip_network(text, strict=False)
        except ValueError:
            message = f"trusted proxy {entry!r} is not an IP address or CIDR network"
            raise ConfigurationError(message, parameter="trusted_proxies", value=entry) from None
        host = text.partition("/")[0]
        message = (
            f"trusted proxy {entry!r} has host bits set: write {host!r} for one proxy "
            f"or '{wide}' for the whole network"
        )
        raise ConfigurationError(message, parameter="trusted_proxies", value=entry) from None

    if network.prefixlen == 0:
        warnings.warn(
            f"trusted proxy {entry!r} trusts every address: any client can then set its own "
            "address with a forwarding header",
            InsecureConfigurationWarning,
            stacklevel=4,
        )
    return network


def _parse_hops(values: Sequence[str], header: ForwardedHeader) -> list[IPAddress]:
    hops: list[IPAddress] = []
    for value in values:
        for element in value.split(","):
            element = element.strip()
            if header == "forwarded":
                element = _forwarded_for(element)
            hops.append(_parse_address(element))

    if not hops:
        raise ValueError("no hops")

    return hops


def _forwarded_for(element: str) -> str:
    """Return the ``for=`` node of one RFC 7239 forwarded element."""
    for pair in element.split(";"):
        name, _, value = pair.strip().partition("=")
        if name.strip().lower() == "for":
            return value.strip().strip('"')

    raise ValueError("forwarded element without for=")


def _parse_address(node: str) -> IPAddress:
    """Parse ``1.2.3.4``, ``1.2.3.4:80``, ``[2001:db8::1]`` or ``[2001:db8::1]:80``."""
    if node.startswith("["):
        host, bracket, _ = node[1:].partition("]")
        if not bracket:
            raise ValueError(node)
        return ipaddress.IPv6Address(host)
    if node.count(":") == 1:
        node = node.partition(":")[0]

    return ipaddress.ip_address(node)


def parse_peer(client: Sequence[object] | None) -> IPAddress | None:
    """Parse the ASGI ``client`` pair or a WSGI ``REMOTE_ADDR``; ``None`` if absent or invalid."""
    if not client:
        return None
    return _parse_ip(str(client[0]))


@functools.lru_cache(maxsize=4096)
def _parse_ip(text: str) -> IPAddress | None:
    # Peers repeat (proxies, keep-alive clients), and ipaddress parsing costs over a microsecond.
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


_HOST_NAME = re.compile(r"[a-z0-9_]([a-z0-9_.\-]{0,252})?")


def parse_host(values: Sequence[str]) -> tuple[str, str | None]:
    """
    Parse the ``Host`` header values into a lower-case host without the port.

    Returns:
        The host (empty if absent) and ``None``, or ``""`` and a reason code when the header is
        repeated or malformed.
    """
    if len(values) == 1:
        return _parse_one_host(values[0])
    if not values:
        return "", None

    return "", "duplicate_host_header"


@functools.lru_cache(maxsize=1024)
def _parse_one_host(raw: str) -> tuple[str, str | None]:
    # Clients repeat the same few Host values, so the parse is cached.
    value = raw.strip().lower()
    if value.startswith("["):
        host, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not _is_port(rest)):
            return "", "malformed_host_header"
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return "", "malformed_host_header"
        return f"[{host}]", None

    host, colon, port = value.partition(":")
    if colon and not _is_port(":" + port):
        return "", "malformed_host_header"
    if not _HOST_NAME.fullmatch(host):
        return "", "malformed_host_header"

    return host.rstrip("."), None


def _is_port(text: str) -> bool:
    return text.startswith(":") and text[1:].isdigit() and 0 < len(text) <= 6
