# SPDX-License-Identifier: Apache-2.0
from __future__ import annotations

import contextlib
import os
import re
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import trustme

from zerotrust.events import EventEmitter
from zerotrust.events.syslog import SyslogSink, syslog_severity
from zerotrust.exceptions import ConfigurationError, InfrastructureError

BOM = b"\xef\xbb\xbf"
HEADER = re.compile(r"<(\d{1,3})>1 (\S+) (\S+) (\S+) (\S+) (\S+) ")


def make_event(**changes: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event": "access",
        "schema_version": "1",
        "timestamp": "2026-12-04T20:45:03.346894Z",
        "event_id": "01a242cd-a5f2-7cfd-8664-bd1666279a99",
        "request_id": "7f9c2d4e-req",
        "decision": "deny",
        "action": "deny",
        "status": 403,
        "reasons": ["insufficient_scope", "device_not_managed"],
        "segment": "items",
        "subject": "alice@example.com",
        "client_ip": "203.0.113.7",
        "method": "POST",
        "path": "/items",
    }
    event.update(changes)
    return event


def parse_message(data: bytes) -> dict[str, Any]:
    """Parse an RFC 5424 message into header fields, structured data and MSG."""
    text = data.decode("utf-8")
    match = HEADER.match(text)
    assert match is not None, text
    pri, timestamp, hostname, app_name, procid, msgid = match.groups()
    rest = text[match.end() :]
    elements: dict[str, dict[str, str]] = {}
    if rest.startswith("-"):
        rest = rest[1:]
    while rest.startswith("["):
        end = re.search(r"[ \]]", rest)
        assert end is not None
        sd_id = rest[1 : end.start()]
        params: dict[str, str] = {}
        rest = rest[end.start() :]
        while rest.startswith(" "):
            name, rest = rest[1:].split('="', 1)
            value = []
            index = 0
            while rest[index] != '"':
                if rest[index] == "\\" and rest[index + 1] in '"\\]':
                    value.append(rest[index + 1])
                    index += 2
                else:
                    value.append(rest[index])
                    index += 1
            params[name] = "".join(value)
            rest = rest[index + 1 :]
        assert rest.startswith("]"), rest
        rest = rest[1:]
        elements[sd_id] = params
    message = rest[1:] if rest.startswith(" ") else rest
    return {
        "pri": int(pri),
        "timestamp": timestamp,
        "hostname": hostname,
        "app_name": app_name,
        "procid": procid,
        "msgid": msgid,
        "sd": elements,
        "msg": message,
    }


def body_of(data: bytes) -> bytes:
    """Return MSG as bytes, BOM included, from a message."""
    match = HEADER.match(data.decode("utf-8"))
    assert match is not None
    index = data.index(BOM)
    return data[index:]


class FrameServer:
    """A TCP or TLS syslog receiver on 127.0.0.1 that splits octet-counted frames."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self.ssl_context = ssl_context
        self.port = 0
        self.frames: list[bytes] = []
        self.errors: list[str] = []
        self.accepted = 0
        self._condition = threading.Condition()
        self._connections: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._listener: socket.socket | None = None
        self._stopping = threading.Event()
        self.start()

    def start(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(8)
        listener.settimeout(0.05)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._stopping = threading.Event()
        thread = threading.Thread(target=self._accept, args=(listener, self._stopping), daemon=True)
        thread.start()
        self._threads.append(thread)

    def _accept(self, listener: socket.socket, stopping: threading.Event) -> None:
        while not stopping.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            connection.settimeout(5)
            if self.ssl_context is not None:
                try:
                    connection = self.ssl_context.wrap_socket(connection, server_side=True)
                except (ssl.SSLError, OSError) as error:
                    self.errors.append(repr(error))
                    connection.close()
                    continue
            connection.settimeout(None)
            with self._condition:
                self.accepted += 1
                self._connections.append(connection)
            reader = threading.Thread(target=self._read, args=(connection,), daemon=True)
            reader.start()
            self._threads.append(reader)

    def _read(self, connection: socket.socket) -> None:
        buffer = b""
        while True:
            try:
                data = connection.recv(65536)
            except OSError:
                return
            if not data:
                return
            buffer += data
            while True:
                match = re.match(rb"([1-9][0-9]*) ", buffer)
                if match is None:
                    if buffer and not re.fullmatch(rb"[0-9]+", buffer):
                        self.errors.append(f"bad frame start: {buffer[:40]!r}")
                        return
                    break
                length = int(match[1])
                if len(buffer) < match.end() + length:
                    break
                frame = buffer[match.end() : match.end() + length]
                buffer = buffer[match.end() + length :]
                with self._condition:
                    self.frames.append(frame)
                    self._condition.notify_all()

    def drop_connections(self) -> None:
        with self._condition:
            connections, self._connections = self._connections, []
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
            connection.close()

    def stop(self) -> None:
        self._stopping.set()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        self.drop_connections()
        for thread in self._threads:
            thread.join(2)
        self._threads = []

    def wait_for(self, count: int, timeout: float = 5.0) -> list[bytes]:
        with self._condition:
            self._condition.wait_for(lambda: len(self.frames) >= count, timeout)
            return list(self.frames)


@pytest.fixture(name="udp_receiver")
def fixture_udp_receiver() -> Iterator[socket.socket]:
    """A UDP socket bound to 127.0.0.1 on a free port."""
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(5)
    yield receiver
    receiver.close()


@pytest.fixture(name="tcp_server")
def fixture_tcp_server() -> Iterator[FrameServer]:
    """A plain TCP syslog receiver."""
    server = FrameServer()
    yield server
    server.stop()


@pytest.fixture(name="ca", scope="module")
def fixture_ca() -> trustme.CA:
    """A throwaway certificate authority."""
    return trustme.CA()


@pytest.fixture(name="tls_server")
def fixture_tls_server(ca: trustme.CA) -> Iterator[FrameServer]:
    """A TLS syslog receiver with a certificate for 127.0.0.1 and localhost."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    server = FrameServer(context)
    yield server
    server.stop()


@pytest.fixture(name="client_context")
def fixture_client_context(ca: trustme.CA) -> ssl.SSLContext:
    """A client context that trusts the test CA only."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def udp_sink(receiver: socket.socket, **options: Any) -> SyslogSink:
    return SyslogSink("127.0.0.1", receiver.getsockname()[1], hostname="host-1", **options)


class TestMessage:
    def test_udp_header(self, udp_receiver: socket.socket) -> None:
        """A UDP datagram is an RFC 5424 message with the event's time and type."""
        sink = udp_sink(udp_receiver, facility="local4")
        sink.write([make_event()])
        sink.close()
        message = parse_message(udp_receiver.recv(65535))

        assert 20 * 8 + 4 == message["pri"]
        assert "2026-12-04T20:45:03.346894Z" == message["timestamp"]
        assert "host-1" == message["hostname"]
        assert "zerotrust" == message["app_name"]
        assert str(os.getpid()) == message["procid"]
        assert "access" == message["msgid"]

    def test_msg_is_bom_json(self, udp_receiver: socket.socket) -> None:
        """MSG is a UTF-8 BOM followed by the redacted event as JSON."""
        sink = udp_sink(udp_receiver)
        sink.write([make_event(user_agent="curl Bearer abc.def.ghi")])
        sink.close()
        body = body_of(udp_receiver.recv(65535))

        assert body.startswith(BOM)
        event = orjson.loads(body[len(BOM) :])
        assert "01a242cd-a5f2-7cfd-8664-bd1666279a99" == event["event_id"]
        assert "abc.def.ghi" not in event["user_agent"]

    def test_structured_data(self, udp_receiver: socket.socket) -> None:
        """The SD element carries decision, segment, reasons, ids, subject and address."""
        sink = udp_sink(udp_receiver)
        sink.write([make_event()])
        sink.close()
        message = parse_message(udp_receiver.recv(65535))

        assert {
            "zerotrust@32473": {
                "decision": "deny",
                "segment": "items",
                "reason": "insufficient_scope,device_not_managed",
                "request_id": "7f9c2d4e-req",
                "subject": "alice@example.com",
                "client_ip": "203.0.113.7",
                "event_id": "01a242cd-a5f2-7cfd-8664-bd1666279a99",
            }
        } == message["sd"]

    def test_absent_fields_left_out(self, udp_receiver: socket.socket) -> None:
        """Null fields are not written as SD-PARAMs; a grant's reason text is."""
        sink = udp_sink(udp_receiver, sd_id="grants@32473")
        event = {
            "event": "grant_minted",
            "event_id": "g-1",
            "reason": "incident 42",
            "subject": None,
        }
        sink.write([event])
        sink.close()
        message = parse_message(udp_receiver.recv(65535))

        assert {"grants@32473": {"reason": "incident 42", "event_id": "g-1"}} == message["sd"]
        assert "grant_minted" == message["msgid"]

    def test_escapes_param_values(self, tcp_server: FrameServer) -> None:
        """']', '"', '\\' and CR/LF in a value are escaped and stay in one message."""
        sink = SyslogSink("127.0.0.1", tcp_server.port, protocol="tcp")
        subject = 'a]b"c\\d\r\ne'
        sink.write([make_event(subject=subject)])
        frames = tcp_server.wait_for(1)
        sink.close()

        assert 1 == len(frames)
        assert b"\n" not in frames[0]
        assert b"\r" not in frames[0]
        params = parse_message(frames[0])["sd"]["zerotrust@32473"]
        assert 'a]b"c\\d\\r\\ne' == params["subject"]
        assert "items" == params["segment"]
        assert subject == orjson.loads(body_of(frames[0])[len(BOM) :])["subject"]

    def test_escapes_control_characters(self, udp_receiver: socket.socket) -> None:
        """Other control characters in a value become \\xHH."""
        sink = udp_sink(udp_receiver)
        sink.write([make_event(subject="a\x00b\x1bc")])
        sink.close()
        data = udp_receiver.recv(65535)

        assert b'subject="a\\x00b\\x1bc"' in data

    def test_invalid_timestamp_replaced(self, udp_receiver: socket.socket) -> None:
        """An event without an RFC 3339 timestamp is sent with the current time."""
        sink = udp_sink(udp_receiver)
        sink.write([make_event(timestamp="yesterday")])
        sink.close()
        message = parse_message(udp_receiver.recv(65535))

        assert message["timestamp"].startswith(time.strftime("%Y-%m-%dT", time.gmtime()))
        assert message["timestamp"].endswith("Z")

    def test_header_fields_sanitised(self, udp_receiver: socket.socket) -> None:
        """Spaces and non-ASCII in header fields become '_', and MSGID is cut to 32."""
        sink = SyslogSink(
            "127.0.0.1", udp_receiver.getsockname()[1], hostname="my host", app_name="zé app"
        )
        sink.write([make_event(event="x" * 40)])
        sink.close()
        message = parse_message(udp_receiver.recv(65535))

        assert "my_host" == message["hostname"]
        assert "z__app" == message["app_name"]
        assert "x" * 32 == message["msgid"]

    def test_custom_format(self, udp_receiver: socket.socket) -> None:
        """A format replaces the JSON MSG and receives the redacted event."""
        sink = udp_sink(udp_receiver, format=lambda event: f"CEF:0|{event['decision']}".encode())
        sink.write([make_event()])
        sink.close()

        assert BOM + b"CEF:0|deny" == body_of(udp_receiver.recv(65535))


class TestSeverity:
    @pytest.mark.parametrize(
        ("event", "expected"),
        [
            ({"event": "access", "decision": "allow"}, 6),
            ({"event": "access", "decision": "deny"}, 4),
            ({"event": "access", "decision": "deny", "action": "allow", "mode": "monitor"}, 4),
            ({"event": "anomaly", "subject": "bob"}, 1),
            ({"event": "anomaly_impossible_travel"}, 1),
            ({"event": "access", "decision": "anomaly"}, 1),
            ({"event": "grant_minted"}, 6),
        ],
    )
    def test_mapping(self, event: dict[str, Any], expected: int) -> None:
        """allow is informational, deny warning and anomaly alert."""
        assert expected == syslog_severity(event)

    def test_pri_in_message(self, udp_receiver: socket.socket) -> None:
        """PRI combines the default facility authpriv (10) and the severity."""
        sink = udp_sink(udp_receiver)
        sink.write([make_event(decision="allow"), make_event(), {"event": "anomaly"}])
        sink.close()
        pris = [parse_message(udp_receiver.recv(65535))["pri"] for _ in range(3)]

        assert [86, 84, 81] == pris


class TestUdp:
    def test_datagram_per_message(self, udp_receiver: socket.socket) -> None:
        """Each event of a batch is its own datagram."""
        sink = udp_sink(udp_receiver)
        sink.write([make_event(event_id=f"id-{number}") for number in range(5)])
        sink.close()
        ids = [
            parse_message(udp_receiver.recv(65535))["sd"]["zerotrust@32473"]["event_id"]
            for _ in range(5)
        ]

        assert [f"id-{number}" for number in range(5)] == ids

    def test_truncates_to_max_size(self, udp_receiver: socket.socket) -> None:
        """A long event is cut to 2048 bytes, keeps its SD and ends with the marker."""
        sink = udp_sink(udp_receiver)
        sink.write([make_event(path="/é" * 3000)])
        sink.close()
        data = udp_receiver.recv(65535)

        assert len(data) <= 2048
        assert len(data) > 2000
        assert data.endswith(b"...[truncated]")
        message = parse_message(data)
        assert "deny" == message["sd"]["zerotrust@32473"]["decision"]
        assert message["msg"].startswith("\ufeff{")

    def test_custom_max_size(self, udp_receiver: socket.socket) -> None:
        """max_message_size=480 is honoured."""
        sink = udp_sink(udp_receiver, max_message_size=480)
        sink.write([make_event(path="/" + "a" * 1000)])
        sink.close()

        assert len(udp_receiver.recv(65535)) <= 480

    def test_oversized_sd_dropped(self, udp_receiver: socket.socket) -> None:
        """Structured data that alone exceeds the limit is replaced by '-'."""
        sink = udp_sink(udp_receiver, max_message_size=480)
        sink.write([make_event(subject="s" * 250, request_id="r" * 250)])
        sink.close()
        data = udp_receiver.recv(65535)

        assert len(data) <= 480
        assert {} == parse_message(data)["sd"]
        assert b" access - \xef\xbb\xbf{" in data

    def test_longest_header_fits(self, udp_receiver: socket.socket) -> None:
        """The longest allowed header still leaves room for MSG in 480 bytes."""
        sink = udp_sink(udp_receiver, max_message_size=480)
        sink.hostname, sink.app_name = "h" * 255, "a" * 48
        sink.write([make_event(event="e" * 40, subject="s" * 300)])
        sink.close()
        data = udp_receiver.recv(65535)

        assert len(data) <= 480
        assert data.endswith(b"...[truncated]")

    def test_long_values_cut(self, udp_receiver: socket.socket) -> None:
        """An SD-PARAM value is cut after 256 characters."""
        sink = udp_sink(udp_receiver, max_message_size=8192)
        sink.write([make_event(subject="s" * 1000)])
        sink.close()
        params = parse_message(udp_receiver.recv(65535))["sd"]["zerotrust@32473"]

        assert "s" * 256 + "...[truncated]" == params["subject"]


class TestTcp:
    def test_octet_counting(self, tcp_server: FrameServer) -> None:
        """A batch arrives as octet-counted frames, one per event."""
        sink = SyslogSink("127.0.0.1", tcp_server.port, protocol="tcp")
        sink.write([make_event(event_id=f"id-{number}") for number in range(20)])
        frames = tcp_server.wait_for(20)
        sink.close()

        assert [] == tcp_server.errors
        ids = [parse_message(frame)["sd"]["zerotrust@32473"]["event_id"] for frame in frames]
        assert [f"id-{number}" for number in range(20)] == ids

    def test_persistent_connection(self, tcp_server: FrameServer) -> None:
        """Several batches share one connection."""
        sink = SyslogSink("127.0.0.1", tcp_server.port, protocol="tcp")
        for number in range(3):
            sink.write([make_event(event_id=f"id-{number}")])
        tcp_server.wait_for(3)
        sink.close()

        assert 1 == tcp_server.accepted

    def test_reconnects_after_server_closed(self, tcp_server: FrameServer) -> None:
        """A connection the server closed is replaced and no message is lost."""
        sink = SyslogSink("127.0.0.1", tcp_server.port, protocol="tcp")
        sink.write([make_event(event_id="before")])
        tcp_server.wait_for(1)
        tcp_server.drop_connections()
        time.sleep(0.05)
        sink.write([make_event(event_id="after")])
        frames = tcp_server.wait_for(2)
        sink.close()

        assert 2 == tcp_server.accepted
        assert "after" == parse_message(frames[-1])["sd"]["zerotrust@32473"]["event_id"]

    def test_listener_down_and_back(self, tcp_server: FrameServer) -> None:
        """While the receiver is down writes raise; once it is back they arrive again."""
        sink = SyslogSink("127.0.0.1", tcp_server.port, protocol="tcp", reconnect_interval=0)
        sink.write([make_event(event_id="first")])
        tcp_server.wait_for(1)

        tcp_server.stop()
        with pytest.raises(InfrastructureError, match=r"tcp://127\.0\.0\.1"):
            sink.write([make_event(event_id="lost")])

        tcp_server.start()
        sink.write([make_event(event_id="second")])
        frames = tcp_server.wait_for(2)
        sink.close()

        ids = [parse_message(frame)["sd"]["zerotrust@32473"]["event_id"] for frame in frames]
        assert ["first", "second"] == ids

    def test_reconnect_interval(self, tcp_server: FrameServer) -> None:
        """After a failed connection, writes raise at once until the interval passed."""
        port = tcp_server.port
        tcp_server.stop()
        sink = SyslogSink("127.0.0.1", port, protocol="tcp", reconnect_interval=30)
        with pytest.raises(InfrastructureError, match="connecting to"):
            sink.write([make_event()])
        tcp_server.start()

        with pytest.raises(InfrastructureError, match="next connection attempt"):
            sink.write([make_event()])
        sink.close()
        assert 0 == tcp_server.accepted

    def test_emitter_counts_failure(self) -> None:
        """An unreachable receiver makes the emitter count the batch as failed."""
        with socket.socket() as placeholder:
            placeholder.bind(("127.0.0.1", 0))
            port = placeholder.getsockname()[1]
        emitter = EventEmitter([SyslogSink("127.0.0.1", port, protocol="tcp", timeout=1)])
        for _ in range(3):
            emitter.emit(make_event())
        emitter.close()

        assert 3 == emitter.failed

    def test_emitter_delivers(self, tcp_server: FrameServer) -> None:
        """Events emitted through an EventEmitter reach the receiver."""
        emitter = EventEmitter([SyslogSink("127.0.0.1", tcp_server.port, protocol="tcp")])
        for number in range(10):
            emitter.emit(make_event(event_id=f"id-{number}"))
        emitter.close()

        assert 10 == len(tcp_server.wait_for(10))
        assert 0 == emitter.failed


class TestTls:
    def test_delivers(self, tls_server: FrameServer, client_context: ssl.SSLContext) -> None:
        """Messages arrive over TLS, verified against the test CA, octet-counted."""
        sink = SyslogSink("127.0.0.1", tls_server.port, protocol="tls", ssl_context=client_context)
        sink.write([make_event(event_id="a"), make_event(event_id="b")])
        frames = tls_server.wait_for(2)
        sink.close()

        ids = [parse_message(frame)["sd"]["zerotrust@32473"]["event_id"] for frame in frames]
        assert ["a", "b"] == ids

    def test_localhost_name(self, tls_server: FrameServer, client_context: ssl.SSLContext) -> None:
        """The certificate is checked against the host name when one is given."""
        sink = SyslogSink("localhost", tls_server.port, protocol="tls", ssl_context=client_context)
        sink.write([make_event()])
        frames = tls_server.wait_for(1)
        sink.close()

        assert 1 == len(frames)

    def test_untrusted_certificate(self, tls_server: FrameServer) -> None:
        """A server certificate from an unknown CA fails the write."""
        sink = SyslogSink("127.0.0.1", tls_server.port, protocol="tls", timeout=2)
        with pytest.raises(InfrastructureError, match="CERTIFICATE_VERIFY_FAILED"):
            sink.write([make_event()])
        sink.close()

    def test_reconnects(self, tls_server: FrameServer, client_context: ssl.SSLContext) -> None:
        """A TLS connection the server closed is replaced and no message is lost."""
        sink = SyslogSink("127.0.0.1", tls_server.port, protocol="tls", ssl_context=client_context)
        sink.write([make_event(event_id="before")])
        tls_server.wait_for(1)
        tls_server.drop_connections()
        time.sleep(0.05)
        sink.write([make_event(event_id="after")])
        frames = tls_server.wait_for(2)
        sink.close()

        assert ["before", "after"] == [
            parse_message(frame)["sd"]["zerotrust@32473"]["event_id"] for frame in frames
        ]

    def test_listener_down_and_back(
        self, tls_server: FrameServer, client_context: ssl.SSLContext
    ) -> None:
        """A TLS receiver that restarts gets the messages written after it is back."""
        sink = SyslogSink(
            "127.0.0.1",
            tls_server.port,
            protocol="tls",
            ssl_context=client_context,
            reconnect_interval=0,
        )
        sink.write([make_event(event_id="first")])
        tls_server.wait_for(1)
        tls_server.stop()
        with pytest.raises(InfrastructureError):
            sink.write([make_event(event_id="lost")])
        tls_server.start()
        sink.write([make_event(event_id="second")])
        frames = tls_server.wait_for(2)
        sink.close()

        assert "second" == parse_message(frames[-1])["sd"]["zerotrust@32473"]["event_id"]


class TestConfiguration:
    @pytest.mark.parametrize(
        "options",
        [
            {"protocol": "http"},
            {"facility": "mail2"},
            {"facility": 24},
            {"facility": True},
            {"sd_id": "zero trust@32473"},
            {"sd_id": 'zt"x@1'},
            {"sd_id": "zt@abc"},
            {"sd_id": "z" * 33},
            {"max_message_size": 479},
            {"max_message_size": 70_000},
            {"timeout": 0},
            {"reconnect_interval": -1},
            {"ssl_context": ssl.create_default_context()},
        ],
    )
    def test_rejects(self, options: dict[str, Any]) -> None:
        """Invalid options raise ConfigurationError when the sink is built."""
        with pytest.raises(ConfigurationError):
            SyslogSink(**options)

    def test_defaults(self) -> None:
        """UDP allows 2048 bytes, TCP 8192; the facility is authpriv."""
        assert 2048 == SyslogSink().max_message_size
        assert 8192 == SyslogSink(protocol="tcp").max_message_size
        assert 10 == SyslogSink().facility
