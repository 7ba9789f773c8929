# SPDX-License-Identifier: Apache-2.0
"""The exception tree of zerotrust, split by who has to act on the error."""

from __future__ import annotations

__all__ = [
    "ConfigurationError",
    "ConnectionEndedError",
    "InfrastructureError",
    "InsecureConfigurationWarning",
    "KeySetUnavailableError",
    "MissingExtraError",
    "ZeroTrustError",
    "ZeroTrustWarning",
]


class ZeroTrustError(Exception):
    """Root of every exception that zerotrust raises."""


class ConfigurationError(ZeroTrustError, ValueError):
    """
    A policy, segment, verifier or middleware was configured in a way that is invalid or unsafe.

    Raised at construction time, so a bad deployment fails at start-up rather than on the
    first request.

    Attributes:
        parameter: The name of the offending parameter or key path, such as ``segments[1].paths``.
        value: The offending value, or ``None`` when the problem is a missing value.
    """

    def __init__(self, message: str, *, parameter: str | None = None, value: object = None) -> None:
        super().__init__(message)
        self.parameter = parameter
        self.value = value


class MissingExtraError(ZeroTrustError, ImportError):
    """A feature needs an optional dependency that is not installed."""

    def __init__(self, feature: str, extra: str) -> None:
        message = (
            f"{feature} needs the optional '{extra}' dependencies: "
            f"pip install 'zerotrust-middleware[{extra}]'"
        )
        super().__init__(message)
        self.feature = feature
        self.extra = extra


class InfrastructureError(ZeroTrustError):
    """A service that a verifier depends on (a key server, a store) failed or timed out."""


class KeySetUnavailableError(InfrastructureError):
    """
    The JSON Web Key Set could not be fetched or parsed, and no earlier key set is usable.

    Attributes:
        url: The JWKS URL that failed.
    """

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"fetching the JWKS from {url} failed: {reason}")
        self.url = url
        self.reason = reason


class ConnectionEndedError(ZeroTrustError, OSError):
    """
    The middleware ended this connection because access was no longer allowed.

    The application's ``send`` raises it after the end, as an ASGI server raises a subclass of
    `OSError` for a connection that is closed.
    """

    def __init__(self) -> None:
        super().__init__("the connection was ended because access is no longer allowed")


class ZeroTrustWarning(UserWarning):
    """Base class of the warnings that zerotrust emits."""


class InsecureConfigurationWarning(ZeroTrustWarning):
    """A setting is allowed but weakens enforcement, such as a segment in monitor mode."""
