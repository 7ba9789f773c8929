# SPDX-License-Identifier: Apache-2.0
"""Sinks: where rendered access events go. Each runs in the emitter's writer thread."""

from __future__ import annotations

import abc
import io
import os
import sys
import threading
from collections.abc import Iterable, MutableMapping, Sequence
from typing import IO, Any

import orjson
import structlog
from structlog.typing import Processor

from .redaction import redact_secrets

__all__ = ["JsonLinesSink", "MemorySink", "Sink", "render_json"]


def render_json(_logger: object, _method_name: str, event_dict: MutableMapping[str, Any]) -> bytes:
    """Render an event dict as one line of compact JSON (bytes, without the newline)."""
    return orjson.dumps(event_dict, default=str)


class _LineCollector:
    """A structlog logger that collects rendered lines for one batch write."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []

    def msg(self, message: bytes) -> None:
        self.lines.append(message)

    info = warning = error = critical = debug = msg


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
    Write events as JSON lines to a stream (standard error by default) or a file.

    Each event passes through ``processors``, then `redact_secrets`, then is rendered with
    orjson, all through a private structlog logger: the application's structlog
    configuration is neither used nor changed.

    Args:
        target: ``"stderr"``, ``"stdout"``, a file path (opened for appending), or a binary or
            text stream.
        processors: Extra structlog processors to run before redaction and rendering.
    """

    name = "jsonl"

    def __init__(
        self,
        target: str | os.PathLike[str] | IO[Any] = "stderr",
        *,
        processors: Iterable[Processor] = (),
    ) -> None:
        self._owned = False
        self._lock = threading.Lock()
        if target == "stderr":
            self._stream: IO[Any] = sys.stderr
        elif target == "stdout":
            self._stream = sys.stdout
        elif isinstance(target, str | os.PathLike):
            self._stream = open(target, "ab")  # noqa: SIM115 -- closed in close()
            self._owned = True
        else:
            self._stream = target

        self.target = target
        self._collector = _LineCollector()
        self._logger = structlog.wrap_logger(
            self._collector,
            processors=[*processors, redact_secrets, render_json],
            wrapper_class=structlog.BoundLogger,
            context_class=dict,
            cache_logger_on_first_use=False,
        )

    def write(self, events: Sequence[dict[str, Any]]) -> None:
        with self._lock:
            log = self._logger
            for event in events:
                fields = dict(event)
                name = fields.pop("event", "access")
                log.info(name, **fields)

            lines = self._collector.lines
            self._collector.lines = []
            if not lines:
                return
            payload = b"\n".join(lines) + b"\n"
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


class MemorySink(Sink):
    """Keep the last ``maxlen`` events in memory, after redaction; for tests and the demo."""

    name = "memory"

    def __init__(self, maxlen: int = 10_000) -> None:
        import collections

        self.events: collections.deque[dict[str, Any]] = collections.deque(maxlen=maxlen)

    def write(self, events: Sequence[dict[str, Any]]) -> None:
        for event in events:
            self.events.append(dict(redact_secrets(None, "info", dict(event))))
