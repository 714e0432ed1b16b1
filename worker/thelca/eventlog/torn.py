"""Healing a torn tail: a last line a crash left half-written is set aside, never dropped."""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from thelca.eventlog.segments import fsync_directory

log = logging.getLogger(__name__)


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
        fsync_directory(path.parent)
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
