# SPDX-License-Identifier: Apache-2.0
"""Griffe extension: render the reStructuredText directives of zerotrust docstrings as Markdown."""

from __future__ import annotations

import re
from typing import Any

import griffe

__all__ = ["RstDirectives", "convert"]

_ADMONITION = re.compile(
    r"^(?P<indent>\s*)\.\. (?P<kind>warning|note|danger|tip)::\s*(?P<text>.*)$"
)
_VERSION = re.compile(
    r"^(?P<indent>\s*)\.\. (?P<kind>versionadded|versionchanged|deprecated)::\s*(?P<text>.*)$"
)
_VERSION_WORDS = {
    "versionadded": "Added in version",
    "versionchanged": "Changed in version",
    "deprecated": "Deprecated since version",
}


def convert(text: str) -> str:
    """
    Rewrite the directives that zerotrust docstrings use into Markdown that MkDocs renders.

    ``.. warning::`` and ``.. note::`` become Material admonitions (``!!! warning``), which
    render at any nesting depth, including inside a parameter's description.
    ``.. versionadded:: X`` becomes an italic line, and a paragraph ending in ``::`` (a
    literal block) becomes a fenced Python code block. ``Example::`` alone on a line becomes
    an ``Example:`` section that holds the code block.
    """
    lines = text.splitlines()
    output: list[str] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        admonition = _ADMONITION.match(line)
        version = _VERSION.match(line)

        if admonition:
            indent = admonition["indent"]
            body, index = _indented_block(lines, index + 1, len(indent))
            if admonition["text"]:
                body.insert(0, admonition["text"])
            output.append(f"{indent}!!! {admonition['kind']}")
            output.extend(f"{indent}    {part}" if part else "" for part in body)
            continue

        if version:
            words = _VERSION_WORDS[version["kind"]]
            output.append(f"{version['indent']}*{words} {version['text'].strip()}.*")
            index += 1
            continue

        if line.rstrip().endswith("::"):
            indent = line[: len(line) - len(line.lstrip())]
            code, index = _indented_block(lines, index + 1, len(indent))
            if line.strip() in ("Example::", "Examples::"):
                # Griffe reads a title line directly followed by an indented block as a section.
                output.append(f"{indent}Example:")
                indent += "    "
            else:
                output.append(line.rstrip()[:-1])
                output.append("")
            output.append(f"{indent}```python")
            output.extend(f"{indent}{part}" if part else "" for part in code)
            output.append(f"{indent}```")
            continue

        output.append(line)
        index += 1

    return "\n".join(output)


def _indented_block(lines: list[str], start: int, outer: int) -> tuple[list[str], int]:
    """Return the lines indented deeper than ``outer`` from ``start``, dedented, and the end."""
    # Blank lines around the block separate it from the text, and are not part of it.
    while start < len(lines) and not lines[start].strip():
        start += 1
    end = start
    while end < len(lines) and (
        not lines[end].strip() or len(lines[end]) - len(lines[end].lstrip()) > outer
    ):
        end += 1
    while end > start and not lines[end - 1].strip():
        end -= 1
    block = lines[start:end]
    depth = min((len(part) - len(part.lstrip()) for part in block if part.strip()), default=0)

    return [part[depth:] for part in block], end


class RstDirectives(griffe.Extension):
    """Convert each docstring once its object is loaded, before mkdocstrings parses it."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = convert(obj.docstring.value)
