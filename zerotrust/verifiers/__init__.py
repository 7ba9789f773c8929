# SPDX-License-Identifier: Apache-2.0
"""Verifiers: the inputs to the trust algorithm. Subclass `Verifier` to add your own."""

from __future__ import annotations

from .base import Deny, Outcome, Principal, Verdict, VerificationContext, Verifier
from .identity import JWTVerifier, TokenCache, token_fingerprint
from .jwks import KeySet, RemoteKeySet, StaticKeySet, UnknownKeyError

__all__ = [
    "Deny",
    "JWTVerifier",
    "KeySet",
    "Outcome",
    "Principal",
    "RemoteKeySet",
    "StaticKeySet",
    "TokenCache",
    "UnknownKeyError",
    "Verdict",
    "VerificationContext",
    "Verifier",
    "token_fingerprint",
]
