# SPDX-License-Identifier: Apache-2.0
"""Errors of the grant broker and the grant stores."""

from __future__ import annotations

from ..exceptions import InfrastructureError, ZeroTrustError

__all__ = ["GrantError", "GrantStoreError"]


class GrantError(ZeroTrustError):
    """
    A grant could not be requested, approved, minted or revoked.

    Attributes:
        reason: A reason code such as ``duration_too_long`` or ``self_approval``.
        grant_id: The grant concerned, when there is one.

    .. versionadded:: 0.1.0
    """

    def __init__(self, reason: str, message: str, *, grant_id: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.grant_id = grant_id


class GrantStoreError(InfrastructureError):
    """
    The grant store could not be read or written, such as a locked or corrupt database.

    .. versionadded:: 0.1.0
    """
