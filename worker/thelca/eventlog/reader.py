"""Reading the log: streamed in blocks, never held in memory, problems reported, not raised.

`LogSnapshot` (and `read_all`) is the one way restore, verify and replay read
the whole log; `read_log` reads one file; `lines_backwards` and
`log_lines_backwards` read one file or the whole log from its end, for the
writer's start (its remembered ids, where its hash chain ends).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, NamedTuple

import orjson

from thelca.eventlog.format import TORN, LogLine
from thelca.eventlog.segments import file_size, log_segments

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
        self.total_bytes = self._live_size + sum(file_size(s) for s in self.segments)
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

    def open_files(self) -> list[tuple[str, BinaryIO, int]]:
        """Every file of the snapshot, open, in log order, with how many of its bytes belong
        to the snapshot (for readers that seek: see eventlog.index); the caller closes them.

        Raises FileNotFoundError when a segment was removed since the listing.
        """
        opened: list[tuple[str, BinaryIO, int]] = []
        try:
            for segment in self.segments:
                file: BinaryIO = open(segment, "rb")  # noqa: SIM115 - the caller closes it
                opened.append((segment.name, file, os.fstat(file.fileno()).st_size))
        except OSError:
            for _, file, _ in opened:
                file.close()
            self.close()
            raise
        if self._live is not None:
            opened.append((self.path.name, self._live, self._live_size))
        return opened

    def _count(self, size: int) -> None:
        self.bytes_read += size

    def close(self) -> None:
        if self._live is not None:
            self._live.close()


def read_all(path: str | Path) -> Iterator[LogLine]:
    """Every line of the log and its segments, in order (see LogSnapshot)."""
    return LogSnapshot(path).lines()


def lines_backwards(path: str | Path, block: int = BLOCK) -> Iterator[bytes]:
    """The complete lines of one file, last first, without newlines, read in blocks from
    its end. The bytes after the file's last newline (a torn line) are not a line."""
    with open(path, "rb") as file:
        yield from _file_lines_backwards(file, block)


def log_lines_backwards(log: str | Path, block: int = BLOCK) -> Iterator[bytes]:
    """The complete lines of the whole log, newest first: the live file from its end,
    then each segment, newest first (what the writer reads when it starts)."""
    for path in reversed([*log_segments(log), Path(log)]):
        try:
            file = open(path, "rb")  # noqa: SIM115 - closed below, the generator may pause
        except FileNotFoundError:
            continue
        with file:
            yield from _file_lines_backwards(file, block)


def _file_lines_backwards(file: BinaryIO, block: int) -> Iterator[bytes]:
    position = file.seek(0, os.SEEK_END)
    rest = b""  # the start of a line so far: it goes on in an earlier block
    past_torn = False  # the bytes after the file's last newline are dropped first
    while position > 0:
        step = min(block, position)
        position -= step
        file.seek(position)
        data = file.read(step) + rest
        if not past_torn:
            newline = data.rfind(b"\n")
            if newline < 0:  # all of it is after the last newline
                rest = b""
                continue
            data = data[:newline]
            past_torn = True
        pieces = data.split(b"\n")
        rest = pieces[0]
        yield from reversed(pieces[1:])
    if past_torn:
        yield rest


def count_lines(log: str | Path, block: int = BLOCK) -> int:
    """How many complete lines the whole log holds, segments included (its newlines)."""
    total = 0
    for path in [*log_segments(log), Path(log)]:
        try:
            file = open(path, "rb")  # noqa: SIM115 - closed by with
        except FileNotFoundError:
            continue
        with file:
            while data := file.read(block):
                total += data.count(b"\n")
    return total
