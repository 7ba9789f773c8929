# SPDX-License-Identifier: Apache-2.0
"""A JSON-lines file sink that rotates by size and survives logrotate moving the file."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from ..exceptions import ConfigurationError
from .formats import json_format
from .redaction import redact_secrets
from .sinks import Sink

__all__ = ["EventFormat", "RotatingFileSink", "format_event", "json_format"]

EventFormat = Callable[[dict[str, Any]], bytes]
"""Turns one redacted event dict into its wire representation, without a trailing newline."""

# Events may hold personal data (subjects, addresses), so new files are readable by the owner only.
_FILE_MODE = 0o600
_OPEN_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)


def format_event(
    event: dict[str, Any], event_format: EventFormat | None
) -> tuple[dict[str, Any], bytes] | None:
    """
    Redact a shallow copy of ``event``, then render it with ``event_format``.

    Returns the redacted dict and the rendered bytes, or ``None`` when the format raised
    ``structlog.DropEvent`` to skip the event. Redaction always runs first, so a format never
    receives a credential. As in `JsonLinesSink`, nested dicts and lists are redacted in place.
    """
    redacted = dict(redact_secrets(None, "info", dict(event)))
    try:
        rendered: Any = (event_format or json_format)(redacted)
    except structlog.DropEvent:
        return None
    if isinstance(rendered, str):
        rendered = rendered.encode()
    if not isinstance(rendered, bytes | bytearray):
        message = f"the event format returned {type(rendered).__name__}; it must return bytes"
        raise TypeError(message)

    return redacted, bytes(rendered)


class RotatingFileSink(Sink):
    """
    Write events as lines to a file that rotates when it reaches ``max_bytes``.

    On rotation ``path`` becomes ``path.1``, ``path.1`` becomes ``path.2`` and so on; the file
    beyond ``path.<backup_count>`` is deleted. A line is never split across two files: a file
    rotates before the line that would take it past ``max_bytes``, and a single line longer
    than ``max_bytes`` gets a file of its own. New files are created with mode 0600.

    Before each batch the sink checks that ``path`` still names the open file. When logrotate
    (or anything else) moved or deleted it, the sink opens a new file at ``path``. With
    logrotate's ``copytruncate`` the file shrinks in place and appending simply continues.

    Args:
        path: The file to append to. Its directory must exist.
        max_bytes: Size in bytes at which the file rotates.
        backup_count: Number of rotated files kept. ``0`` keeps none: the full file is deleted.
        format: Turns each redacted event into one line (bytes, without the newline). The
            default is compact JSON; a format must not put a newline inside a line.
        fsync: Call ``fsync`` after every batch (and on the directory after a rotation), so a
            power loss cannot lose events that were reported as written. Slower.

    .. versionadded:: 0.2.0
    """

    name = "rotating-file"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_bytes: int = 10 * 1024 * 1024,
        backup_count: int = 5,
        format: EventFormat | None = None,
        fsync: bool = False,
    ) -> None:
        if not isinstance(max_bytes, int) or max_bytes < 1:
            message = f"max_bytes must be a positive number of bytes, not {max_bytes!r}"
            raise ConfigurationError(message, parameter="max_bytes", value=max_bytes)
        if not isinstance(backup_count, int) or backup_count < 0:
            message = f"backup_count must be 0 or more, not {backup_count!r}"
            raise ConfigurationError(message, parameter="backup_count", value=backup_count)

        self.path = os.fspath(path)
        self.max_bytes = max_bytes
        self.backup_count = backup_count
        self.format = format
        self.fsync = fsync
        self._lock = threading.Lock()
        self._fd: int | None = None

    def write(self, events: Sequence[dict[str, Any]]) -> None:
        lines = []
        for event in events:
            result = format_event(event, self.format)
            if result is not None:
                lines.append(result[1] + b"\n")
        if not lines:
            return

        with self._lock:
            fd = self._open_current()
            size = os.fstat(fd).st_size
            pending: list[bytes] = []
            pending_size = 0
            for line in lines:
                if size + pending_size > 0 and size + pending_size + len(line) > self.max_bytes:
                    self._write_all(fd, pending)
                    fd = self._rotate()
                    size, pending, pending_size = 0, [], 0
                pending.append(line)
                pending_size += len(line)
            self._write_all(fd, pending)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def _open_current(self) -> int:
        """Return the descriptor of ``path``, reopening it when the file was moved away."""
        if self._fd is not None:
            try:
                on_disk = os.stat(self.path)
            except FileNotFoundError:
                on_disk = None
            opened = os.fstat(self._fd)
            if on_disk is not None and (on_disk.st_dev, on_disk.st_ino) == (
                opened.st_dev,
                opened.st_ino,
            ):
                return self._fd
            os.close(self._fd)
            self._fd = None

        self._fd = os.open(self.path, _OPEN_FLAGS, _FILE_MODE)
        return self._fd

    def _rotate(self) -> int:
        # NOTE: rotation is not coordinated between processes. Several workers must not share
        # one path, or each renames the files the others write to.
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self.backup_count == 0:
            _remove(self.path)
        else:
            _remove(f"{self.path}.{self.backup_count}")
            for index in range(self.backup_count - 1, 0, -1):
                source = f"{self.path}.{index}"
                if os.path.exists(source):
                    os.replace(source, f"{self.path}.{index + 1}")
            if os.path.exists(self.path):
                os.replace(self.path, f"{self.path}.1")
        if self.fsync:
            _fsync_directory(self.path)

        return self._open_current()

    def _write_all(self, fd: int, lines: list[bytes]) -> None:
        if not lines:
            return
        payload = memoryview(b"".join(lines))
        while payload:
            written = os.write(fd, payload)
            payload = payload[written:]
        if self.fsync:
            os.fsync(fd)


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


def _fsync_directory(path: str) -> None:
    directory = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
