"""The JSON-lines event log: the audit trail, one compact JSON object per line.

Writing appends whole lines and fsyncs before anything is acknowledged; a
line that a crash left half-written (a torn tail) is moved aside into a file
of its own on the next start, never silently dropped. Reading streams the
file line by line, reporting torn and unreadable lines instead of failing.

Segments: with a size limit the writer renames the live file `NAME` to the
next numbered segment `NAME.000001`, `NAME.000002`, ... (six digits or more,
ordered by number) and starts a fresh `NAME`. The whole log is the segments
in order, then the live file; `LogSnapshot` (and `read_all`) is the one way
restore, verify and replay read it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import orjson

from thelca import metrics

log = logging.getLogger(__name__)

RECENT_IDS = 500_000  # duplicates come from redeliveries, which are recent


class LogLine(NamedTuple):
    """One line of the log: the event, or why it could not be read.

    `number` counts from 1 in each file; `file` is the file's name (a segment's
    or the live file's); `raw` is the line without its newline.
    """

    number: int
    event: dict[str, Any] | None
    problem: str | None = None
    file: str = ""
    raw: bytes = b""

    @property
    def where(self) -> str:
        return f"{self.file}:{self.number}" if self.file else f"line {self.number}"


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


TORN = "torn line (no newline at the end of the log)"
BLOCK = 1 << 20  # bytes read at once: lines are split in C, a block at a time


class Block(NamedTuple):
    """Consecutive lines of one file, without their newlines.

    `first` is the number of lines[0] in its file. `torn` is a last line that
    has no newline (only ever in a file's last block, which then has no lines).
    """

    file: str
    first: int
    lines: list[bytes]
    torn: bytes | None = None


def read_log(path: str | Path) -> Iterator[LogLine]:
    """Every line of one file, in order, without holding the file in memory."""
    with open(path, "rb") as file:
        yield from lines_of(_blocks(file, Path(path).name, None))


def lines_of(blocks: Iterable[Block]) -> Iterator[LogLine]:
    """Blocks as lines, each decoded, or with the reason it cannot be."""
    loads = orjson.loads
    for block in blocks:
        name = block.file
        for number, raw in enumerate(block.lines, block.first):
            try:
                value = loads(raw)
            except (orjson.JSONDecodeError, RecursionError):
                yield LogLine(number, None, "not JSON", name, raw)
                continue
            if isinstance(value, dict):
                yield LogLine(number, value, None, name, raw)
            else:
                yield LogLine(number, None, "not a JSON object", name, raw)
        if block.torn is not None:
            yield LogLine(block.first, None, TORN, name, block.torn)


def _blocks(
    file: BinaryIO, name: str, limit: int | None, count: Callable[[int], None] | None = None
) -> Iterator[Block]:
    """The lines of an open file in blocks; with a limit, of its first `limit` bytes only."""
    number = 1
    rest = b""
    left = limit
    while left is None or left > 0:
        data = file.read(BLOCK if left is None else min(BLOCK, left))
        if not data:
            break
        if left is not None:
            left -= len(data)
        if count is not None:
            count(len(data))
        lines = (rest + data).split(b"\n")
        rest = lines.pop()
        if lines:
            yield Block(name, number, lines)
            number += len(lines)
    if rest:
        yield Block(name, number, [], rest)


# ---------------------------------------------------------------- segments


def segment_path(path: Path, number: int) -> Path:
    return path.with_name(f"{path.name}.{number:06d}")


def log_segments(path: str | Path) -> list[Path]:
    """The numbered segments of a log, oldest first (the live file is not among them)."""
    path = Path(path)
    pattern = re.compile(re.escape(path.name) + r"\.(\d{6,})")
    try:
        names = os.listdir(path.parent)
    except FileNotFoundError:
        return []
    numbered = [(int(m.group(1)), name) for name in names if (m := pattern.fullmatch(name))]
    return [path.with_name(name) for _, name in sorted(numbered)]


class LogSnapshot:
    """The whole log as it is when this is made: every segment in order, then the live file.

    The live file is opened first and read only up to its size at that moment,
    so a rotation or appends while reading neither lose nor repeat a line: a
    snapshot is always a prefix of the log. Raises FileNotFoundError when
    there is neither a live file nor a segment.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._live: BinaryIO | None = None
        with contextlib.suppress(FileNotFoundError):
            self._live = open(self.path, "rb")  # noqa: SIM115 - closed by lines() or close()
        self.segments = log_segments(self.path)
        if self._live is not None and self._rotated_meanwhile(self._live):
            self._live.close()
            self._live = None
        if self._live is None and not self.segments:
            raise FileNotFoundError(f"no event log at {self.path} (nor any segment of it)")
        self._live_size = os.fstat(self._live.fileno()).st_size if self._live else 0
        self.total_bytes = self._live_size + sum(_size(s) for s in self.segments)
        self.bytes_read = 0

    def _rotated_meanwhile(self, live: BinaryIO) -> bool:
        """True when the file opened as live became a segment before the listing.

        Any segment, not only the newest: the writer may have rotated more than once.
        """
        opened = os.fstat(live.fileno())
        for segment in reversed(self.segments):  # the newest is the likeliest
            try:
                seen = segment.stat()
            except FileNotFoundError:
                continue
            if (seen.st_dev, seen.st_ino) == (opened.st_dev, opened.st_ino):
                return True
        return False

    @property
    def files(self) -> list[str]:
        return [s.name for s in self.segments] + ([self.path.name] if self._live else [])

    def blocks(self) -> Iterator[Block]:
        """The snapshot's lines in blocks, in log order; `bytes_read` follows along."""
        try:
            for segment in self.segments:  # one removed meanwhile raises FileNotFoundError
                with open(segment, "rb") as file:
                    yield from _blocks(file, segment.name, None, self._count)
            if self._live is not None:
                yield from _blocks(self._live, self.path.name, self._live_size, self._count)
        finally:
            self.close()

    def lines(self) -> Iterator[LogLine]:
        """The snapshot's lines, in log order, each decoded or with why it cannot be."""
        return lines_of(self.blocks())

    def _count(self, size: int) -> None:
        self.bytes_read += size

    def close(self) -> None:
        if self._live is not None:
            self._live.close()


def read_all(path: str | Path) -> Iterator[LogLine]:
    """Every line of the log and its segments, in order (see LogSnapshot)."""
    return LogSnapshot(path).lines()


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


class EventLogWriter:
    """Appends lines durably and remembers the recent event ids it has written.

    With `max_bytes`, a live file that has reached that size becomes the next
    segment before a batch is written (so a failed rotation writes nothing
    and the batch can simply be retried). The rotation is a rename, which a
    crash leaves either undone or done: lines are in exactly one file either
    way, and the ids remembered at start come from the newest files, segments
    included, so redelivered events are still dropped.
    """

    def __init__(self, path: str | Path, max_bytes: int | None = None) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes or None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.set_aside = heal_torn_tail(self.path) if self.path.exists() else None
        self._file: BinaryIO | None = None
        self._cut_back_to: int | None = None  # the size to cut back to after a failed write
        self._open()
        self._recent: deque[str] = deque(maxlen=RECENT_IDS)
        self._known: set[str] = set()
        self.lines_at_start = self._load_ids()

    def __contains__(self, event_id: str) -> bool:
        return event_id in self._known

    def append(self, lines: Iterable[tuple[str | None, bytes]]) -> int:
        """Write (event id, line) pairs, flush and fsync once; return how many were written.

        All or nothing: when writing, flushing or fsyncing fails, the file is cut
        back to its size before the batch and no id is remembered, so the
        redelivered batch is written again, whole, after a complete line.
        """
        file = self._ready()
        size_before = file.tell()
        ids: list[str] = []
        written = 0
        try:
            for event_id, line in lines:
                file.write(line)
                written += 1
                if event_id:
                    ids.append(event_id)
            if written:
                started = time.perf_counter()
                file.flush()
                os.fsync(file.fileno())
                metrics.FSYNC_SECONDS.observe(time.perf_counter() - started)
        except BaseException:
            self._cut_back_to = size_before
            self._cut_back()
            raise
        for event_id in ids:  # only now are they on disk
            self._remember(event_id)
        return written

    def _cut_back(self) -> None:
        """Drop a failed batch's bytes, in the file or still buffered; retried by _ready.

        A failure here is logged, not raised: the batch's own error is the one to report.
        """
        if self._file is not None:
            with contextlib.suppress(OSError):  # flushing the buffer may fail again
                self._file.close()
            self._file = None
        try:
            with open(self.path, "rb+") as file:
                file.truncate(self._cut_back_to)
                file.flush()
                os.fsync(file.fileno())
        except OSError as error:
            log.error("cannot cut the event log %s back to %d bytes after a failed write "
                      "(retried before the next write): %s", self.path, self._cut_back_to, error)
            return
        self._cut_back_to = None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _open(self) -> BinaryIO:
        created = not self.path.exists()
        self._file = open(self.path, "ab")  # noqa: SIM115 - held open until close()
        if created:
            _fsync_directory(self.path.parent)
        return self._file

    def _ready(self) -> BinaryIO:
        """The live file, rotated first when it has reached max_bytes."""
        if self._cut_back_to is not None:
            self._cut_back()
            if self._cut_back_to is not None:
                raise OSError(f"the event log {self.path} still holds part of a failed write")
        file = self._file if self._file is not None else self._open()
        if self.max_bytes is not None and file.tell() >= self.max_bytes:
            self.rotate()
            file = self._open()
        return file

    def rotate(self) -> Path | None:
        """Rename the live file to the next segment; the next append starts a fresh one."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if not self.path.exists() or self.path.stat().st_size == 0:
            return None
        existing = log_segments(self.path)
        number = 1 + (int(existing[-1].name.rsplit(".", 1)[1]) if existing else 0)
        segment = segment_path(self.path, number)
        if segment.exists():  # never overwrite history, whatever happened before
            raise FileExistsError(f"{segment} exists already; the log is not rotated")
        os.rename(self.path, segment)
        _fsync_directory(self.path.parent)
        log.info("the event log reached %d bytes: %s is now %s",
                 segment.stat().st_size, self.path.name, segment.name)
        return segment

    def _remember(self, event_id: str) -> None:
        if len(self._recent) == self._recent.maxlen:
            self._known.discard(self._recent[0])
        self._recent.append(event_id)
        self._known.add(event_id)

    def _load_ids(self) -> int:
        """Remember the ids of the newest RECENT_IDS events; return how many lines were read.

        Files and lines are read newest first, from the end, and only as far back as
        it takes: start-up does not grow with the log's age.
        """
        newest_first: list[str] = []
        lines = 0
        for path in reversed([*log_segments(self.path), self.path]):
            if not path.exists():
                continue
            for raw in _lines_backwards(path):
                lines += 1
                event_id = _event_id(raw)
                if event_id is not None:
                    newest_first.append(event_id)
                    if len(newest_first) >= RECENT_IDS:
                        break
            if len(newest_first) >= RECENT_IDS:
                break
        for event_id in reversed(newest_first):
            self._remember(event_id)
        return lines


def _event_id(raw: bytes) -> str | None:
    try:
        event = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    event_id = event.get("id") if isinstance(event, dict) else None
    return event_id if isinstance(event_id, str) else None


def _lines_backwards(path: Path, block: int = 1 << 20) -> Iterator[bytes]:
    """The lines of a file, last first, read in blocks from its end."""
    with open(path, "rb") as file:
        position = file.seek(0, os.SEEK_END)
        rest = b""
        while position > 0:
            step = min(block, position)
            position -= step
            file.seek(position)
            pieces = (file.read(step) + rest).split(b"\n")
            rest = pieces[0]  # may be the end of a line that starts in an earlier block
            yield from (line for line in reversed(pieces[1:]) if line)
        if rest:
            yield rest


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
