# SPDX-License-Identifier: Apache-2.0
"""Redis URLs in policy files and commands: finding, adding and hiding their passwords."""

from __future__ import annotations

import urllib.parse

__all__ = ["REDIS_SCHEMES", "hide_password", "is_redis_url", "url_password", "with_password"]

REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
"""The URL schemes `RedisStateStore` accepts."""

_HIDDEN = "***"


def is_redis_url(text: str) -> bool:
    """Return whether ``text`` starts with a scheme of `REDIS_SCHEMES`, in any case."""
    return text.lower().startswith(REDIS_SCHEMES)


def url_password(url: str) -> str | None:
    """Return the password a Redis URL carries, in its user info or its query, or ``None``."""
    parts = urllib.parse.urlsplit(url)
    try:
        password = parts.password
    except ValueError:
        password = None
    if password:
        return urllib.parse.unquote(password)
    for value in urllib.parse.parse_qs(parts.query).get("password", []):
        if value:
            return value

    return None


def hide_password(url: str) -> str:
    """Return ``url`` with its password replaced by ``***``, for messages and output."""
    # Plain string surgery: urlunsplit would turn "unix:///path" into "unix:/path".
    base, question, query = url.partition("?")
    scheme, separator, rest = base.partition("://")
    authority, slash, path = rest.partition("/")
    user_info, at, host = authority.rpartition("@")
    if at and ":" in user_info:
        username = user_info.split(":", 1)[0]
        base = f"{scheme}{separator}{username}:{_HIDDEN}@{host}{slash}{path}"
    if question:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
        hidden = [(name, _HIDDEN if name == "password" else value) for name, value in pairs]
        query = urllib.parse.urlencode(hidden, safe="*")

    return f"{base}{question}{query}"


def with_password(url: str, password: str) -> str:
    """
    Return ``url`` with ``password`` added, percent-encoded, to its user info.

    A ``unix://`` URL has no host part, so there the password goes in the query, which
    redis-py also reads.
    """
    quoted = urllib.parse.quote(password, safe="")
    if url.lower().startswith("unix://"):
        return f"{url}{'&' if '?' in url else '?'}password={quoted}"
    scheme, separator, rest = url.partition("://")
    authority, slash, path = rest.partition("/")
    user_info, at, host = authority.rpartition("@")
    username = user_info if at else ""

    return f"{scheme}{separator}{username}:{quoted}@{host}{slash}{path}"
