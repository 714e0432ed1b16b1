"""Client-supplied text in a process's own log: shown escaped, never starting a line."""

from __future__ import annotations

import io
import logging

import pytest

from thelca.logtext import LIMIT, OneRecordPerLine, shown

FORGED = "2026-01-01 00:00:00,000 INFO thelca: forged"
BREAKS = ["\n", "\r", "\r\n", "\v", "\f", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]


@pytest.mark.parametrize("line_break", BREAKS)
def test_shown_escapes_every_line_break(line_break: str) -> None:
    text = shown(f"m{line_break}{FORGED}")
    assert text.splitlines() == [text]
    assert text.startswith("'m\\") and text.endswith("forged'")


@pytest.mark.parametrize(("value", "expected"), [
    ("plain-id", "'plain-id'"),
    ("quote ' and backslash \\", "\"quote ' and backslash \\\\\""),
    ("\x1b[31mred\u202e", "'\\x1b[31mred\\u202e'"),  # a terminal escape, a bidi override
    ("ünï 漢字", "'ünï 漢字'"),  # printable text stays readable
    (None, "-"),
    (b"bytes \xff\n", "'bytes \\\\xff\\n'"),
    (42, "'42'"),
])
def test_shown_is_repr_like(value: object, expected: str) -> None:
    assert shown(value) == expected


def test_shown_cuts_long_values_and_says_how_much_is_left_out() -> None:
    assert shown("x" * LIMIT) == repr("x" * LIMIT)
    long = shown("y" * (LIMIT + 1000) + "\n")
    assert long == f"{'y' * LIMIT!r}... (1001 more characters)"
    assert shown("abcdef", limit=3) == "'abc'... (3 more characters)"


def _formatted(message: str, *args: object, exc: BaseException | None = None) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(OneRecordPerLine("%(levelname)s %(name)s: %(message)s"))
    logger = logging.Logger("thelca.test")
    logger.addHandler(handler)
    if exc is None:
        logger.warning(message, *args)
    else:
        try:
            raise exc
        except type(exc):
            logger.exception(message, *args)
    return stream.getvalue()


def test_a_traceback_quoting_a_client_cannot_start_a_record() -> None:
    text = _formatted("command %s failed", shown("m\n"),
                      exc=ValueError(f"x\n{FORGED}\u2028{FORGED}"))
    lines = text.splitlines()
    assert lines[0] == "ERROR thelca.test: command 'm\\n' failed"
    assert all(line.startswith("    ") for line in lines[1:]), lines
    assert "Traceback (most recent call last):" in lines[1]
    assert not [line for line in lines if line.startswith(FORGED)]


def test_a_record_with_no_client_text_is_written_as_before() -> None:
    assert _formatted("started %d workers", 3) == "WARNING thelca.test: started 3 workers\n"
