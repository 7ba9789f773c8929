# SPDX-License-Identifier: Apache-2.0
"""Tests for device verification: posture assertions, client certificates and the registry."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from starlette.datastructures import Headers
from starlette.responses import PlainTextResponse

from zerotrust import Engine, JWTVerifier, Policy, Segment, ZeroTrustMiddleware
from zerotrust.devices import (
    NOT_CACHED,
    DeviceRecord,
    DeviceRegistry,
    DeviceRegistryError,
    FileDeviceRegistry,
    MemoryDeviceRegistry,
    normalize_fingerprint,
)
from zerotrust.events import MemorySink
from zerotrust.exceptions import ConfigurationError, InsecureConfigurationWarning
from zerotrust.request import AccessRequest
from zerotrust.testing import TokenIssuer, capture_events, serve
from zerotrust.verifiers.base import Verdict, VerificationContext
from zerotrust.verifiers.device import DeviceVerifier, parse_version

AUDIENCE = "zerotrust-devices"
NOW = time.time()

Evaluate = Callable[[DeviceVerifier, AccessRequest], Awaitable[Verdict]]


# Credentials ------------------------------------------------------------------------------------


def assertion(issuer: TokenIssuer, device_id: str = "mac-0042", **claims: Any) -> str:
    """Mint a device posture assertion for a healthy, managed macOS device used by alice."""
    posture: dict[str, Any] = {
        "user": "alice",
        "managed": True,
        "os": "macOS",
        "os_version": "14.4.1",
        "disk_encrypted": True,
        "screen_lock": True,
        "posture_checked_at": int(time.time()) - 60,
    }
    posture.update(claims)
    options = {
        name: posture.pop(name)
        for name in ("lifetime", "alg", "kid", "headers", "now")
        if name in posture
    }

    return issuer.token(device_id, audience=AUDIENCE, **options, **posture)


def encode_segment(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


@pytest.fixture(name="ca", scope="module")
def fixture_ca() -> trustme.CA:
    return trustme.CA()


def client_pem(ca: trustme.CA, name: str) -> str:
    """Issue a client certificate for ``name`` and return its PEM."""
    return ca.issue_cert(f"{name}.devices.test").cert_chain_pems[0].bytes().decode()


def fingerprint(pem: str) -> str:
    certificate = x509.load_pem_x509_certificate(pem.encode())
    return certificate.fingerprint(hashes.SHA256()).hex()


# Requests and verifiers -------------------------------------------------------------------------


def make_request(
    token: str | None = None,
    *,
    chain: tuple[str, ...] = (),
    headers: list[tuple[str, str]] | None = None,
    at: float | None = None,
    trusted: bool = False,
) -> AccessRequest:
    """Build a request carrying ``token`` in X-Device-Assertion and ``chain`` from mutual TLS."""
    raw = [(name.lower().encode(), value.encode()) for name, value in headers or []]
    if token is not None:
        raw.append((b"x-device-assertion", token.encode()))

    return AccessRequest(
        method="GET",
        path="/api/items",
        raw_path="/api/items",
        host="api.test",
        headers=Headers(raw=raw),
        client_ip=None,
        peer_ip=None,
        request_id="test-request",
        time=time.time() if at is None else at,
        tls_client_chain=chain,
        from_trusted_proxy=trusted,
    )


def make_verifier(issuer: TokenIssuer, /, **options: Any) -> DeviceVerifier:
    settings: dict[str, Any] = {
        "issuer": issuer.issuer,
        "audience": AUDIENCE,
        "algorithms": ["RS256", "ES256", "EdDSA"],
        "keys": issuer.jwks(),
    }
    settings.update(options)

    return DeviceVerifier(**settings)


def record(device_id: str = "mac-0042", **fields: Any) -> DeviceRecord:
    defaults: dict[str, Any] = {
        "owner": "alice",
        "managed": True,
        "os": "macos",
        "os_version": "14.4.1",
        "disk_encrypted": True,
        "screen_lock": True,
        "posture_checked_at": time.time() - 60,
    }
    defaults.update(fields)
    return DeviceRecord(device_id, **defaults)


CONTEXT = VerificationContext(Segment("api", paths=["/api/"], public=True))


async def evaluate_cached(verifier: DeviceVerifier, request: AccessRequest) -> Verdict:
    verdict = verifier.verify_cached(request, CONTEXT)
    assert verdict is not None
    return verdict


async def evaluate_async(verifier: DeviceVerifier, request: AccessRequest) -> Verdict:
    return await verifier.verify(request, CONTEXT)


@pytest.fixture(name="evaluate", params=["cached", "async"])
def fixture_evaluate(request: pytest.FixtureRequest) -> Evaluate:
    """Run each case through both the synchronous fast path and `verify`."""
    return evaluate_cached if request.param == "cached" else evaluate_async


# Versions ---------------------------------------------------------------------------------------


class TestParseVersion:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("14", (14, 0, 0, 0, 0, 0, 0, 0)),
            ("14.4.1", (14, 4, 1, 0, 0, 0, 0, 0)),
            (" 10.0.19045 ", (10, 0, 19045, 0, 0, 0, 0, 0)),
            ("1.2.3.4.5.6.7.8", (1, 2, 3, 4, 5, 6, 7, 8)),
        ],
    )
    def test_valid(self, text: str, expected: tuple[int, ...]) -> None:
        """Dotted numeric versions parse into zero-padded tuples."""
        assert expected == parse_version(text)

    @pytest.mark.parametrize(
        "text", ["", "14.", ".14", "14..1", "14.4 beta", "v14", "1.2.3.4.5.6.7.8.9", "١٤", None, 14]
    )
    def test_invalid(self, text: Any) -> None:
        """Anything but digits and dots is unparsable, so callers can fail closed."""
        assert None is parse_version(text)

    def test_numeric_order(self) -> None:
        """Versions compare per component as numbers, not as strings."""
        assert parse_version("14.10") > parse_version("14.9")  # type: ignore[operator]
        assert parse_version("14.2") == parse_version("14.2.0")


# Registry ---------------------------------------------------------------------------------------


class TestMemoryDeviceRegistry:
    async def test_lookup_by_id_and_fingerprint(self) -> None:
        """A device is found by its id and by each of its fingerprints."""
        known = "ab" * 32
        device = record(certificate_fingerprints=frozenset({known}))
        registry = MemoryDeviceRegistry([device])

        assert device == registry.get_cached("mac-0042")
        assert device == registry.get_cached(known)
        assert device == await registry.get(known)
        assert None is registry.get_cached("mac-9999")
        assert 1 == len(registry)

    def test_duplicate_id_rejected(self) -> None:
        """Two devices with one id are a configuration error."""
        with pytest.raises(ConfigurationError, match="'mac-0042' belongs to both"):
            MemoryDeviceRegistry([record(), record()])

    def test_id_equal_to_fingerprint_rejected(self) -> None:
        """A device id may not equal another device's fingerprint: keys share one space."""
        known = "cd" * 32
        with pytest.raises(ConfigurationError, match="must be unique"):
            MemoryDeviceRegistry(
                [record(certificate_fingerprints=frozenset({known})), record(known)]
            )

    def test_fingerprint_not_normalized_rejected(self) -> None:
        """Fingerprints in records must be 64 lower-case hex digits."""
        with pytest.raises(ConfigurationError, match="lower-case hex"):
            MemoryDeviceRegistry([record(certificate_fingerprints=frozenset({"AB" * 32}))])

    def test_replace(self) -> None:
        """replace() swaps every device at once."""
        registry = MemoryDeviceRegistry([record()])

        registry.replace([record("win-0001")])

        assert None is registry.get_cached("mac-0042")
        assert "win-0001" == registry.get_cached("win-0001").device_id  # type: ignore[union-attr]

    def test_base_class_has_no_fast_path(self) -> None:
        """A registry that only implements get() reports every fast lookup as not cached."""

        class Remote(DeviceRegistry):
            async def get(self, key: str) -> DeviceRecord | None:
                return None

        assert NOT_CACHED is Remote().get_cached("mac-0042")

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("AB:" * 31 + "AB", "ab" * 32),
            ("  " + "0f" * 32, "0f" * 32),
        ],
    )
    def test_normalize_fingerprint(self, value: str, expected: str) -> None:
        """Fingerprints with colons or upper case are normalised."""
        assert expected == normalize_fingerprint(value)

    @pytest.mark.parametrize("value", ["ab" * 31, "zz" * 32, "", "ab" * 33])
    def test_normalize_fingerprint_invalid(self, value: str) -> None:
        """Anything but 32 bytes of hex is rejected."""
        with pytest.raises(ValueError, match="not a SHA-256 fingerprint"):
            normalize_fingerprint(value)


JSON_REGISTRY = {
    "devices": [
        {
            "device_id": "mac-0042",
            "owner": "alice",
            "certificate_fingerprints": ["AB:" * 31 + "AB"],
            "managed": True,
            "os": "macOS",
            "os_version": "14.4.1",
            "disk_encrypted": True,
            "screen_lock": True,
            "posture_checked_at": "2024-05-01T12:00:00Z",
            "enrolled_at": 1700000000,
        },
        {"device_id": "win-0001", "revoked": True, "revoked_at": "2024-05-02T00:00:00+02:00"},
    ]
}

TOML_REGISTRY = """
[[devices]]
device_id = "mac-0042"
owner = "alice"
certificate_fingerprints = ["abababababababababababababababababababababababababababababababab"]
managed = true
os = "macOS"
os_version = "14.4.1"
disk_encrypted = true
screen_lock = true
posture_checked_at = 2024-05-01T12:00:00Z
enrolled_at = 1700000000

[[devices]]
device_id = "win-0001"
revoked = true
revoked_at = 2024-05-02T00:00:00+02:00
"""


class TestFileDeviceRegistry:
    @pytest.mark.parametrize("suffix", ["json", "toml"])
    def test_load(self, tmp_path: Path, suffix: str) -> None:
        """JSON and TOML files load into the same records."""
        path = tmp_path / f"devices.{suffix}"
        text = json.dumps(JSON_REGISTRY) if suffix == "json" else TOML_REGISTRY
        path.write_text(text)

        registry = FileDeviceRegistry(path)

        mac = registry.get_cached("ab" * 32)
        assert isinstance(mac, DeviceRecord)
        assert "mac-0042" == mac.device_id
        assert "alice" == mac.owner
        assert "macos" == mac.os
        assert 1714564800.0 == mac.posture_checked_at
        assert 1700000000.0 == mac.enrolled_at
        windows = registry.get_cached("win-0001")
        assert isinstance(windows, DeviceRecord)
        assert windows.revoked
        assert 1714600800.0 == windows.revoked_at
        assert None is windows.owner
        assert not windows.managed

    def test_format_overrides_suffix(self, tmp_path: Path) -> None:
        """format= reads a file whose suffix says nothing."""
        path = tmp_path / "devices.conf"
        path.write_text(TOML_REGISTRY)

        assert 2 == len(FileDeviceRegistry(path, format="toml"))

    def test_unknown_suffix(self, tmp_path: Path) -> None:
        """A file without .json or .toml and without format= is rejected."""
        path = tmp_path / "devices.yaml"
        path.write_text("devices: []")

        with pytest.raises(ConfigurationError, match=r"\.json or \.toml"):
            FileDeviceRegistry(path)

    def test_missing_file(self, tmp_path: Path) -> None:
        """A missing file names the path."""
        path = tmp_path / "absent.json"

        with pytest.raises(ConfigurationError, match=r"absent\.json"):
            FileDeviceRegistry(path)

    @pytest.mark.parametrize(
        ("suffix", "text", "message"),
        [
            ("json", "{not json", "invalid JSON"),
            ("toml", "devices = [", "invalid TOML"),
            ("json", "[]", "top level must be a table"),
            ("json", '{"devices": {}}', "'devices' list"),
            ("json", '{"devices": [], "extra": 1}', "unknown top-level keys"),
            ("json", '{"devices": [1]}', r"devices\[0\] must be a table"),
            ("json", '{"devices": [{"owner": "a"}]}', r"devices\[0\]: key 'device_id'"),
            ("json", '{"devices": [{"device_id": "-x"}]}', "key 'device_id'"),
        ],
    )
    def test_malformed_document(self, tmp_path: Path, suffix: str, text: str, message: str) -> None:
        """A malformed file is rejected with the file name and what is wrong."""
        path = tmp_path / f"devices.{suffix}"
        path.write_text(text)

        with pytest.raises(ConfigurationError, match=message) as caught:
            FileDeviceRegistry(path)
        assert str(path) in str(caught.value)

    @pytest.mark.parametrize(
        ("key", "value", "expected"),
        [
            ("managed", "yes", "true or false"),
            ("revoked", 1, "true or false"),
            ("disk_encrypted", "on", "true or false"),
            ("owner", "", "non-empty string"),
            ("os_version", 14, "non-empty string"),
            ("revoked_at", "2024-05-02T00:00:00", "UTC offset"),
            ("enrolled_at", "yesterday", "UTC offset"),
            ("posture_checked_at", True, "UTC offset"),
            ("posture_checked_at", -5, "UTC offset"),
            ("certificate_fingerprints", "ab" * 32, "list of SHA-256"),
            ("certificate_fingerprints", ["abc"], "not a SHA-256 fingerprint"),
            ("manged", True, "unknown key 'manged'"),
        ],
    )
    def test_invalid_entry(self, tmp_path: Path, key: str, value: Any, expected: str) -> None:
        """An invalid value names the file, the entry, the device and the key."""
        path = tmp_path / "devices.json"
        entry = {"device_id": "mac-0042", key: value}
        path.write_text(json.dumps({"devices": [{"device_id": "ok-1"}, entry]}))

        with pytest.raises(ConfigurationError, match=expected) as caught:
            FileDeviceRegistry(path)
        assert f"{path}: devices[1] (device_id 'mac-0042')" in str(caught.value)
        assert f"devices[1].{key}" == caught.value.parameter

    def test_duplicate_device(self, tmp_path: Path) -> None:
        """Two entries with one device id are rejected, naming the file."""
        path = tmp_path / "devices.toml"
        path.write_text('[[devices]]\ndevice_id = "a"\n[[devices]]\ndevice_id = "a"\n')

        with pytest.raises(ConfigurationError, match="belongs to both") as caught:
            FileDeviceRegistry(path)
        assert str(path) in str(caught.value)

    def test_reload(self, tmp_path: Path) -> None:
        """reload() picks up a changed file."""
        path = tmp_path / "devices.json"
        path.write_text(json.dumps({"devices": [{"device_id": "mac-0042"}]}))
        registry = FileDeviceRegistry(path)

        path.write_text(json.dumps({"devices": [{"device_id": "mac-0042", "revoked": True}]}))
        registry.reload()

        assert registry.get_cached("mac-0042").revoked  # type: ignore[union-attr]

    def test_failed_reload_keeps_devices(self, tmp_path: Path) -> None:
        """A reload of an invalid file raises and keeps the devices loaded before."""
        path = tmp_path / "devices.json"
        path.write_text(json.dumps({"devices": [{"device_id": "mac-0042"}]}))
        registry = FileDeviceRegistry(path)

        path.write_text("{broken")
        with pytest.raises(ConfigurationError, match="invalid JSON"):
            registry.reload()

        assert isinstance(registry.get_cached("mac-0042"), DeviceRecord)


# Configuration ----------------------------------------------------------------------------------


class TestConfiguration:
    @pytest.mark.parametrize(
        ("options", "parameter"),
        [
            ({"credentials": []}, "credentials"),
            ({"credentials": ["password"]}, "credentials"),
            ({"credentials": ["certificate"]}, "registry"),
            ({"registry": {"mac-0042": {}}}, "registry"),
            ({"issuer": ""}, "issuer"),
            ({"audience": []}, "audience"),
            ({"algorithms": None}, "algorithms"),
            ({"algorithms": ["none"]}, "algorithms"),
            ({"jwks_url": "https://mdm.test/jwks"}, "jwks_url"),
            ({"keys": None}, "jwks_url"),
            ({"header": "bad header"}, "header"),
            ({"proxy_header": "x:y"}, "proxy_header"),
            ({"proxy_format": "der"}, "proxy_format"),
            ({"user_claim": "cnf..sub"}, "user_claim"),
            ({"device_id_claim": ""}, "device_id_claim"),
            ({"leeway": -1}, "leeway"),
            ({"leeway": 301}, "leeway"),
            ({"max_assertion_lifetime": 0}, "max_assertion_lifetime"),
            ({"max_assertion_bytes": 10}, "max_assertion_bytes"),
            ({"cache_size": -1}, "cache_size"),
            ({"cache_ttl": 0}, "cache_ttl"),
            ({"max_posture_age": 0}, "max_posture_age"),
            ({"max_posture_age": True}, "max_posture_age"),
            ({"min_os_versions": {}}, "min_os_versions"),
            ({"min_os_versions": {"": "1"}}, "min_os_versions"),
            ({"min_os_versions": {"macos": "14.x"}}, "min_os_versions.macos"),
            ({"timeout": 0}, "timeout"),
        ],
    )
    def test_invalid_option(
        self, issuer: TokenIssuer, options: dict[str, Any], parameter: str
    ) -> None:
        """Each invalid option raises ConfigurationError naming the parameter."""
        with pytest.raises(ConfigurationError) as caught:
            make_verifier(issuer, **options)
        assert parameter == caught.value.parameter

    def test_certificate_only_needs_no_issuer(self) -> None:
        """Certificate-only verification needs a registry but no assertion settings."""
        verifier = DeviceVerifier(credentials=["certificate"], registry=MemoryDeviceRegistry())

        assert frozenset({"certificate"}) == verifier.credentials
        assert None is verifier.key_set

    def test_large_leeway_warns(self, issuer: TokenIssuer) -> None:
        """A leeway over a minute is allowed with a warning."""
        with pytest.warns(InsecureConfigurationWarning, match="leeway of 120 s"):
            make_verifier(issuer, leeway=120)


# Posture assertions -----------------------------------------------------------------------------


class TestAssertion:
    async def test_pass(self, issuer: TokenIssuer, evaluate: Evaluate) -> None:
        """A valid assertion passes, binds its user and records the device facts."""
        verdict = await evaluate(make_verifier(issuer), make_request(assertion(issuer)))

        assert "pass" == verdict.outcome
        assert "alice" == verdict.bound_subject
        expected = {
            "device_id": "mac-0042",
            "device_os": "macos",
            "device_os_version": "14.4.1",
            "device_managed": True,
            "device_credential": "assertion",
        }
        assert expected == dict(verdict.facts)

    async def test_nested_claims(self, issuer: TokenIssuer, evaluate: Evaluate) -> None:
        """Dotted claim paths read the device id and the user from nested claims."""
        verifier = make_verifier(issuer, device_id_claim="device.id", user_claim="cnf.sub")
        token = assertion(issuer, "agent-7", user=None, device={"id": "mac-7"}, cnf={"sub": "bob"})

        verdict = await evaluate(verifier, make_request(token))

        assert "bob" == verdict.bound_subject
        assert "mac-7" == verdict.facts["device_id"]

    async def test_plain_device_id_header_proves_nothing(
        self, issuer: TokenIssuer, evaluate: Evaluate
    ) -> None:
        """An X-Device-Id header without a signed credential is no device credential."""
        request = make_request(headers=[("X-Device-Id", "mac-0042")])

        verdict = await evaluate(make_verifier(issuer), request)

        assert "device_credential_missing" == verdict.reason

    @pytest.mark.parametrize(
        ("claims", "reason"),
        [
            ({"lifetime": -120}, "device_assertion_expired"),
            ({"nbf": int(NOW) + 3600}, "device_assertion_not_yet_valid"),
            ({"aud": "another-service"}, "device_assertion_invalid_audience"),
            ({"iss": "https://evil.test"}, "device_assertion_invalid_issuer"),
            ({"exp": None}, "device_assertion_missing_claim"),
            ({"sub": None}, "device_assertion_missing_claim"),
            ({"lifetime": 86400}, "device_assertion_lifetime_too_long"),
            ({"user": None}, "device_unbound"),
            ({"user": 42}, "device_assertion_invalid_claim"),
            ({"user": ""}, "device_assertion_invalid_claim"),
            ({"os": ["macos"]}, "device_assertion_invalid_claim"),
            ({"managed": "true"}, "device_assertion_invalid_claim"),
            ({"disk_encrypted": 1}, "device_assertion_invalid_claim"),
            ({"posture_checked_at": "yesterday"}, "device_assertion_invalid_claim"),
            ({"posture_checked_at": int(NOW) + 3600}, "device_assertion_invalid_claim"),
            ({"iat": "now"}, "device_assertion_invalid_claim"),
        ],
    )
    async def test_invalid_claims(
        self, issuer: TokenIssuer, evaluate: Evaluate, claims: dict[str, Any], reason: str
    ) -> None:
        """Each claim problem fails with its own reason code."""
        token = assertion(issuer, **claims)

        verdict = await evaluate(make_verifier(issuer), make_request(token))

        assert "fail" == verdict.outcome
        assert reason == verdict.reason

    async def test_wrong_signature(self, issuer: TokenIssuer, evaluate: Evaluate) -> None:
        """An assertion signed by another key with the issuer's kid is rejected."""
        impostor = TokenIssuer(issuer.issuer, algorithms=("ES256",), kid_suffix=issuer.kid_suffix)
        token = assertion(impostor)

        verdict = await evaluate(make_verifier(issuer), make_request(token))

        assert "device_assertion_invalid_signature" == verdict.reason

    @pytest.mark.parametrize(
        ("header", "reason"),
        [
            ({"alg": "none"}, "device_assertion_algorithm_not_allowed"),
            ({"alg": "HS256"}, "device_assertion_algorithm_not_allowed"),
            ({"alg": "ES256", "kid": 7}, "device_assertion_malformed"),
            ({"alg": "ES256", "crit": ["exp"]}, "device_assertion_unsupported_critical_header"),
            ({"alg": "ES256", "crit": "b64"}, "device_assertion_unsupported_critical_header"),
        ],
    )
    async def test_bad_header(
        self, issuer: TokenIssuer, evaluate: Evaluate, header: dict[str, Any], reason: str
    ) -> None:
        """Header problems are rejected before any key is looked up."""
        valid = assertion(issuer, alg="ES256")
        token = f"{encode_segment(header)}.{valid.split('.', 1)[1]}"

        verdict = await evaluate(make_verifier(issuer), make_request(token))

        assert reason == verdict.reason

    @pytest.mark.parametrize(
        ("token", "reason"),
        [
            ("not-a-jwt", "device_assertion_malformed"),
            ("a.b.c.d", "device_assertion_malformed"),
            ("!!!.e30.sig", "device_assertion_malformed"),
            ("e30.e30.", "device_assertion_algorithm_not_allowed"),
            ("W10.e30.", "device_assertion_malformed"),
            ("x" * 9000, "device_assertion_too_large"),
        ],
    )
    async def test_malformed(
        self, issuer: TokenIssuer, evaluate: Evaluate, token: str, reason: str
    ) -> None:
        """Malformed assertions fail closed with a reason code."""
        verdict = await evaluate(make_verifier(issuer), make_request(token))

        assert reason == verdict.reason

    async def test_duplicate_header(self, issuer: TokenIssuer, evaluate: Evaluate) -> None:
        """Two assertion headers are ambiguous and rejected."""
        token = assertion(issuer)
        request = make_request(token, headers=[("X-Device-Assertion", token)])

        verdict = await evaluate(make_verifier(issuer), request)

        assert "device_assertion_malformed" == verdict.reason

    async def test_payload_not_json(self, issuer: TokenIssuer, evaluate: Evaluate) -> None:
        """A signed payload that is not JSON is malformed."""
        token = jwt_with_payload(issuer, b"not json")

        verdict = await evaluate(make_verifier(issuer), make_request(token))

        assert "device_assertion_malformed" == verdict.reason

    async def test_unknown_kid(self, issuer: TokenIssuer) -> None:
        """An unknown kid falls back to verify(), which names it."""
        verifier = make_verifier(issuer)
        request = make_request(assertion(issuer, kid="retired-key", alg="ES256"))

        assert None is verifier.verify_cached(request, CONTEXT)
        verdict = await verifier.verify(request, CONTEXT)
        assert "device_assertion_unknown_kid" == verdict.reason

    async def test_remote_keys(self, issuer: TokenIssuer, jwks_url: str) -> None:
        """Keys fetched from a JWKS verify assertions once the async path has run."""
        verifier = make_verifier(issuer, keys=None, jwks_url=jwks_url, cache_size=0)
        request = make_request(assertion(issuer))

        assert None is verifier.verify_cached(request, CONTEXT)
        verdict = await verifier.verify(request, CONTEXT)
        assert "pass" == verdict.outcome
        assert "pass" == verifier.verify_cached(request, CONTEXT).outcome  # type: ignore[union-attr]

    async def test_keys_unavailable(self, issuer: TokenIssuer) -> None:
        """A JWKS that cannot be fetched fails with its own reason code."""
        with serve(PlainTextResponse("nothing here", status_code=404)) as base_url:
            verifier = make_verifier(issuer, keys=None, jwks_url=f"{base_url}/jwks.json")
            verdict = await verifier.verify(make_request(assertion(issuer)), CONTEXT)

        assert "device_assertion_keys_unavailable" == verdict.reason


def jwt_with_payload(issuer: TokenIssuer, payload: bytes) -> str:
    """Sign an arbitrary payload with the issuer's ES256 key."""
    from jwt.algorithms import get_default_algorithms

    header = encode_segment({"alg": "ES256", "kid": issuer.kid("ES256")})
    body = base64.urlsafe_b64encode(payload).rstrip(b"=").decode()
    signing_input = f"{header}.{body}".encode()
    signature = get_default_algorithms()["ES256"].sign(signing_input, issuer.private_keys["ES256"])

    return f"{header}.{body}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"


class TestAssertionCache:
    def test_reused(self, issuer: TokenIssuer) -> None:
        """A verified assertion is cached and the cache is keyed by digest."""
        verifier = make_verifier(issuer)
        request = make_request(assertion(issuer))

        first = verifier.verify_cached(request, CONTEXT)
        second = verifier.verify_cached(request, CONTEXT)

        assert first == second
        assert 1 == len(verifier.cache)  # type: ignore[arg-type]

    def test_never_past_exp(self, issuer: TokenIssuer) -> None:
        """A cached assertion is not used after its exp, whatever the cache ttl."""
        verifier = make_verifier(issuer, leeway=0, cache_ttl=3600)
        expires_at = int(time.time()) + 1
        token = assertion(issuer, exp=expires_at)
        first = verifier.verify_cached(make_request(token), CONTEXT)
        assert "pass" == first.outcome  # type: ignore[union-attr]

        time.sleep(max(0.0, expires_at - time.time()) + 0.05)
        verdict = verifier.verify_cached(make_request(token), CONTEXT)

        assert "device_assertion_expired" == verdict.reason  # type: ignore[union-attr]
        assert 0 == len(verifier.cache)  # type: ignore[arg-type]

    def test_entry_dropped_after_exp(self, issuer: TokenIssuer) -> None:
        """A lookup at a request time after exp drops the cached entry."""
        verifier = make_verifier(issuer)
        token = assertion(issuer, lifetime=60)
        verifier.verify_cached(make_request(token), CONTEXT)

        verifier.verify_cached(make_request(token, at=time.time() + 120), CONTEXT)

        assert 0 == len(verifier.cache)  # type: ignore[arg-type]

    def test_posture_age_checked_on_hit(self, issuer: TokenIssuer) -> None:
        """Posture age is checked on every request, cached or not."""
        verifier = make_verifier(issuer, max_posture_age=300)
        token = assertion(issuer)
        assert "pass" == verifier.verify_cached(make_request(token), CONTEXT).outcome  # type: ignore[union-attr]

        later = make_request(token, at=time.time() + 280)
        verdict = verifier.verify_cached(later, CONTEXT)

        assert "device_posture_stale" == verdict.reason  # type: ignore[union-attr]

    def test_disabled(self, issuer: TokenIssuer) -> None:
        """cache_size=0 disables the cache."""
        verifier = make_verifier(issuer, cache_size=0)

        verifier.verify_cached(make_request(assertion(issuer)), CONTEXT)

        assert None is verifier.cache


# Posture requirements ---------------------------------------------------------------------------

STRICT = {
    "require_managed": True,
    "min_os_versions": {"macOS": "14.2", "windows": "10.0.19045"},
    "require_encryption": True,
    "require_screen_lock": True,
    "max_posture_age": 3600,
}


class TestPosture:
    async def test_strict_pass(self, issuer: TokenIssuer, evaluate: Evaluate) -> None:
        """A healthy device meets every requirement."""
        verdict = await evaluate(make_verifier(issuer, **STRICT), make_request(assertion(issuer)))

        assert "pass" == verdict.outcome

    @pytest.mark.parametrize(
        ("claims", "reason"),
        [
            ({"posture_checked_at": int(NOW) - 7200}, "device_posture_stale"),
            ({"posture_checked_at": None}, "device_posture_stale"),
            ({"managed": False}, "device_not_managed"),
            ({"managed": None}, "device_not_managed"),
            ({"os": "linux"}, "device_os_unsupported"),
            ({"os": None}, "device_os_unsupported"),
            ({"os_version": "14.1.9"}, "device_os_outdated"),
            ({"os_version": "9.99"}, "device_os_outdated"),
            ({"os_version": "14.4 beta"}, "device_os_version_invalid"),
            ({"os_version": None}, "device_os_version_invalid"),
            ({"disk_encrypted": False}, "device_not_encrypted"),
            ({"disk_encrypted": None}, "device_not_encrypted"),
            ({"screen_lock": False}, "device_screen_lock_disabled"),
            ({"screen_lock": None}, "device_screen_lock_disabled"),
        ],
    )
    async def test_requirement_failures(
        self, issuer: TokenIssuer, evaluate: Evaluate, claims: dict[str, Any], reason: str
    ) -> None:
        """Each missed requirement, and each unknown posture value, has its own reason code."""
        verifier = make_verifier(issuer, **STRICT)

        verdict = await evaluate(verifier, make_request(assertion(issuer, **claims)))

        assert "fail" == verdict.outcome
        assert reason == verdict.reason

    @pytest.mark.parametrize(
        ("os_name", "version"),
        [
            ("macos", "14.2"),
            ("macos", "14.10"),
            ("windows", "10.0.19045"),
            ("Windows", "10.0.22631.3447"),
        ],
    )
    async def test_versions_compare_numerically(
        self, issuer: TokenIssuer, evaluate: Evaluate, os_name: str, version: str
    ) -> None:
        """Versions at or above the minimum pass, compared per numeric component."""
        verifier = make_verifier(issuer, **STRICT)
        token = assertion(issuer, os=os_name, os_version=version)

        verdict = await evaluate(verifier, make_request(token))

        assert "pass" == verdict.outcome

    async def test_no_requirements(self, issuer: TokenIssuer, evaluate: Evaluate) -> None:
        """Without requirements, a device with unknown posture still passes."""
        token = assertion(
            issuer, managed=None, os=None, os_version=None, disk_encrypted=None, screen_lock=None
        )

        verdict = await evaluate(make_verifier(issuer), make_request(token))

        assert "pass" == verdict.outcome
        assert False is verdict.facts["device_managed"]


# Client certificates and the registry -----------------------------------------------------------


class TestCertificate:
    @pytest.fixture(name="pem")
    def fixture_pem(self, ca: trustme.CA) -> str:
        return client_pem(ca, "mac-0042")

    def verifier(self, *records: DeviceRecord, **options: Any) -> DeviceVerifier:
        registry = MemoryDeviceRegistry(records)
        return DeviceVerifier(credentials=["certificate"], registry=registry, **options)

    async def test_pass(self, pem: str, evaluate: Evaluate) -> None:
        """A registered certificate passes, bound to the registry owner."""
        device = record(certificate_fingerprints=frozenset({fingerprint(pem)}))

        verdict = await evaluate(self.verifier(device, **STRICT), make_request(chain=(pem,)))

        assert "pass" == verdict.outcome
        assert "alice" == verdict.bound_subject
        assert "mac-0042" == verdict.facts["device_id"]
        assert "certificate" == verdict.facts["device_credential"]

    @pytest.mark.parametrize(
        ("fields", "reason"),
        [
            ({"revoked": True}, "device_revoked"),
            ({"revoked_at": NOW - 10}, "device_revoked"),
            ({"owner": None}, "device_unbound"),
            ({"managed": False}, "device_not_managed"),
            ({"os_version": "13.6"}, "device_os_outdated"),
            ({"disk_encrypted": None}, "device_not_encrypted"),
            ({"screen_lock": False}, "device_screen_lock_disabled"),
            ({"posture_checked_at": None}, "device_posture_stale"),
        ],
    )
    async def test_record_failures(
        self, pem: str, evaluate: Evaluate, fields: dict[str, Any], reason: str
    ) -> None:
        """Revocation, binding and posture come from the registry record."""
        device = record(certificate_fingerprints=frozenset({fingerprint(pem)}), **fields)

        verdict = await evaluate(self.verifier(device, **STRICT), make_request(chain=(pem,)))

        assert reason == verdict.reason

    async def test_scheduled_revocation(self, pem: str, evaluate: Evaluate) -> None:
        """A revocation time in the future does not revoke yet."""
        device = record(
            certificate_fingerprints=frozenset({fingerprint(pem)}), revoked_at=NOW + 3600
        )

        verdict = await evaluate(self.verifier(device), make_request(chain=(pem,), at=NOW))

        assert "pass" == verdict.outcome

    async def test_unknown(self, pem: str, evaluate: Evaluate) -> None:
        """A certificate that no device has is unknown."""
        verdict = await evaluate(self.verifier(record()), make_request(chain=(pem,)))

        assert "device_unknown" == verdict.reason

    async def test_missing(self, evaluate: Evaluate) -> None:
        """A request without a certificate carries no device credential."""
        verdict = await evaluate(self.verifier(record()), make_request())

        assert "device_credential_missing" == verdict.reason

    async def test_malformed(self, pem: str, evaluate: Evaluate) -> None:
        """A certificate that cannot be parsed fails closed."""
        broken = pem.replace(pem.splitlines()[3], "A" * 64)

        verdict = await evaluate(self.verifier(record()), make_request(chain=(broken,)))

        assert "malformed_client_certificate" == verdict.reason

    async def test_proxy_header_from_untrusted_peer(self, pem: str, evaluate: Evaluate) -> None:
        """A certificate header from a peer that is not a trusted proxy is rejected."""
        verifier = self.verifier(record(), proxy_header="x-client-cert")
        request = make_request(headers=[("X-Client-Cert", pem.replace("\n", " "))])

        verdict = await evaluate(verifier, request)

        assert "client_certificate_from_untrusted_peer" == verdict.reason

    async def test_proxy_header_from_trusted_proxy(self, pem: str, evaluate: Evaluate) -> None:
        """A certificate forwarded by a trusted proxy is looked up like a TLS one."""
        device = record(certificate_fingerprints=frozenset({fingerprint(pem)}))
        verifier = self.verifier(device, proxy_header="x-client-cert")
        request = make_request(headers=[("X-Client-Cert", pem.replace("\n", " "))], trusted=True)

        verdict = await evaluate(verifier, request)

        assert "pass" == verdict.outcome


class TestBothCredentials:
    @pytest.fixture(name="pem")
    def fixture_pem(self, ca: trustme.CA) -> str:
        return client_pem(ca, "both")

    def verifier(self, issuer: TokenIssuer, *records: DeviceRecord) -> DeviceVerifier:
        registry = MemoryDeviceRegistry(records)
        return make_verifier(issuer, credentials=["assertion", "certificate"], registry=registry)

    async def test_both_agree(self, issuer: TokenIssuer, pem: str, evaluate: Evaluate) -> None:
        """An assertion and a certificate for the same device pass together."""
        verifier = self.verifier(
            issuer, record(certificate_fingerprints=frozenset({fingerprint(pem)}))
        )

        verdict = await evaluate(verifier, make_request(assertion(issuer), chain=(pem,)))

        assert "pass" == verdict.outcome
        assert "assertion+certificate" == verdict.facts["device_credential"]

    async def test_either_suffices(self, issuer: TokenIssuer, pem: str, evaluate: Evaluate) -> None:
        """With both accepted, an assertion alone passes for an enrolled device."""
        verifier = self.verifier(
            issuer, record(certificate_fingerprints=frozenset({fingerprint(pem)}))
        )

        verdict = await evaluate(verifier, make_request(assertion(issuer)))

        assert "pass" == verdict.outcome

    async def test_conflict(self, issuer: TokenIssuer, pem: str, evaluate: Evaluate) -> None:
        """An assertion for one device and a certificate of another are rejected."""
        verifier = self.verifier(
            issuer,
            record(),
            record("mac-0043", certificate_fingerprints=frozenset({fingerprint(pem)})),
        )

        verdict = await evaluate(verifier, make_request(assertion(issuer), chain=(pem,)))

        assert "device_credential_conflict" == verdict.reason

    async def test_owner_mismatch(self, issuer: TokenIssuer, evaluate: Evaluate) -> None:
        """An assertion naming a user other than the registered owner is rejected."""
        verifier = self.verifier(issuer, record(owner="bob"))

        verdict = await evaluate(verifier, make_request(assertion(issuer)))

        assert "device_owner_mismatch" == verdict.reason

    @pytest.mark.parametrize(
        ("records", "reason"),
        [((), "device_unknown"), ((record(revoked=True),), "device_revoked")],
    )
    async def test_assertion_checked_against_registry(
        self,
        issuer: TokenIssuer,
        evaluate: Evaluate,
        records: tuple[DeviceRecord, ...],
        reason: str,
    ) -> None:
        """With a registry, an asserted device must be enrolled and not revoked."""
        verdict = await evaluate(self.verifier(issuer, *records), make_request(assertion(issuer)))

        assert reason == verdict.reason

    async def test_device_id_equal_to_fingerprint(
        self, issuer: TokenIssuer, pem: str, evaluate: Evaluate
    ) -> None:
        """An asserted device id that is another device's fingerprint does not match that device."""
        verifier = self.verifier(
            issuer, record(certificate_fingerprints=frozenset({fingerprint(pem)}))
        )

        verdict = await evaluate(verifier, make_request(assertion(issuer, fingerprint(pem))))

        assert "device_unknown" == verdict.reason


# Through the engine and the middleware ----------------------------------------------------------


class SlowRegistry(DeviceRegistry):
    """A registry backend that answers after ``delay`` seconds, or fails."""

    def __init__(self, delay: float = 0.0, *, error: bool = False) -> None:
        self.delay = delay
        self.error = error

    async def get(self, key: str) -> DeviceRecord | None:
        await asyncio.sleep(self.delay)
        if self.error:
            raise DeviceRegistryError("registry database unreachable")
        return record(key)


def engine_for(*verifiers: Any) -> Engine:
    return Engine(Policy([Segment("api", paths=["/api/"], verifiers=verifiers)]))


def identity(issuer: TokenIssuer) -> JWTVerifier:
    return JWTVerifier(
        issuer=issuer.issuer, audience="api", algorithms=["RS256"], keys=issuer.jwks()
    )


def bearer_request(issuer: TokenIssuer, subject: str, device_token: str) -> AccessRequest:
    return make_request(
        device_token, headers=[("Authorization", f"Bearer {issuer.token(subject, alg='RS256')}")]
    )


class TestEngine:
    async def test_binding_match(self, issuer: TokenIssuer) -> None:
        """The device of the authenticated user is allowed."""
        engine = engine_for(identity(issuer), make_verifier(issuer))

        decision = await engine.decide(bearer_request(issuer, "alice", assertion(issuer)))

        assert decision.allowed
        assert "mac-0042" == decision.facts["device_id"]

    async def test_binding_mismatch(self, issuer: TokenIssuer) -> None:
        """Bob presenting alice's device is denied with subject_binding_mismatch."""
        engine = engine_for(identity(issuer), make_verifier(issuer))

        decision = await engine.decide(bearer_request(issuer, "bob", assertion(issuer)))

        assert 403 == decision.status
        assert ("subject_binding_mismatch",) == decision.reasons

    async def test_slow_registry_times_out(self, issuer: TokenIssuer) -> None:
        """A registry slower than the verifier timeout fails with verifier_timeout."""
        verifier = make_verifier(issuer, registry=SlowRegistry(5.0), timeout=0.05)
        engine = engine_for(identity(issuer), verifier)

        decision = await engine.decide(bearer_request(issuer, "alice", assertion(issuer)))

        assert ("verifier_timeout",) == decision.reasons

    async def test_async_registry(self, issuer: TokenIssuer) -> None:
        """A registry without a fast path is awaited within the timeout."""
        verifier = make_verifier(issuer, registry=SlowRegistry(0.01))
        engine = engine_for(identity(issuer), verifier)

        decision = await engine.decide(bearer_request(issuer, "alice", assertion(issuer)))

        assert decision.allowed

    def test_fast_path_registry_error(self, issuer: TokenIssuer) -> None:
        """A registry whose fast path fails denies with device_registry_unavailable."""

        class Broken(MemoryDeviceRegistry):
            def get_cached(self, key: str) -> DeviceRecord | None:
                raise DeviceRegistryError("cache backend unreachable")

        verifier = make_verifier(issuer, registry=Broken([record()]))

        verdict = verifier.verify_cached(make_request(assertion(issuer)), CONTEXT)

        assert "device_registry_unavailable" == verdict.reason  # type: ignore[union-attr]

    async def test_registry_error(self, issuer: TokenIssuer) -> None:
        """A failing registry backend denies with device_registry_unavailable."""
        verifier = make_verifier(issuer, registry=SlowRegistry(error=True))
        engine = engine_for(identity(issuer), verifier)

        decision = await engine.decide(bearer_request(issuer, "alice", assertion(issuer)))

        assert ("device_registry_unavailable",) == decision.reasons


async def hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await PlainTextResponse("hello")(scope, receive, send)


class TestMiddleware:
    def app(self, issuer: TokenIssuer, **options: Any) -> ZeroTrustMiddleware:
        device = make_verifier(issuer, **options)
        policy = Policy([Segment("api", paths=["/api/"], verifiers=[identity(issuer), device])])
        return ZeroTrustMiddleware(hello, policy=policy, events=MemorySink())

    async def get(self, app: Any, headers: dict[str, str]) -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app.test") as client:
            return await client.get("/api/items", headers=headers)

    async def test_allowed_event_has_facts(self, issuer: TokenIssuer) -> None:
        """An allowed request records the device facts in the access event."""
        headers = {
            "Authorization": f"Bearer {issuer.token('alice', alg='RS256')}",
            "X-Device-Assertion": assertion(issuer),
        }
        with capture_events() as events:
            response = await self.get(self.app(issuer), headers)

        assert 200 == response.status_code
        facts = events[0]["facts"]
        assert "mac-0042" == facts["device_id"]
        assert "macos" == facts["device_os"]
        assert True is facts["device_managed"]

    async def test_denied_event_has_reason(self, issuer: TokenIssuer) -> None:
        """An unencrypted device is denied with 403 and its reason code in the event."""
        headers = {
            "Authorization": f"Bearer {issuer.token('alice', alg='RS256')}",
            "X-Device-Assertion": assertion(issuer, disk_encrypted=False),
        }
        with capture_events() as events:
            response = await self.get(self.app(issuer, require_encryption=True), headers)

        assert 403 == response.status_code
        assert ["device_not_encrypted"] == events[0]["reasons"]
        device = next(v for v in events[0]["verifiers"] if v["name"] == "device")
        assert "fail" == device["result"]
        assert "device_not_encrypted" == device["reason"]

    async def test_assertion_not_in_event(self, issuer: TokenIssuer) -> None:
        """The assertion itself never appears in the access event."""
        token = assertion(issuer)
        headers = {
            "Authorization": f"Bearer {issuer.token('alice', alg='RS256')}",
            "X-Device-Assertion": token,
        }
        with capture_events() as events:
            await self.get(self.app(issuer), headers)

        assert token.split(".")[2] not in json.dumps(events[0])

    async def test_certificate_through_tls_extension(
        self, issuer: TokenIssuer, ca: trustme.CA
    ) -> None:
        """A raw ASGI scope with a tls client_cert_chain is verified against the registry."""
        pem = client_pem(ca, "middleware")
        registry = MemoryDeviceRegistry(
            [record("tls-1", certificate_fingerprints=frozenset({fingerprint(pem)}))]
        )
        device = DeviceVerifier(credentials=["certificate"], registry=registry)
        policy = Policy([Segment("api", paths=["/api/"], verifiers=[identity(issuer), device])])
        app = ZeroTrustMiddleware(hello, policy=policy, events=MemorySink())
        token = issuer.token("alice", alg="RS256")
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "https",
            "path": "/api/items",
            "raw_path": b"/api/items",
            "root_path": "",
            "query_string": b"",
            "headers": [(b"host", b"app.test"), (b"authorization", f"Bearer {token}".encode())],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8443),
            "extensions": {"tls": {"client_cert_chain": [pem], "server_cert": None}},
        }
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        with capture_events() as events:
            await app(scope, receive, send)

        assert 200 == sent[0]["status"]
        assert "tls-1" == events[0]["facts"]["device_id"]
        assert "certificate" == events[0]["facts"]["device_credential"]
