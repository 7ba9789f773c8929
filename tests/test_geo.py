# SPDX-License-Identifier: Apache-2.0
"""Tests for geo verification: both lookup backends, every reason code and the configuration."""

from __future__ import annotations

import importlib.util
import ipaddress
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.datastructures import Headers
from starlette.types import Receive, Scope, Send

from tests.geo_fixtures import write_asn_db, write_country_db, write_mmdb
from zerotrust import Engine, Policy, Segment, ZeroTrustMiddleware
from zerotrust.exceptions import ConfigurationError, MissingExtraError
from zerotrust.geo import (
    INTERNAL_NETWORKS,
    GeoBackend,
    GeoIP2FastBackend,
    GeoResult,
    LookupCache,
    MaxMindBackend,
    geoip2fast_backend,
    internal_network,
)
from zerotrust.request import AccessRequest, IPAddress
from zerotrust.testing import capture_events
from zerotrust.verifiers.base import Verdict, VerificationContext
from zerotrust.verifiers.geo import GeoVerifier

SEGMENT = Segment("api", paths=["/api/"], public=True)
CONTEXT = VerificationContext(SEGMENT)


def make_request(client_ip: str | None) -> AccessRequest:
    """Build a GET request whose resolved client address is ``client_ip``."""
    address = ipaddress.ip_address(client_ip) if client_ip is not None else None
    return AccessRequest(
        method="GET",
        path="/api/items",
        raw_path="/api/items",
        host="api.test",
        headers=Headers(),
        client_ip=address,
        peer_ip=address,
        request_id="test-request",
        time=time.time(),
    )


def ip(text: str) -> IPAddress:
    return ipaddress.ip_address(text)


class DictBackend(GeoBackend):
    """A backend that returns results from a dict keyed by address text and counts its lookups."""

    provides_country = True
    provides_asn = True

    def __init__(self, results: dict[str, GeoResult | None] | None = None) -> None:
        self.results = results or {}
        self.lookups = 0

    def lookup(self, address: IPAddress) -> GeoResult | None:
        self.lookups += 1
        return self.results.get(str(address))


class FailingBackend(GeoBackend):
    """A backend whose every lookup raises."""

    def lookup(self, address: IPAddress) -> GeoResult | None:
        raise OSError("database file truncated")


class WrongTypeBackend(GeoBackend):
    """A backend that returns a dict instead of a GeoResult."""

    def lookup(self, address: IPAddress) -> Any:
        return {"country": "DE"}


class SlowLoadingBackend(GeoBackend):
    """A backend whose data takes until ``release`` is set to load."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.loaded = False

    @property
    def ready(self) -> bool:
        return self.loaded

    def load(self) -> None:
        self.release.wait(timeout=5)
        self.loaded = True

    def lookup(self, address: IPAddress) -> GeoResult | None:
        return GeoResult(country="DE")


class BrokenLoadingBackend(GeoBackend):
    """A backend whose data never loads."""

    @property
    def ready(self) -> bool:
        return False

    def load(self) -> None:
        raise FileNotFoundError("geo.dat")

    def lookup(self, address: IPAddress) -> GeoResult | None:
        raise AssertionError("lookup before load")


RESULTS: dict[str, GeoResult | None] = {
    "81.0.0.1": GeoResult(country="DE", asn=3320, as_name="Deutsche Telekom AG"),
    "8.8.8.8": GeoResult(country="US", asn=15169, as_name="GOOGLE"),
    "2.2.2.2": GeoResult(country="RU", asn=64500, as_name="Example Hosting"),
    "2003::1": GeoResult(country="DE", asn=3320),
    "5.0.0.1": GeoResult(country="EU"),
    "6.0.0.1": GeoResult(asn=64501),
    "9.0.0.1": GeoResult(country="FR"),
}


def check(client_ip: str | None, **options: Any) -> Verdict:
    """Judge ``client_ip`` with a verifier on the `RESULTS` table."""
    options.setdefault("backend", DictBackend(RESULTS))
    verifier = GeoVerifier(**options)
    verdict = verifier.verify_cached(make_request(client_ip), CONTEXT)
    assert verdict is not None
    return verdict


@pytest.fixture(name="fast_backend", scope="session")
def fixture_fast_backend() -> GeoIP2FastBackend:
    """The geoip2fast backend with its bundled data loaded."""
    backend = GeoIP2FastBackend()
    backend.load()
    return backend


@pytest.fixture(name="mmdb_dir", scope="session")
def fixture_mmdb_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with the country and ASN test databases."""
    directory = tmp_path_factory.mktemp("mmdb")
    write_country_db(directory)
    write_country_db(directory, ip_version=4)
    write_asn_db(directory)
    return directory


@pytest.fixture(name="maxmind")
def fixture_maxmind(mmdb_dir: Path) -> MaxMindBackend:
    """A MaxMind backend on the country and ASN test databases."""
    return MaxMindBackend(mmdb_dir / "country-ipv6.mmdb", mmdb_dir / "asn.mmdb")


class TestGeoVerifierRules:
    """Allow-lists, deny-lists, their precedence and missing data."""

    @pytest.mark.parametrize(
        ("options", "client_ip", "expected"),
        [
            # Deny-lists
            ({"deny_countries": ["RU"]}, "2.2.2.2", "country_denied"),
            ({"deny_asns": [64500]}, "2.2.2.2", "asn_denied"),
            # Allow-lists
            ({"allow_countries": ["DE"]}, "8.8.8.8", "country_not_allowed"),
            ({"allow_asns": [3320]}, "8.8.8.8", "asn_not_allowed"),
            ({"allow_countries": ["DE", "US"], "allow_asns": [3320]}, "8.8.8.8", "asn_not_allowed"),
            # Deny wins over allow
            ({"allow_countries": ["RU"], "deny_countries": ["RU"]}, "2.2.2.2", "country_denied"),
            ({"allow_countries": ["RU"], "deny_asns": [64500]}, "2.2.2.2", "asn_denied"),
            ({"allow_countries": ["DE"], "deny_asns": [64500]}, "2.2.2.2", "asn_denied"),
            # A deny match wins over missing data
            ({"deny_asns": [64501], "allow_countries": ["DE"]}, "6.0.0.1", "asn_denied"),
            # Missing data
            ({}, "7.7.7.7", "geo_unknown"),
            ({"deny_countries": ["RU"]}, "7.7.7.7", "geo_unknown"),
            ({"deny_countries": ["RU"]}, "6.0.0.1", "geo_unknown"),
            ({"allow_countries": ["DE"]}, "5.0.0.1", "geo_unknown"),
            ({"deny_asns": [64500]}, "9.0.0.1", "geo_unknown"),
            # No client address
            ({}, None, "client_ip_unknown"),
        ],
    )
    def test_failure_reason(self, options: dict[str, Any], client_ip: str, expected: str) -> None:
        """Each failing rule gives its own reason code."""
        verdict = check(client_ip, **options)

        assert "fail" == verdict.outcome
        assert expected == verdict.reason

    @pytest.mark.parametrize(
        ("options", "client_ip"),
        [
            ({}, "8.8.8.8"),
            ({"allow_countries": ["DE"]}, "81.0.0.1"),
            ({"allow_countries": "de"}, "81.0.0.1"),
            ({"allow_countries": ["DE"]}, "2003::1"),
            ({"deny_countries": ["RU"]}, "81.0.0.1"),
            ({"allow_asns": ["AS3320"]}, "81.0.0.1"),
            ({"deny_asns": [64500]}, "81.0.0.1"),
            ({"allow_countries": ["DE"], "allow_asns": [3320], "deny_asns": [64500]}, "81.0.0.1"),
            ({"deny_countries": ["RU"]}, "::ffff:81.0.0.1"),
        ],
    )
    def test_pass(self, options: dict[str, Any], client_ip: str) -> None:
        """An address that every rule accepts passes."""
        verdict = check(client_ip, **options)

        assert "pass" == verdict.outcome

    def test_pass_facts(self) -> None:
        """A pass records the country, AS number and AS name."""
        verdict = check("81.0.0.1", allow_countries=["DE"])

        expected = {"country": "DE", "asn": 3320, "as_name": "Deutsche Telekom AG"}
        assert expected == dict(verdict.facts)

    def test_denial_detail(self) -> None:
        """A denial names the country in its detail, which the access event records."""
        verdict = check("2.2.2.2", deny_countries=["RU"])

        assert "country RU is denied" == verdict.detail
        assert "RU" == verdict.facts["country"]

    def test_not_allowed_detail(self) -> None:
        """A miss on the allow-list names the country and the list."""
        verdict = check("8.8.8.8", allow_countries=["DE"])

        assert "country US is not in allow_countries" == verdict.detail

    def test_continent_code_detail(self) -> None:
        """A continent code such as EU is reported as not being a country."""
        verdict = check("5.0.0.1", allow_countries=["DE"])

        assert "the geo database returned 'EU', which is not a country code" == verdict.detail
        assert "country" not in verdict.facts

    def test_unknown_allow(self) -> None:
        """With ``unknown="allow"``, an address without data passes as region ``unknown``."""
        verdict = check("7.7.7.7", allow_countries=["DE"], unknown="allow")

        assert "pass" == verdict.outcome
        assert {"region": "unknown"} == dict(verdict.facts)

    def test_unknown_allow_keeps_deny(self) -> None:
        """With ``unknown="allow"``, a known denied country is still denied."""
        verdict = check("2.2.2.2", deny_countries=["RU"], unknown="allow")

        assert "country_denied" == verdict.reason

    def test_ipv4_mapped_lookup(self) -> None:
        """An IPv4-mapped IPv6 address is looked up in its IPv4 form."""
        backend = DictBackend(RESULTS)
        verdict = check("::ffff:81.0.0.1", backend=backend)

        assert "DE" == verdict.facts["country"]

    async def test_verify(self) -> None:
        """The async path gives the same verdict as the synchronous one."""
        verifier = GeoVerifier(backend=DictBackend(RESULTS), deny_countries=["RU"])

        verdict = await verifier.verify(make_request("2.2.2.2"), CONTEXT)

        assert "country_denied" == verdict.reason


class TestGeoVerifierInternal:
    """Addresses that are not globally routable."""

    @pytest.mark.parametrize(
        "client_ip",
        [
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "127.0.0.1",
            "169.254.10.10",
            "100.64.0.1",
            "0.0.0.0",  # noqa: S104 -- an address to classify, not one to bind
            "224.0.0.1",
            "255.255.255.255",
            "192.0.2.1",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "ff02::1",
            "2001:db8::1",
            "::ffff:10.0.0.1",
        ],
    )
    def test_denied_by_default(self, client_ip: str) -> None:
        """A non-global address is denied with its own reason code, without a lookup."""
        backend = DictBackend()
        verdict = check(client_ip, backend=backend)

        assert "internal_address_denied" == verdict.reason
        assert {"region": "internal"} == dict(verdict.facts)
        assert 0 == backend.lookups

    def test_allow(self) -> None:
        """With ``internal="allow"``, a private address passes as region ``internal``."""
        verdict = check("10.1.2.3", internal="allow", allow_countries=["DE"])

        assert "pass" == verdict.outcome
        assert {"region": "internal"} == dict(verdict.facts)

    def test_allow_ipv6(self) -> None:
        """With ``internal="allow"``, an IPv6 link-local address passes."""
        verdict = check("fe80::1", internal="allow")

        assert "pass" == verdict.outcome

    def test_detail(self) -> None:
        """The denial names the non-global network."""
        verdict = check("100.64.1.1")

        assert "100.64.1.1 is in the non-global network 100.64.0.0/10" == verdict.detail

    def test_lookup(self, maxmind: MaxMindBackend) -> None:
        """With ``internal="lookup"``, a private address mapped in the database is judged."""
        verdict = check("10.1.2.3", internal="lookup", allow_countries=["DE"], backend=maxmind)

        assert "pass" == verdict.outcome
        assert "DE" == verdict.facts["country"]

    def test_lookup_without_data(self) -> None:
        """With ``internal="lookup"``, a private address without data is ``geo_unknown``."""
        verdict = check("192.168.1.1", internal="lookup")

        assert "geo_unknown" == verdict.reason

    def test_global_address(self) -> None:
        """A public address is not internal."""
        assert internal_network(ip("8.8.8.8")) is None

    @pytest.mark.parametrize("version", [4, 6])
    def test_networks_disjoint(self, version: int) -> None:
        """The internal networks of one family do not overlap, as bisection needs."""
        networks = [ipaddress.ip_network(cidr) for cidr in INTERNAL_NETWORKS]
        family = [network for network in networks if network.version == version]

        overlapping = [(a, b) for a in family for b in family if a is not b and a.overlaps(b)]
        assert [] == overlapping


class TestGeoVerifierFailures:
    """Backend errors fail closed."""

    def test_backend_raises(self, caplog: pytest.LogCaptureFixture) -> None:
        """A lookup that raises denies with ``geo_lookup_failed`` and logs the error."""
        with caplog.at_level(logging.WARNING, logger="zerotrust.verifiers.geo"):
            verdict = check("8.8.8.8", backend=FailingBackend())

        assert "geo_lookup_failed" == verdict.reason
        assert "OSError: database file truncated" == verdict.detail
        assert 1 == len(caplog.records)

    def test_backend_wrong_type(self) -> None:
        """A lookup that returns something other than a GeoResult denies."""
        verdict = check("8.8.8.8", backend=WrongTypeBackend())

        assert "geo_lookup_failed" == verdict.reason
        assert "TypeError: backend returned dict, not a GeoResult" == verdict.detail

    def test_corrupt_record(self, maxmind: MaxMindBackend) -> None:
        """A corrupt database record denies with ``geo_lookup_failed``."""
        verdict = check("7.0.0.1", backend=maxmind)

        assert "geo_lookup_failed" == verdict.reason

    def test_errors_not_cached(self) -> None:
        """A failed lookup is retried on the next request."""
        backend = FailingBackend()
        verifier = GeoVerifier(backend=backend)

        verifier.check(ip("8.8.8.8"))
        backend.lookup = lambda address: GeoResult(country="US")  # type: ignore[method-assign]
        verdict = verifier.check(ip("8.8.8.8"))

        assert "pass" == verdict.outcome

    async def test_load_fails(self) -> None:
        """Data that fails to load denies with ``geo_lookup_failed``."""
        verifier = GeoVerifier(backend=BrokenLoadingBackend())

        verdict = await verifier.verify(make_request("8.8.8.8"), CONTEXT)

        assert "geo_lookup_failed" == verdict.reason
        assert "FileNotFoundError: geo.dat" == verdict.detail

    async def test_slow_load_times_out(self) -> None:
        """Data that loads too slowly fails with the engine's ``verifier_timeout``."""
        backend = SlowLoadingBackend()
        verifier = GeoVerifier(backend=backend, timeout=0.05)
        engine = Engine(
            Policy([Segment("api", paths=["/api/"], public=True, verifiers=[verifier])])
        )

        try:
            decision = await engine.decide(make_request("8.8.8.8"))
        finally:
            backend.release.set()

        assert ("verifier_timeout",) == decision.reasons
        assert 403 == decision.status

    async def test_load_in_thread(self) -> None:
        """The first request loads the data in a worker thread, then the lookups run inline."""
        backend = SlowLoadingBackend()
        backend.release.set()
        verifier = GeoVerifier(backend=backend)
        request = make_request("8.8.8.8")

        before = verifier.verify_cached(request, CONTEXT)
        verdict = await verifier.verify(request, CONTEXT)
        after = verifier.verify_cached(request, CONTEXT)

        assert before is None
        assert "pass" == verdict.outcome
        assert after is not None


class TestGeoVerifierCache:
    """The LRU cache of lookup results."""

    def test_hit(self) -> None:
        """A repeated address is looked up once."""
        backend = DictBackend(RESULTS)
        verifier = GeoVerifier(backend=backend)

        for _ in range(3):
            verifier.check(ip("8.8.8.8"))

        assert 1 == backend.lookups

    def test_miss_cached(self) -> None:
        """An address without data is cached too."""
        backend = DictBackend(RESULTS)
        verifier = GeoVerifier(backend=backend)

        for _ in range(3):
            verifier.check(ip("7.7.7.7"))

        assert 1 == backend.lookups

    def test_disabled(self) -> None:
        """``cache_size=0`` looks up every request."""
        backend = DictBackend(RESULTS)
        verifier = GeoVerifier(backend=backend, cache_size=0)

        for _ in range(3):
            verifier.check(ip("8.8.8.8"))

        assert verifier.cache is None
        assert 3 == backend.lookups

    def test_bounded(self) -> None:
        """The cache never contains more than ``maxsize`` entries."""
        cache = LookupCache(2)
        for text in ("8.8.8.8", "8.8.4.4", "1.1.1.1"):
            cache.put(ip(text), None)

        assert 2 == len(cache)
        assert (False, None) == cache.get(ip("8.8.8.8"))

    def test_families_apart(self) -> None:
        """An IPv4 address and the IPv6 address with the same integer are cached apart."""
        cache = LookupCache(4)
        cache.put(ip("0.0.0.1"), GeoResult(country="DE"))

        assert (False, None) == cache.get(ip("::1"))


class TestGeoVerifierConfiguration:
    """Configuration errors raise at construction."""

    @pytest.mark.parametrize(
        ("options", "parameter"),
        [
            ({"allow_countries": ["UK"]}, "allow_countries"),
            ({"allow_countries": ["DEU"]}, "allow_countries"),
            ({"deny_countries": ["EU"]}, "deny_countries"),
            ({"deny_countries": [49]}, "deny_countries"),
            ({"deny_countries": []}, "deny_countries"),
            ({"allow_asns": []}, "allow_asns"),
            ({"allow_asns": [0]}, "allow_asns"),
            ({"allow_asns": [2**32]}, "allow_asns"),
            ({"deny_asns": ["AS-1"]}, "deny_asns"),
            ({"deny_asns": ["ASX"]}, "deny_asns"),
            ({"deny_asns": [True]}, "deny_asns"),
            ({"deny_asns": [3.5]}, "deny_asns"),
            ({"internal": "ignore"}, "internal"),
            ({"unknown": "skip"}, "unknown"),
            ({"backend": "geoip2fast"}, "backend"),
            ({"cache_size": -1}, "cache_size"),
            ({"cache_size": True}, "cache_size"),
            ({"timeout": 0}, "timeout"),
        ],
    )
    def test_invalid(self, options: dict[str, Any], parameter: str) -> None:
        """An invalid option raises ConfigurationError naming the parameter."""
        options.setdefault("backend", DictBackend())

        with pytest.raises(ConfigurationError) as info:
            GeoVerifier(**options)

        assert parameter == info.value.parameter

    def test_uk_hint(self) -> None:
        """The error for UK points to GB."""
        with pytest.raises(ConfigurationError, match="United Kingdom is GB"):
            GeoVerifier(deny_countries=["UK"], backend=DictBackend())

    def test_normalised(self) -> None:
        """Country codes are upper-cased and AS numbers parsed from ``AS`` strings."""
        verifier = GeoVerifier(
            allow_countries=["de", "Fr"],
            deny_asns=["AS64500", "as64501", 64502],
            backend=DictBackend(),
        )

        assert frozenset({"DE", "FR"}) == verifier.allow_countries
        assert frozenset({64500, 64501, 64502}) == verifier.deny_asns

    def test_asn_rules_need_numbers(self, fast_backend: GeoIP2FastBackend) -> None:
        """ASN rules with the geoip2fast backend, which has no AS numbers, raise."""
        with pytest.raises(ConfigurationError, match="MaxMindBackend") as info:
            GeoVerifier(allow_asns=[3320], backend=fast_backend)

        assert "backend" == info.value.parameter

    def test_country_rules_need_countries(self, mmdb_dir: Path) -> None:
        """Country rules with an ASN-only database raise."""
        backend = MaxMindBackend(asn_db=mmdb_dir / "asn.mmdb")

        with pytest.raises(ConfigurationError, match="country data"):
            GeoVerifier(allow_countries=["DE"], backend=backend)

    def test_default_backend(self) -> None:
        """Without ``backend=``, the verifier uses geoip2fast."""
        verifier = GeoVerifier()

        assert isinstance(verifier.backend, GeoIP2FastBackend)

    def test_geoip2fast_missing(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without geoip2fast installed, the default backend raises MissingExtraError."""
        monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)

        with pytest.raises(MissingExtraError) as info:
            GeoVerifier()

        assert "pip install 'zerotrust-middleware[geo]'" in str(info.value)
        assert "GeoVerifier" == info.value.feature

    def test_maxminddb_missing(self, monkeypatch: pytest.MonkeyPatch, mmdb_dir: Path) -> None:
        """Without maxminddb installed, MaxMindBackend raises MissingExtraError."""
        monkeypatch.setitem(sys.modules, "maxminddb", None)

        with pytest.raises(MissingExtraError) as info:
            MaxMindBackend(mmdb_dir / "country-ipv6.mmdb")

        assert "geo" == info.value.extra


class TestGeoIP2FastBackend:
    """Lookups in the data bundled with geoip2fast 1.2.2 (GeoLite2 of 2024-06-18)."""

    @pytest.mark.parametrize(
        ("client_ip", "country", "as_name"),
        [
            ("8.8.8.8", "US", "GOOGLE"),
            ("1.1.1.1", "AU", "CLOUDFLARENET"),
            ("9.9.9.9", "US", "QUAD9-AS-1"),
            ("193.99.144.80", "DE", "Plus.line AG"),
            ("133.11.0.1", "JP", "The University of Tokyo"),
            ("2001:4860:4860::8888", "US", "GOOGLE"),
            ("2606:4700:4700::1111", "US", "CLOUDFLARENET"),
            ("2a00:1450:4001:800::200e", "DE", "GOOGLE"),
        ],
    )
    def test_lookup(
        self, fast_backend: GeoIP2FastBackend, client_ip: str, country: str, as_name: str
    ) -> None:
        """Well-known public addresses resolve to the country and AS name in the bundled data."""
        result = fast_backend.lookup(ip(client_ip))

        assert GeoResult(country=country, as_name=as_name) == result

    @pytest.mark.parametrize("client_ip", ["10.0.0.1", "127.0.0.1", "100.64.0.1", "fe80::1"])
    def test_reserved(self, fast_backend: GeoIP2FastBackend, client_ip: str) -> None:
        """Reserved and private addresses have no data."""
        assert fast_backend.lookup(ip(client_ip)) is None

    def test_as_name_outside_range(self, fast_backend: GeoIP2FastBackend) -> None:
        """An IPv4 address outside every AS range in the data gets no AS name."""
        # geoip2fast 1.2.2 alone reports "SURF B.V." (145.144.0.0/12) for this address.
        result = fast_backend.lookup(ip("145.183.88.74"))

        assert result is not None
        assert result.as_name is None

    def test_shared(self, fast_backend: GeoIP2FastBackend) -> None:
        """Every instance shares the data loaded once per process."""
        other = GeoIP2FastBackend()

        assert other.ready
        assert fast_backend.load_seconds == other.load_seconds

    def test_verifier(self, fast_backend: GeoIP2FastBackend) -> None:
        """A verifier on geoip2fast allows Germany and denies the United States."""
        verifier = GeoVerifier(allow_countries=["DE"], backend=fast_backend)

        allowed = verifier.check(ip("193.99.144.80"))
        denied = verifier.check(ip("8.8.8.8"))

        assert {"country": "DE", "as_name": "Plus.line AG"} == dict(allowed.facts)
        assert "country_not_allowed" == denied.reason

    def test_environment_restored(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Importing geoip2fast leaves PYTHONWARNINGS and PYTHONIOENCODING as they were."""
        monkeypatch.delenv("PYTHONWARNINGS", raising=False)
        monkeypatch.setenv("PYTHONIOENCODING", "latin-1")
        # A fresh import runs the module code that changes os.environ.
        for module in [name for name in sys.modules if name.startswith("geoip2fast")]:
            monkeypatch.delitem(sys.modules, module)

        geoip2fast_backend._open_bundled_data()

        assert "PYTHONWARNINGS" not in os.environ
        assert "latin-1" == os.environ["PYTHONIOENCODING"]


class TestMaxMindBackend:
    """Lookups in MaxMind DB files built by the tests."""

    @pytest.mark.parametrize(
        ("client_ip", "expected"),
        [
            ("81.0.1.2", GeoResult("DE", 3320, "Deutsche Telekom AG")),
            ("8.8.8.8", GeoResult("US", 15169, "GOOGLE")),
            ("2003::1", GeoResult("DE", 3320, "Deutsche Telekom AG")),
            ("5.0.0.1", GeoResult("EU")),
            ("6.0.0.1", GeoResult(None, None, "Org Without Number")),
            ("9.9.9.9", None),
            ("2001:4860::1", None),
        ],
    )
    def test_lookup(
        self, maxmind: MaxMindBackend, client_ip: str, expected: GeoResult | None
    ) -> None:
        """Country and ASN records are merged into one result."""
        assert expected == maxmind.lookup(ip(client_ip))

    def test_country_only(self, mmdb_dir: Path) -> None:
        """With only a country database, results have no AS data."""
        backend = MaxMindBackend(mmdb_dir / "country-ipv6.mmdb")

        assert GeoResult("DE") == backend.lookup(ip("81.0.1.2"))
        assert not backend.provides_asn

    def test_ipv6_in_ipv4_database(self, mmdb_dir: Path) -> None:
        """An IPv6 address has no data in an IPv4-only database."""
        backend = MaxMindBackend(mmdb_dir / "country-ipv4.mmdb")

        assert backend.lookup(ip("2003::1")) is None

    @pytest.mark.parametrize("client_ip", ["7.0.0.1"])
    def test_corrupt_record(self, maxmind: MaxMindBackend, client_ip: str) -> None:
        """A record with the wrong types raises TypeError."""
        with pytest.raises(TypeError, match="iso_code is int"):
            maxmind.lookup(ip(client_ip))

    def test_corrupt_asn(self, mmdb_dir: Path) -> None:
        """An AS number stored as a string raises TypeError."""
        backend = MaxMindBackend(asn_db=mmdb_dir / "asn.mmdb")

        with pytest.raises(TypeError, match="autonomous_system_number is str"):
            backend.lookup(ip("7.0.0.1"))

    def test_same_file(self, tmp_path: Path) -> None:
        """One file with both layouts serves as country and ASN database."""
        records = {"81.0.0.0/16": {"country": {"iso_code": "DE"}, "autonomous_system_number": 3320}}
        path = write_mmdb(tmp_path / "both.mmdb", records, database_type="GeoIP2-Enterprise")
        backend = MaxMindBackend(path, path)

        assert GeoResult("DE", 3320) == backend.lookup(ip("81.0.0.1"))
        backend.close()

    def test_verifier_asn_rule(self, maxmind: MaxMindBackend) -> None:
        """ASN rules work with an ASN database."""
        verifier = GeoVerifier(deny_asns=[15169], backend=maxmind)

        verdict = verifier.check(ip("8.8.8.8"))

        assert "asn_denied" == verdict.reason
        assert "AS15169 is denied" == verdict.detail

    def test_missing_file(self, tmp_path: Path) -> None:
        """A missing file raises ConfigurationError naming the parameter."""
        with pytest.raises(ConfigurationError) as info:
            MaxMindBackend(tmp_path / "absent.mmdb")

        assert "country_db" == info.value.parameter

    def test_invalid_file(self, tmp_path: Path) -> None:
        """A file that is not a MaxMind DB raises ConfigurationError."""
        path = tmp_path / "asn.mmdb"
        path.write_bytes(b"not a database" * 100)

        with pytest.raises(ConfigurationError, match="not a valid MaxMind DB") as info:
            MaxMindBackend(asn_db=path)

        assert "asn_db" == info.value.parameter

    def test_no_path(self) -> None:
        """A backend without any database raises ConfigurationError."""
        with pytest.raises(ConfigurationError, match="country_db=, asn_db= or both"):
            MaxMindBackend()


class TestGeoVerifierMiddleware:
    """The verifier behind the real middleware and a trusted proxy."""

    async def send(self, verifier: GeoVerifier, forwarded_for: str) -> tuple[int, dict[str, Any]]:
        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})

        middleware = ZeroTrustMiddleware(
            app,
            policy=[Segment("api", paths=["/api/"], public=True, verifiers=[verifier])],
            trusted_proxies=["127.0.0.1"],
        )
        transport = httpx.ASGITransport(app=middleware, client=("127.0.0.1", 50000))
        with capture_events() as events:
            async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
                response = await client.get(
                    "/api/items", headers={"x-forwarded-for": forwarded_for}
                )

        assert 1 == len(events)
        return response.status_code, events[0]

    async def test_allowed(self, fast_backend: GeoIP2FastBackend) -> None:
        """A forwarded German address is allowed and its country recorded in the event."""
        verifier = GeoVerifier(allow_countries=["DE"], backend=fast_backend)

        status, event = await self.send(verifier, "193.99.144.80")

        assert 200 == status
        assert "193.99.144.80" == event["client_ip"]
        assert "DE" == event["facts"]["country"]
        assert "Plus.line AG" == event["facts"]["as_name"]

    async def test_denied(self, fast_backend: GeoIP2FastBackend) -> None:
        """A forwarded address outside the allow-list is denied with 403 and its reason."""
        verifier = GeoVerifier(allow_countries=["DE"], backend=fast_backend)

        status, event = await self.send(verifier, "8.8.8.8")

        assert 403 == status
        assert ["country_not_allowed"] == event["reasons"]
        assert "country US is not in allow_countries" == event["verifiers"][0]["detail"]

    async def test_internal(self, fast_backend: GeoIP2FastBackend) -> None:
        """A forwarded private address is denied as internal."""
        verifier = GeoVerifier(backend=fast_backend)

        status, event = await self.send(verifier, "10.20.30.40")

        assert 403 == status
        assert ["internal_address_denied"] == event["reasons"]
