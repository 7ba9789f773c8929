# SPDX-License-Identifier: Apache-2.0
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import orjson
import pytest
import structlog

from zerotrust.events import EventEmitter
from zerotrust.events.sinks_file import RotatingFileSink, format_event
from zerotrust.exceptions import ConfigurationError


def make_event(number: int, padding: int = 0) -> dict[str, Any]:
    return {
        "event": "access",
        "event_id": f"event-{number:05d}",
        "decision": "allow",
        "subject": "alice@example.com",
        "path": "/items/" + "x" * padding,
    }


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def files_of(path: Path) -> list[Path]:
    return sorted(path.parent.glob(path.name + "*"))


class TestRotatingFileSink:
    def test_writes_json_lines(self, tmp_path: Path) -> None:
        """Each event becomes one JSON line, appended to the file."""
        path = tmp_path / "events.jsonl"
        sink = RotatingFileSink(path)
        sink.write([make_event(1), make_event(2)])
        sink.write([make_event(3)])
        sink.close()

        assert ["event-00001", "event-00002", "event-00003"] == [
            line["event_id"] for line in read_lines(path)
        ]

    def test_new_file_mode_0600(self, tmp_path: Path) -> None:
        """New files, rotated ones included, are readable by the owner only."""
        path = tmp_path / "events.jsonl"
        sink = RotatingFileSink(path, max_bytes=200, backup_count=2)
        old_umask = os.umask(0o022)
        try:
            sink.write([make_event(number) for number in range(10)])
        finally:
            os.umask(old_umask)
        sink.close()

        for file in files_of(path):
            assert 0o600 == stat.S_IMODE(file.stat().st_mode), file

    def test_rotation_respects_max_bytes(self, tmp_path: Path) -> None:
        """No file grows past max_bytes when every line is shorter than it."""
        path = tmp_path / "events.jsonl"
        sink = RotatingFileSink(path, max_bytes=400, backup_count=50)
        for number in range(40):
            sink.write([make_event(number)])
        sink.close()

        files = files_of(path)
        assert len(files) > 3
        for file in files:
            assert file.stat().st_size <= 400, file

    def test_backup_count_bound(self, tmp_path: Path) -> None:
        """Only path and path.1 to path.N exist, and the newest events survive."""
        path = tmp_path / "events.jsonl"
        sink = RotatingFileSink(path, max_bytes=300, backup_count=3)
        sink.write([make_event(number) for number in range(200)])
        sink.close()

        names = sorted(file.name for file in files_of(path))
        assert ["events.jsonl", "events.jsonl.1", "events.jsonl.2", "events.jsonl.3"] == names
        assert "event-00199" == read_lines(path)[-1]["event_id"]

    def test_order_across_files(self, tmp_path: Path) -> None:
        """Reading path.N down to path gives the kept events in the order written."""
        path = tmp_path / "events.jsonl"
        sink = RotatingFileSink(path, max_bytes=500, backup_count=4)
        sink.write([make_event(number) for number in range(60)])
        sink.close()

        ids: list[str] = []
        for file in [Path(f"{path}.{index}") for index in range(4, 0, -1)] + [path]:
            ids.extend(line["event_id"] for line in read_lines(file))
        numbers = [int(event_id.split("-")[1]) for event_id in ids]
        assert list(range(numbers[0], 60)) == numbers

    def test_no_line_split(self, tmp_path: Path) -> None:
        """Every file holds only whole lines, each one valid JSON."""
        path = tmp_path / "events.jsonl"
        sink = RotatingFileSink(path, max_bytes=350, backup_count=100)
        for number in range(50):
            sink.write([make_event(number, padding=number * 3)])
        sink.close()

        total = 0
        for file in files_of(path):
            data = file.read_bytes()
            assert data.endswith(b"\n"), file
            total += len(read_lines(file))
        assert 50 == total

    def test_long_line_own_file(self, tmp_path: Path) -> None:
        """A line longer than max_bytes is written whole into a file of its own."""
        path = tmp_path / "events.jsonl"
        sink = RotatingFileSink(path, max_bytes=200, backup_count=3)
        sink.write([make_event(1), make_event(2, padding=500), make_event(3)])
        sink.close()

        assert ["event-00003"] == [line["event_id"] for line in read_lines(path)]
        assert ["event-00002"] == [line["event_id"] for line in read_lines(Path(f"{path}.1"))]
        assert ["event-00001"] == [line["event_id"] for line in read_lines(Path(f"{path}.2"))]

    def test_backup_count_zero(self, tmp_path: Path) -> None:
        """With backup_count=0 the full file is deleted and no backup appears."""
        path = tmp_path / "events.jsonl"
        sink = RotatingFileSink(path, max_bytes=200, backup_count=0)
        sink.write([make_event(number) for number in range(10)])
        sink.close()

        assert [path] == files_of(path)
        assert "event-00009" == read_lines(path)[-1]["event_id"]

    def test_reopens_after_move(self, tmp_path: Path) -> None:
        """After logrotate moves the file away, the next batch goes to a new file at path."""
        path = tmp_path / "events.jsonl"
        sink = RotatingFileSink(path)
        sink.write([make_event(1)])
        moved = tmp_path / "events.jsonl-20260101"
        path.rename(moved)
        sink.write([make_event(2)])
        sink.close()

        assert ["event-00001"] == [line["event_id"] for line in read_lines(moved)]
        assert ["event-00002"] == [line["event_id"] for line in read_lines(path)]
        assert 0o600 == stat.S_IMODE(path.stat().st_mode)

    def test_reopens_after_delete(self, tmp_path: Path) -> None:
        """A deleted file is created again on the next batch."""
        path = tmp_path / "events.jsonl"
        sink = RotatingFileSink(path)
        sink.write([make_event(1)])
        path.unlink()
        sink.write([make_event(2)])
        sink.close()

        assert ["event-00002"] == [line["event_id"] for line in read_lines(path)]

    def test_copytruncate(self, tmp_path: Path) -> None:
        """After the file is truncated in place, new lines start at its beginning."""
        path = tmp_path / "events.jsonl"
        sink = RotatingFileSink(path)
        sink.write([make_event(1)])
        with open(path, "r+b") as file:
            file.truncate(0)
        sink.write([make_event(2)])
        sink.close()

        assert ["event-00002"] == [line["event_id"] for line in read_lines(path)]

    def test_appends_to_existing(self, tmp_path: Path) -> None:
        """An existing file is appended to and counts towards max_bytes."""
        path = tmp_path / "events.jsonl"
        path.write_bytes(b'{"event_id":"old"}\n' * 10)
        sink = RotatingFileSink(path, max_bytes=250, backup_count=1)
        sink.write([make_event(1)])
        sink.close()

        assert "old" == read_lines(Path(f"{path}.1"))[0]["event_id"]
        assert ["event-00001"] == [line["event_id"] for line in read_lines(path)]

    def test_fsync(self, tmp_path: Path) -> None:
        """fsync=True writes and rotates like the default."""
        path = tmp_path / "events.jsonl"
        sink = RotatingFileSink(path, max_bytes=200, backup_count=2, fsync=True)
        sink.write([make_event(number) for number in range(5)])
        sink.close()

        assert 3 == len(files_of(path))

    def test_redacts_before_format(self, tmp_path: Path) -> None:
        """The format receives the event after redact_secrets."""
        seen: list[dict[str, Any]] = []

        def capture(event: dict[str, Any]) -> bytes:
            seen.append(event)
            return b"line"

        path = tmp_path / "events.log"
        sink = RotatingFileSink(path, format=capture)
        sink.write([{"event": "access", "authorization": "Bearer abc.def"}])
        sink.close()

        assert "[redacted]" == seen[0]["authorization"]
        assert b"line\n" == path.read_bytes()

    def test_custom_format_str(self, tmp_path: Path) -> None:
        """A format that returns str is encoded as UTF-8."""
        path = tmp_path / "events.log"
        sink = RotatingFileSink(path, format=lambda event: f"CEF:{event['event_id']}")  # type: ignore[arg-type,return-value]
        sink.write([make_event(7)])
        sink.close()

        assert b"CEF:event-00007\n" == path.read_bytes()

    def test_drop_event_skipped(self, tmp_path: Path) -> None:
        """A format that raises DropEvent skips that event only."""

        def drop_allowed(event: dict[str, Any]) -> bytes:
            if event["decision"] == "allow":
                raise structlog.DropEvent
            return orjson.dumps(event)

        path = tmp_path / "events.jsonl"
        sink = RotatingFileSink(path, format=drop_allowed)
        denied = {**make_event(2), "decision": "deny"}
        sink.write([make_event(1), denied])
        sink.close()

        assert ["event-00002"] == [line["event_id"] for line in read_lines(path)]

    def test_format_wrong_type(self) -> None:
        """A format that returns neither bytes nor str raises TypeError."""
        with pytest.raises(TypeError, match="must return bytes"):
            format_event({"event": "access"}, lambda event: {"x": 1})  # type: ignore[arg-type,return-value]

    @pytest.mark.parametrize(
        "options",
        [{"max_bytes": 0}, {"max_bytes": -5}, {"backup_count": -1}, {"max_bytes": 1.5}],
    )
    def test_rejects_bad_options(self, tmp_path: Path, options: dict[str, Any]) -> None:
        """Non-positive sizes and negative backup counts are configuration errors."""
        with pytest.raises(ConfigurationError):
            RotatingFileSink(tmp_path / "events.jsonl", **options)

    def test_with_emitter(self, tmp_path: Path) -> None:
        """Events emitted through an EventEmitter land in the file."""
        path = tmp_path / "events.jsonl"
        emitter = EventEmitter([RotatingFileSink(path, max_bytes=1000, backup_count=5)])
        for number in range(20):
            emitter.emit(make_event(number))
        emitter.close()

        assert 0 == emitter.failed
        stored = sum(len(read_lines(file)) for file in files_of(path))
        assert 20 == stored
        assert len(files_of(path)) > 1
        assert "event-00019" == read_lines(path)[-1]["event_id"]
