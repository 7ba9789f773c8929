# SPDX-License-Identifier: Apache-2.0
from __future__ import annotations

import ipaddress

import pytest
from starlette.datastructures import Headers

from zerotrust import ConfigurationError, InsecureConfigurationWarning, TrustedProxies
from zerotrust.request import (
    PathProblem,
    accept_request_id,
    check_raw_path,
    normalize_path,
    parse_host,
    parse_peer,
)


def headers(*pairs: tuple[str, str]) -> Headers:
    return Headers(raw=[(name.encode(), value.encode()) for name, value in pairs])


class TestNormalizePath:
    @pytest.mark.parametrize(
        ("path", "expected"),
        [
            ("/", "/"),
            ("/api/items", "/api/items"),
            ("/api/items/", "/api/items/"),
            ("//admin", "/admin"),
            ("/api//items", "/api/items"),
            ("/api/../admin", "/admin"),
            ("/api/./items", "/api/items"),
            ("/../../etc/passwd", "/etc/passwd"),
            ("/api/items/.", "/api/items/"),
            ("/api/items/..", "/api/"),
            ("/..", "/"),
            ("/a/.b/c", "/a/.b/c"),
            ("/a/..b", "/a/..b"),
            ("/a/b/../../c/", "/c/"),
        ],
    )
    def test_normalize(self, path: str, expected: str) -> None:
        """Dot segments resolve and repeated slashes collapse as RFC 3986 describes."""
        assert expected == normalize_path(path)

    @pytest.mark.parametrize("path", ["/api/../admin", "//x//y/", "/a/./b/../c"])
    def test_idempotent(self, path: str) -> None:
        """Normalising a normalised path changes nothing."""
        once = normalize_path(path)

        assert once == normalize_path(once)


class TestCheckRawPath:
    @pytest.mark.parametrize(
        ("raw", "expected"),
        [
            (b"/api/items", "/api/items"),
            (b"/caf%C3%A9", "/caf\u00e9"),
            (b"/a%20b", "/a b"),
            (b"/%2e%2e/admin", "/../admin"),
        ],
    )
    def test_decodes_once(self, raw: bytes, expected: str) -> None:
        """Percent-encoding is decoded exactly once."""
        assert expected == check_raw_path(raw)

    @pytest.mark.parametrize(
        ("raw", "reason"),
        [
            (b"/api%2Fitems", "encoded_slash"),
            (b"/api%2fitems", "encoded_slash"),
            (b"/api%5Citems", "encoded_backslash"),
            (b"/api\\items", "backslash_in_path"),
            (b"/api/%00", "control_character_in_path"),
            (b"/api/%0d%0aSet-Cookie", "control_character_in_path"),
            (b"/api/%ff", "invalid_utf8_in_path"),
            (b"/api/%c0%af", "invalid_utf8_in_path"),
            (b"/api/%252e%252e/admin", "double_encoding"),
            (b"/api/%zz", "malformed_percent_encoding"),
            (b"/api/%", "malformed_percent_encoding"),
            (b"api/items", "path_not_absolute"),
            (b"*", "path_not_absolute"),
            (b"/" + b"a" * 9000, "path_too_long"),
        ],
    )
    def test_rejects_ambiguous(self, raw: bytes, reason: str) -> None:
        """Every form that routers might read differently is a PathProblem with a reason code."""
        with pytest.raises(PathProblem) as caught:
            check_raw_path(raw)

        assert reason == caught.value.reason


class TestParseHost:
    @pytest.mark.parametrize(
        ("values", "expected"),
        [
            ([], ("", None)),
            (["Example.COM"], ("example.com", None)),
            (["example.com:8443"], ("example.com", None)),
            (["example.com."], ("example.com", None)),
            (["[::1]:8000"], ("[::1]", None)),
            (["127.0.0.1:80"], ("127.0.0.1", None)),
            (["a.test", "b.test"], ("", "duplicate_host_header")),
            (["exa mple.com"], ("", "malformed_host_header")),
            (["example.com:http"], ("", "malformed_host_header")),
            (["[not-ipv6]"], ("", "malformed_host_header")),
            (["evil.com/@good.com"], ("", "malformed_host_header")),
        ],
    )
    def test_parse(self, values: list[str], expected: tuple[str, str | None]) -> None:
        """The host is lower-cased without its port; repeated or malformed headers are flagged."""
        assert expected == parse_host(values)


class TestRequestId:
    def test_accepts_well_formed(self) -> None:
        """A short id of safe characters is kept for correlation."""
        assert "req-123.abc:9" == accept_request_id("req-123.abc:9")

    @pytest.mark.parametrize(
        "value", [None, "", "a\r\nSet-Cookie: x", "x" * 200, "<script>", " id"]
    )
    def test_replaces_unsafe(self, value: str | None) -> None:
        """A missing, overlong or unsafe id is replaced by 32 random hex digits."""
        generated = accept_request_id(value)

        assert value != generated
        assert 32 == len(generated)
        int(generated, 16)


class TestTrustedProxies:
    def test_rejects_bad_network(self) -> None:
        """A malformed proxy address fails at construction, naming the value."""
        with pytest.raises(ConfigurationError, match=r"'10\.0\.0\.300'"):
            TrustedProxies(["10.0.0.300"])

    def test_rejects_unknown_header(self) -> None:
        """Only the two standard forwarding headers can be chosen."""
        with pytest.raises(ConfigurationError, match="x-real-ip"):
            TrustedProxies(["10.0.0.1"], header="x-real-ip")  # type: ignore[arg-type]

    def test_untrusted_peer_is_client(self) -> None:
        """A forwarding header from a peer outside the trusted set is ignored."""
        proxies = TrustedProxies(["10.0.0.0/8"])
        peer = ipaddress.ip_address("203.0.113.9")

        client, problem = proxies.resolve_client(peer, headers(("x-forwarded-for", "1.2.3.4")))

        assert peer == client
        assert problem is None

    def test_rightmost_untrusted_hop(self) -> None:
        """The client is the right-most hop that is not a trusted proxy."""
        proxies = TrustedProxies(["10.0.0.0/8"])
        peer = ipaddress.ip_address("10.0.0.1")
        chain = headers(("x-forwarded-for", "6.6.6.6, 198.51.100.7, 10.0.0.2"))

        client, problem = proxies.resolve_client(peer, chain)

        assert ipaddress.ip_address("198.51.100.7") == client
        assert problem is None

    def test_repeated_headers_join(self) -> None:
        """Several X-Forwarded-For headers form one chain, in order."""
        proxies = TrustedProxies(["10.0.0.0/8"])
        peer = ipaddress.ip_address("10.0.0.1")
        chain = headers(("x-forwarded-for", "6.6.6.6"), ("x-forwarded-for", "198.51.100.7"))

        client, _ = proxies.resolve_client(peer, chain)

        assert ipaddress.ip_address("198.51.100.7") == client

    def test_all_trusted_takes_leftmost(self) -> None:
        """When every hop is a trusted proxy, the left-most one is the client."""
        proxies = TrustedProxies(["10.0.0.0/8"])
        peer = ipaddress.ip_address("10.0.0.1")

        client, _ = proxies.resolve_client(peer, headers(("x-forwarded-for", "10.1.1.1, 10.2.2.2")))

        assert ipaddress.ip_address("10.1.1.1") == client

    @pytest.mark.parametrize("value", ["not-an-ip", "1.2.3.4, , 5.6.7.8", "unknown", "1.2.3.4:x:y"])
    def test_malformed_chain(self, value: str) -> None:
        """A trusted proxy's header that cannot be parsed is flagged, and the peer is kept."""
        proxies = TrustedProxies(["127.0.0.1"])
        peer = ipaddress.ip_address("127.0.0.1")

        client, problem = proxies.resolve_client(peer, headers(("x-forwarded-for", value)))

        assert peer == client
        assert "malformed_forwarded_header" == problem

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("for=192.0.2.60;proto=http;by=203.0.113.43", "192.0.2.60"),
            ('for="[2001:db8:cafe::17]:4711"', "2001:db8:cafe::17"),
            ("For=198.51.100.17:8080", "198.51.100.17"),
        ],
    )
    def test_forwarded_header(self, value: str, expected: str) -> None:
        """RFC 7239 Forwarded is read when configured, including quoted IPv6 with a port."""
        proxies = TrustedProxies(["127.0.0.1"], header="forwarded")
        peer = ipaddress.ip_address("127.0.0.1")

        client, problem = proxies.resolve_client(peer, headers(("forwarded", value)))

        assert ipaddress.ip_address(expected) == client
        assert problem is None

    def test_forwarded_obfuscated_node(self) -> None:
        """An obfuscated or unknown Forwarded node cannot name a client."""
        proxies = TrustedProxies(["127.0.0.1"], header="forwarded")
        peer = ipaddress.ip_address("127.0.0.1")

        _, problem = proxies.resolve_client(peer, headers(("forwarded", "for=_hidden")))

        assert "malformed_forwarded_header" == problem

    def test_ignores_other_header(self) -> None:
        """With X-Forwarded-For configured, a Forwarded header changes nothing."""
        proxies = TrustedProxies(["127.0.0.1"])
        peer = ipaddress.ip_address("127.0.0.1")

        client, _ = proxies.resolve_client(peer, headers(("forwarded", "for=6.6.6.6")))

        assert peer == client

    def test_ipv4_mapped_peer(self) -> None:
        """An IPv4-mapped IPv6 peer matches its IPv4 network."""
        proxies = TrustedProxies(["127.0.0.1"])

        assert ipaddress.ip_address("::ffff:127.0.0.1") in proxies

    def test_empty_is_falsy(self) -> None:
        """No networks means no proxy is trusted."""
        assert not TrustedProxies()
        with pytest.warns(InsecureConfigurationWarning):
            everyone = TrustedProxies(["0.0.0.0/0"])
        assert None not in everyone


class TestParsePeer:
    @pytest.mark.parametrize(
        ("client", "expected"),
        [
            (("127.0.0.1", 5000), ipaddress.ip_address("127.0.0.1")),
            (["::1", 1], ipaddress.ip_address("::1")),
            (None, None),
            (("unix-socket", 0), None),
        ],
    )
    def test_parse(self, client: object, expected: object) -> None:
        """The ASGI client pair becomes an address, or None when absent or not an IP."""
        assert expected == parse_peer(client)  # type: ignore[arg-type]


class TestTrustedProxyConfiguration:
    def test_host_bits_rejected(self) -> None:
        """A network with host bits set is a likely typo, and the error offers both readings."""
        with pytest.raises(ConfigurationError) as caught:
            TrustedProxies(["10.0.0.1/8"])

        assert "'10.0.0.1'" in str(caught.value)
        assert "'10.0.0.0/8'" in str(caught.value)

    @pytest.mark.parametrize("network", ["0.0.0.0/0", "::/0"])
    def test_trust_everyone_warns(self, network: str) -> None:
        """Trusting every address is legal but lets any client choose its address."""
        with pytest.warns(InsecureConfigurationWarning, match="trusts every address"):
            TrustedProxies([network])

    def test_non_string_rejected(self) -> None:
        """An entry that is not a string fails with the value in the message."""
        with pytest.raises(ConfigurationError, match="42"):
            TrustedProxies([42])  # type: ignore[list-item]
