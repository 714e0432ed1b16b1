"""The files of one log: the live file `NAME` and its numbered segments `NAME.000001`, ...

Segment numbers have six digits or more and order the segments; the whole
log is the segments in order, then the live file.
"""

from __future__ import annotations

import os
import re
from pathlib import Path


def segment_path(path: Path, number: int) -> Path:
    """The path of segment `number` of the log whose live file is `path`."""
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


def next_segment(path: Path) -> Path:
    """The path the live file takes when it is rotated: one past the newest segment."""
    existing = log_segments(path)
    return segment_path(path, 1 + (int(existing[-1].name.rsplit(".", 1)[1]) if existing else 0))


def file_size(path: Path) -> int:
    """The size of a file, 0 when it is gone."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def fsync_directory(directory: Path) -> None:
    """Make a created, renamed or removed name in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
