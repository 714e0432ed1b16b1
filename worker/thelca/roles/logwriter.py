"""The logger role: appends every event from `<prefix>.events.log` to the event log.

A batch of deliveries is written, flushed and fsynced once, and only then
acked (by the plumbing), so an acknowledged event is on disk. An event whose
id was already written is dropped, which makes redeliveries harmless.
"""

from __future__ import annotations

import logging

from thelca import metrics
from thelca.eventlog.format import to_line
from thelca.eventlog.writer import EventLogWriter
from thelca.logtext import shown
from thelca.roles.messages import Incoming, Outgoing, dead_letter
from thelca_client.contract import Names

log = logging.getLogger(__name__)


class LogWriterRole:
    """The logger role: writes each event it is handed to the event log, once per id."""

    def __init__(self, writer: EventLogWriter, names: Names) -> None:
        self.writer = writer
        self.names = names
        self.written = 0
        self.duplicates = 0

    def recover(self) -> list[Outgoing]:
        return []

    def handle(self, batch: list[Incoming]) -> list[Outgoing]:
        lines: list[tuple[str | None, bytes]] = []
        in_batch: set[str] = set()
        rejected: list[Outgoing] = []
        for message in batch:
            try:
                event_id, line = to_line(message.body)
            except ValueError as error:
                rejected.append(self._dead_letter(message, str(error)))
                continue
            if event_id and (event_id in self.writer or event_id in in_batch):
                self.duplicates += 1
                metrics.LOG_DUPLICATES.inc()
                continue
            if event_id:
                in_batch.add(event_id)
            lines.append((event_id, line))
        written = self.writer.append(lines)
        self.written += written
        metrics.LOG_LINES.inc(written)
        return rejected

    def confirmed(self, published: list[Outgoing]) -> None:
        return None

    def nacked(self, published: list[Outgoing]) -> bool:
        return False  # a refused dead letter: the event comes back and is tried again

    def tidy(self) -> None:
        return None

    def _dead_letter(self, message: Incoming, reason: str) -> Outgoing:
        log.error("an event that is not a JSON object (message_id %s) went to %s: %s",
                  shown(message.message_id), self.names.dead, shown(reason))
        metrics.DEAD_LETTERS.labels("logger").inc()
        return dead_letter(message, self.names.dead, f"logger: {reason}")
