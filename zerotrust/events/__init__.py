# SPDX-License-Identifier: Apache-2.0
"""Access events: building, redacting, queueing and delivering them to sinks."""

from __future__ import annotations

from importlib import resources
from typing import Any

import orjson

from .access import SCHEMA_VERSION, build_access_event, format_timestamp, new_event_id
from .emitter import EventEmitter
from .formats import cef_format, ecs_format, json_format, ocsf_format
from .http import ElasticsearchBulkSink, EventDeliveryError, SplunkHecSink, WebhookSink
from .metrics import PrometheusSink, metrics_app
from .otel import OpenTelemetrySink
from .redaction import SECRET_KEYS, redact_secrets
from .sinks import JsonLinesSink, MemorySink, Sink, StructlogSink, render_json
from .sinks_file import RotatingFileSink
from .sql import PostgresSink, SQLiteSink
from .syslog import SyslogSink

__all__ = [
    "SCHEMA_VERSION",
    "SECRET_KEYS",
    "ElasticsearchBulkSink",
    "EventDeliveryError",
    "EventEmitter",
    "JsonLinesSink",
    "MemorySink",
    "OpenTelemetrySink",
    "PostgresSink",
    "PrometheusSink",
    "RotatingFileSink",
    "SQLiteSink",
    "Sink",
    "SplunkHecSink",
    "StructlogSink",
    "SyslogSink",
    "WebhookSink",
    "access_event_schema",
    "build_access_event",
    "cef_format",
    "ecs_format",
    "format_timestamp",
    "json_format",
    "metrics_app",
    "new_event_id",
    "ocsf_format",
    "redact_secrets",
    "render_json",
]


def access_event_schema() -> dict[str, Any]:
    """Return the JSON Schema (draft 2020-12) that every access event validates against."""
    text = resources.files(__package__).joinpath("schemas/access-event.schema.json").read_bytes()
    schema: dict[str, Any] = orjson.loads(text)
    return schema
