# SPDX-License-Identifier: Apache-2.0
"""Zero-trust access control for Python web apps: one middleware that verifies every request."""

from __future__ import annotations

from .asgi import STATE_KEY, AccessContext, DenialResponse, ZeroTrustMiddleware, get_access
from .engine import Decision, Engine, VerdictRecord
from .events import EventEmitter, JsonLinesSink, MemorySink, Sink, StructlogSink
from .exceptions import (
    ConfigurationError,
    InfrastructureError,
    InsecureConfigurationWarning,
    KeySetUnavailableError,
    MissingExtraError,
    ZeroTrustError,
    ZeroTrustWarning,
)
from .policy import Policy, Segment
from .request import AccessRequest, TrustedProxies
from .verifiers import Deny, JWTVerifier, Principal, Verdict, VerificationContext, Verifier

__version__ = "0.1.0"

__all__ = [
    "STATE_KEY",
    "AccessContext",
    "AccessRequest",
    "ConfigurationError",
    "Decision",
    "DenialResponse",
    "Deny",
    "Engine",
    "EventEmitter",
    "InfrastructureError",
    "InsecureConfigurationWarning",
    "JWTVerifier",
    "JsonLinesSink",
    "KeySetUnavailableError",
    "MemorySink",
    "MissingExtraError",
    "Policy",
    "Principal",
    "Segment",
    "Sink",
    "StructlogSink",
    "TrustedProxies",
    "Verdict",
    "VerdictRecord",
    "VerificationContext",
    "Verifier",
    "ZeroTrustError",
    "ZeroTrustMiddleware",
    "ZeroTrustWarning",
    "__version__",
    "get_access",
]
