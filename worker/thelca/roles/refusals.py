"""The command role's refusals: what is refused before a command is served, and poison.

Before the token is even read, neither remembered nor audited: a reply_to
naming one of thelca's own queues (not executed at all: to the dead
letters), properties that cannot be used as sent (400), a body over the
limit (413). A token the Authority refuses is a 401 with an Access refused
event. Then a message_id that the store cannot record for a command that is
recorded (400: NUL on PostgreSQL; refused before the command writes
anything, rather than found when its held writes are sent, which would cost
its whole batch a second run and the store its connection). Whatever fails
unexpectedly costs its command alone: a 500 and a dead letter (poison), and if
even those cannot be built, the command is dropped.
Dead letters never carry the command's token.
"""

from __future__ import annotations

import logging
import uuid

from thelca.authority.base import Principal
from thelca.domain import model
from thelca.domain.model import Origin
from thelca.logtext import shown
from thelca.roles.answers import Answers, named
from thelca.roles.fingerprints import Received
from thelca.roles.messages import (
    Incoming,
    Outgoing,
    dead_letter,
    hijacked_reason,
    unreadable,
    unreadable_why,
)
from thelca.roles.outcomes import recorded
from thelca_client.contract import Reply

log = logging.getLogger(__name__)

NUL_MESSAGE_ID = ("the message_id cannot contain a NUL character (\\u0000) on this store, "
                  "which cannot record it: only a command that is not recorded (a read or a "
                  "search) may have one")


class Refusals:
    """Builds the command role's refusals, with its Answers."""

    def __init__(self, answers: Answers, *, keeps_nul: bool) -> None:
        self.answers = answers
        self.names = answers.names
        self.max_body = answers.max_body
        self.keeps_nul = keeps_nul  # the store's: whether it can record a NUL message_id

    def up_front(self, received: Received) -> list[Outgoing] | None:
        """What is refused before the token is even read, neither remembered nor audited:
        a reply_to of thelca's own, properties that cannot be used, a body over the limit."""
        message = received.message
        if self.names.owns(message.reply_to):
            return self.hijacked(message)
        if unreadable(message):
            return self.refuse_unreadable(message)
        if len(message.body) > self.max_body:
            return self.answers.reply(message, Reply(
                413, error=f"the body is larger than the limit of {self.max_body} bytes"))
        return None

    def unrecordable(self, received: Received) -> list[Outgoing] | None:
        """A 400 for a command that would be recorded under a message_id the store cannot
        keep, or None. Asked once the token is known good, so that a refused token keeps its
        401 and its Access refused event."""
        if not self._unrecordable(received):
            return None
        message = received.message
        log.warning("a command (message_id %s) was refused: %s", shown(message.message_id),
                    NUL_MESSAGE_ID)
        return self.answers.reply(message, Reply(400, error=NUL_MESSAGE_ID))

    def _unrecordable(self, received: Received) -> bool:
        """A command that would be recorded under a message_id the store cannot keep. Its
        command is looked at only for a NUL message_id on such a store: every other command
        passes at once."""
        message_id = received.message.message_id
        return (not self.keeps_nul and message_id is not None and "\x00" in message_id
                and recorded(received))

    def before_auth(self, received: Received, origin: Origin, why: str) -> list[Outgoing]:
        """A token the Authority refused: a 401, and an Access refused event."""
        message = received.message
        command, item_id = named(received.value)
        event = model.access_refused(command, item_id, 401, user=None, time=model.utc_now(),
                                     origin=origin)
        out = self.answers.reply(message, Reply(401, error=why))
        out.append(self.answers.event(event))
        return out

    def poison(self, message: Incoming, principal: Principal | None) -> list[Outgoing]:
        """An unexpected failure: answer 500, keep the command in the dead letters."""
        error_id = uuid.uuid4().hex[:12]
        log.exception("command %s failed unexpectedly (error id %s); dead-lettered",
                      shown(message.message_id), error_id)
        out = self.answers.reply(message, Reply(
            500, error=f"internal error; the worker's log has it under error id {error_id}"))
        out.append(dead_letter(message, self.names.dead, f"exception (error id {error_id})",
                               user=principal.user_id if principal else None))
        self.answers.tally.dead_letters += 1
        return out

    def poison_or_drop(self, message: Incoming) -> list[Outgoing]:
        """A 500 and a dead letter; if even those cannot be built, the command is dropped
        (acked unanswered) with an error line, so that it cannot stop the worker."""
        try:
            return self.poison(message, None)
        except Exception:
            log.exception("a command could not even be dead-lettered; dropped")
            self.answers.tally.commands.append(("unknown", "500"))
            return []

    def hijacked(self, message: Incoming) -> list[Outgoing]:
        """A reply_to that names one of thelca's own queues (its log, its commands, its dead
        letters...): not executed and nothing published there, so that no client can write
        into thelca through a reply; kept in the dead letters, without its token."""
        reason = hijacked_reason(message.reply_to, "not executed")
        log.warning("a command (message_id %s) went to %s: %s", shown(message.message_id),
                    self.names.dead, reason)
        self.answers.tally.dead_letters += 1
        return [dead_letter(message, self.names.dead, reason)]

    def refuse_unreadable(self, message: Incoming) -> list[Outgoing]:
        """Properties that cannot be used as sent (a message_id that is not UTF-8, a reply_to
        that no reply can reach): refused first, like a body over the limit, so neither
        remembered nor an event. Answered 400 when the reply_to can be used, else kept
        once in the dead letters (without the token) for the operator."""
        why = unreadable_why(unreadable(message))
        log.warning("a command was refused: %s", why)
        if "reply_to" in message.unreadable:
            self.answers.tally.commands.append((self.answers.command_name(message), "400"))
            out: list[Outgoing] = []
        else:
            out = self.answers.reply(message, Reply(400, error=why))
        if not out:  # nobody to answer
            out.append(dead_letter(message, self.names.dead, f"refused: {why}"))
            self.answers.tally.dead_letters += 1
        return out
