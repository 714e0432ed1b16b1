"""Client-supplied text as a process's own log may show it.

A message_id, a correlation_id, a reply_to, a user id or a reason built from
them is chosen by whoever sent the message. Written raw, a newline (or a
U+2028, U+2029, U+0085, a carriage return, an escape sequence) would let that
sender start a line of its own in the log, one that reads like thelca's.
Every log call that formats such a value passes it through `shown`; and the
text log's formatter (`OneRecordPerLine`) keeps what no call can escape — a
traceback, whose exception message may quote a client — from passing for a
record of its own.
"""

from __future__ import annotations

import logging
from typing import Final

LIMIT: Final = 200  # characters of a value shown; the rest is counted, not shown


def shown(value: object, limit: int = LIMIT) -> str:
    """The value as Python's repr shows a string: quoted, every character that is not
    printable (line breaks of any kind, control and format characters) escaped, a
    backslash doubled; cut to `limit` characters with the count of the rest. None is `-`.
    Bytes are shown as text, their undecodable bytes escaped."""
    if value is None:
        return "-"
    if isinstance(value, bytes | bytearray):
        text = bytes(value).decode("utf-8", errors="backslashreplace")
    else:
        text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text) - limit} more characters)"


# Every line break str.splitlines() knows but the line feed: a reader splitting on any of them sees
# the record's lines as the file has them.
_OTHER_BREAKS: Final = {ord(c): repr(c)[1:-1] for c in "\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"}
CONTINUATION: Final = "    "  # before every line of a record but its first


class OneRecordPerLine(logging.Formatter):
    """The text log's formatter: a record's first line is the only one that starts at the
    left margin (its other lines, a traceback's, are indented), and line breaks other than
    the line feed are escaped, so that nothing a record quotes can pass for a record."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record).translate(_OTHER_BREAKS)
        return text.replace("\n", "\n" + CONTINUATION)
