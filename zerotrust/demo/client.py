# SPDX-License-Identifier: Apache-2.0
"""A minimal HTTP/1.1 client that sends the request target byte for byte, as the demo needs."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["RawResponse", "send_raw_request"]

_MAX_RESPONSE_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class RawResponse:
    """A parsed HTTP response: status code, lower-case header names, and the body."""

    status: int
    headers: dict[str, str]
    body: bytes


async def send_raw_request(
    host: str,
    port: int,
    method: str,
    target: str,
    *,
    headers: Mapping[str, str] | None = None,
    body: bytes = b"",
) -> RawResponse:
    """
    Send one request over a new connection and read the response until the server closes it.

    HTTP clients such as httpx resolve ``.`` and ``..`` segments before sending, so they
    cannot send ``/api/../admin``. This client writes ``target`` unchanged, which lets the
    demo show what the middleware does with such paths. The caller sets the time limit, for
    example with ``asyncio.timeout``.

    Raises:
        ConnectionError: if the response is empty, too large or not HTTP/1.x.
        OSError: if the connection fails.
    """
    host_header = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host_header}", "Connection: close"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body

    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(request)
        await writer.drain()
        response = await _read_to_end(reader)
    finally:
        writer.close()
        await writer.wait_closed()

    return _parse_response(response)


async def _read_to_end(reader: asyncio.StreamReader) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while chunk := await reader.read(65536):
        size += len(chunk)
        if size > _MAX_RESPONSE_BYTES:
            message = f"response is larger than {_MAX_RESPONSE_BYTES} bytes"
            raise ConnectionError(message)
        chunks.append(chunk)

    return b"".join(chunks)


def _parse_response(response: bytes) -> RawResponse:
    head, _, body = response.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    version, _, rest = status_line.partition(" ")
    status_text = rest[:3]
    if not version.startswith("HTTP/1.") or not status_text.isdigit():
        message = f"not an HTTP/1.x response: {status_line[:80]!r}"
        raise ConnectionError(message)

    headers: dict[str, str] = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()

    return RawResponse(int(status_text), headers, body)
