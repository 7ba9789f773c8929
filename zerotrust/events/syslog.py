# SPDX-License-Identifier: Apache-2.0
"""A sink that sends events as RFC 5424 syslog messages over UDP, TCP or TLS."""

from __future__ import annotations

import os
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

from ..exceptions import ConfigurationError, InfrastructureError
from .access import format_timestamp
from .sinks import Sink
from .sinks_file import EventFormat, format_event

__all__ = ["FACILITIES", "SyslogProtocol", "SyslogSink", "syslog_severity"]

SyslogProtocol = Literal["udp", "tcp", "tls"]

# Facility codes from RFC 5424, section 6.2.1.
FACILITIES = {
    "kern": 0,
    "user": 1,
    "mail": 2,
    "daemon": 3,
    "auth": 4,
    "syslog": 5,
    "lpr": 6,
    "news": 7,
    "uucp": 8,
    "cron": 9,
    "authpriv": 10,
    "ftp": 11,
    "ntp": 12,
    "security": 13,
    "console": 14,
    "solaris-cron": 15,
    **{f"local{number}": 16 + number for number in range(8)},
}
ALERT, WARNING, INFORMATIONAL = 1, 4, 6

# RFC 5426 says receivers must accept 480-byte datagrams and should accept 2048 bytes.
_MIN_MESSAGE_SIZE = 480
_DEFAULT_UDP_SIZE = 2048
# rsyslog's default maxMessageSize is 8 KiB; longer messages are cut by most receivers anyway.
_DEFAULT_STREAM_SIZE = 8192
_MAX_UDP_PAYLOAD = 65_507
_TRUNCATION_MARKER = b"...[truncated]"
_BOM = b"\xef\xbb\xbf"
_NIL = "-"
_MAX_PARAM_VALUE = 256
# Header fields (RFC 5424, section 6.2) are 1 to N printable US-ASCII characters.
_MAX_HOSTNAME, _MAX_APP_NAME, _MAX_MSGID = 255, 48, 32
_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})\Z")
# SD-NAME: 1 to 32 printable US-ASCII characters except '=', space, ']' and '"'.
_SD_NAME = re.compile(r"[!#-<>-\\^-~]{1,32}\Z")
_SD_ID = re.compile(r"[!#-?A-\\^-~]+(@[0-9]+(\.[0-9]+)*)?\Z")
_NON_PRINTABLE = re.compile(r"[^!-~]")

# RFC 5424, section 6.3.3: '"', '\' and ']' must be escaped in a PARAM-VALUE. Control characters
# are escaped too, so a value with CR or LF cannot break line-based receivers.
_PARAM_ESCAPES: dict[int, str] = {ord('"'): '\\"', ord("\\"): "\\\\", ord("]"): "\\]"}
_PARAM_ESCAPES.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"})
for _code in (*range(0x20), 0x7F, *range(0x80, 0xA0)):
    _PARAM_ESCAPES.setdefault(_code, f"\\x{_code:02x}")

# Event fields carried as SD-PARAMs, in order: (PARAM-NAME, event key).
_SD_FIELDS = (
    ("decision", "decision"),
    ("segment", "segment"),
    ("reason", "reasons"),
    ("request_id", "request_id"),
    ("subject", "subject"),
    ("client_ip", "client_ip"),
    ("event_id", "event_id"),
)


def syslog_severity(event: dict[str, Any]) -> int:
    """
    Map an event to a syslog severity (RFC 5424, section 6.2.1).

    Anomaly events (``event`` is ``anomaly`` or starts with ``anomaly``, or ``decision`` is
    ``anomaly``) are 1, alert. A ``deny`` decision is 4, warning, also in monitor mode. Everything
    else, allowed requests and grant events included, is 6, informational.
    """
    kind = event.get("event")
    decision = event.get("decision")
    if decision == "anomaly" or (isinstance(kind, str) and kind.startswith("anomaly")):
        return ALERT
    if decision == "deny":
        return WARNING

    return INFORMATIONAL


class SyslogSink(Sink):
    """
    Send each event as one RFC 5424 syslog message.

    A message is ``<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [SD] MSG``. TIMESTAMP is the
    event's own ``timestamp``, MSGID its ``event`` type (``access``, ``grant_minted``...), SD one
    element ``[zerotrust@32473 decision=... segment=... reason=... request_id=... subject=...
    client_ip=... event_id=...]`` with absent fields left out, and MSG the formatted event,
    prefixed with a UTF-8 byte order mark as RFC 5424 requires for UTF-8 text. ``reason`` joins all
    reason codes with commas.

    Over UDP (RFC 5426) each message is one datagram. Over TCP (RFC 6587) and TLS (RFC 5425)
    messages are framed by octet counting, ``LEN SP MSG``, on one persistent connection. A
    connection the server closed is noticed before sending and replaced. A send that fails on a
    reused connection is retried once on a new one, so a batch can arrive twice in part. A
    message longer than ``max_message_size`` keeps its header and structured data and its MSG
    is cut, ending in ``...[truncated]``.

    Args:
        host: The syslog receiver.
        port: Its port.
        protocol: ``"udp"``, ``"tcp"`` or ``"tls"``.
        app_name: The APP-NAME field.
        facility: A facility name from `FACILITIES` or its code. ``authpriv`` by default,
            because events carry personal data and common syslog setups keep ``authpriv`` in a
            file only root can read.
        format: Turns each redacted event into MSG. The default is compact JSON.
        timeout: Seconds allowed to connect (TLS handshake included) and for each send.
        ssl_context: For ``"tls"``; by default ``ssl.create_default_context()``, which checks
            the server certificate against the system CAs and ``host``.
        max_message_size: Most bytes in one message: 2048 for UDP and 8192 otherwise by
            default, at least 480.
        hostname: The HOSTNAME field; ``socket.gethostname()`` by default.
        sd_id: The SD-ID of the structured data element.
        severity: Maps an event to a severity; `syslog_severity` by default.
        reconnect_interval: Seconds to wait after a failed connection before trying again;
            writes in between raise at once instead of waiting for ``timeout`` every batch.
        server_hostname: Name checked against the TLS certificate; ``host`` by default.

    .. note::
        32473 in the default SD-ID is the private enterprise number that RFC 5612 reserves for
        documentation. Set ``sd_id`` to ``name@<your PEN>`` if your organisation has one.

    .. versionadded:: 0.2.0
    """

    name = "syslog"

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 514,
        *,
        protocol: SyslogProtocol = "udp",
        app_name: str = "zerotrust",
        facility: str | int = "authpriv",
        format: EventFormat | None = None,
        timeout: float = 5.0,
        ssl_context: ssl.SSLContext | None = None,
        max_message_size: int | None = None,
        hostname: str | None = None,
        sd_id: str = "zerotrust@32473",
        severity: Callable[[dict[str, Any]], int] | None = None,
        reconnect_interval: float = 1.0,
        server_hostname: str | None = None,
    ) -> None:
        if protocol not in ("udp", "tcp", "tls"):
            message = f"protocol must be 'udp', 'tcp' or 'tls', not {protocol!r}"
            raise ConfigurationError(message, parameter="protocol", value=protocol)
        if ssl_context is not None and protocol != "tls":
            message = f"ssl_context needs protocol='tls', not {protocol!r}"
            raise ConfigurationError(message, parameter="ssl_context", value=protocol)
        if not timeout > 0 or reconnect_interval < 0:
            message = (
                "timeout must be positive and reconnect_interval 0 or more, not "
                f"{timeout!r} and {reconnect_interval!r}"
            )
            raise ConfigurationError(message, parameter="timeout", value=timeout)
        if not _SD_ID.match(sd_id) or not _SD_NAME.match(sd_id):
            message = (
                f"sd_id {sd_id!r} is not a valid RFC 5424 SD-ID: use 1 to 32 printable ASCII "
                "characters without '=', ']', '\"' or spaces, such as 'name@32473'"
            )
            raise ConfigurationError(message, parameter="sd_id", value=sd_id)

        self.host = host
        self.port = port
        self.protocol: SyslogProtocol = protocol
        self.facility = _facility_code(facility)
        self.app_name = _header_field(app_name, _MAX_APP_NAME)
        self.hostname = _header_field(hostname or socket.gethostname(), _MAX_HOSTNAME)
        self.format = format
        self.timeout = timeout
        self.sd_id = sd_id
        self.severity = severity or syslog_severity
        self.reconnect_interval = reconnect_interval
        self.server_hostname = server_hostname or host
        self.max_message_size = _message_size(max_message_size, protocol)
        if protocol == "tls" and ssl_context is None:
            ssl_context = ssl.create_default_context()
        self.ssl_context = ssl_context

        self._lock = threading.Lock()
        self._socket: socket.socket | None = None
        self._udp_address: Any = None
        self._retry_after = 0.0

    def write(self, events: Sequence[dict[str, Any]]) -> None:
        messages = []
        for event in events:
            result = format_event(event, self.format)
            if result is not None:
                messages.append(self.build_message(*result))
        if not messages:
            return

        with self._lock:
            if self.protocol == "udp":
                self._send_datagrams(messages)
            else:
                frames = b"".join(b"%d %s" % (len(message), message) for message in messages)
                self._send_stream(frames)

    def close(self) -> None:
        with self._lock:
            self._disconnect()

    def build_message(self, event: dict[str, Any], body: bytes) -> bytes:
        """Build the RFC 5424 message of one redacted event and its formatted ``body``."""
        severity = self.severity(event)
        timestamp = event.get("timestamp")
        if not isinstance(timestamp, str) or not _TIMESTAMP.match(timestamp):
            timestamp = format_timestamp(time.time())
        msgid = _header_field(str(event.get("event") or ""), _MAX_MSGID)
        header = (
            f"<{self.facility * 8 + severity}>1 {timestamp} {self.hostname} {self.app_name} "
            f"{os.getpid()} {msgid} "
        )
        try:
            body.decode("utf-8")
        except UnicodeDecodeError:
            message_body = body  # MSG-ANY: the BOM may only announce UTF-8
        else:
            message_body = _BOM + body

        prefix = f"{header}{self._structured_data(event)} ".encode()
        if len(prefix) + len(message_body) <= self.max_message_size:
            return prefix + message_body
        if len(prefix) + len(_TRUNCATION_MARKER) + len(_BOM) > self.max_message_size:
            # Structured data alone would exceed the limit: drop it rather than the event. The
            # header then fits, because its fields are capped well below the 480-byte minimum.
            prefix = f"{header}{_NIL} ".encode()
        budget = self.max_message_size - len(prefix) - len(_TRUNCATION_MARKER)
        cut = message_body[:budget]
        if message_body is not body:
            # Drop a multi-byte character cut in half, so MSG stays valid UTF-8.
            cut = cut.decode("utf-8", "ignore").encode()

        return prefix + cut + _TRUNCATION_MARKER

    def _structured_data(self, event: dict[str, Any]) -> str:
        params = []
        for param_name, key in _SD_FIELDS:
            value = event.get(key)
            if key == "reasons":
                value = ",".join(map(str, value)) if isinstance(value, list) else None
                if not value and isinstance(event.get("reason"), str):
                    value = event["reason"]
            if value is None or value == "":
                continue
            text = str(value)
            if len(text) > _MAX_PARAM_VALUE:
                text = text[:_MAX_PARAM_VALUE] + "...[truncated]"
            params.append(f' {param_name}="{text.translate(_PARAM_ESCAPES)}"')

        return f"[{self.sd_id}{''.join(params)}]"

    def _send_datagrams(self, messages: list[bytes]) -> None:
        try:
            if self._socket is None:
                # NOTE: name resolution has no timeout; give an IP address where DNS may hang.
                family, kind, proto, _, address = socket.getaddrinfo(
                    self.host, self.port, type=socket.SOCK_DGRAM
                )[0]
                sock = socket.socket(family, kind, proto)
                sock.settimeout(self.timeout)
                self._socket, self._udp_address = sock, address
            for datagram in messages:
                self._socket.sendto(datagram, self._udp_address)
        except OSError as error:
            self._disconnect()
            raise self._failure("sending to", error) from error

    def _send_stream(self, frames: bytes) -> None:
        if self._socket is not None and not self._connection_open(self._socket):
            self._disconnect()
        reused = self._socket is not None
        if self._socket is None:
            self._socket = self._connect()
        try:
            self._socket.sendall(frames)
            return
        except OSError as error:
            self._disconnect()
            if not reused:
                raise self._failure("sending to", error) from error

        # The server may have dropped a connection that looked open; one retry on a new one.
        self._socket = self._connect()
        try:
            self._socket.sendall(frames)
        except OSError as error:
            self._disconnect()
            raise self._failure("sending to", error) from error

    def _connect(self) -> socket.socket:
        now = time.monotonic()
        if now < self._retry_after:
            message = (
                f"syslog receiver {self.protocol}://{self.host}:{self.port} was unreachable; "
                f"next connection attempt in {self._retry_after - now:.1f} s"
            )
            raise InfrastructureError(message)
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
            if self.ssl_context is not None:
                try:
                    sock = self.ssl_context.wrap_socket(sock, server_hostname=self.server_hostname)
                except BaseException:
                    sock.close()
                    raise
        except OSError as error:
            self._retry_after = time.monotonic() + self.reconnect_interval
            raise self._failure("connecting to", error) from error
        sock.settimeout(self.timeout)

        return sock

    def _connection_open(self, sock: socket.socket) -> bool:
        """Return whether the server kept the connection open; it never sends data to us."""
        sock.setblocking(False)
        try:
            data = sock.recv(1)
        except (ssl.SSLWantReadError, BlockingIOError):
            # Nothing to read (over TLS 1.3, maybe session tickets only): still open.
            return True
        except OSError:
            return False
        finally:
            if sock.fileno() != -1:
                sock.settimeout(self.timeout)

        return data != b""

    def _disconnect(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def _failure(self, action: str, error: OSError) -> InfrastructureError:
        message = (
            f"{action} syslog receiver {self.protocol}://{self.host}:{self.port} failed: "
            f"{error!r}; check that it is running and reachable"
        )
        return InfrastructureError(message)


def _facility_code(facility: str | int) -> int:
    if isinstance(facility, str) and facility in FACILITIES:
        return FACILITIES[facility]
    if isinstance(facility, int) and not isinstance(facility, bool) and 0 <= facility <= 23:
        return facility
    message = (
        f"facility must be a name such as 'authpriv' or 'local0', or 0 to 23, not {facility!r}"
    )
    raise ConfigurationError(message, parameter="facility", value=facility)


def _message_size(size: int | None, protocol: str) -> int:
    if size is None:
        return _DEFAULT_UDP_SIZE if protocol == "udp" else _DEFAULT_STREAM_SIZE
    upper = _MAX_UDP_PAYLOAD if protocol == "udp" else None
    if size < _MIN_MESSAGE_SIZE or (upper is not None and size > upper):
        message = (
            f"max_message_size must be at least {_MIN_MESSAGE_SIZE}"
            f"{f' and at most {upper}' if upper else ''} bytes, not {size!r}"
        )
        raise ConfigurationError(message, parameter="max_message_size", value=size)

    return size


def _header_field(value: str, limit: int) -> str:
    """Make ``value`` a valid header field: printable US-ASCII, at most ``limit`` characters."""
    cleaned = _NON_PRINTABLE.sub("_", value)[:limit]
    return cleaned or _NIL
