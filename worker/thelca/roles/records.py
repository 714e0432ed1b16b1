"""A command's idempotency record: what a message_id seen before is answered with, and
how a command served is recorded, with its event kept in the outbox until confirmed."""

from __future__ import annotations

from collections.abc import Callable

from thelca.authority.base import Principal
from thelca.roles.answers import Answers
from thelca.roles.messages import Incoming, Outgoing
from thelca.roles.outcomes import Outcome
from thelca.stores.base import OutboxEvent, ProcessedCommand, StoreTransaction
from thelca_client.contract import Reply, encode_event, encode_reply

DIFFERENT_COMMAND = "message_id already used for a different command"


def repeat(
    answers: Answers, tx: StoreTransaction, message: Incoming, *, principal: Principal,
    prior: ProcessedCommand, fingerprint: str,
    republish: Callable[[OutboxEvent], Outgoing | None],
) -> list[Outgoing]:
    """A message_id seen before: the same command gets the same reply again, and nothing
    changes; another command under it is refused, as a reused idempotency key is."""
    if prior.user_id != principal.user_id:
        return answers.reply(message, Reply(
            409, error=f"message_id {message.message_id} was already used by another user"))
    if prior.fingerprint is not None and prior.fingerprint != fingerprint:
        return answers.reply(message, Reply(409, error=DIFFERENT_COMMAND))
    out = answers.reply_bytes(message, prior.reply)
    pending = tx.get_outbox(prior.event_id) if prior.event_id else None
    again = republish(pending) if pending is not None else None
    if again is not None:  # not yet confirmed: publish again, same id
        out.append(again)
    return out


def remember(
    answers: Answers, tx: StoreTransaction, message_id: str, *, outcome: Outcome,
    fingerprint: str, now: float, reply_body: bytes | None = None,
    event_body: bytes | None = None,
) -> None:
    """Record the command and its reply, and keep its event in the outbox (noted in the
    batch's tally: the role knows it there once the batch is committed). `reply_body`
    and `event_body`: the reply and the event as encoded already for sending."""
    event = outcome.event
    tx.add_processed(ProcessedCommand(
        message_id, outcome.user or "",
        encode_reply(outcome.reply) if reply_body is None else reply_body,
        event.id if event else None, fingerprint, now))
    if event is not None:
        tx.add_outbox(OutboxEvent(event.id, encode_event(event) if event_body is None
                                  else event_body))
        answers.tally.outboxed.append(event.id)
