# SPDX-License-Identifier: Apache-2.0
"""The text of a policy file: key paths, their line numbers, problems, and secret references."""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..exceptions import ConfigurationError, ZeroTrustWarning

__all__ = [
    "KeyPath",
    "LineIndex",
    "PolicyFileError",
    "PolicyProblem",
    "PolicyWarning",
    "format_key_path",
    "suggest",
]

KeyPath = tuple[str | int, ...]

# Bounds on what a policy file may pull in, so a wrong path cannot make loading read a disk image.
MAX_POLICY_BYTES = 1024 * 1024
MAX_REFERENCED_FILE_BYTES = 1024 * 1024

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_KEY_PART = r"""(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|'[^']*')"""
_DOTTED_KEY = rf"{_KEY_PART}(?:\s*\.\s*{_KEY_PART})*"
_TABLE_HEADER = re.compile(rf"\s*\[\s*({_DOTTED_KEY})\s*\]\s*(?:#.*)?")
_ARRAY_HEADER = re.compile(rf"\s*\[\[\s*({_DOTTED_KEY})\s*\]\]\s*(?:#.*)?")
_KEY_LINE = re.compile(rf"\s*({_DOTTED_KEY})\s*=")
_SPLIT_PART = re.compile(_KEY_PART)


def format_key_path(path: KeyPath) -> str:
    """Render a key path the way the docs write it: ``segments[2].verifiers[0].audience``."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
            continue
        name = part if _BARE_KEY.fullmatch(part) else f'"{part}"'
        text += f".{name}" if text else name

    return text or "(top level)"


def suggest(name: str, choices: Iterable[str]) -> str:
    """Return ``; did you mean 'x'?`` for the closest choice, or an empty string."""
    matches = difflib.get_close_matches(name, sorted(choices), n=1, cutoff=0.6)
    return f"; did you mean {matches[0]!r}?" if matches else ""


@dataclass(frozen=True, slots=True)
class PolicyProblem:
    """
    One error found in a policy file.

    Attributes:
        file: The policy file.
        key_path: Where the problem is, such as ``segments[2].verifiers[0].audience``.
        line: The 1-based line of that key in the file, or of its closest parent; ``None``
            when the text gives no clue.
        message: What is wrong and what to do.
    """

    file: str
    key_path: str
    line: int | None
    message: str

    def __str__(self) -> str:
        location = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{location}: {self.key_path}: {self.message}"


@dataclass(frozen=True, slots=True)
class PolicyWarning:
    """
    A setting in a policy file that is legal but weakens enforcement.

    Attributes:
        file: The policy file.
        key_path: The key the warning is about.
        line: The 1-based line of that key, or ``None``.
        message: What the setting does and how to avoid it.
        category: The warning class, usually `InsecureConfigurationWarning`.
    """

    file: str
    key_path: str
    line: int | None
    message: str
    category: type[Warning] = ZeroTrustWarning

    def __str__(self) -> str:
        location = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{location}: {self.key_path}: {self.message}"


class PolicyFileError(ConfigurationError):
    """
    A policy file could not be loaded; `problems` lists every error found, in file order.

    ``parameter`` and ``value`` are those of the first problem, so code that handles any
    `ConfigurationError` still learns where the file went wrong.

    Attributes:
        path: The policy file.
        problems: Every problem found.
        warnings: The warnings found before loading stopped.
    """

    def __init__(
        self,
        path: str,
        problems: Sequence[PolicyProblem],
        warnings: Sequence[PolicyWarning] = (),
    ) -> None:
        count = len(problems)
        heading = f"policy file {path} has {count} problem{'s' if count != 1 else ''}"
        message = "\n".join([heading + ":", *(f"  {problem}" for problem in problems)])
        first = problems[0] if problems else None
        super().__init__(message, parameter=first.key_path if first else None)
        self.path = path
        self.problems = tuple(problems)
        self.warnings = tuple(warnings)


class LineIndex:
    """
    Line numbers of the tables and keys in TOML text.

    tomllib returns no positions, so this scans the text for table headers and ``key =``
    lines. A key inside an inline table or a multi-line array maps to the line of the
    closest enclosing key that starts a line.
    """

    def __init__(self, text: str) -> None:
        self._lines: dict[KeyPath, int] = {}
        self._scan(text)

    def _scan(self, text: str) -> None:
        table: KeyPath = ()
        array_counts: dict[KeyPath, int] = {}
        in_multiline_string = False
        for number, line in enumerate(text.splitlines(), start=1):
            # NOTE: a line that opens and closes a multi-line string, or contains two of them, is
            # read as plain text; the worst outcome is a less precise line number.
            if line.count('"""') % 2 == 1 or line.count("'''") % 2 == 1:
                in_multiline_string = not in_multiline_string
                if not in_multiline_string:
                    continue
            elif in_multiline_string:
                continue

            array_header = _ARRAY_HEADER.fullmatch(line)
            if array_header:
                parts = _split(array_header.group(1))
                name = (*self._resolve_arrays(parts[:-1], array_counts), parts[-1])
                index = array_counts.get(name, -1) + 1
                array_counts[name] = index
                table = (*name, index)
                self._lines.setdefault(table, number)
                # The array itself is reported at its first table, such as a misspelt name.
                self._lines.setdefault(name, number)
                continue
            table_header = _TABLE_HEADER.fullmatch(line)
            if table_header:
                table = self._resolve_arrays(_split(table_header.group(1)), array_counts)
                self._lines.setdefault(table, number)
                continue
            key = _KEY_LINE.match(line)
            if key:
                self._lines.setdefault((*table, *_split(key.group(1))), number)

    def _resolve_arrays(self, name: KeyPath, array_counts: Mapping[KeyPath, int]) -> KeyPath:
        """Insert the current index after every prefix of ``name`` that is an array of tables."""
        resolved: KeyPath = ()
        for part in name:
            resolved = (*resolved, part)
            if resolved in array_counts:
                resolved = (*resolved, array_counts[resolved])

        return resolved

    def line_of(self, path: KeyPath) -> int | None:
        """Return the line of ``path``, or of its closest parent found in the text."""
        for end in range(len(path), 0, -1):
            line = self._lines.get(path[:end])
            if line is not None:
                return line

        return None


def _split(dotted: str) -> KeyPath:
    parts: list[str | int] = []
    for match in _SPLIT_PART.finditer(dotted):
        part = match.group(0)
        if part[0] in "\"'":
            part = part[1:-1]
        parts.append(part)

    return tuple(parts)


@dataclass(frozen=True, slots=True)
class Reference:
    """
    A value the policy file points at: ``{ env = "NAME" }``, ``{ env = "NAME", default = "..." }``
    or ``{ file = "path" }``.
    """

    kind: str
    target: str
    default: object = None


def as_reference(value: object) -> Reference | None:
    """Return the reference that ``value`` spells, or ``None`` if it is an ordinary value."""
    if not isinstance(value, dict):
        return None
    if len(value) == 2 and set(value) == {"env", "default"}:
        return Reference("env", value["env"], value["default"])
    if len(value) != 1:
        return None
    ((kind, target),) = value.items()
    if kind not in ("env", "file"):
        return None

    return Reference(kind, target)


def read_reference(reference: Reference, *, base: Path, environ: Mapping[str, str]) -> str | bytes:
    """
    Read the value a reference names.

    A file is read as UTF-8 text without its trailing line break, or as bytes when it is not
    UTF-8 (a random HMAC key, say).

    Raises:
        ConfigurationError: if the variable is not set, or the file cannot be read.
    """
    if not isinstance(reference.target, str) or not reference.target:
        message = f"{reference.kind} must be a non-empty string, not {reference.target!r}"
        raise ConfigurationError(message, value=reference.target)

    if reference.kind == "env":
        if reference.default is not None and not isinstance(reference.default, str):
            message = f"default must be a string, not {reference.default!r}"
            raise ConfigurationError(message, value=reference.default)
        value = environ.get(reference.target, reference.default)
        if value is None:
            message = (
                f"environment variable {reference.target!r} is not set: set it, point the "
                "value at a file with { file = ... }, or give a value that is not secret a "
                "default with { env = ..., default = ... }"
            )
            raise ConfigurationError(message, value=reference.target)
        return value

    path = resolve_path(reference.target, base)
    try:
        with open(path, "rb") as stream:
            data = stream.read(MAX_REFERENCED_FILE_BYTES + 1)
    except OSError as error:
        message = f"cannot read file {str(path)!r}: {error.strerror or error}"
        raise ConfigurationError(message, value=reference.target) from None
    if len(data) > MAX_REFERENCED_FILE_BYTES:
        message = f"file {str(path)!r} is larger than {MAX_REFERENCED_FILE_BYTES} bytes"
        raise ConfigurationError(message, value=reference.target)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return data

    return text.rstrip("\r\n")


def resolve_path(value: str, base: Path) -> Path:
    """Resolve ``value`` against the policy file's directory, expanding a leading ``~``."""
    path = Path(os.path.expanduser(value))
    return path if path.is_absolute() else base / path
