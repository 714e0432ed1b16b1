"""The JSON-lines event log: the audit trail, one compact JSON object per line.

Writing appends whole lines and fsyncs before anything is acknowledged; a
line that a crash left half-written (a torn tail) is moved aside into a file
of its own on the next start, never silently dropped. Reading streams the
file line by line, reporting torn and unreadable lines instead of failing.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from thelca import metrics

log = logging.getLogger(__name__)

RECENT_IDS = 500_000  # duplicates come from redeliveries, which are recent


@dataclass(frozen=True)
class LogLine:
    """One line of the log: the event, or why it could not be read."""

    number: int
    event: dict[str, Any] | None
    problem: str | None = None


def to_line(body: bytes) -> tuple[str | None, bytes]:
    """An event body's id and its compact one-line form; ValueError when not a JSON object.

    Re-encoding also folds a body that holds raw newlines onto one line.
    """
    try:
        value = orjson.loads(body)
    except (orjson.JSONDecodeError, RecursionError) as error:
        raise ValueError("the event is not JSON") from error
    if not isinstance(value, dict):
        raise ValueError("the event is not a JSON object")
    event_id = value.get("id")
    try:
        line = orjson.dumps(value) + b"\n"
    except orjson.JSONEncodeError as error:
        raise ValueError(f"the event cannot be written as JSON: {error}") from error
    return (event_id if isinstance(event_id, str) else None), line


def read_log(path: str | Path) -> Iterator[LogLine]:
    """Every line of a log, in order, without holding the file in memory."""
    with open(path, "rb") as file:
        for number, raw in enumerate(file, start=1):
            if not raw.endswith(b"\n"):
                yield LogLine(number, None, "torn line (no newline at the end of the log)")
                return
            try:
                value = orjson.loads(raw)
            except (orjson.JSONDecodeError, RecursionError):
                yield LogLine(number, None, "not JSON")
                continue
            if not isinstance(value, dict):
                yield LogLine(number, None, "not a JSON object")
                continue
            yield LogLine(number, value)


class EventLogWriter:
    """Appends lines durably and remembers the recent event ids it has written."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        self.set_aside = None if created else heal_torn_tail(self.path)
        self._file = open(self.path, "ab")  # noqa: SIM115 - held open until close()
        if created:
            _fsync_directory(self.path.parent)
        self._recent: deque[str] = deque(maxlen=RECENT_IDS)
        self._known: set[str] = set()
        self.lines_at_start = self._load_ids()

    def __contains__(self, event_id: str) -> bool:
        return event_id in self._known

    def append(self, lines: Iterable[tuple[str | None, bytes]]) -> int:
        """Write (event id, line) pairs, flush and fsync once; return how many were written."""
        written = 0
        for event_id, line in lines:
            self._file.write(line)
            written += 1
            if event_id:
                self._remember(event_id)
        if written:
            started = time.perf_counter()
            self._file.flush()
            os.fsync(self._file.fileno())
            metrics.FSYNC_SECONDS.observe(time.perf_counter() - started)
        return written

    def close(self) -> None:
        self._file.close()

    def _remember(self, event_id: str) -> None:
        if len(self._recent) == self._recent.maxlen:
            self._known.discard(self._recent[0])
        self._recent.append(event_id)
        self._known.add(event_id)

    def _load_ids(self) -> int:
        count = 0
        for line in read_log(self.path):
            count += 1
            event_id = line.event.get("id") if line.event else None
            if isinstance(event_id, str):
                self._remember(event_id)
        return count


def heal_torn_tail(path: Path) -> Path | None:
    """Move a half-written last line into PATH.torn-<time> and cut it from the log.

    The torn bytes were never acknowledged (the logger acks after fsync), so
    the broker will deliver that event again; they are kept anyway, for audit.
    """
    size = path.stat().st_size
    if size == 0:
        return None
    with open(path, "rb+") as file:
        file.seek(size - 1)
        if file.read(1) == b"\n":
            return None
        start = _start_of_last_line(file, size)
        file.seek(start)
        torn = file.read()
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        aside = path.with_name(f"{path.name}.torn-{stamp}")
        with open(aside, "wb") as out:
            out.write(torn)
            out.flush()
            os.fsync(out.fileno())
        _fsync_directory(path.parent)
        file.truncate(start)
        file.flush()
        os.fsync(file.fileno())
    log.warning("the event log %s ended with a torn line of %d bytes; moved it to %s",
                path, len(torn), aside)
    return aside


def _start_of_last_line(file: BinaryIO, size: int) -> int:
    position = size
    chunk = 65536
    while position > 0:
        step = min(chunk, position)
        file.seek(position - step)
        data = file.read(step)
        newline = data.rfind(b"\n")
        if newline >= 0:
            return position - step + newline + 1
        position -= step
    return 0


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
