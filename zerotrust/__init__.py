# SPDX-License-Identifier: Apache-2.0
"""Zero-trust access control for Python web apps: one middleware that verifies every request."""

from __future__ import annotations

from ._version import __version__
from .asgi import STATE_KEY, AccessContext, DenialResponse, ZeroTrustMiddleware, get_access
from .devices import DeviceRecord, DeviceRegistry, FileDeviceRegistry, MemoryDeviceRegistry
from .engine import Decision, Engine, VerdictRecord
from .events import EventEmitter, JsonLinesSink, MemorySink, Sink, StructlogSink
from .exceptions import (
    ConfigurationError,
    ConnectionEndedError,
    InfrastructureError,
    InsecureConfigurationWarning,
    KeySetUnavailableError,
    MissingExtraError,
    ZeroTrustError,
    ZeroTrustWarning,
)
from .grants import (
    Grant,
    GrantBroker,
    GrantError,
    GrantLimits,
    GrantStore,
    GrantStoreError,
    GrantVerifier,
    IssuedGrant,
    MemoryGrantStore,
    SQLiteGrantStore,
)
from .policy import Policy, Segment
from .request import AccessRequest, TrustedProxies
from .verifiers import (
    Deny,
    DeviceVerifier,
    GeoVerifier,
    JWTVerifier,
    NetworkVerifier,
    Principal,
    TimeWindow,
    TimeWindowVerifier,
    Verdict,
    VerificationContext,
    Verifier,
    WorkloadVerifier,
)
from .wsgi import ZeroTrustWSGIMiddleware

__all__ = [
    "STATE_KEY",
    "AccessContext",
    "AccessRequest",
    "ConfigurationError",
    "ConnectionEndedError",
    "Decision",
    "DenialResponse",
    "Deny",
    "DeviceRecord",
    "DeviceRegistry",
    "DeviceVerifier",
    "Engine",
    "EventEmitter",
    "FileDeviceRegistry",
    "GeoVerifier",
    "Grant",
    "GrantBroker",
    "GrantError",
    "GrantLimits",
    "GrantStore",
    "GrantStoreError",
    "GrantVerifier",
    "InfrastructureError",
    "InsecureConfigurationWarning",
    "IssuedGrant",
    "JWTVerifier",
    "JsonLinesSink",
    "KeySetUnavailableError",
    "MemoryDeviceRegistry",
    "MemoryGrantStore",
    "MemorySink",
    "MissingExtraError",
    "NetworkVerifier",
    "Policy",
    "Principal",
    "SQLiteGrantStore",
    "Segment",
    "Sink",
    "StructlogSink",
    "TimeWindow",
    "TimeWindowVerifier",
    "TrustedProxies",
    "Verdict",
    "VerdictRecord",
    "VerificationContext",
    "Verifier",
    "WorkloadVerifier",
    "ZeroTrustError",
    "ZeroTrustMiddleware",
    "ZeroTrustWSGIMiddleware",
    "ZeroTrustWarning",
    "__version__",
    "get_access",
]
