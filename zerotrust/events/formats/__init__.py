# SPDX-License-Identifier: Apache-2.0
"""Event formats for SIEMs: zerotrust JSON, Elastic Common Schema, OCSF and ArcSight CEF."""

from __future__ import annotations

from ._cef import CEF_SEVERITIES, MAX_CEF_VALUE_CHARS, CEFFormat, cef_format
from ._common import MAX_FIELD_CHARS, MAX_LIST_ITEMS, TRUNCATION_MARKER
from ._ecs import ECS_VERSION, ecs_format, ecs_renderer, map_ecs, render_ecs
from ._json import json_format, render_json_line
from ._ocsf import OCSF_VERSION, map_ocsf, ocsf_format, render_ocsf

__all__ = [
    "CEF_SEVERITIES",
    "ECS_VERSION",
    "MAX_CEF_VALUE_CHARS",
    "MAX_FIELD_CHARS",
    "MAX_LIST_ITEMS",
    "OCSF_VERSION",
    "TRUNCATION_MARKER",
    "CEFFormat",
    "cef_format",
    "ecs_format",
    "ecs_renderer",
    "json_format",
    "map_ecs",
    "map_ocsf",
    "ocsf_format",
    "render_cef",
    "render_ecs",
    "render_json_line",
    "render_ocsf",
]

render_cef = cef_format.render
"""Render an event as a CEF line with the default header fields, as a structlog processor."""
