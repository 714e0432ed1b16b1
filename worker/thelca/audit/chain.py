"""The hash chain: every line of the log carries `prev`, the SHA-256 of the line before it.

The hash is the lowercase hex SHA-256 of a line's exact bytes, without its
newline, across segments; the first line of a new log has `prev` GENESIS.
Lines of an original server's log carry no `prev`; the first chained line
after them has the hash of the last of them. So editing, inserting, removing
or moving a line breaks the chain at the line after the change, and only
rewriting every later line hides it (which the signed checkpoints catch).

The logger links each line with `Chain.link`; it finds where the chain ends
with `Chain.resume(log)` when it starts on an existing log.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import orjson

from thelca.audit.checkpoints import checkpoints_path, last_checkpoint

GENESIS = "0" * 64  # the `prev` of the first line of a new log
HEAD = b',"prev":"'  # how a chained line written by the logger ends: HEAD + hash + END
END = b'"}'
CHAINED_TAIL = len(HEAD) + 64 + len(END)
RESUME_LIMIT = 1_000_000  # lines walked back to the last checkpoint before counting them all


def line_hash(line: bytes) -> str:
    """The lowercase hex SHA-256 of a line's exact bytes (give it without its newline)."""
    return hashlib.sha256(line).hexdigest()


def with_prev(prev: str, line: bytes) -> bytes:
    """A compact JSON object line (no newline) with `"prev": prev` added as its last key.

    Appends to the bytes as they are when it safely can (the line is compact JSON
    ending in `}` and holds no `"prev"` anywhere); otherwise re-encodes the object,
    replacing a top-level `prev` it already had. ValueError when the line is not
    shaped as a JSON object on one line; the fast way does not parse it, so give it
    what `to_line` made.
    """
    if not (line.startswith(b"{") and line.endswith(b"}")) or b"\n" in line:
        raise ValueError("a log line is one JSON object without its newline")
    if b'"prev"' in line or line[-2:-1] in (b"{", b" ", b"\t", b"\r"):
        return _reencoded(prev, line)
    return line[:-1] + HEAD + prev.encode() + END


def _reencoded(prev: str, line: bytes) -> bytes:
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError as error:
        raise ValueError("the line is not JSON") from error
    if not isinstance(value, dict):
        raise ValueError("the line is not a JSON object")
    value.pop("prev", None)  # the chain's prev is the only one: it goes last
    value["prev"] = prev
    # Imported here, not above: the event log writer imports this module (no cycle).
    from thelca.eventlog.format import escape_line_breaks

    return escape_line_breaks(orjson.dumps(value))  # one line for every reader, still


def without_prev(line: bytes) -> bytes:
    """A line as it was before the chain linked it (the event's own bytes), without its
    newline; a line that does not end with a `prev` the logger added is returned as it is.

    For what leaves the log as events (a replay): a `prev` links to the line
    before in this log, which the receiver of a filtered stream does not have.
    """
    if line.endswith(END) and line[-CHAINED_TAIL:-CHAINED_TAIL + len(HEAD)] == HEAD:
        return line[:-CHAINED_TAIL] + b"}"
    return line


def prev_of(line: bytes) -> str | None:
    """The `prev` a line carries (any string, unchecked), or None when it carries none.

    Cheap for lines the logger wrote (prev is their last key); others are parsed
    only when `"prev"` appears in them at all. A top-level `prev` that is not a
    string is returned as "" (a link that matches nothing).
    """
    if line.endswith(END) and line[-CHAINED_TAIL:-CHAINED_TAIL + len(HEAD)] == HEAD:
        return line[-66:-2].decode("latin-1")
    if b'"prev"' not in line:
        return None
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(value, dict) or "prev" not in value:
        return None
    prev = value["prev"]
    return prev if isinstance(prev, str) else ""


class Mark(NamedTuple):
    """Where a chain stood: what `Chain.rewind` goes back to when a batch was not written."""

    last: str
    lines: int


class Chain:
    """The end of a log's hash chain: links each new line to the one before it.

    `last` is the hash of the last line linked (GENESIS before any), `lines`
    the number of lines of the whole log so far (what a checkpoint records).
    """

    def __init__(self, last: str = GENESIS, lines: int = 0) -> None:
        self.last = last
        self.lines = lines

    def __repr__(self) -> str:
        return f"Chain(last={self.last!r}, lines={self.lines})"

    def link(self, line: bytes) -> bytes:
        """The line with its `prev`, now the chain's last; a trailing newline is kept."""
        newline = line.endswith(b"\n")
        linked = with_prev(self.last, line[:-1] if newline else line)
        self.last = hashlib.sha256(linked).hexdigest()
        self.lines += 1
        return linked + b"\n" if newline else linked

    def mark(self) -> Mark:
        return Mark(self.last, self.lines)

    def rewind(self, mark: Mark) -> None:
        """Go back to a mark: the lines linked since were not written (the batch failed)."""
        self.last, self.lines = mark

    @classmethod
    def resume(cls, log: str | Path) -> Chain:
        """The chain of an existing log (or a new one), for a logger about to append to it.

        Call it after the torn tail, if any, was healed: a last line without its
        newline is not part of the chain. The line count comes from the last
        checkpoint and the lines after it when it can, else from counting them all.
        """
        newest = next(lines_backwards(log), None)
        last = GENESIS if newest is None else line_hash(newest)
        lines = _lines_from_checkpoint(log)
        return cls(last, count_lines(log) if lines is None else lines)


def _lines_from_checkpoint(log: str | Path) -> int | None:
    """The log's line count: the last checkpoint's, plus the lines after its line; None when
    the checkpoint's line is not among the newest RESUME_LIMIT lines (or there is none)."""
    try:
        checkpoint = last_checkpoint(checkpoints_path(log))
    except OSError:
        return None
    if checkpoint is None or checkpoint.lines == 0:
        return None
    for after, line in enumerate(lines_backwards(log)):
        if after >= RESUME_LIMIT:
            return None
        if line_hash(line) == checkpoint.last:
            return checkpoint.lines + after
    return None


def lines_backwards(log: str | Path) -> Iterator[bytes]:
    """The complete lines of the log (segments included), newest first, without newlines.

    A file's last piece without a newline (a torn line) is not a complete line. The
    event log's own reader, which the log writer also uses at start.
    """
    # Imported here, not above: the event log writer imports this module (no cycle).
    from thelca.eventlog.reader import log_lines_backwards

    return log_lines_backwards(log)


def count_lines(log: str | Path) -> int:
    """How many complete lines the log holds, segments included (its newlines)."""
    from thelca.eventlog.reader import count_lines as count

    return count(log)
