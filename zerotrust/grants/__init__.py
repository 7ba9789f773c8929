# SPDX-License-Identifier: Apache-2.0
"""Just-in-time grants: the broker that mints them, their stores and their verifier."""

from __future__ import annotations

from .aws import AwsGrantProvisioner, AwsGrantTarget, AwsProvisioningError, render_policy
from .broker import GrantBroker, GrantLimits, IssuedGrant
from .errors import GrantError, GrantStoreError
from .keys import generate_signing_key, load_signing_key, write_signing_key
from .model import Grant, GrantStatus
from .store import GrantStore, MemoryGrantStore, SQLiteGrantStore
from .verifier import GrantVerifier

__all__ = [
    "AwsGrantProvisioner",
    "AwsGrantTarget",
    "AwsProvisioningError",
    "Grant",
    "GrantBroker",
    "GrantError",
    "GrantLimits",
    "GrantStatus",
    "GrantStore",
    "GrantStoreError",
    "GrantVerifier",
    "IssuedGrant",
    "MemoryGrantStore",
    "SQLiteGrantStore",
    "generate_signing_key",
    "load_signing_key",
    "render_policy",
    "write_signing_key",
]
