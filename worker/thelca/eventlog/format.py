"""The line format: one compact JSON object per line, and a line as read back.

An event body becomes exactly one line (`to_line`); a line read back is a
`LogLine`, carrying its event or the reason it cannot be read.

One line for every reader: besides `\n` (which JSON escapes anyway), the
characters U+2028, U+2029 and U+0085 are written escaped (`\u2028`...), so
that a tool splitting on any Unicode line break (Python's `str.splitlines()`)
still sees one event per line. orjson writes them raw.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import orjson

TORN = "torn line (no newline at the end of the log)"

# The UTF-8 of the line breaks JSON leaves raw, and their JSON escapes. Each byte
# sequence is only ever that character in UTF-8 (0xC2 and 0xE2 start a character),
# so replacing the bytes cannot touch anything else.
LINE_BREAKS = ((b"\xe2\x80\xa8", b"\\u2028"), (b"\xe2\x80\xa9", b"\\u2029"),
               (b"\xc2\x85", b"\\u0085"))


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

    Re-encoding also folds a body that holds raw newlines onto one line, and
    the other line breaks are escaped (`escape_line_breaks`).
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
    return (event_id if isinstance(event_id, str) else None), escape_line_breaks(line)


def escape_line_breaks(line: bytes) -> bytes:
    """Compact JSON with U+2028, U+2029 and U+0085 written as JSON escapes.

    The same JSON value, on one line for every reader. Cheap: three searches in C,
    and a copy only when one of them is there.
    """
    for raw, escaped in LINE_BREAKS:
        if raw in line:
            line = line.replace(raw, escaped)
    return line


def event_id_of(raw: bytes) -> str | None:
    """The event id of a line as written (no newline needed), or None when it has none."""
    try:
        event = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    event_id = event.get("id") if isinstance(event, dict) else None
    return event_id if isinstance(event_id, str) else None
