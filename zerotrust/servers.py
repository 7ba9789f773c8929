# SPDX-License-Identifier: Apache-2.0
"""A uvicorn HTTP protocol that adds the TLS client certificate to the scope (ASGI ``tls``)."""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from .exceptions import MissingExtraError

try:
    from uvicorn.protocols.http.h11_impl import H11Protocol
except ImportError:
    raise MissingExtraError("zerotrust.servers", "cli") from None

__all__ = ["ZeroTrustH11Protocol", "tls_extension"]

# TLS protocol version numbers as the ASGI tls extension reports them (RFC 8446, appendix B).
_TLS_VERSIONS = {"TLSv1": 0x0301, "TLSv1.1": 0x0302, "TLSv1.2": 0x0303, "TLSv1.3": 0x0304}


def tls_extension(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> dict[str, Any]:
    """
    Build the ASGI ``tls`` extension dict for one TLS connection.

    ``client_cert_chain`` contains the verified chain, leaf first, on Python 3.13 and later.
    Older Pythons expose only the peer's leaf certificate, so the list then has that one entry.
    It is empty when the client sent no certificate.

    NOTE: ``cipher_suite`` is always ``None`` and ``server_cert`` is not filled in, because the
    ``ssl`` module exposes neither the IANA cipher suite number nor the server certificate.
    """
    chain: list[str] = []
    get_chain = getattr(ssl_object, "get_verified_chain", None)
    if get_chain is not None:
        chain = [certificate.public_bytes() for certificate in get_chain() or ()]
    if not chain:
        der = ssl_object.getpeercert(binary_form=True)
        if der:
            chain = [ssl.DER_cert_to_PEM_cert(der)]

    return {
        "server_cert": None,
        "client_cert_chain": chain,
        "client_cert_name": None,
        "client_cert_error": None,
        "tls_version": _TLS_VERSIONS.get(ssl_object.version() or ""),
        "cipher_suite": None,
    }


class ZeroTrustH11Protocol(H11Protocol):
    """
    uvicorn's h11 HTTP protocol, plus the ASGI ``tls`` extension on HTTPS connections.

    uvicorn 0.55 does not put the client certificate into the scope, so a `WorkloadVerifier`
    behind it gets no certificate. Pass this class as uvicorn's ``http`` option::

        uvicorn.run(app, http=ZeroTrustH11Protocol, ssl_certfile=..., ssl_keyfile=...,
                    ssl_ca_certs="clients-ca.pem", ssl_cert_reqs=ssl.CERT_REQUIRED)

    The extension is read once per connection, after the handshake, and added to every HTTP
    request scope on that connection.

    NOTE: websocket connections are handed to uvicorn's websocket protocol, which calls the
    app directly, so their scope has no ``tls`` extension.
    """

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            self.app = _WithTLSExtension(self.app, tls_extension(ssl_object))


class _WithTLSExtension:
    """Wrap an ASGI app for one connection, adding a fixed ``tls`` extension to each scope."""

    def __init__(self, app: Any, extension: dict[str, Any]) -> None:
        self.app = app
        self.extension = extension

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        # A copy per request, so an app that edits its scope cannot change the next request's.
        extensions = dict(scope.get("extensions") or {})
        extensions["tls"] = {
            **self.extension,
            "client_cert_chain": list(self.extension["client_cert_chain"]),
        }
        scope["extensions"] = extensions
        await self.app(scope, receive, send)
