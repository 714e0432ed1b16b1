"""What the service makes of an authenticated command: its Outcome.

The command is decoded and handed to its handler (thelca.roles.handlers);
a refusal is an outcome too (400, 404, 403, 409), and a 403 is audited with
an Access refused event. Nothing here publishes or remembers: the command
role (thelca.roles.commands) does, inside the command's savepoint.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from thelca.authority.base import Principal
from thelca.domain import model
from thelca.domain.model import Origin
from thelca.domain.service import ItemService
from thelca.errors import CommandRefused
from thelca.roles.fingerprints import Received
from thelca.roles.handlers import HANDLERS, Context
from thelca.roles.messages import Incoming
from thelca.stores.base import StoreTransaction
from thelca_client.contract import (
    RETRY_OF_HEADER,
    Command,
    ContractError,
    Event,
    Reply,
    decode_command,
    decode_command_object,
)

LONGEST_USER = 255  # a retry_of longer than any user id is not one


@dataclass(frozen=True)
class Outcome:
    reply: Reply
    event: Event | None
    user: str | None
    command: Command | None


def serve(
    service: ItemService, tx: StoreTransaction, principal: Principal, received: Received,
    origin: Origin,
) -> Outcome:
    """The command's outcome, from its body decoded already."""
    command: Command | None = None
    data = received.value
    try:
        # A body that is not a JSON object is decoded again, for decode_command's words.
        command = (decode_command_object(data) if isinstance(data, dict)
                   else decode_command(received.message.body))
        handler = HANDLERS[type(command)]
        served = handler.handle(Context(service, tx, principal, origin), command)
    except (CommandRefused, ContractError) as refused:
        return _refusal(refused, principal, command, origin)
    return Outcome(served.reply, served.event, principal.user_id, command)


def _refusal(
    refused: CommandRefused | ContractError,
    principal: Principal,
    command: Command | None,
    origin: Origin,
) -> Outcome:
    event = None
    if refused.status == 403:
        event = model.access_refused(
            command.name if command else None, _named_id(command),
            403, user=principal.user_id, time=model.utc_now(), origin=origin)
    return Outcome(Reply(refused.status, error=str(refused)), event,
                   principal.user_id, command)


def noted_retry(outcome: Outcome, message: Incoming) -> Outcome:
    """The event with `retry_of` when the command says whose dead letter it retries.

    `thelca dead retry --as-operator` writes the header; the worker cannot tell it
    from one a client wrote, so it is information in the event and never a right:
    the command was authorised as its own token's user, who is the event's `user`.
    An empty value says the operator's tool could not tell who sent the letter.
    """
    value = message.headers.get(RETRY_OF_HEADER)
    if outcome.event is None or not isinstance(value, str) or len(value) > LONGEST_USER \
            or not value.isprintable():
        return outcome
    extra = {**outcome.event.extra, "retry_of": value or None}
    return replace(outcome, event=replace(outcome.event, extra=extra))


def remembered(command: Command | None) -> bool:
    """Whether an outcome is recorded under its message_id: a body that could not be
    decoded is (its refusal is), a command is as its handler says (a read is not)."""
    return command is None or HANDLERS[type(command)].remembered


def recorded(received: Received) -> bool:
    """Whether the outcome of this command will be recorded under its message_id, known
    before it is served: as `remembered` says of the command its body decodes to, or of
    the refusal when it does not decode."""
    try:
        command = (decode_command_object(received.value) if isinstance(received.value, dict)
                   else decode_command(received.message.body))
    except ContractError:
        return True
    return remembered(command)


def _named_id(command: Command | None) -> str | None:
    """The id a command names (a create names none), for an Access refused event."""
    item_id = getattr(command, "id", None)
    return item_id if isinstance(item_id, str) else None
