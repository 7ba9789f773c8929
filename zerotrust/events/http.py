# SPDX-License-Identifier: Apache-2.0
"""HTTP sinks that post event batches to Splunk HEC, Elasticsearch ``_bulk`` or a JSON webhook."""

from __future__ import annotations

import base64
import collections
import datetime
import email.utils
import gzip
import logging
import os
import random
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpx
import orjson
import structlog

from .._urls import is_allowed_url
from ..exceptions import ConfigurationError, InfrastructureError
from .redaction import redact_secrets
from .sinks import Sink

__all__ = [
    "ElasticsearchBulkSink",
    "EventDeliveryError",
    "EventFormat",
    "HttpSink",
    "SplunkHecSink",
    "WebhookSink",
]

logger = logging.getLogger("zerotrust.events")

EventFormat = Callable[[dict[str, Any]], bytes | str]
"""Turns one redacted event dict into its wire representation."""

_USER_AGENT = "zerotrust-middleware"
# 408 and 429 ask the client to try again later. Statuses such as 501 would not change on a retry.
_RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504, 507, 509, 520, 521, 522, 523, 524})
# Collectors return a short status document, so a larger body is cut instead of buffered whole.
_MAX_RESPONSE_BYTES = 8 * 1024 * 1024
_MAX_REASON_CHARS = 300
_MASK = "[redacted]"


class EventDeliveryError(InfrastructureError):
    """
    An HTTP sink could not deliver some or all events of a batch.

    The message never contains a credential of the sink.

    Attributes:
        sink: The sink's name, such as ``splunk_hec``.
        url: The collector URL without user information or query string.
        failed: Events of the batch that were not delivered.
        total: Events in the batch.
        reason: What went wrong, such as ``HTTP 503 after 4 attempts``.

    .. versionadded:: 0.2.0
    """

    def __init__(self, sink: str, url: str, failed: int, total: int, reason: str) -> None:
        super().__init__(
            f"{sink} sink: delivering {failed} of {total} events to {url} failed: {reason}"
        )
        self.sink = sink
        self.url = url
        self.failed = failed
        self.total = total
        self.reason = reason


class _GiveUp(Exception):
    """Ends the attempts for one request body. ``retryable`` means the collector is unavailable."""

    def __init__(self, reason: str, *, retryable: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable
        # `HttpSink._send` sets the count of records still pending and the earlier rejections.
        self.pending = 0
        self.rejected: list[str] = []


class HttpSink(Sink):
    """
    Post batches of events to an HTTP collector, with retries, timeouts and compression.

    A subclass defines how one event becomes a record (`encode`), how records form a request
    body (`frame`) and, optionally, how a successful response reports per-event failures
    (`check_response`). This class does the rest, once for every HTTP sink:

    - each event is copied and passed through `redact_secrets`, then through ``format``;
    - the batch from the emitter is split into requests of at most ``max_batch`` events and
      ``max_bytes`` bytes of uncompressed body;
    - connection errors, timeouts, 408, 429 and most 5xx responses are retried with exponential
      backoff and full jitter, honouring ``Retry-After`` up to ``max_retry_after`` seconds;
    - other responses outside 2xx (other 4xx and 5xx, 3xx) fail that request without a retry,
      because sending the same body again cannot succeed. Redirects are never followed;
    - after ``retry_timeout`` seconds or ``max_retries`` retries of one request, `write` raises
      `EventDeliveryError` so the emitter counts the batch as failed.

    Args:
        url: The collector URL; https, or http on a loopback address.
        format: Turns one redacted event into bytes or str; compact JSON by default.
        headers: Extra request headers. Their values are masked in ``repr``.
        max_batch: Maximum events per request.
        max_bytes: Maximum uncompressed body size per request, in bytes. A single event larger
            than this is counted as failed.
        compress: Send the body gzip-compressed with ``Content-Encoding: gzip``.
        timeout: Seconds for the read, write and pool timeouts of each request, or an
            ``httpx.Timeout`` with all four set.
        connect_timeout: Seconds to open a connection, when ``timeout`` is a number.
        retry_timeout: Maximum seconds spent on one request body, retries and waits included.
        max_retries: Maximum retries of one request body.
        backoff: Seconds of the first backoff ceiling; it doubles with each retry.
        max_backoff: Largest backoff ceiling, in seconds.
        max_retry_after: Largest ``Retry-After`` the sink waits, in seconds. A longer one is
            cut to this value.
        client: An ``httpx.Client`` to use instead of one the sink creates. The sink still
            sets the timeouts and disables redirects on each request, and does not close it.
        trust_env: Let the created client read proxy and certificate settings from the
            environment (``HTTPS_PROXY``, ``SSL_CERT_FILE``). Off by default, so an inherited
            proxy variable cannot divert events and credentials.
        verify: ``True``, ``False`` or an ``ssl.SSLContext`` for the created client.

    .. warning:: ``verify=False`` sends the collector credentials to any server that accepts
        the connection.

    .. versionadded:: 0.2.0
    """

    name = "http"
    content_type = "application/json"
    # Bytes that `frame` adds around the records, and between two records.
    frame_bytes = 0
    separator_bytes = 0

    def __init__(
        self,
        url: str,
        *,
        format: EventFormat | None = None,
        headers: Mapping[str, str] | None = None,
        max_batch: int = 500,
        max_bytes: int = 1024 * 1024,
        compress: bool = True,
        timeout: float | httpx.Timeout = 10.0,
        connect_timeout: float = 5.0,
        retry_timeout: float = 30.0,
        max_retries: int = 8,
        backoff: float = 0.5,
        max_backoff: float = 10.0,
        max_retry_after: float = 30.0,
        client: httpx.Client | None = None,
        trust_env: bool = False,
        verify: bool | ssl.SSLContext = True,
    ) -> None:
        self.url = _check_url(url)
        self.safe_url = _safe_url(self.url)
        for parameter, value, minimum in (
            ("max_batch", max_batch, 1),
            ("max_bytes", max_bytes, 1024),
            ("max_retries", max_retries, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                message = f"{parameter} must be an integer of at least {minimum}, not {value!r}"
                raise ConfigurationError(message, parameter=parameter, value=value)
        for parameter, number in (
            ("connect_timeout", connect_timeout),
            ("retry_timeout", retry_timeout),
            ("backoff", backoff),
            ("max_backoff", max_backoff),
            ("max_retry_after", max_retry_after),
        ):
            if not number > 0:
                message = f"{parameter} must be a positive number of seconds, not {number!r}"
                raise ConfigurationError(message, parameter=parameter, value=number)

        self.format = format
        self.max_batch = max_batch
        self.max_bytes = max_bytes
        self.compress = compress
        self.timeout = _check_timeout(timeout, connect_timeout)
        self.retry_timeout = float(retry_timeout)
        self.max_retries = max_retries
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.max_retry_after = float(max_retry_after)
        self.trust_env = trust_env
        self.verify = verify
        # Lowercase names, so a caller's "Content-Type" replaces ours instead of adding a second.
        self._headers: dict[str, str] = {"user-agent": _USER_AGENT}
        self._headers.update((name.lower(), value) for name, value in (headers or {}).items())
        # Strings scrubbed from every error message, in case a collector echoes a header back.
        self._secrets: list[str] = [
            value for name, value in self._headers.items() if name.lower() != "user-agent" and value
        ]
        self._owns_client = client is None
        self._client = client
        self._client_pid = os.getpid()
        self._closing = threading.Event()
        self.sent = 0
        self.failed_events = 0
        self.retries = 0

    def __repr__(self) -> str:
        names = sorted(name for name in self._headers if name.lower() != "user-agent")
        return f"{type(self).__name__}(url={self.safe_url!r}, headers={names!r})"

    def encode(self, event: dict[str, Any]) -> bytes:
        """Turn one redacted event into a record; compact JSON unless ``format`` is set."""
        if self.format is None:
            return orjson.dumps(event, default=str)
        return _to_bytes(self.format(event))

    def frame(self, records: Sequence[bytes]) -> bytes:
        """Join records into one request body."""
        return b"".join(records)

    def check_response(
        self, body: bytes, records: Sequence[bytes]
    ) -> tuple[list[bytes], list[str]]:
        """
        Read a 2xx response body and return the records to retry and the failure reasons.

        The default accepts every record. A collector that reports per-event results, such as
        Elasticsearch ``_bulk``, overrides this.
        """
        return [], []

    def write(self, events: Sequence[dict[str, Any]]) -> None:
        reasons: collections.Counter[str] = collections.Counter()
        records = []
        for event in events:
            try:
                record = self.encode(dict(redact_secrets(None, "info", dict(event))))
            except structlog.DropEvent:
                continue
            except Exception as error:  # noqa: BLE001 -- a faulty format fails its event, not the batch
                reasons[f"encoding an event failed: {type(error).__name__}: {error}"] += 1
                continue
            if len(record) + self.frame_bytes > self.max_bytes:
                reasons[f"an event is larger than max_bytes={self.max_bytes}"] += 1
                continue
            records.append(record)

        unavailable: str | None = None
        undelivered = 0
        for chunk in self._split(records):
            if unavailable is not None:
                # The collector just used up a whole retry budget, so do not spend another on it.
                reasons[f"skipped after an earlier request failed: {unavailable}"] += len(chunk)
                undelivered += len(chunk)
                continue
            try:
                rejected = self._send(chunk)
            except _GiveUp as give_up:
                rejected = give_up.rejected
                reasons[give_up.reason] += give_up.pending
                undelivered += give_up.pending
                if give_up.retryable:
                    unavailable = give_up.reason
            for reason in rejected:
                reasons[reason] += 1
            undelivered += len(rejected)

        failed = sum(reasons.values())
        self.failed_events += failed
        self.sent += len(records) - undelivered
        if failed:
            summary = "; ".join(f"{reason} ({count})" for reason, count in reasons.most_common(3))
            raise EventDeliveryError(self.name, self.safe_url, failed, len(events), summary)

    def close(self) -> None:
        self._closing.set()
        if self._owns_client and self._client is not None:
            self._client.close()
            self._client = None

    def _split(self, records: list[bytes]) -> list[list[bytes]]:
        chunks: list[list[bytes]] = []
        current: list[bytes] = []
        size = self.frame_bytes
        for record in records:
            added = len(record) + (self.separator_bytes if current else 0)
            if current and (len(current) >= self.max_batch or size + added > self.max_bytes):
                chunks.append(current)
                current, size = [], self.frame_bytes
                added = len(record)
            current.append(record)
            size += added
        if current:
            chunks.append(current)

        return chunks

    def _send(self, records: list[bytes]) -> list[str]:
        """Post one request body until it succeeds, and return the reasons of rejected records."""
        deadline = time.monotonic() + self.retry_timeout
        failures: list[str] = []
        pending = records
        attempt = 0
        while True:
            attempt += 1
            retry_after = None
            try:
                status, headers, body = self._post(self.frame(pending), deadline)
            except httpx.RequestError as error:
                reason = f"{type(error).__name__}: {self._scrub(str(error)) or 'no detail'}"
            else:
                if 200 <= status < 300:
                    retry, rejected = self.check_response(body, pending)
                    failures.extend(rejected)
                    if not retry:
                        return failures
                    reason = f"{len(retry)} events rejected temporarily"
                    pending = retry
                elif status in _RETRY_STATUSES:
                    reason = f"HTTP {status}"
                    retry_after = _parse_retry_after(headers.get("retry-after"))
                else:
                    detail = self._scrub(body[:_MAX_REASON_CHARS].decode("utf-8", "replace"))
                    location = headers.get("location")
                    if location is not None:
                        detail = f"redirect to {_safe_url(location)} not followed"
                    give_up = _GiveUp(f"HTTP {status}: {detail.strip()}", retryable=False)
                    break

            if retry_after is not None:
                delay = min(retry_after, self.max_retry_after)
            else:
                ceiling = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
                # Full jitter spreads the retries of many senders, and no security depends on it.
                delay = random.uniform(0, ceiling)  # noqa: S311
            if attempt > self.max_retries or time.monotonic() + delay >= deadline:
                give_up = _GiveUp(f"{reason} after {attempt} attempts", retryable=True)
                break

            logger.info(
                "%s sink: POST %s failed (%s); retry %d in %.2f s",
                self.name,
                self.safe_url,
                reason,
                attempt,
                delay,
            )
            self.retries += 1
            if self._closing.wait(delay):
                give_up = _GiveUp(f"{reason}; the sink was closed", retryable=True)
                break

        give_up.pending = len(pending)
        give_up.rejected = failures
        raise give_up

    def _post(self, body: bytes, deadline: float) -> tuple[int, httpx.Headers, bytes]:
        headers = {**self._headers, "content-type": self.content_type}
        if self.compress:
            body = gzip.compress(body, compresslevel=5, mtime=0)
            headers["content-encoding"] = "gzip"
        # No attempt outlives the retry budget, so a stalled collector cannot hold the thread.
        remaining = max(deadline - time.monotonic(), 0.001)
        configured = self.timeout
        timeout = httpx.Timeout(
            connect=min(configured.connect or remaining, remaining),
            read=min(configured.read or remaining, remaining),
            write=min(configured.write or remaining, remaining),
            pool=min(configured.pool or remaining, remaining),
        )

        client = self._get_client()
        request = client.build_request(
            "POST", self.url, content=body, headers=headers, timeout=timeout
        )
        # NOTE: httpx applies the read timeout to each read, so a collector that trickles the
        # response headers can hold this call past the deadline. The body is checked below.
        response = client.send(request, stream=True, follow_redirects=False)
        try:
            received = bytearray()
            for part in response.iter_bytes():
                received += part
                if len(received) >= _MAX_RESPONSE_BYTES:
                    break
                if time.monotonic() > deadline:
                    message = "the response body did not arrive within retry_timeout"
                    raise httpx.ReadTimeout(message, request=request)
        finally:
            response.close()

        return response.status_code, response.headers, bytes(received[:_MAX_RESPONSE_BYTES])

    def _get_client(self) -> httpx.Client:
        pid = os.getpid()
        client = self._client
        if client is None or (self._owns_client and self._client_pid != pid):
            # A forked child must not share the parent's pooled sockets, so it opens its own.
            client = httpx.Client(
                timeout=self.timeout,
                follow_redirects=False,
                trust_env=self.trust_env,
                verify=self.verify,
            )
            self._client = client
            self._client_pid = pid

        return client

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, _MASK)
        return text


class SplunkHecSink(HttpSink):
    """
    Send events to the Splunk HTTP Event Collector (``/services/collector/event``).

    Each event becomes one HEC JSON object, ``{"time", "host", "source", "sourcetype",
    "index", "event"}``, and a request body is these objects concatenated. ``time`` is the
    event's ``timestamp`` in seconds since the epoch. ``event`` is the redacted event, or the
    output of ``format``: embedded as JSON when it parses as JSON, as a string otherwise.

    Args:
        url: The HEC base URL, such as ``https://splunk.example.com:8088``; a URL without a
            path gets ``/services/collector/event``.
        token: The HEC token, sent as ``Authorization: Splunk <token>``. It never appears in
            ``repr``, logs or exception messages.
        index: The target index; the token's default index when ``None``.
        source: The HEC ``source`` field.
        sourcetype: The HEC ``sourcetype`` field.
        host: The HEC ``host`` field; this machine's host name by default.
        **options: The delivery options of `HttpSink`.

    .. versionadded:: 0.2.0
    """

    name = "splunk_hec"

    def __init__(
        self,
        url: str,
        token: str,
        *,
        index: str | None = None,
        source: str = "zerotrust",
        sourcetype: str = "zerotrust:access",
        host: str | None = None,
        **options: Any,
    ) -> None:
        if not isinstance(token, str) or not token.strip() or any(c in token for c in "\r\n"):
            message = "token must be a non-empty HEC token without line breaks"
            raise ConfigurationError(message, parameter="token", value=None)
        parsed = urllib.parse.urlsplit(url)
        if parsed.path in ("", "/"):
            url = urllib.parse.urlunsplit(parsed._replace(path="/services/collector/event"))
        headers = {**(options.pop("headers", None) or {}), "authorization": f"Splunk {token}"}
        super().__init__(url, headers=headers, **options)

        self._secrets.append(token)
        self.index = index
        self.source = source
        self.sourcetype = sourcetype
        self.host = host if host is not None else socket.gethostname()

    def __repr__(self) -> str:
        return (
            f"SplunkHecSink(url={self.safe_url!r}, token={_MASK!r}, index={self.index!r}, "
            f"sourcetype={self.sourcetype!r})"
        )

    def encode(self, event: dict[str, Any]) -> bytes:
        envelope: dict[str, Any] = {
            "time": _epoch_seconds(event.get("timestamp")),
            "host": self.host,
            "source": self.source,
            "sourcetype": self.sourcetype,
        }
        if self.index is not None:
            envelope["index"] = self.index
        if self.format is None:
            envelope["event"] = event
        else:
            envelope["event"] = _as_json_value(_to_bytes(self.format(event)))

        return orjson.dumps(envelope, default=str)


class ElasticsearchBulkSink(HttpSink):
    """
    Index events into Elasticsearch (or OpenSearch) with the ``_bulk`` API.

    Each event is a ``create`` action with ``_id`` set to its ``event_id``, so a batch that is
    sent again after a lost response does not index duplicates. Elasticsearch returns 409 for
    the documents it already has, which counts as delivered. ``create`` also works for data
    streams. Per-document errors in the response fail only those events; documents rejected
    with 429 or 5xx are sent again within the retry budget. An event without ``event_id``
    gets an id from Elasticsearch and is not idempotent.

    Args:
        url: The cluster URL, such as ``https://es.example.com:9200``; ``/_bulk`` is appended
            unless the path already ends with it.
        index: The target index, alias or data stream.
        api_key: An API key, either the base64 ``encoded`` form or an ``(id, api_key)`` pair,
            sent as ``Authorization: ApiKey``.
        basic_auth: A ``(username, password)`` pair, instead of ``api_key``.
        pipeline: An ingest pipeline to run on every document.
        **options: The delivery options of `HttpSink`.

    ``format`` must return a JSON object; any other output is indexed as ``{"message": ...}``.

    .. versionadded:: 0.2.0
    """

    name = "elasticsearch"
    content_type = "application/x-ndjson"

    def __init__(
        self,
        url: str,
        index: str = "zerotrust-access",
        *,
        api_key: str | tuple[str, str] | None = None,
        basic_auth: tuple[str, str] | None = None,
        pipeline: str | None = None,
        **options: Any,
    ) -> None:
        if api_key is not None and basic_auth is not None:
            message = "give either api_key or basic_auth, not both"
            raise ConfigurationError(message, parameter="api_key", value=None)
        if (
            not isinstance(index, str)
            or not index
            or index != index.lower()
            or index.startswith(("_", "-", "+"))
        ):
            message = f"index must be a lowercase Elasticsearch index name, not {index!r}"
            raise ConfigurationError(message, parameter="index", value=index)

        headers = dict(options.pop("headers", None) or {})
        secret: str | None = None
        if isinstance(api_key, tuple):
            secret = base64.b64encode(f"{api_key[0]}:{api_key[1]}".encode()).decode()
            headers["authorization"] = f"ApiKey {secret}"
        elif api_key is not None:
            secret = api_key
            headers["authorization"] = f"ApiKey {api_key}"
        elif basic_auth is not None:
            secret = base64.b64encode(f"{basic_auth[0]}:{basic_auth[1]}".encode()).decode()
            headers["authorization"] = f"Basic {secret}"

        parsed = urllib.parse.urlsplit(url)
        path = parsed.path.rstrip("/")
        if not path.endswith("/_bulk"):
            path = f"{path}/_bulk"
        # filter_path keeps the response to the fields read here, however many documents.
        query = urllib.parse.parse_qsl(parsed.query)
        query.append(
            ("filter_path", "errors,items.*.status,items.*.error.type,items.*.error.reason")
        )
        if pipeline is not None:
            query.append(("pipeline", pipeline))
        url = urllib.parse.urlunsplit(
            parsed._replace(path=path, query=urllib.parse.urlencode(query))
        )
        super().__init__(url, headers=headers, **options)

        if secret is not None:
            self._secrets.append(secret)
        if basic_auth is not None:
            self._secrets.append(basic_auth[1])
        if isinstance(api_key, tuple):
            self._secrets.append(api_key[1])
        self.index = index
        self.pipeline = pipeline

    def __repr__(self) -> str:
        auth = "none" if "authorization" not in self._headers else _MASK
        return f"ElasticsearchBulkSink(url={self.safe_url!r}, index={self.index!r}, auth={auth!r})"

    def encode(self, event: dict[str, Any]) -> bytes:
        action: dict[str, Any] = {"_index": self.index}
        event_id = event.get("event_id")
        if isinstance(event_id, str) and event_id:
            action["_id"] = event_id
        if self.format is None:
            document = orjson.dumps(event, default=str)
        else:
            document = _to_bytes(self.format(event))
            try:
                is_object = isinstance(orjson.loads(document), dict)
            except orjson.JSONDecodeError:
                is_object = False
            if not is_object:
                document = orjson.dumps({"message": document.decode("utf-8", "replace")})
            elif b"\n" in document:
                # NDJSON allows no line break inside a document.
                document = orjson.dumps(orjson.loads(document))

        return b"".join((orjson.dumps({"create": action}), b"\n", document, b"\n"))

    def check_response(
        self, body: bytes, records: Sequence[bytes]
    ) -> tuple[list[bytes], list[str]]:
        try:
            result = orjson.loads(body)
        except orjson.JSONDecodeError:
            return [], [f"the _bulk response is not JSON: {body[:80]!r}"] * len(records)
        if not isinstance(result, dict):
            return [], ["the _bulk response is not a JSON object"] * len(records)
        if not result.get("errors"):
            return [], []

        items = result.get("items")
        if not isinstance(items, list) or len(items) != len(records):
            count = len(items) if isinstance(items, list) else 0
            return [], [f"the _bulk response has {count} items for {len(records)} documents"] * len(
                records
            )
        retry: list[bytes] = []
        failures: list[str] = []
        for record, item in zip(records, items, strict=True):
            # Each item is {"create": {"status": ..., "error": {...}}}.
            outcome: Any = next(iter(item.values()), None) if isinstance(item, dict) else None
            if not isinstance(outcome, dict):
                outcome = {}
            status = outcome.get("status")
            if not isinstance(status, int):
                status = 0
            if 200 <= status < 300 or status == 409:
                # 409 on create: a document with this event_id exists, from an earlier attempt.
                continue
            if status in _RETRY_STATUSES:
                retry.append(record)
                continue
            error = outcome.get("error")
            kind = error.get("type", "unknown") if isinstance(error, dict) else "unknown"
            failures.append(f"document rejected with {status} {kind}")

        return retry, failures


class WebhookSink(HttpSink):
    """
    Post events to a generic JSON webhook: each request body is a JSON array of events.

    With ``format``, each element is the format's output, embedded as JSON when it parses as
    JSON and as a string otherwise.

    Args:
        url: The webhook URL.
        headers: Extra headers, such as ``Authorization``; masked in ``repr`` and scrubbed
            from error messages.
        **options: The delivery options of `HttpSink`.

    .. versionadded:: 0.2.0
    """

    name = "webhook"
    frame_bytes = 2
    separator_bytes = 1

    def __init__(self, url: str, headers: Mapping[str, str] | None = None, **options: Any) -> None:
        super().__init__(url, headers=headers, **options)

    def encode(self, event: dict[str, Any]) -> bytes:
        if self.format is None:
            return orjson.dumps(event, default=str)
        return orjson.dumps(_as_json_value(_to_bytes(self.format(event))))

    def frame(self, records: Sequence[bytes]) -> bytes:
        return b"[" + b",".join(records) + b"]"


def _check_url(url: str) -> str:
    if is_allowed_url(url):
        return url
    message = f"url {_safe_url(url)!r} must use https (plain http is allowed only on loopback)"
    raise ConfigurationError(message, parameter="url", value=_safe_url(url))


def _check_timeout(timeout: float | httpx.Timeout, connect: float) -> httpx.Timeout:
    if isinstance(timeout, httpx.Timeout):
        values = (timeout.connect, timeout.read, timeout.write, timeout.pool)
        if any(value is None or not value > 0 for value in values):
            message = (
                f"timeout must set connect, read, write and pool to positive seconds: {timeout!r}"
            )
            raise ConfigurationError(message, parameter="timeout", value=timeout)
        return timeout
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        message = f"timeout must be a positive number of seconds, not {timeout!r}"
        raise ConfigurationError(message, parameter="timeout", value=timeout)

    return httpx.Timeout(connect=connect, read=timeout, write=timeout, pool=timeout)


def _safe_url(url: str) -> str:
    """Drop user information, query and fragment, which may carry credentials."""
    parsed = urllib.parse.urlsplit(url)
    host = parsed.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parsed.port
    except ValueError:
        port = None
    netloc = host if port is None else f"{host}:{port}"

    return urllib.parse.urlunsplit((parsed.scheme, netloc, parsed.path, "", ""))


def _parse_retry_after(value: str | None) -> float | None:
    """Read ``Retry-After`` as seconds or as an HTTP date (RFC 9110, section 10.2.3)."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)

    return max(0.0, (when - datetime.datetime.now(datetime.UTC)).total_seconds())


def _epoch_seconds(timestamp: object) -> float:
    if isinstance(timestamp, str):
        try:
            return round(datetime.datetime.fromisoformat(timestamp).timestamp(), 6)
        except ValueError:
            pass

    return round(time.time(), 6)


def _to_bytes(rendered: bytes | str) -> bytes:
    if isinstance(rendered, str):
        return rendered.encode()
    if isinstance(rendered, bytes | bytearray):
        return bytes(rendered)
    message = f"format returned {type(rendered).__name__}, not bytes or str"
    raise TypeError(message)


def _as_json_value(rendered: bytes) -> Any:
    """Embed JSON output as is and any other output (CEF, LEEF, text) as a JSON string."""
    try:
        orjson.loads(rendered)
    except orjson.JSONDecodeError:
        return rendered.decode("utf-8", "replace")

    return orjson.Fragment(rendered)
