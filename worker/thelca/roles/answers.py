"""What the command role sends back: a command's reply to its client, and events.

Every answer is counted (thelca_commands_total, by command and status),
whether or not it has a reply_to to go to: in the batch's Tally, which the
command role applies once the batch is committed (a batch's first run may be
rolled back and run again, and must not be counted twice).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from thelca import metrics
from thelca.roles.fingerprints import decoded
from thelca.roles.messages import Incoming, Outgoing
from thelca.stores.base import OutboxEvent
from thelca_client.contract import (
    COMMANDS,
    STATUS_HEADER,
    Event,
    Names,
    Reply,
    encode_event,
    encode_reply,
)


@dataclass
class Tally:
    """What a batch counts and leaves behind, applied once it is committed.

    `counters`: thelca_commands_total's children by (command, status), the Answers'
    for good (labels() takes a lock and checks its arguments at every call).
    """

    counters: dict[tuple[str, str], Any] = field(default_factory=dict, repr=False)
    commands: list[tuple[str, str]] = field(default_factory=list)  # (command, status)
    dead_letters: int = 0
    outboxed: list[str] = field(default_factory=list)  # ids of events the outbox now holds

    def apply(self) -> None:
        counters = self.counters
        for labels in self.commands:
            counter = counters.get(labels)
            if counter is None:
                counter = counters[labels] = metrics.COMMANDS.labels(*labels)
            counter.inc()
        if self.dead_letters:
            metrics.DEAD_LETTERS.labels("worker").inc(self.dead_letters)


class Answers:
    """Builds the command role's replies and event messages."""

    def __init__(self, names: Names, max_body: int) -> None:
        self.names = names
        self.max_body = max_body
        self._counters: dict[tuple[str, str], Any] = {}  # kept from batch to batch
        self.tally = self.new_tally()

    def new_tally(self) -> Tally:
        """A new batch's Tally, now the running one."""
        self.tally = Tally(self._counters)
        return self.tally

    def reply(
        self, message: Incoming, reply: Reply, command: str | None = None
    ) -> list[Outgoing]:
        return self.reply_bytes(message, encode_reply(reply), reply.status, command)

    def reply_bytes(
        self, message: Incoming, body: bytes, status: int | None = None,
        command: str | None = None,
    ) -> list[Outgoing]:
        """The reply to send (none without reply_to); every answer is counted either way."""
        if status is None:
            status = int(orjson.loads(body)["status"])
        self.tally.commands.append((command or self.command_name(message), str(status)))
        if not message.reply_to:
            return []
        return [Outgoing(
            "", message.reply_to, body,
            correlation_id=message.correlation_id or message.message_id,
            headers={STATUS_HEADER: status}, persistent=False,
        )]

    def command_name(self, message: Incoming) -> str:
        if len(message.body) > self.max_body:
            return "unknown"
        return peek(message.body)[0] or "unknown"

    def event(self, event: Event, body: bytes | None = None) -> Outgoing:
        """The event's message (`body`: the event encoded already)."""
        return Outgoing(self.names.events, "", encode_event(event) if body is None else body,
                        message_id=event.id, type=event.type)

    def outbox_event(self, event: OutboxEvent) -> Outgoing:
        kind = orjson.loads(event.body).get("type")
        return Outgoing(self.names.events, "", event.body, message_id=event.event_id,
                        type=kind if isinstance(kind, str) else None)


def peek(body: bytes) -> tuple[str | None, str | None]:
    """The command and id of a body, when it can be read, for an Access refused event."""
    return named(decoded(body))


def named(data: Any) -> tuple[str | None, str | None]:
    """The command and id a decoded body (fingerprints.Received.value) names, when it
    names them."""
    if not isinstance(data, dict):  # neither NOT_JSON nor UNREAD is one
        return None, None
    command, item_id = data.get("command"), data.get("id")
    return (command if command in COMMANDS else None,
            item_id if isinstance(item_id, str) and len(item_id) < 256 else None)
