"""A replay request's filters (since, until, types), on a line of the log and on a chunk
of its index (docs/contract.md says what matches)."""

from __future__ import annotations

from datetime import datetime

from thelca.eventlog.format import LogLine
from thelca.eventlog.index import Chunk, line_time
from thelca_client.contract import ReplayRequest


class Matcher:
    """A request's filters, on a line and on a chunk of the log's index."""

    def __init__(self, wanted: ReplayRequest) -> None:
        self.since, self.until = wanted.since_time, wanted.until_time
        self.types = frozenset(wanted.types) if wanted.types is not None else None
        self.timed = self.since is not None or self.until is not None

    def __call__(self, line: LogLine) -> bool:
        """Whether a line is sent: a JSON object that passes the filters (docs/contract.md)."""
        event = line.event
        if event is None:  # torn or unreadable: never sent
            return False
        kind = event.get("type")
        if self.types is not None and not (isinstance(kind, str) and kind in self.types):
            return False
        return not self.timed or self._in_time(line_time(event.get("time")))

    def may_hold(self, chunk: Chunk) -> bool:
        """Whether a chunk may hold a line that matches: False only when none can."""
        if self.types is not None and chunk.types is not None \
                and not chunk.types & self.types:
            return False
        if not self.timed:
            return True
        if chunk.earliest is None or chunk.latest is None:
            return False  # no line of it has a time that can be read
        return (self.since is None or chunk.latest >= self.since) and \
            (self.until is None or chunk.earliest <= self.until)

    def _in_time(self, moment: datetime | None) -> bool:
        if moment is None:  # a time that cannot be read never matches a time filter
            return False
        return (self.since is None or moment >= self.since) and \
            (self.until is None or moment <= self.until)
