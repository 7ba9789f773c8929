# SPDX-License-Identifier: Apache-2.0
"""The rule for outgoing URLs: https, or plain http only to a loopback address."""

from __future__ import annotations

import ipaddress
import urllib.parse

__all__ = ["is_allowed_url"]

_LOOPBACK_NAMES = frozenset({"localhost", "localhost."})


def is_allowed_url(url: str) -> bool:
    """Return whether ``url`` uses https, or plain http to a loopback host."""
    parsed = urllib.parse.urlsplit(url)
    if not parsed.hostname:
        return False
    if parsed.scheme == "https":
        return True
    if parsed.scheme != "http":
        return False
    try:
        return ipaddress.ip_address(parsed.hostname).is_loopback
    except ValueError:
        return parsed.hostname in _LOOPBACK_NAMES
