# SPDX-License-Identifier: Apache-2.0
"""Access events: building, redacting, queueing and delivering them to sinks."""

from __future__ import annotations

from importlib import resources
from typing import Any

import orjson

from .access import SCHEMA_VERSION, build_access_event, format_timestamp, new_event_id
from .emitter import EventEmitter
from .redaction import SECRET_KEYS, redact_secrets
from .sinks import JsonLinesSink, MemorySink, Sink, StructlogSink, render_json

__all__ = [
    "SCHEMA_VERSION",
    "SECRET_KEYS",
    "EventEmitter",
    "JsonLinesSink",
    "MemorySink",
    "Sink",
    "StructlogSink",
    "access_event_schema",
    "build_access_event",
    "format_timestamp",
    "new_event_id",
    "redact_secrets",
    "render_json",
]


def access_event_schema() -> dict[str, Any]:
    """Return the JSON Schema (draft 2020-12) that every access event validates against."""
    text = resources.files(__package__).joinpath("schemas/access-event.schema.json").read_bytes()
    schema: dict[str, Any] = orjson.loads(text)
    return schema
