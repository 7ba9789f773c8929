# SPDX-License-Identifier: Apache-2.0
from __future__ import annotations

import asyncio
import base64
import collections
import dataclasses
import datetime
import email.utils
import gzip
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator, MutableMapping
from typing import Any

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from zerotrust import ConfigurationError, EventEmitter, Policy, Segment, ZeroTrustMiddleware
from zerotrust.events import format_timestamp, new_event_id
from zerotrust.events.http import (
    ElasticsearchBulkSink,
    EventDeliveryError,
    HttpSink,
    SplunkHecSink,
    WebhookSink,
    _parse_retry_after,
)
from zerotrust.testing import allow, capture_events, serve

TOKEN = "3f1c9e2a-hec-token-7b6d"
API_KEY = "VnVhQ2ZHY0JDZGJrUW0tZTVhT3g6dWkybHAyYXhUTm1zeWFrdzl0dk5udw=="


@dataclasses.dataclass
class Reply:
    """What the collector does with one request."""

    status: int = 200
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    body: Any = None
    stall: float = 0.0
    # Elasticsearch item statuses, one per document of the request.
    bulk: list[int] | None = None


@dataclasses.dataclass
class Received:
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    raw: bytes
    body: bytes
    at: float


class Collector:
    """A Starlette app that records every POST and replies from a plan, for sink tests."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.plan: collections.deque[Reply] = collections.deque()
        self.default = Reply()
        self.lock = threading.Lock()
        self.app = Starlette(routes=[Route("/{path:path}", self.handle, methods=["POST"])])

    def reset(self) -> None:
        with self.lock:
            self.received.clear()
            self.plan.clear()
            self.default = Reply()

    def wait_for(self, count: int, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.received) >= count:
                return True
            time.sleep(0.01)
        return False

    async def handle(self, request: Request) -> Response:
        raw = await request.body()
        body = raw
        if request.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(raw)
        with self.lock:
            self.received.append(
                Received(
                    path=request.url.path,
                    query=dict(request.query_params),
                    headers=dict(request.headers),
                    raw=raw,
                    body=body,
                    at=time.monotonic(),
                )
            )
            reply = self.plan.popleft() if self.plan else self.default

        if reply.stall:
            await asyncio.sleep(reply.stall)
        if reply.bulk is not None or (reply.body is None and request.url.path.endswith("/_bulk")):
            count = len(body.splitlines()) // 2
            statuses = reply.bulk or [201] * count
            items = [{"create": _bulk_item(status)} for status in statuses]
            content = {"errors": any(s >= 300 for s in statuses), "items": items}
            return JSONResponse(content, status_code=reply.status, headers=reply.headers)
        if reply.body is None and request.url.path.startswith("/services/collector"):
            content = {"text": "Success", "code": 0}
            return JSONResponse(content, status_code=reply.status, headers=reply.headers)

        return JSONResponse(reply.body or {}, status_code=reply.status, headers=reply.headers)


def _bulk_item(status: int) -> dict[str, Any]:
    if status == 409:
        error = {"type": "version_conflict_engine_exception", "reason": "document already exists"}
        return {"status": status, "error": error}
    if status == 429:
        error = {"type": "es_rejected_execution_exception", "reason": "queue is full"}
        return {"status": status, "error": error}
    if status >= 300:
        return {"status": status, "error": {"type": "mapper_parsing_exception", "reason": "bad"}}
    return {"status": status}


def make_event(number: int = 0, **fields: Any) -> dict[str, Any]:
    now = time.time()
    return {
        "event": "access",
        "timestamp": format_timestamp(now),
        "event_id": new_event_id(now),
        "decision": "allow",
        "path": f"/api/items/{number}",
        **fields,
    }


def fast(**options: Any) -> dict[str, Any]:
    """Delivery options that keep retry tests short."""
    values: dict[str, Any] = {
        "timeout": 2.0,
        "connect_timeout": 1.0,
        "retry_timeout": 3.0,
        "backoff": 0.01,
        "max_backoff": 0.05,
    }
    values.update(options)
    return values


def concatenated_json(body: bytes) -> list[Any]:
    decoder = json.JSONDecoder()
    text = body.decode()
    values = []
    index = 0
    while index < len(text):
        value, index = decoder.raw_decode(text, index)
        values.append(value)
    return values


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture(name="served_collector", scope="module")
def fixture_served_collector() -> Iterator[tuple[Collector, str]]:
    """One collector served by uvicorn on 127.0.0.1 for the whole module."""
    collector = Collector()
    with serve(collector.app, lifespan="off") as base_url:
        yield collector, base_url


@pytest.fixture(name="collector")
def fixture_collector(served_collector: tuple[Collector, str]) -> Iterator[Collector]:
    """The collector, with an empty record and plan for each test."""
    collector, _ = served_collector
    collector.reset()
    yield collector
    collector.reset()


@pytest.fixture(name="base_url")
def fixture_base_url(served_collector: tuple[Collector, str]) -> str:
    return served_collector[1]


class TestSplunkHecSink:
    def test_delivers_batch(self, collector: Collector, base_url: str) -> None:
        """A batch becomes one gzip request of concatenated HEC objects with the Splunk header."""
        sink = SplunkHecSink(base_url, TOKEN, index="security", host="web-1")
        events = [make_event(number) for number in range(3)]

        sink.write(events)
        sink.close()

        assert 1 == len(collector.received)
        request = collector.received[0]
        assert "/services/collector/event" == request.path
        assert f"Splunk {TOKEN}" == request.headers["authorization"]
        assert "gzip" == request.headers["content-encoding"]
        assert request.raw != request.body
        objects = concatenated_json(request.body)
        assert events == [item["event"] for item in objects]
        first = objects[0]
        assert {"time", "host", "source", "sourcetype", "index", "event"} == set(first)
        assert "web-1" == first["host"]
        assert "zerotrust" == first["source"]
        assert "zerotrust:access" == first["sourcetype"]
        assert "security" == first["index"]
        expected_time = datetime.datetime.fromisoformat(events[0]["timestamp"]).timestamp()
        assert expected_time == pytest.approx(first["time"], abs=1e-6)
        assert 3 == sink.sent

    def test_index_omitted_by_default(self, collector: Collector, base_url: str) -> None:
        """Without an index the object has no index field, so HEC uses the token's default."""
        sink = SplunkHecSink(base_url, TOKEN, compress=False)

        sink.write([make_event()])
        sink.close()

        request = collector.received[0]
        assert "content-encoding" not in request.headers
        assert "index" not in concatenated_json(request.body)[0]

    def test_explicit_path_kept(self, collector: Collector, base_url: str) -> None:
        """A URL with a path is used as given."""
        sink = SplunkHecSink(f"{base_url}/services/collector", TOKEN)

        sink.write([make_event()])
        sink.close()

        assert "/services/collector" == collector.received[0].path

    def test_redacts_before_sending(self, collector: Collector, base_url: str) -> None:
        """Secrets in an event are redacted before they leave the process."""
        sink = SplunkHecSink(base_url, TOKEN)
        event = make_event(facts={"authorization": "Bearer abc.def", "note": "Bearer s3cret"})

        sink.write([event])
        sink.close()

        sent = concatenated_json(collector.received[0].body)[0]["event"]
        assert "[redacted]" == sent["facts"]["authorization"]
        assert "s3cret" not in sent["facts"]["note"]

    def test_format_json_embedded(self, collector: Collector, base_url: str) -> None:
        """A format that returns JSON is embedded as a JSON value."""
        sink = SplunkHecSink(base_url, TOKEN, format=lambda e: orjson.dumps({"id": e["event_id"]}))
        event = make_event()

        sink.write([event])
        sink.close()

        sent = concatenated_json(collector.received[0].body)[0]["event"]
        assert {"id": event["event_id"]} == sent

    def test_format_text_as_string(self, collector: Collector, base_url: str) -> None:
        """A format that returns text, such as CEF, is embedded as a JSON string."""
        sink = SplunkHecSink(base_url, TOKEN, format=lambda e: f"CEF:0|zerotrust|{e['path']}")

        sink.write([make_event(7)])
        sink.close()

        sent = concatenated_json(collector.received[0].body)[0]["event"]
        assert "CEF:0|zerotrust|/api/items/7" == sent

    def test_retries_after_503(self, collector: Collector, base_url: str) -> None:
        """Two 503 responses are retried, and the third attempt delivers the batch."""
        collector.plan.extend([Reply(status=503), Reply(status=503)])
        sink = SplunkHecSink(base_url, TOKEN, **fast())

        sink.write([make_event(number) for number in range(2)])
        sink.close()

        assert 3 == len(collector.received)
        assert 2 == sink.retries
        assert 2 == sink.sent
        assert collector.received[0].body == collector.received[2].body

    def test_gives_up_after_bound(
        self, collector: Collector, base_url: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A collector that keeps failing makes write raise within the retry budget."""
        collector.default = Reply(status=503)
        sink = SplunkHecSink(base_url, TOKEN, **fast(retry_timeout=0.5))
        caplog.set_level(logging.DEBUG)

        started = time.monotonic()
        with pytest.raises(EventDeliveryError) as caught:
            sink.write([make_event(number) for number in range(4)])
        elapsed = time.monotonic() - started
        sink.close()

        assert elapsed < 1.5
        assert len(collector.received) >= 2
        assert 4 == caught.value.failed
        assert 4 == caught.value.total
        assert "HTTP 503" in caught.value.reason
        assert TOKEN not in str(caught.value)
        assert TOKEN not in repr(caught.value.args)
        assert caught.value.__cause__ is None
        assert TOKEN not in caplog.text

    def test_stops_after_max_retries(self, collector: Collector, base_url: str) -> None:
        """max_retries bounds the attempts even when time remains."""
        collector.default = Reply(status=500)
        sink = SplunkHecSink(base_url, TOKEN, **fast(max_retries=2))

        with pytest.raises(EventDeliveryError):
            sink.write([make_event()])
        sink.close()

        assert 3 == len(collector.received)

    def test_echoed_token_scrubbed(self, collector: Collector, base_url: str) -> None:
        """A collector that echoes the token in an error body does not leak it into the error."""
        collector.plan.append(Reply(status=403, body={"text": f"bad token Splunk {TOKEN}"}))
        sink = SplunkHecSink(base_url, TOKEN, **fast())

        with pytest.raises(EventDeliveryError) as caught:
            sink.write([make_event()])
        sink.close()

        assert "HTTP 403" in str(caught.value)
        assert TOKEN not in str(caught.value)

    def test_retry_after_honoured(self, collector: Collector, base_url: str) -> None:
        """A 429 with Retry-After: 1 delays the next attempt by about a second."""
        collector.plan.append(Reply(status=429, headers={"retry-after": "1"}))
        sink = SplunkHecSink(base_url, TOKEN, **fast())

        sink.write([make_event()])
        sink.close()

        assert 2 == len(collector.received)
        gap = collector.received[1].at - collector.received[0].at
        assert 0.9 <= gap < 2.0

    def test_retry_after_capped(self, collector: Collector, base_url: str) -> None:
        """A Retry-After beyond max_retry_after waits only max_retry_after."""
        collector.plan.append(Reply(status=503, headers={"retry-after": "3600"}))
        sink = SplunkHecSink(base_url, TOKEN, **fast(max_retry_after=0.2))

        sink.write([make_event()])
        sink.close()

        gap = collector.received[1].at - collector.received[0].at
        assert 0.15 <= gap < 1.0

    def test_retry_after_beyond_budget(self, collector: Collector, base_url: str) -> None:
        """A Retry-After that ends after the retry budget fails at once instead of waiting."""
        collector.plan.append(Reply(status=429, headers={"retry-after": "5"}))
        sink = SplunkHecSink(base_url, TOKEN, **fast(retry_timeout=1.0, max_retry_after=10))

        started = time.monotonic()
        with pytest.raises(EventDeliveryError) as caught:
            sink.write([make_event()])
        sink.close()

        assert time.monotonic() - started < 0.5
        assert "HTTP 429" in caught.value.reason

    def test_stall_times_out(self, collector: Collector, base_url: str) -> None:
        """A collector that never responds fails the batch within the retry budget."""
        collector.default = Reply(stall=2.0)
        sink = SplunkHecSink(base_url, TOKEN, **fast(timeout=0.3, retry_timeout=0.8))

        started = time.monotonic()
        with pytest.raises(EventDeliveryError) as caught:
            sink.write([make_event()])
        elapsed = time.monotonic() - started
        sink.close()

        assert elapsed < 1.3
        assert "ReadTimeout" in caught.value.reason

    def test_400_not_retried(self, collector: Collector, base_url: str) -> None:
        """A 400 fails the batch after one request."""
        collector.default = Reply(status=400, body={"text": "Invalid data format", "code": 6})
        sink = SplunkHecSink(base_url, TOKEN, **fast())

        with pytest.raises(EventDeliveryError) as caught:
            sink.write([make_event()])
        sink.close()

        assert 1 == len(collector.received)
        assert 0 == sink.retries
        assert "HTTP 400" in caught.value.reason
        assert "Invalid data format" in caught.value.reason

    def test_redirect_not_followed(self, collector: Collector, base_url: str) -> None:
        """A redirect fails the batch without following it."""
        location = f"{base_url}/elsewhere?token=abc"
        collector.default = Reply(status=307, headers={"location": location})
        sink = SplunkHecSink(base_url, TOKEN, **fast())

        with pytest.raises(EventDeliveryError) as caught:
            sink.write([make_event()])
        sink.close()

        assert 1 == len(collector.received)
        assert "not followed" in caught.value.reason
        assert "token=abc" not in caught.value.reason

    def test_connection_refused(self) -> None:
        """A closed port is retried like any connection error, then fails the batch."""
        sink = SplunkHecSink(f"http://127.0.0.1:{closed_port()}", TOKEN, **fast(retry_timeout=0.5))

        with pytest.raises(EventDeliveryError) as caught:
            sink.write([make_event()])
        sink.close()

        assert "ConnectError" in caught.value.reason
        assert sink.retries >= 1

    def test_repr_masks_token(self, base_url: str) -> None:
        """The token never appears in repr."""
        sink = SplunkHecSink(base_url, TOKEN)

        assert TOKEN not in repr(sink)
        assert "[redacted]" in repr(sink)

    @pytest.mark.parametrize("token", ["", "  ", "abc\r\nX-Other: 1"])
    def test_bad_token_rejected(self, base_url: str, token: str) -> None:
        """An empty token or one with a line break is a configuration error."""
        with pytest.raises(ConfigurationError) as caught:
            SplunkHecSink(base_url, token)

        assert "token" == caught.value.parameter


class TestElasticsearchBulkSink:
    def test_delivers_batch(self, collector: Collector, base_url: str) -> None:
        """A batch becomes one NDJSON _bulk request of create actions keyed by event_id."""
        sink = ElasticsearchBulkSink(base_url, "zt-access", api_key=API_KEY)
        events = [make_event(number) for number in range(3)]

        sink.write(events)
        sink.close()

        request = collector.received[0]
        assert "/_bulk" == request.path
        assert request.query["filter_path"].startswith("errors,items")
        assert "application/x-ndjson" == request.headers["content-type"]
        assert f"ApiKey {API_KEY}" == request.headers["authorization"]
        assert request.body.endswith(b"\n")
        lines = [orjson.loads(line) for line in request.body.splitlines()]
        actions, documents = lines[0::2], lines[1::2]
        expected_actions = [
            {"create": {"_index": "zt-access", "_id": event["event_id"]}} for event in events
        ]
        assert expected_actions == actions
        assert events == documents
        assert 3 == sink.sent

    def test_api_key_pair(self, collector: Collector, base_url: str) -> None:
        """An (id, key) pair is sent base64-encoded."""
        sink = ElasticsearchBulkSink(base_url, api_key=("key-id", "key-secret"))

        sink.write([make_event()])
        sink.close()

        expected = base64.b64encode(b"key-id:key-secret").decode()
        assert f"ApiKey {expected}" == collector.received[0].headers["authorization"]
        assert "key-secret" not in repr(sink)

    def test_basic_auth(self, collector: Collector, base_url: str) -> None:
        """basic_auth is sent as an Authorization: Basic header."""
        sink = ElasticsearchBulkSink(base_url, basic_auth=("elastic", "changeme"))

        sink.write([make_event()])
        sink.close()

        expected = base64.b64encode(b"elastic:changeme").decode()
        assert f"Basic {expected}" == collector.received[0].headers["authorization"]

    def test_pipeline_and_path(self, collector: Collector, base_url: str) -> None:
        """A base URL with a path gets /_bulk appended, and pipeline becomes a parameter."""
        sink = ElasticsearchBulkSink(f"{base_url}/es", pipeline="zerotrust")

        sink.write([make_event()])
        sink.close()

        assert "/es/_bulk" == collector.received[0].path
        assert "zerotrust" == collector.received[0].query["pipeline"]

    def test_conflict_counts_as_delivered(self, collector: Collector, base_url: str) -> None:
        """Items with status 409 already exist, so the batch succeeds."""
        collector.plan.append(Reply(bulk=[201, 409, 409]))
        sink = ElasticsearchBulkSink(base_url)

        sink.write([make_event(number) for number in range(3)])
        sink.close()

        assert 1 == len(collector.received)
        assert 3 == sink.sent
        assert 0 == sink.failed_events

    def test_item_errors_fail_those_events(self, collector: Collector, base_url: str) -> None:
        """A mapping error fails only its event, and write raises with that count."""
        collector.plan.append(Reply(bulk=[201, 400, 201]))
        sink = ElasticsearchBulkSink(base_url, **fast())

        with pytest.raises(EventDeliveryError) as caught:
            sink.write([make_event(number) for number in range(3)])
        sink.close()

        assert 1 == len(collector.received)
        assert 1 == caught.value.failed
        assert 3 == caught.value.total
        assert "mapper_parsing_exception" in caught.value.reason
        assert 2 == sink.sent

    def test_item_429_retried_alone(self, collector: Collector, base_url: str) -> None:
        """Documents rejected with 429 are sent again, without the accepted ones."""
        collector.plan.append(Reply(bulk=[201, 429, 201]))
        sink = ElasticsearchBulkSink(base_url, **fast())
        events = [make_event(number) for number in range(3)]

        sink.write(events)
        sink.close()

        assert 2 == len(collector.received)
        retried = [orjson.loads(line) for line in collector.received[1].body.splitlines()]
        assert [events[1]] == retried[1::2]
        assert 3 == sink.sent

    def test_event_without_id(self, collector: Collector, base_url: str) -> None:
        """An event without event_id is indexed without _id."""
        sink = ElasticsearchBulkSink(base_url)

        sink.write([{"event": "anomaly", "kind": "burst"}])
        sink.close()

        action = orjson.loads(collector.received[0].body.splitlines()[0])
        assert {"create": {"_index": "zerotrust-access"}} == action

    def test_text_format_wrapped(self, collector: Collector, base_url: str) -> None:
        """A format that returns text is indexed as a message document."""
        sink = ElasticsearchBulkSink(base_url, format=lambda e: "CEF:0|zerotrust|access")

        sink.write([make_event()])
        sink.close()

        document = orjson.loads(collector.received[0].body.splitlines()[1])
        assert {"message": "CEF:0|zerotrust|access"} == document

    @pytest.mark.parametrize("index", ["", "Access", "_internal", "-logs"])
    def test_bad_index_rejected(self, base_url: str, index: str) -> None:
        """An index name that Elasticsearch would refuse is a configuration error."""
        with pytest.raises(ConfigurationError) as caught:
            ElasticsearchBulkSink(base_url, index)

        assert "index" == caught.value.parameter

    def test_both_auth_rejected(self, base_url: str) -> None:
        """api_key and basic_auth together are a configuration error."""
        with pytest.raises(ConfigurationError):
            ElasticsearchBulkSink(base_url, api_key=API_KEY, basic_auth=("a", "b"))

    def test_secret_not_in_error(self, collector: Collector, base_url: str) -> None:
        """The API key is scrubbed from errors even when the collector echoes it."""
        collector.plan.append(Reply(status=401, body={"error": f"bad key ApiKey {API_KEY}"}))
        sink = ElasticsearchBulkSink(base_url, api_key=API_KEY)

        with pytest.raises(EventDeliveryError) as caught:
            sink.write([make_event()])
        sink.close()

        assert API_KEY not in str(caught.value)
        assert API_KEY not in repr(sink)


class TestWebhookSink:
    def test_delivers_array(self, collector: Collector, base_url: str) -> None:
        """A batch becomes one JSON array, with the configured headers."""
        sink = WebhookSink(f"{base_url}/hook", headers={"x-api-key": "hook-secret"})
        events = [make_event(number) for number in range(3)]

        sink.write(events)
        sink.close()

        request = collector.received[0]
        assert "/hook" == request.path
        assert "hook-secret" == request.headers["x-api-key"]
        assert "application/json" == request.headers["content-type"]
        assert events == orjson.loads(request.body)
        assert "hook-secret" not in repr(sink)

    def test_splits_by_count(self, collector: Collector, base_url: str) -> None:
        """A batch larger than max_batch is sent in several requests."""
        sink = WebhookSink(base_url, max_batch=2)

        sink.write([make_event(number) for number in range(5)])
        sink.close()

        assert [2, 2, 1] == [len(orjson.loads(r.body)) for r in collector.received]

    def test_splits_by_bytes(self, collector: Collector, base_url: str) -> None:
        """No request body exceeds max_bytes before compression."""
        sink = WebhookSink(base_url, max_bytes=2048)
        events = [make_event(number, note="x" * 500) for number in range(10)]

        sink.write(events)
        sink.close()

        assert len(collector.received) > 1
        for request in collector.received:
            assert len(request.body) <= 2048
        delivered = [event for r in collector.received for event in orjson.loads(r.body)]
        assert events == delivered

    def test_oversized_event_fails_alone(self, collector: Collector, base_url: str) -> None:
        """An event larger than max_bytes is counted as failed and the others are delivered."""
        sink = WebhookSink(base_url, max_bytes=1024)
        events = [make_event(1), make_event(2, note="x" * 2000), make_event(3)]

        with pytest.raises(EventDeliveryError) as caught:
            sink.write(events)
        sink.close()

        assert 1 == caught.value.failed
        assert "max_bytes" in caught.value.reason
        assert [events[0], events[2]] == orjson.loads(collector.received[0].body)

    def test_unavailable_skips_rest(self, collector: Collector, base_url: str) -> None:
        """After one request used up its retry budget, the rest of the batch is not sent."""
        collector.default = Reply(status=503)
        sink = WebhookSink(base_url, max_batch=1, **fast(retry_timeout=0.3))

        with pytest.raises(EventDeliveryError) as caught:
            sink.write([make_event(number) for number in range(3)])
        sink.close()

        assert 3 == caught.value.failed
        assert all(1 == len(orjson.loads(r.body)) for r in collector.received)
        first_body = collector.received[0].body
        assert all(first_body == r.body for r in collector.received)

    def test_faulty_format_fails_event(self, collector: Collector, base_url: str) -> None:
        """A format that raises fails its event; the others are delivered."""

        def format_event(event: dict[str, Any]) -> bytes:
            if event["path"].endswith("/1"):
                raise KeyError("missing")
            return orjson.dumps(event)

        sink = WebhookSink(base_url, format=format_event)

        with pytest.raises(EventDeliveryError) as caught:
            sink.write([make_event(0), make_event(1), make_event(2)])
        sink.close()

        assert 1 == caught.value.failed
        assert "KeyError" in caught.value.reason
        assert 2 == len(orjson.loads(collector.received[0].body))

    def test_custom_client(self, collector: Collector, base_url: str) -> None:
        """A caller's client is used and left open by close."""
        seen: list[str] = []
        client = httpx.Client(event_hooks={"request": [lambda r: seen.append(str(r.url))]})
        sink = WebhookSink(f"{base_url}/hook", client=client)

        sink.write([make_event()])
        sink.close()

        assert [f"{base_url}/hook"] == seen
        assert not client.is_closed
        client.close()

    def test_close_stops_retries(self, collector: Collector, base_url: str) -> None:
        """Closing the sink ends a write that is waiting to retry."""
        collector.default = Reply(status=503)
        sink = WebhookSink(base_url, **fast(backoff=5.0, max_backoff=5.0, retry_timeout=20))
        errors: list[BaseException] = []

        def write() -> None:
            try:
                sink.write([make_event()])
            except EventDeliveryError as error:
                errors.append(error)

        thread = threading.Thread(target=write)
        thread.start()
        assert collector.wait_for(1)
        started = time.monotonic()
        sink.close()
        thread.join(5)

        assert time.monotonic() - started < 1.0
        assert 1 == len(errors)


class TestHttpSinkConfiguration:
    @pytest.mark.parametrize(
        "url",
        [
            "http://collector.example.com/hook",
            "ftp://127.0.0.1/hook",
            "https:///no-host",
            "http://10.0.0.5:8088",
        ],
    )
    def test_insecure_url_rejected(self, url: str) -> None:
        """Plain http is rejected except on loopback, and so are other schemes."""
        with pytest.raises(ConfigurationError) as caught:
            WebhookSink(url)

        assert "url" == caught.value.parameter

    @pytest.mark.parametrize(
        "url", ["https://collector.example.com/hook", "http://localhost:8080", "http://[::1]:80/"]
    )
    def test_secure_url_accepted(self, url: str) -> None:
        """https anywhere and http on loopback are accepted."""
        assert url == WebhookSink(url).url

    def test_userinfo_hidden(self) -> None:
        """User information in the URL stays out of repr and error messages."""
        sink = WebhookSink("https://user:pa55word@collector.example.com/hook?key=k3y")

        assert "pa55word" not in repr(sink)
        assert "k3y" not in repr(sink)
        with pytest.raises(ConfigurationError) as caught:
            WebhookSink("http://user:pa55word@collector.example.com/hook")
        assert "pa55word" not in str(caught.value)

    @pytest.mark.parametrize(
        ("option", "value"),
        [
            ("max_batch", 0),
            ("max_bytes", 100),
            ("max_retries", -1),
            ("retry_timeout", 0),
            ("timeout", 0),
            ("timeout", httpx.Timeout(None)),
            ("timeout", httpx.Timeout(5.0, read=None)),
            ("backoff", -1.0),
        ],
    )
    def test_bad_option_rejected(self, option: str, value: Any) -> None:
        """Unbounded or nonsensical delivery options are configuration errors."""
        with pytest.raises(ConfigurationError) as caught:
            WebhookSink("https://collector.example.com/hook", **{option: value})

        assert option == caught.value.parameter

    def test_client_defaults(self) -> None:
        """The created client ignores the environment and follows no redirects."""
        sink = WebhookSink("https://collector.example.com/hook", timeout=7.0, connect_timeout=2.0)

        client = sink._get_client()

        assert not client.trust_env
        assert not client.follow_redirects
        assert httpx.Timeout(connect=2.0, read=7.0, write=7.0, pool=7.0) == client.timeout
        sink.close()

    def test_header_names_case_insensitive(self, collector: Collector, base_url: str) -> None:
        """A caller's header replaces the sink's header of the same name in any case."""
        sink = WebhookSink(base_url, headers={"User-Agent": "shipper/1.0"})

        sink.write([make_event()])
        sink.close()

        assert "shipper/1.0" == collector.received[0].headers["user-agent"]

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("3", 3.0),
            (" 0 ", 0.0),
            ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
            ("soon", None),
            (None, None),
        ],
    )
    def test_retry_after_parsing(self, value: str | None, expected: float | None) -> None:
        """Retry-After is read as seconds or as an HTTP date; a past date means now."""
        assert expected == _parse_retry_after(value)

    def test_retry_after_future_date(self) -> None:
        """A Retry-After date in the future gives the seconds until then."""
        when = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=30)

        seconds = _parse_retry_after(email.utils.format_datetime(when, usegmt=True))

        assert seconds is not None
        assert 28 <= seconds <= 30

    def test_is_a_sink(self) -> None:
        """The HTTP sinks plug into the emitter like any other sink."""
        assert issubclass(WebhookSink, HttpSink)
        EventEmitter([WebhookSink("https://collector.example.com/hook")]).close()

    def test_safe_url_of_ipv6(self) -> None:
        """An IPv6 collector address keeps its brackets in the displayed URL."""
        sink = WebhookSink("http://[::1]:9000/hook")

        assert "http://[::1]:9000/hook" == sink.safe_url


async def _ok(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def protected_app(sink: WebhookSink) -> tuple[ZeroTrustMiddleware, EventEmitter]:
    emitter = EventEmitter([sink], flush_interval=0.05)
    policy = Policy(
        [
            Segment("api", paths=["/api/"], verifiers=[allow("alice", scopes=["read"])]),
            Segment("admin", paths=["/admin/"], verifiers=[allow("alice")], roles=["admin"]),
        ]
    )
    return ZeroTrustMiddleware(_ok, policy=policy, events=emitter), emitter


class TestEndToEnd:
    async def test_collector_receives_every_event(
        self, collector: Collector, base_url: str
    ) -> None:
        """Every access event reaches the webhook once the emitter is flushed."""
        app, emitter = protected_app(WebhookSink(f"{base_url}/events"))
        transport = httpx.ASGITransport(app=app)

        with capture_events() as captured:
            async with httpx.AsyncClient(transport=transport, base_url="http://app.test") as client:
                for number in range(20):
                    await client.get(f"/api/items/{number}")
                    await client.get("/admin/users")
        assert await asyncio.to_thread(emitter.flush, 5.0)
        await asyncio.to_thread(emitter.close)

        delivered = [event for r in collector.received for event in orjson.loads(r.body)]
        assert 40 == len(delivered)
        assert [e["path"] for e in captured] == [e["path"] for e in delivered]
        assert 40 == len({event["event_id"] for event in delivered})
        assert 20 == sum(1 for event in delivered if event["decision"] == "deny")
        assert 0 == emitter.failed

    async def test_captured_event_id_delivered(self, collector: Collector, base_url: str) -> None:
        """The event that capture_events returns is the one the collector receives."""
        app, emitter = protected_app(WebhookSink(base_url))
        transport = httpx.ASGITransport(app=app)

        with capture_events() as captured:
            async with httpx.AsyncClient(transport=transport, base_url="http://app.test") as client:
                await client.get("/api/items/1")
        await asyncio.to_thread(emitter.close)

        delivered = orjson.loads(collector.received[0].body)
        assert captured[0]["event_id"] == delivered[0]["event_id"]

    async def test_stalled_collector_off_request_path(
        self, collector: Collector, base_url: str
    ) -> None:
        """While the collector stalls, requests through the middleware stay fast."""
        collector.default = Reply(stall=3.0)
        sink = WebhookSink(base_url, **fast(timeout=2.5, retry_timeout=2.5))
        app, emitter = protected_app(sink)
        transport = httpx.ASGITransport(app=app)

        async with httpx.AsyncClient(transport=transport, base_url="http://app.test") as client:
            await client.get("/api/items/first")
            # The writer thread is now blocked on the stalled collector.
            assert await asyncio.to_thread(collector.wait_for, 1)
            latencies = []
            for number in range(50):
                started = time.perf_counter()
                response = await client.get(f"/api/items/{number}")
                latencies.append(time.perf_counter() - started)
                assert 200 == response.status_code

        assert max(latencies) < 0.25
        assert 1 == len(collector.received)
        collector.default = Reply()
        await asyncio.to_thread(emitter.close, 10.0)
        assert 1 <= emitter.failed
