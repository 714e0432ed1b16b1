"""Writing the log: whole lines appended and fsynced before anything is acknowledged.

A batch goes through four steps, each in one place: the live file is made
ready (a failed batch's bytes cut back, a full file rotated into the next
segment), the lines are written and fsynced (`_write`), a failure cuts the
file back to its size before the batch (`_cut_back`), and only after the
fsync are the batch's ids remembered. A torn tail left by a crash is healed
when the writer starts (see `torn`).

Every line is linked into the log's hash chain as it is written (its `prev`,
the hash of the line before: see thelca.audit.chain). The chain runs on across
rotation (a segment is only a new name), resumes at start from the last
complete line (after healing, after an original server's lines), and goes
back with the file when a batch is cut back.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from thelca import metrics
from thelca.audit.chain import Chain
from thelca.eventlog.format import event_id_of
from thelca.eventlog.reader import log_lines_backwards
from thelca.eventlog.segments import fsync_directory, next_segment
from thelca.eventlog.torn import heal_torn_tail

log = logging.getLogger(__name__)

RECENT_IDS = 500_000  # duplicates come from redeliveries, which are recent


class RecentIds:
    """The ids of the newest events on disk, at most RECENT_IDS, to drop redeliveries."""

    def __init__(self) -> None:
        self._recent: deque[str] = deque(maxlen=RECENT_IDS)
        self._known: set[str] = set()

    def __contains__(self, event_id: str) -> bool:
        return event_id in self._known

    def add(self, event_id: str) -> None:
        if len(self._recent) == self._recent.maxlen:
            self._known.discard(self._recent[0])
        self._recent.append(event_id)
        self._known.add(event_id)

    def load(self, log: Path) -> int:
        """Remember the ids of the newest RECENT_IDS events; return how many lines were read.

        The log is read newest first, from the end, and only as far back as it
        takes: start-up does not grow with the log's age.
        """
        ids: list[str] = []
        lines = 0
        for raw in log_lines_backwards(log):
            lines += 1
            event_id = event_id_of(raw)
            if event_id is not None:
                ids.append(event_id)
                if len(ids) >= RECENT_IDS:
                    break
        for event_id in reversed(ids):
            self.add(event_id)
        return lines


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
        self.chain = Chain.resume(self.path)  # where the hash chain ends: it goes on from there
        self._ids = RecentIds()
        self.lines_at_start = self._ids.load(self.path)

    def __contains__(self, event_id: str) -> bool:
        return event_id in self._ids

    def append(self, lines: Iterable[tuple[str | None, bytes]]) -> int:
        """Write (event id, line) pairs, flush and fsync once; return how many were written.

        Each line is linked into the hash chain on its way (given without `prev`).
        All or nothing: when writing, flushing or fsyncing fails, the file is cut
        back to its size before the batch, the chain goes back to where it was and
        no id is remembered, so the redelivered batch is written again, whole,
        after a complete line.
        """
        file = self._ready()
        size_before = file.tell()
        mark = self.chain.mark()
        try:
            written, ids = self._write(file, lines)
        except BaseException:
            self.chain.rewind(mark)
            self._cut_back_to = size_before
            self._cut_back()
            raise
        for event_id in ids:  # only now are they on disk
            self._ids.add(event_id)
        return written

    def _write(
        self, file: BinaryIO, lines: Iterable[tuple[str | None, bytes]]
    ) -> tuple[int, list[str]]:
        """Write each line, then flush and fsync the batch once; the count and the ids."""
        ids: list[str] = []
        written = 0
        link = self.chain.link
        for event_id, line in lines:
            file.write(link(line))
            written += 1
            if event_id:
                ids.append(event_id)
        if written:
            started = time.perf_counter()
            file.flush()
            os.fsync(file.fileno())
            metrics.FSYNC_SECONDS.observe(time.perf_counter() - started)
        return written, ids

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
            fsync_directory(self.path.parent)
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
        segment = next_segment(self.path)
        if segment.exists():  # never overwrite history, whatever happened before
            raise FileExistsError(f"{segment} exists already; the log is not rotated")
        os.rename(self.path, segment)
        fsync_directory(self.path.parent)
        log.info("the event log reached %d bytes: %s is now %s",
                 segment.stat().st_size, self.path.name, segment.name)
        return segment
