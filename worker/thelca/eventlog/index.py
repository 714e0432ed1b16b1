"""A sparse index of the log by time and type, so that a reader seeks instead of reading all.

Each file of the log is cut into chunks of about CHUNK_BYTES that end at line
ends; for each chunk the index keeps where it is, how many lines it holds,
the earliest and latest `time` of its lines that have a readable one, and
the `type`s of its lines. A reader skips every chunk that cannot hold a line
it wants and reads the others, so its cost is bounded by what it returns and
by the chunks its time range covers. Nothing is skipped that a full scan
would have matched: the log is not sorted by time (several workers publish
out of order), and the index does not assume it is.

The index is built lazily, by reading: a reader that reaches the end of what
is indexed indexes the chunks it reads next. It is kept in memory, per file
(its device and inode, so that a live file rotated into a segment keeps its
index): a segment never changes, the live file only grows and its index is
extended, and a file that shrank, or whose last indexed line is not what it
was (cut back after a failed write, say), loses its index.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import BinaryIO, NamedTuple

from thelca.eventlog.format import TORN, LogLine
from thelca.eventlog.reader import Block, LogSnapshot, lines_of
from thelca_client.contract import parse_time

CHUNK_BYTES = 256 * 1024
MOST_TYPES = 32  # a chunk whose lines have more types than this may hold any
TAIL = 64  # bytes of the last indexed line kept, to tell that the file is still the same


class Chunk(NamedTuple):
    """Where some consecutive whole lines of one file are, and what they may match."""

    start: int
    end: int  # just past the newline of its last line
    first_line: int  # the number of its first line in its file, from 1
    lines: int
    earliest: datetime | None  # of the lines whose time can be read; None: no such line
    latest: datetime | None
    types: frozenset[str] | None  # the types of its lines; None: too many to keep


ChunkWanted = Callable[[Chunk], bool]


class FileIndex:
    """The chunks of one file, from its start up to `end`, with no gap."""

    def __init__(self) -> None:
        self._chunks: dict[int, Chunk] = {}
        self.end = 0
        self.lines = 0
        self._tail = b""

    @property
    def count(self) -> int:
        """How many chunks are indexed."""
        return len(self._chunks)

    def at(self, start: int) -> Chunk | None:
        """The chunk that starts at this offset, when it is indexed."""
        return self._chunks.get(start)

    def add(self, chunk: Chunk, data: bytes) -> None:
        """Index a chunk just read (its bytes are `data`), when it extends what is indexed."""
        if chunk.start != self.end:
            return  # another reader indexed this part already, maybe cut otherwise
        self._chunks[chunk.start] = chunk
        self.end, self.lines = chunk.end, self.lines + chunk.lines
        self._tail = data[-TAIL:]

    def holds(self, file: BinaryIO) -> bool:
        """Whether the file still is what was indexed: not shorter, the same last line."""
        if not self.end:
            return True
        if os.fstat(file.fileno()).st_size < self.end:
            return False
        return os.pread(file.fileno(), len(self._tail), self.end - len(self._tail)) == self._tail


class LogIndex:
    """The chunk index of every file of one log, by file identity, kept across readers."""

    def __init__(self) -> None:
        self._files: dict[tuple[int, int], FileIndex] = {}

    def of(self, file: BinaryIO) -> FileIndex:
        """The index of an open file of the log; a fresh one when the file changed under it."""
        status = os.fstat(file.fileno())
        key = (status.st_dev, status.st_ino)
        index = self._files.get(key)
        if index is None or not index.holds(file):
            index = self._files[key] = FileIndex()
        return index

    def keep_only(self, files: list[BinaryIO]) -> None:
        """Forget the files that are no longer part of the log (segments removed)."""
        keys = set()
        for file in files:
            status = os.fstat(file.fileno())
            keys.add((status.st_dev, status.st_ino))
        for key in set(self._files) - keys:
            del self._files[key]

    @property
    def chunks(self) -> int:
        """How many chunks are indexed, over every file."""
        return sum(index.count for index in self._files.values())


def read_chunks(
    snapshot: LogSnapshot, index: LogIndex, wanted: ChunkWanted
) -> Iterator[list[LogLine]]:
    """The snapshot's lines chunk by chunk, in log order, each decoded or with why not.

    A chunk the index knows and `wanted` refuses is skipped: an empty list in
    its place. Every line of a chunk that is read is given; the caller filters.
    The parts of the files that are not indexed yet are read, and indexed.
    """
    files = snapshot.open_files()
    try:
        index.keep_only([file for _, file, _ in files])
        for name, file, limit in files:
            yield from _file_chunks(name, file, limit, index.of(file), wanted)
    finally:
        for _, file, _ in files:
            file.close()
        snapshot.close()


def _file_chunks(
    name: str, file: BinaryIO, limit: int, index: FileIndex, wanted: ChunkWanted
) -> Iterator[list[LogLine]]:
    position, line = 0, 1
    while position < limit:
        chunk = index.at(position)
        if chunk is not None and chunk.end <= limit:
            if wanted(chunk):
                data = os.pread(file.fileno(), chunk.end - chunk.start, chunk.start)
                yield _decoded(name, line, data)
            else:
                yield []
        else:
            data = _whole_lines(file, position, limit)
            if not data.endswith(b"\n"):  # the rest of the snapshot has no newline: torn
                yield [LogLine(line, None, TORN, name, data)]
                return
            decoded = _decoded(name, line, data)
            chunk = _chunk_of(position, line, data, decoded)
            index.add(chunk, data)
            yield decoded
        position, line = chunk.end, line + chunk.lines


def _whole_lines(file: BinaryIO, position: int, limit: int) -> bytes:
    """About CHUNK_BYTES from `position` up to the end of a line; more for a longer line,
    and whatever is left before `limit` when no newline comes before it."""
    size = CHUNK_BYTES
    while True:
        data = os.pread(file.fileno(), min(size, limit - position), position)
        last = data.rfind(b"\n")
        if last >= 0:
            return data[: last + 1]
        if position + len(data) >= limit or not data:
            return data
        size *= 2


def _decoded(name: str, first: int, data: bytes) -> list[LogLine]:
    return list(lines_of([Block(name, first, data[:-1].split(b"\n"))]))


def _chunk_of(start: int, first: int, data: bytes, lines: list[LogLine]) -> Chunk:
    """A chunk's summary: the range of its readable times and the set of its types."""
    earliest: datetime | None = None
    latest: datetime | None = None
    types: set[str] | None = set()
    for line in lines:
        event = line.event
        if event is None:
            continue
        kind = event.get("type")
        if types is not None and isinstance(kind, str):
            types.add(kind)
            if len(types) > MOST_TYPES:
                types = None
        moment = line_time(event.get("time"))
        if moment is not None:
            earliest = moment if earliest is None or moment < earliest else earliest
            latest = moment if latest is None or moment > latest else latest
    return Chunk(start, start + len(data), first, len(lines), earliest, latest,
                 frozenset(types) if types is not None else None)


def line_time(text: object) -> datetime | None:
    """A line's `time` as a time filter reads it; None when it cannot be read (such a line
    never matches a time filter)."""
    if not isinstance(text, str):
        return None
    try:
        return parse_time(text)
    except ValueError:
        return None
