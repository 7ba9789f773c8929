# SPDX-License-Identifier: Apache-2.0
"""Verifiers: the inputs to the trust algorithm. Subclass `Verifier` to add your own."""

from __future__ import annotations

from .base import Deny, Outcome, Principal, Verdict, VerificationContext, Verifier
from .certificates import ClientCertificate, read_client_certificate
from .device import DeviceVerifier
from .geo import GeoVerifier
from .identity import JWTVerifier, TokenCache, token_fingerprint
from .jwks import KeySet, RemoteKeySet, StaticKeySet, UnknownKeyError
from .network import NetworkSet, NetworkVerifier
from .schedule import TimeWindow, TimeWindowVerifier
from .workload import WorkloadVerifier, check_spiffe_id


def __getattr__(name: str) -> object:
    # GrantVerifier lives with the rest of the grant code, which imports this package.
    if name == "GrantVerifier":
        from ..grants.verifier import GrantVerifier

        return GrantVerifier
    message = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(message)


__all__ = [
    "ClientCertificate",
    "Deny",
    "DeviceVerifier",
    "GeoVerifier",
    "GrantVerifier",
    "JWTVerifier",
    "KeySet",
    "NetworkSet",
    "NetworkVerifier",
    "Outcome",
    "Principal",
    "RemoteKeySet",
    "StaticKeySet",
    "TimeWindow",
    "TimeWindowVerifier",
    "TokenCache",
    "UnknownKeyError",
    "Verdict",
    "VerificationContext",
    "Verifier",
    "WorkloadVerifier",
    "check_spiffe_id",
    "read_client_certificate",
    "token_fingerprint",
]
