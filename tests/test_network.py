# SPDX-License-Identifier: Apache-2.0
"""Tests for network verification: CIDR lookup, reason codes, configuration and enforcement."""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.datastructures import Headers
from starlette.types import Receive, Scope, Send

from zerotrust import ConfigurationError, Engine, MemorySink, Policy, Segment, ZeroTrustMiddleware
from zerotrust.request import AccessRequest, IPAddress
from zerotrust.testing import capture_events
from zerotrust.verifiers.base import Verdict, VerificationContext
from zerotrust.verifiers.network import NetworkSet, NetworkVerifier

CONTEXT = VerificationContext(Segment("all", paths=["/"], public=True))


def make_request(client_ip: str | None) -> AccessRequest:
    address = ipaddress.ip_address(client_ip) if client_ip is not None else None
    return AccessRequest(
        method="GET",
        path="/",
        raw_path="/",
        host="app.test",
        headers=Headers(),
        client_ip=address,
        peer_ip=address,
        request_id="req-1",
        time=1_700_000_000.0,
    )


def naive_lookup(networks: list[tuple[str, str]], address: IPAddress) -> str | None:
    """Return the name of the longest-prefix network containing ``address``, by a full scan."""
    best: tuple[int, str] | None = None
    for name, cidr in networks:
        network = ipaddress.ip_network(cidr)
        if address.version != network.version or address not in network:
            continue
        if best is None or network.prefixlen > best[0]:
            best = (network.prefixlen, name)
    return best[1] if best is not None else None


# Networks drawn from a small range, so that they overlap and nest often.
ipv4_networks = st.builds(
    lambda offset, prefix: str(ipaddress.IPv4Network((0x0A000000 + offset, prefix), strict=False)),
    st.integers(0, 0xFFFF),
    st.integers(16, 32),
)
ipv6_networks = st.builds(
    lambda offset, prefix: str(
        ipaddress.IPv6Network(((0x20010DB8 << 96) + (offset << 100), prefix), strict=False)
    ),
    st.integers(0, 0xFFF),
    st.integers(32, 128),
)


class TestNetworkSet:
    def test_most_specific_match(self) -> None:
        """A nested network names the match over the network that contains it."""
        networks = NetworkSet({"corp": "10.0.0.0/8", "lab": "10.20.0.0/16"})

        assert ("lab", "10.20.0.0/16") == networks.lookup(ipaddress.ip_address("10.20.1.1"))
        assert ("corp", "10.0.0.0/8") == networks.lookup(ipaddress.ip_address("10.21.1.1"))
        assert ("corp", "10.0.0.0/8") == networks.lookup(ipaddress.ip_address("10.19.255.255"))

    def test_unnamed_label_is_cidr(self) -> None:
        """A network given without a name is named by its CIDR text."""
        networks = NetworkSet(["192.0.2.0/24"])

        assert ("192.0.2.0/24", "192.0.2.0/24") == networks.lookup(
            ipaddress.ip_address("192.0.2.9")
        )

    def test_bare_address_is_host_network(self) -> None:
        """An address without a prefix is a single-host network."""
        networks = NetworkSet(["192.0.2.7", "2001:db8::7"])

        assert ipaddress.ip_address("192.0.2.7") in networks
        assert ipaddress.ip_address("192.0.2.8") not in networks
        assert ipaddress.ip_address("2001:db8::7") in networks

    def test_ipv4_mapped_client_matches_ipv4(self) -> None:
        """An IPv4-mapped IPv6 client address matches the IPv4 network."""
        networks = NetworkSet({"office": "192.0.2.0/24"})

        assert ("office", "192.0.2.0/24") == networks.lookup(
            ipaddress.ip_address("::ffff:192.0.2.10")
        )

    def test_ipv4_mapped_network_matches_ipv4_client(self) -> None:
        """A configured IPv4-mapped network is compared in IPv4 form."""
        networks = NetworkSet(["::ffff:192.0.2.0/120"])

        assert ("192.0.2.0/24", "192.0.2.0/24") == networks.lookup(
            ipaddress.ip_address("192.0.2.10")
        )

    def test_versions_kept_apart(self) -> None:
        """An IPv4 network never matches an IPv6 client, and the other way round."""
        assert ipaddress.ip_address("2001:db8::1") not in NetworkSet(["0.0.0.0/0"])
        assert ipaddress.ip_address("198.51.100.1") not in NetworkSet(["::/0"])
        assert ipaddress.ip_address("::ffff:198.51.100.1") not in NetworkSet(["::/0"])

    def test_contains_non_address(self) -> None:
        """Membership of something that is not an address is False, not an error."""
        networks = NetworkSet(["0.0.0.0/0"])

        assert "10.0.0.1" not in networks
        assert None not in networks

    def test_len_and_repr(self) -> None:
        """Length counts the distinct networks, and repr shows the count."""
        networks = NetworkSet({"a": ["10.0.0.0/8", "10.0.0.0/8"], "b": "2001:db8::/32"})

        assert 2 == len(networks)
        assert "<NetworkSet networks=2>" == repr(networks)

    @given(
        networks=st.lists(ipv4_networks, min_size=1, max_size=40),
        offset=st.integers(0, 0x1FFFF),
    )
    def test_lookup_matches_scan_ipv4(self, networks: list[str], offset: int) -> None:
        """For IPv4, the lookup names the same network as a longest-prefix scan."""
        named = [(f"n{index}", cidr) for index, cidr in enumerate(dict.fromkeys(networks))]
        address = ipaddress.IPv4Address(0x0A000000 + offset)

        found = NetworkSet({name: cidr for name, cidr in named}).lookup(address)

        assert naive_lookup(named, address) == (found[0] if found else None)

    @given(
        networks=st.lists(ipv6_networks, min_size=1, max_size=40),
        offset=st.integers(0, 0x1FFF),
        low=st.integers(0, 2**100 - 1),
    )
    def test_lookup_matches_scan_ipv6(self, networks: list[str], offset: int, low: int) -> None:
        """For IPv6, the lookup names the same network as a longest-prefix scan."""
        named = [(f"n{index}", cidr) for index, cidr in enumerate(dict.fromkeys(networks))]
        address = ipaddress.IPv6Address((0x20010DB8 << 96) + (offset << 100) + low)

        found = NetworkSet({name: cidr for name, cidr in named}).lookup(address)

        assert naive_lookup(named, address) == (found[0] if found else None)


class TestNetworkConfiguration:
    @pytest.mark.parametrize(
        ("allow", "quoted"),
        [
            (["10.0.0.300/8"], "'10.0.0.300/8'"),
            (["office"], "'office'"),
            (["10.0.0.0/33"], "'10.0.0.0/33'"),
            ([""], "''"),
            ([42], "42"),
            (["fe80::1%eth0/128"], "'fe80::1%eth0/128'"),
            ({"office": []}, "'office'"),
            ({"": "10.0.0.0/8"}, "''"),
            (42, "42"),
            (b"10.0.0.0/8", "b'10.0.0.0/8'"),
        ],
    )
    def test_invalid_entry(self, allow: Any, quoted: str) -> None:
        """An invalid allow entry raises ConfigurationError that quotes the value."""
        with pytest.raises(ConfigurationError) as error:
            NetworkVerifier(allow=allow)

        assert quoted in str(error.value)
        assert "allow" == str(error.value.parameter).split(".")[0]

    def test_host_bits_rejected(self) -> None:
        """A CIDR with host bits set is rejected with the masked network as a hint."""
        with pytest.raises(ConfigurationError) as error:
            NetworkVerifier(deny=["10.1.2.3/8"])

        assert "'10.1.2.3/8' has host bits set: write '10.0.0.0/8'" in str(error.value)
        assert "deny" == error.value.parameter

    def test_host_bits_cleared_without_strict(self) -> None:
        """With strict=False, the host bits of a CIDR are cleared."""
        verifier = NetworkVerifier(allow=["10.1.2.3/8"], strict=False)

        assert (("10.0.0.0/8", ipaddress.ip_network("10.0.0.0/8")),) == verifier.allow.networks

    def test_strict_must_be_bool(self) -> None:
        """A strict value that is not a bool raises ConfigurationError."""
        with pytest.raises(ConfigurationError, match="strict must be True or False"):
            NetworkVerifier(allow=["10.0.0.0/8"], strict="no")  # type: ignore[arg-type]

    def test_empty_lists(self) -> None:
        """A verifier with neither allowed nor denied networks raises ConfigurationError."""
        with pytest.raises(ConfigurationError, match="at least one network"):
            NetworkVerifier()

    def test_network_under_two_names(self) -> None:
        """One network listed under two names raises ConfigurationError naming both."""
        with pytest.raises(ConfigurationError) as error:
            NetworkVerifier(allow={"office": "10.0.0.0/8", "vpn": ["10.0.0.0/8"]})

        assert "'office' and 'vpn'" in str(error.value)

    def test_single_string(self) -> None:
        """A single CIDR string is one network, not a list of characters."""
        verifier = NetworkVerifier(allow="192.0.2.0/24")

        assert 1 == len(verifier.allow)

    def test_network_objects(self) -> None:
        """ipaddress network objects are accepted as entries."""
        verifier = NetworkVerifier(deny=[ipaddress.ip_network("192.0.2.0/24")])

        assert ipaddress.ip_address("192.0.2.1") in verifier.deny

    def test_surrounding_spaces(self) -> None:
        """Spaces around a CIDR, as left by splitting a configuration string, are ignored."""
        verifier = NetworkVerifier(allow=[" 192.0.2.0/24 "])

        assert ipaddress.ip_address("192.0.2.1") in verifier.allow


class TestNetworkVerifier:
    verifier = NetworkVerifier(
        allow={"office": ["192.0.2.0/24", "2001:db8:1::/48"], "vpn": "10.8.0.0/16"},
        deny={"quarantine": "10.8.66.0/24"},
    )

    @pytest.mark.parametrize(
        ("client_ip", "reason"),
        [
            # no address
            (None, "client_ip_unknown"),
            # in a denied network, even inside an allowed one
            ("10.8.66.5", "network_denied"),
            ("::ffff:10.8.66.5", "network_denied"),
            # outside every allowed network
            ("198.51.100.7", "network_not_allowed"),
            ("2001:db8:2::1", "network_not_allowed"),
            ("::ffff:198.51.100.7", "network_not_allowed"),
        ],
    )
    def test_failure_reasons(self, client_ip: str | None, reason: str) -> None:
        """Each way a client address fails has its own reason code."""
        verdict = self.verifier.verify_cached(make_request(client_ip), CONTEXT)

        assert "fail" == verdict.outcome
        assert reason == verdict.reason

    @pytest.mark.parametrize(
        ("client_ip", "network", "cidr"),
        [
            ("192.0.2.10", "office", "192.0.2.0/24"),
            ("2001:db8:1:ff::1", "office", "2001:db8:1::/48"),
            ("::ffff:192.0.2.10", "office", "192.0.2.0/24"),
            ("10.8.67.1", "vpn", "10.8.0.0/16"),
        ],
    )
    def test_allowed_facts(self, client_ip: str, network: str, cidr: str) -> None:
        """A client in an allowed network passes with the network name and CIDR as facts."""
        verdict = self.verifier.verify_cached(make_request(client_ip), CONTEXT)

        assert "pass" == verdict.outcome
        assert {"network": network, "network_cidr": cidr} == dict(verdict.facts)

    def test_denied_detail_and_facts(self) -> None:
        """A denial names the denied network in the detail and the facts."""
        verdict = self.verifier.verify_cached(make_request("10.8.66.5"), CONTEXT)

        assert "client is in denied network 'quarantine' (10.8.66.0/24)" == verdict.detail
        assert {"network": "quarantine", "network_cidr": "10.8.66.0/24"} == dict(verdict.facts)

    def test_shared_facts_read_only(self) -> None:
        """Facts of a verdict that serves many requests cannot be changed by one of them."""
        verdict = self.verifier.verify_cached(make_request("192.0.2.10"), CONTEXT)

        with pytest.raises(TypeError):
            verdict.facts["network"] = "elsewhere"  # type: ignore[index]

    def test_deny_only_passes_others(self) -> None:
        """With only a deny list, every client outside it passes, without network facts."""
        verifier = NetworkVerifier(deny=["203.0.113.0/24"])

        passed = verifier.verify_cached(make_request("198.51.100.1"), CONTEXT)
        failed = verifier.verify_cached(make_request("203.0.113.1"), CONTEXT)

        assert Verdict.passed() == passed
        assert "network_denied" == failed.reason

    def test_deny_wins_over_equal_allow(self) -> None:
        """A network in both lists denies, because the deny list wins."""
        verifier = NetworkVerifier(allow=["192.0.2.0/24"], deny=["192.0.2.0/24"])

        verdict = verifier.verify_cached(make_request("192.0.2.1"), CONTEXT)

        assert "network_denied" == verdict.reason

    async def test_verify_matches_cached(self) -> None:
        """The async verify returns the same verdict as verify_cached."""
        request = make_request("192.0.2.10")

        assert self.verifier.verify_cached(request, CONTEXT) == await self.verifier.verify(
            request, CONTEXT
        )

    def test_default_name_and_kind(self) -> None:
        """The verifier is a context verifier named 'network' unless renamed."""
        assert ("network", "context") == (self.verifier.name, self.verifier.kind)
        assert "office_net" == NetworkVerifier(allow=["10.0.0.0/8"], name="office_net").name


class SlowNetworkVerifier(NetworkVerifier):
    """A network verifier whose lookup waits on a backend that never replies in time."""

    def verify_cached(self, request: AccessRequest, context: VerificationContext) -> None:  # type: ignore[override]
        return None

    async def verify(self, request: AccessRequest, context: VerificationContext) -> Verdict:
        await asyncio.sleep(5)
        return Verdict.passed()


class TestNetworkEngine:
    async def test_decision_allows(self) -> None:
        """Through the engine, a client in an allowed network is allowed with its facts."""
        verifier = NetworkVerifier(allow={"office": "192.0.2.0/24"})
        engine = Engine(Policy([Segment("all", paths=["/"], public=True, verifiers=[verifier])]))

        decision = await engine.decide(make_request("192.0.2.3"))

        assert decision.allowed
        assert "office" == decision.facts["network"]

    async def test_timeout(self) -> None:
        """A verifier that takes longer than its timeout fails with verifier_timeout."""
        verifier = SlowNetworkVerifier(allow=["192.0.2.0/24"], timeout=0.05)
        engine = Engine(Policy([Segment("all", paths=["/"], public=True, verifiers=[verifier])]))

        decision = await engine.decide(make_request("192.0.2.3"))

        assert ("verifier_timeout",) == decision.reasons
        assert 403 == decision.status


async def hello(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})


def client_from(client_ip: str) -> httpx.AsyncClient:
    verifier = NetworkVerifier(
        allow={"office": "192.0.2.0/24"}, deny={"quarantine": "192.0.2.128/25"}
    )
    segment = Segment("intranet", paths=["/"], public=True, verifiers=[verifier])
    app = ZeroTrustMiddleware(hello, policy=[segment], events=MemorySink())
    transport = httpx.ASGITransport(app=app, client=(client_ip, 50000))
    return httpx.AsyncClient(transport=transport, base_url="http://app.test")


class TestNetworkMiddleware:
    async def test_allowed_event(self) -> None:
        """An allowed request reaches the app, and the event records the network facts."""
        with capture_events() as events:
            async with client_from("192.0.2.10") as client:
                response = await client.get("/reports")

        assert 200 == response.status_code
        assert "allow" == events[0]["decision"]
        assert {"network": "office", "network_cidr": "192.0.2.0/24"} == events[0]["facts"]

    async def test_denied_event(self) -> None:
        """A denied request gets 403, and the event records the reason code and detail."""
        with capture_events() as events:
            async with client_from("192.0.2.200") as client:
                response = await client.get("/reports")

        assert 403 == response.status_code
        assert "quarantine" not in response.text
        assert ["network_denied"] == events[0]["reasons"]
        detail = events[0]["verifiers"][0]["detail"]
        assert "client is in denied network 'quarantine' (192.0.2.128/25)" == detail

    async def test_outside_event(self) -> None:
        """A client outside every allowed network gets 403 with network_not_allowed."""
        with capture_events() as events:
            async with client_from("198.51.100.1") as client:
                response = await client.get("/reports")

        assert 403 == response.status_code
        assert ["network_not_allowed"] == events[0]["reasons"]
