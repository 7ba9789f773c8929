# SPDX-License-Identifier: Apache-2.0
"""Sinks: where rendered access events go. Each runs in the emitter's writer thread."""

from __future__ import annotations

import abc
import io
import os
import sys
import threading
from collections.abc import Callable, Iterable, MutableMapping, Sequence
from typing import IO, Any

import structlog
from structlog.typing import Processor

from .formats._common import dumps_line
from .redaction import redact_secrets

__all__ = ["JsonLinesSink", "MemorySink", "Sink", "StructlogSink", "render_json"]


def render_json(_logger: object, _method_name: str, event_dict: MutableMapping[str, Any]) -> bytes:
    """
    Render an event dict as one line of compact JSON (bytes, without the newline).

    Unicode line separators are escaped too, since some readers end a line at them.
    """
    return dumps_line(event_dict)


class Sink(abc.ABC):
    """
    Base class of event sinks.

    The emitter calls `write` from its writer thread, never from the request path, with
    batches of event dicts. A sink that raises loses that batch and is counted as failed;
    later batches still reach it.
    """

    name: str = "sink"

    @abc.abstractmethod
    def write(self, events: Sequence[dict[str, Any]]) -> None:
        """Deliver a batch of events."""

    def close(self) -> None:  # noqa: B027 -- an optional hook; most sinks have nothing to close
        """Release resources; called once when the emitter closes."""


class JsonLinesSink(Sink):
    """
    Write events as lines to a stream (standard error by default) or a file.

    Each event passes through ``processors``, then `redact_secrets`, then ``format`` (zerotrust
    JSON by default; see `zerotrust.events.formats` for ECS, OCSF and CEF). These
    are ordinary structlog processors, so any processor written for structlog works here. The
    sink runs the chain itself rather than through a structlog ``BoundLogger``: for a ready-made
    event dict the logger adds nothing but about 5 µs per event. To send events through the
    application's own structlog configuration instead, use `StructlogSink`.

    Args:
        target: ``"stderr"``, ``"stdout"``, a file path (opened for appending), or a binary or
            text stream.
        processors: Extra structlog processors to run before redaction and rendering.
        format: Renders one redacted event dict as bytes, such as
            `zerotrust.events.formats.cef_format`; zerotrust JSON when ``None``.
    """

    name = "jsonl"

    def __init__(
        self,
        target: str | os.PathLike[str] | IO[Any] = "stderr",
        *,
        processors: Iterable[Processor] = (),
        format: Callable[[dict[str, Any]], bytes | str] | None = None,
    ) -> None:
        self._owned = False
        self._lock = threading.Lock()
        if target == "stderr":
            self._stream: IO[Any] = sys.stderr
        elif target == "stdout":
            self._stream = sys.stdout
        elif isinstance(target, str | os.PathLike):
            # Events may hold personal data (subjects, addresses): owner only, as for spools.
            descriptor = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            self._stream = os.fdopen(descriptor, "ab")
            self._owned = True
        else:
            self._stream = target

        self.target = target
        renderer: Processor = render_json
        if format is not None:
            event_format = format

            def renderer(_logger: object, _method_name: str, event_dict: Any) -> Any:
                return event_format(dict(event_dict))

        self.processors: tuple[Processor, ...] = (*processors, redact_secrets, renderer)

    def render(self, event: dict[str, Any]) -> bytes:
        """Run the processor chain on a copy of one event and return the rendered line."""
        rendered: Any = dict(event)
        for processor in self.processors:
            rendered = processor(None, "info", rendered)
        if isinstance(rendered, str):
            rendered = rendered.encode()
        if not isinstance(rendered, bytes | bytearray):
            message = f"the last processor returned {type(rendered).__name__}, not bytes or str"
            raise TypeError(message)
        return bytes(rendered)

    def write(self, events: Sequence[dict[str, Any]]) -> None:
        lines = []
        for event in events:
            try:
                lines.append(self.render(event))
            except structlog.DropEvent:
                continue
        if not lines:
            return
        payload = b"\n".join(lines) + b"\n"

        with self._lock:
            stream = self._stream
            buffer = getattr(stream, "buffer", None)
            if buffer is not None:
                # A text stream with a binary buffer, such as sys.stderr: skip the encoding.
                stream.flush()
                buffer.write(payload)
                buffer.flush()
            elif isinstance(stream, io.TextIOBase):
                stream.write(payload.decode())
                stream.flush()
            else:
                stream.write(payload)
                stream.flush()

    def close(self) -> None:
        with self._lock:
            if self._owned:
                self._stream.close()


class StructlogSink(Sink):
    """
    Send events through the application's structlog configuration.

    Each event becomes one ``logger.info(event_name, **fields)`` call on
    ``structlog.get_logger(logger_name)``, after `redact_secrets`, so the application's
    processors, renderer and output decide where it goes. zerotrust never calls
    ``structlog.configure``.

    Args:
        logger_name: Passed to ``structlog.get_logger``.
    """

    name = "structlog"

    def __init__(self, logger_name: str = "zerotrust") -> None:
        self.logger_name = logger_name

    def write(self, events: Sequence[dict[str, Any]]) -> None:
        logger = structlog.get_logger(self.logger_name)
        for event in events:
            fields = dict(redact_secrets(None, "info", dict(event)))
            name = fields.pop("event", "access")
            logger.info(name, **fields)


class MemorySink(Sink):
    """Keep the last ``maxlen`` events in memory, after redaction; for tests and the demo."""

    name = "memory"

    def __init__(self, maxlen: int = 10_000) -> None:
        import collections

        self.events: collections.deque[dict[str, Any]] = collections.deque(maxlen=maxlen)

    def write(self, events: Sequence[dict[str, Any]]) -> None:
        for event in events:
            self.events.append(dict(redact_secrets(None, "info", dict(event))))
