# SPDX-License-Identifier: Apache-2.0
"""Tests for WorkloadVerifier behind uvicorn serving real mutual TLS on 127.0.0.1."""

from __future__ import annotations

import asyncio
import ssl
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from tests.test_certificates import IssuedCertificate, WorkloadCA
from zerotrust import Segment, ZeroTrustMiddleware, get_access
from zerotrust.events import MemorySink
from zerotrust.servers import ZeroTrustH11Protocol
from zerotrust.testing import capture_events, serve
from zerotrust.verifiers.workload import WorkloadVerifier

WEB = "spiffe://prod.example/ns/app/sa/web"
BATCH = "spiffe://prod.example/ns/batch/sa/worker"


@pytest.fixture(name="authority", scope="module")
def fixture_authority() -> WorkloadCA:
    return WorkloadCA()


@pytest.fixture(name="server_options", scope="module")
def fixture_server_options(
    authority: WorkloadCA, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """uvicorn TLS options: a server certificate for 127.0.0.1 and client certificates optional."""
    directory = tmp_path_factory.mktemp("tls")
    server = authority.ca.issue_cert("127.0.0.1")
    server.private_key_and_cert_chain_pem.write_to_path(str(directory / "server.pem"))
    authority.ca.cert_pem.write_to_path(str(directory / "ca.pem"))

    return {
        "ssl_certfile": str(directory / "server.pem"),
        "ssl_ca_certs": str(directory / "ca.pem"),
        "ssl_cert_reqs": ssl.CERT_OPTIONAL,
        "http": ZeroTrustH11Protocol,
    }


def client_context(
    authority: WorkloadCA, issued: IssuedCertificate | None, directory: Path
) -> ssl.SSLContext:
    """Build a client TLS context that trusts the CA and presents ``issued``, if given."""
    context = ssl.create_default_context()
    authority.ca.configure_trust(context)
    if issued is not None:
        (directory / "client.pem").write_text(issued.pem)
        (directory / "client-key.pem").write_text(issued.key_pem)
        context.load_cert_chain(directory / "client.pem", directory / "client-key.pem")

    return context


async def whoami(request: Request) -> JSONResponse:
    access = get_access(request)
    return JSONResponse({"subject": access.subject if access is not None else None})


def protected_app(verifier: WorkloadVerifier, **options: Any) -> ZeroTrustMiddleware:
    app = Starlette(routes=[Route("/db/query", whoami)])
    segment = Segment("db", paths=["/db/*"], verifiers=[verifier])

    return ZeroTrustMiddleware(app, policy=[segment], events=MemorySink(), **options)


@pytest.fixture(name="mtls_url", scope="module")
def fixture_mtls_url(server_options: dict[str, Any]) -> Iterator[str]:
    """A database tier that only the web workload may call, served with mutual TLS."""
    app = protected_app(WorkloadVerifier(allowed_ids=[WEB]))
    with serve(app, lifespan="off", **server_options) as base_url:
        yield base_url.replace("http://", "https://", 1)


async def wait_for_event(events: list[dict[str, Any]]) -> dict[str, Any]:
    """Return the first event; the server thread emits it just after sending the response."""
    for _ in range(200):
        if events:
            return events[0]
        await asyncio.sleep(0.01)
    message = "no access event within 2 seconds of the response"
    raise AssertionError(message)


async def get(url: str, context: ssl.SSLContext | None = None, **options: Any) -> httpx.Response:
    async with httpx.AsyncClient(verify=context or True, timeout=10) as client:
        return await client.get(url, **options)


class TestServedMutualTLS:
    async def test_allowed_workload(
        self, authority: WorkloadCA, mtls_url: str, tmp_path: Path
    ) -> None:
        """The allowed workload's certificate gets 200 and its SPIFFE ID as the subject."""
        context = client_context(authority, authority.issue(WEB), tmp_path)

        with capture_events() as events:
            response = await get(f"{mtls_url}/db/query", context)
            event = await wait_for_event(events)

        assert 200 == response.status_code
        assert {"subject": WEB} == response.json()
        assert "tls" == event["facts"]["client_certificate_source"]

    async def test_other_workload(
        self, authority: WorkloadCA, mtls_url: str, tmp_path: Path
    ) -> None:
        """Another workload of the same CA is denied with workload_not_allowed."""
        context = client_context(authority, authority.issue(BATCH), tmp_path)

        with capture_events() as events:
            response = await get(f"{mtls_url}/db/query", context)
            event = await wait_for_event(events)

        # The workload is authenticated but not allowed here: 403, not 401.
        assert 403 == response.status_code
        assert ["workload_not_allowed"] == event["reasons"]

    async def test_no_client_certificate(
        self, authority: WorkloadCA, mtls_url: str, tmp_path: Path
    ) -> None:
        """A client without a certificate completes the handshake and gets 401."""
        context = client_context(authority, None, tmp_path)

        with capture_events() as events:
            response = await get(f"{mtls_url}/db/query", context)
            event = await wait_for_event(events)

        assert 401 == response.status_code
        assert ["client_certificate_missing"] == event["reasons"]

    async def test_context_verifier_forbidden(
        self, authority: WorkloadCA, server_options: dict[str, Any], tmp_path: Path
    ) -> None:
        """As a context verifier in a public segment, another workload gets 403."""
        verifier = WorkloadVerifier(allowed_ids=[WEB], identity=False)
        app = Starlette(routes=[Route("/db/query", whoami)])
        segment = Segment("db", paths=["/db/*"], public=True, verifiers=[verifier])
        middleware = ZeroTrustMiddleware(app, policy=[segment], events=MemorySink())
        context = client_context(authority, authority.issue(BATCH), tmp_path)

        with serve(middleware, lifespan="off", **server_options) as base_url:
            url = base_url.replace("http://", "https://", 1)
            with capture_events() as events:
                response = await get(f"{url}/db/query", context)
                event = await wait_for_event(events)

        assert 403 == response.status_code
        assert ["workload_not_allowed"] == event["reasons"]


class TestServedProxyHeader:
    async def test_trusted_proxy(self, authority: WorkloadCA) -> None:
        """A client on 127.0.0.1, listed as a trusted proxy, forwards the certificate."""
        verifier = WorkloadVerifier(allowed_ids=[WEB], proxy_header="x-ssl-client-cert")
        app = protected_app(verifier, trusted_proxies=["127.0.0.1"])
        headers = {"x-ssl-client-cert": urllib.parse.quote(authority.issue(WEB).pem, safe="")}

        with serve(app, lifespan="off") as base_url, capture_events() as events:
            response = await get(f"{base_url}/db/query", headers=headers)
            event = await wait_for_event(events)

        assert 200 == response.status_code
        assert {"subject": WEB} == response.json()
        assert "proxy" == event["facts"]["client_certificate_source"]

    async def test_untrusted_peer(self, authority: WorkloadCA) -> None:
        """Without trusted proxies, a certificate header from the client denies the request."""
        verifier = WorkloadVerifier(allowed_ids=[WEB], proxy_header="x-ssl-client-cert")
        app = protected_app(verifier)
        headers = {"x-ssl-client-cert": urllib.parse.quote(authority.issue(WEB).pem, safe="")}

        with serve(app, lifespan="off") as base_url, capture_events() as events:
            response = await get(f"{base_url}/db/query", headers=headers)
            event = await wait_for_event(events)

        assert 401 == response.status_code
        assert ["client_certificate_from_untrusted_peer"] == event["reasons"]


async def echo_tls(scope: Scope, receive: Receive, send: Send) -> None:
    """Respond with the scope's tls extension as JSON."""
    tls = (scope.get("extensions") or {}).get("tls")
    await JSONResponse({"tls": tls})(scope, receive, send)


class TestZeroTrustH11Protocol:
    async def test_tls_extension(
        self, authority: WorkloadCA, server_options: dict[str, Any], tmp_path: Path
    ) -> None:
        """Each request on an HTTPS connection gets the client's leaf certificate and version."""
        issued = authority.issue(WEB)
        context = client_context(authority, issued, tmp_path)

        with serve(echo_tls, lifespan="off", **server_options) as base_url:
            url = base_url.replace("http://", "https://", 1)
            async with httpx.AsyncClient(verify=context, timeout=10) as client:
                first = (await client.get(f"{url}/")).json()["tls"]
                second = (await client.get(f"{url}/")).json()["tls"]

        assert issued.pem.split() == first["client_cert_chain"][0].split()
        assert first["tls_version"] in (0x0303, 0x0304)
        assert first == second

    async def test_no_client_certificate(
        self, authority: WorkloadCA, server_options: dict[str, Any], tmp_path: Path
    ) -> None:
        """Without a client certificate the extension is present with an empty chain."""
        context = client_context(authority, None, tmp_path)

        with serve(echo_tls, lifespan="off", **server_options) as base_url:
            url = base_url.replace("http://", "https://", 1)
            response = await get(f"{url}/", context)

        assert [] == response.json()["tls"]["client_cert_chain"]

    async def test_plain_http(self) -> None:
        """A plain HTTP connection gets no tls extension."""
        with serve(echo_tls, lifespan="off", http=ZeroTrustH11Protocol) as base_url:
            response = await get(f"{base_url}/")

        assert response.json()["tls"] is None
