"""The line format: one compact JSON object per line, and a line as read back.

An event body becomes exactly one line (`to_line`); a line read back is a
`LogLine`, carrying its event or the reason it cannot be read.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import orjson

TORN = "torn line (no newline at the end of the log)"


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


def event_id_of(raw: bytes) -> str | None:
    """The event id of a line as written (no newline needed), or None when it has none."""
    try:
        event = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    event_id = event.get("id") if isinstance(event, dict) else None
    return event_id if isinstance(event_id, str) else None
