# SPDX-License-Identifier: Apache-2.0
"""The zerotrust JSON format: the event as it is, one compact JSON line."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from ._common import MAX_FIELD_CHARS, bounded, dumps_line

__all__ = ["json_format", "render_json_line"]


def render_json_line(
    _logger: object, _method_name: str, event_dict: MutableMapping[str, Any]
) -> bytes:
    """
    Render an event as one line of compact JSON (bytes, without the newline), as a structlog
    processor.

    The fields are those of the access event schema (``zerotrust/events/schemas/``), unchanged
    except that strings over 4096 characters are cut and lists keep their first 128 items.
    JSON escapes every control character, and the Unicode line separators U+0085, U+2028 and
    U+2029 are escaped as well, so the line never breaks.
    """
    line = dumps_line(event_dict)
    if len(line) <= MAX_FIELD_CHARS:
        # No string in a line this short can reach the cap, so the copy that bounds is skipped:
        # it costs more than the rendering itself.
        return line
    return dumps_line(bounded(event_dict))


def json_format(event: dict[str, Any]) -> bytes:
    """Render an already redacted event as one line of zerotrust JSON; the default sink format."""
    return render_json_line(None, "info", event)
