"""The logger role: appends every event from `<prefix>.events.log` to the event log.

A batch of deliveries is written, flushed and fsynced once, and only then
acked (by the plumbing), so an acknowledged event is on disk. An event whose
id was already written is dropped, which makes redeliveries harmless. A
batch waits up to LINGER for more events after its first: with commands sent
one at a time, an fsync, an ack and a wakeup per event competed with the
worker's next command for the disk, the broker and the CPU (measured with
benchmarks/latency_ladder.py); events reach the log that much later.

Only the worker writes history: an event is written only when it reached the
queue through the exchange `<prefix>.events` (any broker user who may write to
the default exchange can put a message straight on the queue) and, with
THELCA_EVENT_PUBLISHERS, only when its `user_id` (checked by the broker) is
one of those users. Anything else goes to `<prefix>.dead` with its reason.

Every line joins the log's hash chain (the writer links it); now and then,
and at stop, a signed checkpoint of the chain goes to `<log>.checkpoints` and
is published to `<prefix>.checkpoints` for witnesses elsewhere.
"""

from __future__ import annotations

import logging

from thelca import metrics
from thelca.audit.checkpoints import CheckpointWriter, last_checkpoint
from thelca.eventlog.format import to_line
from thelca.eventlog.writer import EventLogWriter
from thelca.logtext import shown
from thelca.roles.messages import Incoming, Outgoing, dead_letter
from thelca_client.contract import Names

log = logging.getLogger(__name__)

LINGER = 0.02  # seconds a batch of events waits for more after its first, unless full


class LogWriterRole:
    """The logger role: writes the worker's events to the log, once per id, and checkpoints it.

    `publishers`: the broker users whose events are written; None for any user
    (still only through the events exchange). `checkpoints`: where the chain's
    checkpoints go; None writes none (tests of the writing alone).
    """

    def __init__(self, writer: EventLogWriter, names: Names, *,
                 publishers: frozenset[str] | None = None,
                 checkpoints: CheckpointWriter | None = None) -> None:
        self.writer = writer
        self.names = names
        self.publishers = publishers
        self.checkpoints = checkpoints
        self.written = 0
        self.duplicates = 0
        if checkpoints is not None:
            _continue_checkpoints(checkpoints, writer)

    def recover(self) -> list[Outgoing]:
        return []

    def handle(self, batch: list[Incoming]) -> list[Outgoing]:
        lines: list[tuple[str | None, bytes]] = []
        in_batch: set[str] = set()
        rejected: list[Outgoing] = []
        for message in batch:
            refusal = self._refusal(message)
            if refusal is not None:
                rejected.append(self._reject(message, *refusal))
                continue
            try:
                event_id, line = to_line(message.body)
            except ValueError as error:
                rejected.append(self._reject(message, "format", str(error)))
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
        return rejected + self.checkpoint()

    def _refusal(self, message: Incoming) -> tuple[str, str] | None:
        """Why a message is not the worker's event to write (a metric label, a reason), or None."""
        if message.exchange != self.names.events:
            came = (f"through the exchange {shown(message.exchange)}" if message.exchange
                    else "straight to the queue, through the default exchange")
            return "exchange", (f"not published through {self.names.events} (it came {came}): "
                                "only the worker's events are written")
        if self.publishers is not None and message.user_id not in self.publishers:
            who = ("no user_id" if message.user_id is None
                   else f"user_id {shown(message.user_id)}")
            return "publisher", (f"published with {who}, which is not one of the event "
                                 "publishers (THELCA_EVENT_PUBLISHERS)")
        return None

    def _reject(self, message: Incoming, kind: str, reason: str) -> Outgoing:
        # Every client-supplied string shown escaped (the reason's too): no one can start
        # a line in our log.
        log.warning("not written to the event log, sent to %s instead: %s (message_id %s, "
                    "user_id %s)", self.names.dead, reason, shown(message.message_id),
                    shown(message.user_id))
        metrics.LOG_REJECTED.labels(kind).inc()
        metrics.DEAD_LETTERS.labels("logger").inc()
        return dead_letter(message, self.names.dead, f"logger: {reason}")

    def checkpoint(self, *, stopping: bool = False) -> list[Outgoing]:
        """A checkpoint when one is due (every INTERVAL seconds while lines are written; when
        stopping, whenever a line was written since the last), to publish for witnesses."""
        checkpoints, chain = self.checkpoints, self.writer.chain
        if checkpoints is None:
            return []
        due = chain.lines != checkpoints.lines if stopping else checkpoints.due(chain.lines)
        if not due:
            return []
        try:
            body = checkpoints.write(chain.lines, chain.last)
        except OSError as error:  # the lines are on disk all the same: the next one covers them
            log.error("cannot write a checkpoint of the event log to %s (tried again at the "
                      "next): %s", checkpoints.path, error)
            return []
        metrics.LOG_CHECKPOINTS.inc()
        return [Outgoing(self.names.checkpoints, "", body)]

    def tick(self, stopping: bool) -> list[Outgoing]:
        """Called about every second, and once when stopping: the checkpoint, if one is due."""
        return self.checkpoint(stopping=stopping)

    def confirmed(self, published: list[Outgoing]) -> None:
        return None

    def nacked(self, published: list[Outgoing]) -> bool:
        return False  # a refused dead letter: the event comes back and is tried again

    def tidy(self) -> None:
        return None

    def close(self) -> None:
        """The last checkpoint (if a line came since the one before), then the files."""
        try:
            self.checkpoint(stopping=True)
        finally:
            if self.checkpoints is not None:
                self.checkpoints.close()
            self.writer.close()


def _continue_checkpoints(checkpoints: CheckpointWriter, writer: EventLogWriter) -> None:
    """Count the log's last checkpoint as this writer's when it covers the whole log, so
    that a restart that writes nothing adds no checkpoint (nor does an empty log)."""
    chain = writer.chain
    if chain.lines == 0:
        checkpoints.lines = 0
        return
    try:
        last = last_checkpoint(checkpoints.path)
    except OSError:
        return
    if last is not None and (last.lines, last.last) == (chain.lines, chain.last):
        checkpoints.lines = last.lines
