# SPDX-License-Identifier: Apache-2.0
"""The ``type`` names a policy file may use, and how each maps to a zerotrust class."""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "BACKENDS",
    "DETECTORS",
    "DEVICE_REGISTRIES",
    "FORMATS",
    "GRANT_STORES",
    "IMPORT_PATH",
    "SINKS",
    "STATE_STORES",
    "VERIFIERS",
    "Component",
    "import_object",
]

# "package.module:Attribute", the form uvicorn and entry points use.
IMPORT_PATH = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


@dataclass(frozen=True, slots=True)
class Component:
    """
    The class behind one ``type`` of a policy file, and the options it takes from the file.

    Attributes:
        factory: Import path of the class (imported on first use, so optional extras are only
            needed when a policy uses them).
        exclude: Parameters a policy file cannot set (objects such as HTTP clients or clocks).
        secrets: Parameters whose value must be an ``env`` or ``file`` reference.
        paths: Parameters holding a file or directory, resolved against the policy's directory.
        converters: Parameters whose value needs more than a type check, mapped to the name of
            the loader method that converts it.
        injected: Parameters the loader fills itself, mapped to what it passes (``signals``,
            ``emitter``, ``state`` or ``shared_state``; see ``_Builder.injected``).
        options_from: Import path of a class whose keyword parameters the factory takes through
            ``**options``.
    """

    factory: str
    exclude: frozenset[str] = frozenset()
    secrets: frozenset[str] = frozenset()
    paths: frozenset[str] = frozenset()
    converters: Mapping[str, str] = field(default_factory=dict)
    injected: Mapping[str, str] = field(default_factory=dict)
    options_from: str | None = None


def import_object(path: str) -> Any:
    """
    Import ``package.module:Attribute`` and return the attribute.

    Raises:
        ImportError: if the module cannot be imported.
        AttributeError: if it has no such attribute.
    """
    module_name, _, attribute = path.partition(":")
    found: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        found = getattr(found, part)

    return found


def load_factory(component: Component) -> Callable[..., Any]:
    factory: Callable[..., Any] = import_object(component.factory)
    return factory


_KEYS = {"keys": "public_keys"}

VERIFIERS: Mapping[str, Component] = {
    "jwt": Component(
        "zerotrust.verifiers:JWTVerifier",
        exclude=frozenset({"http_client"}),
        converters={**_KEYS, "jwks_options": "jwks_options"},
    ),
    "device": Component(
        "zerotrust.verifiers:DeviceVerifier",
        exclude=frozenset({"http_client"}),
        converters={**_KEYS, "jwks_options": "jwks_options", "registry": "device_registry"},
    ),
    "geo": Component("zerotrust.verifiers:GeoVerifier", converters={"backend": "geo_backend"}),
    "time_window": Component(
        "zerotrust.verifiers:TimeWindowVerifier",
        exclude=frozenset({"clock"}),
        converters={"windows": "time_windows"},
    ),
    "network": Component("zerotrust.verifiers:NetworkVerifier"),
    "workload": Component("zerotrust.verifiers:WorkloadVerifier"),
    "grant": Component(
        "zerotrust.grants:GrantVerifier",
        converters={
            **_KEYS,
            "store": "grant_store",
            "events": "grant_events",
            "single_use": "single_use",
        },
    ),
    "risk": Component("zerotrust.monitor:RiskVerifier", injected={"signals": "signals"}),
}
"""Verifier types: the ``type`` of a ``[verifiers.NAME]`` table or an inline verifier."""

_FORMAT = {"format": "event_format"}
_HTTP_OPTIONS = "zerotrust.events.http:HttpSink"

SINKS: Mapping[str, Component] = {
    "jsonl": Component(
        "zerotrust.events:JsonLinesSink",
        exclude=frozenset({"processors"}),
        converters={**_FORMAT, "target": "sink_target"},
    ),
    "structlog": Component("zerotrust.events:StructlogSink"),
    "memory": Component("zerotrust.events:MemorySink"),
    "rotating_file": Component(
        "zerotrust.events:RotatingFileSink", paths=frozenset({"path"}), converters=_FORMAT
    ),
    "syslog": Component(
        "zerotrust.events:SyslogSink",
        exclude=frozenset({"severity"}),
        converters={**_FORMAT, "ssl_context": "ssl_context"},
    ),
    "sqlite": Component(
        "zerotrust.events:SQLiteSink", paths=frozenset({"path"}), converters=_FORMAT
    ),
    "postgres": Component(
        "zerotrust.events:PostgresSink", secrets=frozenset({"dsn"}), converters=_FORMAT
    ),
    "splunk_hec": Component(
        "zerotrust.events:SplunkHecSink",
        exclude=frozenset({"client"}),
        secrets=frozenset({"token"}),
        converters={**_FORMAT, "headers": "http_headers"},
        options_from=_HTTP_OPTIONS,
    ),
    "elasticsearch": Component(
        "zerotrust.events:ElasticsearchBulkSink",
        exclude=frozenset({"client"}),
        converters={
            **_FORMAT,
            "headers": "http_headers",
            "api_key": "elasticsearch_api_key",
            "basic_auth": "basic_auth",
        },
        options_from=_HTTP_OPTIONS,
    ),
    "webhook": Component(
        "zerotrust.events:WebhookSink",
        exclude=frozenset({"client"}),
        converters={**_FORMAT, "headers": "http_headers"},
        options_from=_HTTP_OPTIONS,
    ),
    "prometheus": Component(
        "zerotrust.events:PrometheusSink", exclude=frozenset({"registry", "emitter"})
    ),
    "otel": Component(
        "zerotrust.events:OpenTelemetrySink", exclude=frozenset({"meter_provider", "emitter"})
    ),
}
"""Sink types: the ``type`` of an ``[[events.sinks]]`` table."""

FORMATS: Mapping[str, str] = {
    "json": "zerotrust.events.formats:json_format",
    "ecs": "zerotrust.events.formats:ecs_format",
    "ocsf": "zerotrust.events.formats:ocsf_format",
    "cef": "zerotrust.events.formats:cef_format",
}
"""Event formats by name; ``{ type = "cef", vendor = ... }`` builds a `CEFFormat`."""

CEF_FORMAT = Component("zerotrust.events.formats:CEFFormat")

DETECTORS: Mapping[str, Component] = {
    "denied_burst": Component("zerotrust.monitor:DeniedBurstDetector"),
    "lateral_movement": Component("zerotrust.monitor:LateralMovementDetector"),
    "impossible_travel": Component("zerotrust.monitor:ImpossibleTravelDetector"),
    "token_replay": Component("zerotrust.monitor:TokenReplayDetector"),
    "credential_stuffing": Component("zerotrust.monitor:CredentialStuffingDetector"),
}
"""Detector types: the ``type`` of a ``[detectors.NAME]`` table."""

DEVICE_REGISTRIES: Mapping[str, Component] = {
    "file": Component("zerotrust.devices:FileDeviceRegistry", paths=frozenset({"path"})),
    "state": Component("zerotrust.devices:StateDeviceRegistry", injected={"state": "state"}),
}

BACKENDS: Mapping[str, Component] = {
    "geoip2fast": Component("zerotrust.geo:GeoIP2FastBackend"),
    "maxmind": Component("zerotrust.geo:MaxMindBackend", paths=frozenset({"country_db", "asn_db"})),
}

GRANT_STORES: Mapping[str, Component] = {
    "memory": Component("zerotrust.grants:MemoryGrantStore", exclude=frozenset({"clock"})),
    "sqlite": Component(
        "zerotrust.grants:SQLiteGrantStore", exclude=frozenset({"clock"}), paths=frozenset({"path"})
    ),
    "state": Component(
        "zerotrust.grants.store:StateGrantStore",
        exclude=frozenset({"clock"}),
        injected={"state": "state"},
    ),
}

STATE_STORES: Mapping[str, Component] = {
    "memory": Component("zerotrust.state:MemoryStateStore", exclude=frozenset({"clock"})),
    "redis": Component(
        "zerotrust.state:RedisStateStore",
        exclude=frozenset({"events"}),
        converters={"url": "redis_url"},
    ),
}
"""State store types: the ``type`` of the ``[state]`` table."""

MONITOR = Component(
    "zerotrust.monitor:MonitorSink",
    injected={"signals": "signals", "emitter": "none", "store": "shared_state"},
    converters={"detectors": "detectors"},
)
SIGNALS = Component(
    "zerotrust.monitor:RiskSignals",
    exclude=frozenset({"clock"}),
    injected={"store": "shared_state"},
)
EMITTER = Component(
    "zerotrust.events:EventEmitter", paths=frozenset({"spool_dir"}), injected={"sinks": "sinks"}
)
TIME_WINDOW = Component("zerotrust.verifiers:TimeWindow")
SEGMENT = Component(
    "zerotrust.policy:Segment",
    converters={"verifiers": "segment_verifiers", "scopes": "segment_scopes"},
)
REMOTE_KEY_SET = Component(
    "zerotrust.verifiers:RemoteKeySet", exclude=frozenset({"url", "algorithms", "client"})
)
