"""The worker's role: from a delivered command to a reply and an event.

For each command, in the contract's order: size (413), token (401), a user
id the store cannot keep (400), the idempotency record, then the service
(400, 404, 403, 409) through the command's handler (thelca.roles.handlers).
Everything a batch changes — items, the processed-command records with their
replies, the outbox of events — is committed in one store transaction, each
command inside its own savepoint, before anything is published. The plumbing acks
the batch only once the broker has confirmed every reply and event, and the
outbox keeps each event until then, so a crash at any point can neither lose
an event nor apply a command twice.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, replace

import orjson

from thelca import metrics
from thelca.authority.base import Authority, Principal
from thelca.domain import model
from thelca.domain.service import ItemService
from thelca.errors import AuthorityUnavailable, CommandRefused, ConcurrentUpdate, StoreUnavailable
from thelca.roles.handlers import HANDLERS, Context
from thelca.roles.messages import Incoming, Outgoing, dead_letter
from thelca.stores.base import ItemStore, OutboxEvent, ProcessedCommand, StoreTransaction
from thelca_client.contract import (
    COMMANDS,
    RETRY_OF_HEADER,
    STATUS_HEADER,
    Command,
    ContractError,
    Event,
    Names,
    Reply,
    bearer_token,
    decode_command,
    encode_event,
    encode_reply,
)

log = logging.getLogger(__name__)

ATTEMPTS = 3  # a concurrent writer (PostgreSQL, many workers) may win a race
LONGEST_USER = 255  # a retry_of longer than any user id is not one
NUL_USER_ID = ("the user id contains a NUL character (\\u0000), which this store cannot keep "
               "outside properties")


@dataclass(frozen=True)
class _Outcome:
    reply: Reply
    event: Event | None
    user: str | None
    command: Command | None


class CommandRole:
    """The worker role: each command in, its reply and its event out, all in one batch."""

    def __init__(
        self,
        store: ItemStore,
        authority: Authority,
        names: Names,
        *,
        max_body: int,
        service: ItemService | None = None,
    ) -> None:
        self.store = store
        self.authority = authority
        self.names = names
        self.max_body = max_body
        self.service = service or ItemService(authority)
        self._confirmed_event_ids: list[str] = []
        self._outboxed: set[str] = set()  # ids of published events that the outbox holds

    # ------------------------------------------------------------ BatchHandler

    def recover(self) -> list[Outgoing]:
        return [self._event_message_from_outbox(event) for event in self.store.pending_outbox()]

    def handle(self, batch: list[Incoming]) -> list[Outgoing]:
        confirmed, self._confirmed_event_ids = self._confirmed_event_ids, []
        try:
            with self.store.transaction() as tx:
                tx.remove_outbox(confirmed)
                return [out for message in batch for out in self._handle_one(tx, message)]
        except BaseException:
            self._confirmed_event_ids = confirmed + self._confirmed_event_ids
            raise

    def confirmed(self, published: list[Outgoing]) -> None:
        # Only events the outbox holds need removing: reads and refusals never enter it.
        for message in published:
            if message.message_id in self._outboxed:
                self._outboxed.discard(message.message_id)
                self._confirmed_event_ids.append(message.message_id)

    def nacked(self, published: list[Outgoing]) -> bool:
        """Keep every refused batch's events in the outbox, to be published again.

        The commands took effect and are acked; their replies may be lost, and a
        client that times out retries with the same message_id.
        """
        events = [m for m in published if m.exchange == self.names.events and m.message_id]
        with self.store.transaction() as tx:
            for message in events:
                if message.message_id and tx.get_outbox(message.message_id) is None:
                    tx.add_outbox(OutboxEvent(message.message_id, message.body))
        self._outboxed.update(m.message_id for m in events if m.message_id)
        return True

    def tidy(self) -> None:
        """Remove confirmed events from the outbox when no batch came to do it."""
        if self._confirmed_event_ids:
            self.handle([])

    # ------------------------------------------------------------ one command

    def _handle_one(self, tx: StoreTransaction, message: Incoming) -> list[Outgoing]:
        # Without a message_id a command cannot be idempotent; it is still served,
        # under an id of its own, and the worker's log says so.
        command_id = message.message_id or f"generated-{uuid.uuid4()}"
        if not message.message_id:
            log.warning("a command without message_id is served without idempotency "
                        "(generated %s)", command_id)
        if len(message.body) > self.max_body:
            return self._reply(message, Reply(
                413, error=f"the body is larger than the limit of {self.max_body} bytes"))
        try:
            principal = self.authority.authenticate(bearer_token(message.headers))
        except (CommandRefused, ContractError) as refused:  # both are 401s here
            return self._refused_before_auth(message, command_id, str(refused))
        except AuthorityUnavailable:
            raise
        except Exception:  # a token the Authority's library chokes on: this message only
            return self._poison(message, None)
        if "\x00" in principal.user_id and not self.store.keeps_nul:
            # Neither the item's created_by nor the record of the command could be kept;
            # refused before anything is written, so not remembered either.
            return self._reply(message, Reply(400, error=NUL_USER_ID))
        for attempt in range(1, ATTEMPTS + 1):
            try:
                with tx.savepoint():
                    return self._authenticated(tx, message, principal, command_id)
            except (StoreUnavailable, AuthorityUnavailable):
                raise
            except ConcurrentUpdate:
                # Another writer got there first (PostgreSQL, many workers): the
                # savepoint undid our part; run the command again on fresh state.
                if attempt < ATTEMPTS:
                    continue
                return self._poison(message, principal)
            except Exception:
                return self._poison(message, principal)
        raise AssertionError("unreachable")

    def _authenticated(
        self, tx: StoreTransaction, message: Incoming, principal: Principal, command_id: str
    ) -> list[Outgoing]:
        """Everything after the token check, undone as a whole if it raises."""
        if message.message_id:
            prior = tx.get_processed(message.message_id)
            if prior is not None:
                return self._repeat(tx, message, principal, prior)
        outcome = _noted_retry(self._serve(tx, principal, message, command_id), message)
        if message.message_id and _remembered(outcome.command):
            self._remember(tx, message.message_id, outcome)
        command = outcome.command.name if outcome.command else None
        out = self._reply(message, outcome.reply, command)
        if outcome.event is not None:
            out.append(self._event_message(outcome.event))
        return out

    def _serve(
        self, tx: StoreTransaction, principal: Principal, message: Incoming, command_id: str
    ) -> _Outcome:
        command: Command | None = None
        try:
            command = decode_command(message.body)
            handler = HANDLERS[type(command)]
            served = handler.handle(Context(self.service, tx, principal, command_id), command)
        except (CommandRefused, ContractError) as refused:
            return self._refusal(refused, principal, command, command_id)
        return _Outcome(served.reply, served.event, principal.user_id, command)

    def _refusal(
        self,
        refused: CommandRefused | ContractError,
        principal: Principal,
        command: Command | None,
        command_id: str,
    ) -> _Outcome:
        event = None
        if refused.status == 403:
            event = model.access_refused(
                command.name if command else None, _named_id(command),
                403, user=principal.user_id, time=model.utc_now(), command_id=command_id)
        return _Outcome(Reply(refused.status, error=str(refused)), event,
                        principal.user_id, command)

    def _refused_before_auth(
        self, message: Incoming, command_id: str, why: str
    ) -> list[Outgoing]:
        command, item_id = _peek(message.body)
        event = model.access_refused(command, item_id, 401, user=None, time=model.utc_now(),
                                     command_id=command_id)
        out = self._reply(message, Reply(401, error=why))
        out.append(self._event_message(event))
        return out

    def _repeat(
        self, tx: StoreTransaction, message: Incoming, principal: Principal,
        prior: ProcessedCommand,
    ) -> list[Outgoing]:
        """A message_id seen before: the same reply again, and nothing changes."""
        if prior.user_id != principal.user_id:
            return self._reply(message, Reply(
                409, error=f"message_id {message.message_id} was already used by another user"))
        out = self._reply_bytes(message, prior.reply)
        pending = tx.get_outbox(prior.event_id) if prior.event_id else None
        if pending is not None:  # not yet confirmed: publish again, same id
            out.append(self._event_message_from_outbox(pending))
        return out

    def _remember(self, tx: StoreTransaction, message_id: str, outcome: _Outcome) -> None:
        event = outcome.event
        tx.add_processed(ProcessedCommand(
            message_id, outcome.user or "", encode_reply(outcome.reply),
            event.id if event else None))
        if event is not None:
            tx.add_outbox(OutboxEvent(event.id, encode_event(event)))
            self._outboxed.add(event.id)

    def _poison(self, message: Incoming, principal: Principal | None) -> list[Outgoing]:
        """An unexpected failure: answer 500, keep the command in the dead letters."""
        error_id = uuid.uuid4().hex[:12]
        log.exception("command %s failed unexpectedly (error id %s); dead-lettered",
                      message.message_id, error_id)
        out = self._reply(message, Reply(
            500, error=f"internal error; the worker's log has it under error id {error_id}"))
        out.append(dead_letter(message, self.names.dead, f"exception (error id {error_id})",
                               user=principal.user_id if principal else None))
        metrics.DEAD_LETTERS.labels("worker").inc()
        return out

    # ------------------------------------------------------------ messages

    def _reply(
        self, message: Incoming, reply: Reply, command: str | None = None
    ) -> list[Outgoing]:
        return self._reply_bytes(message, encode_reply(reply), reply.status, command)

    def _reply_bytes(
        self, message: Incoming, body: bytes, status: int | None = None,
        command: str | None = None,
    ) -> list[Outgoing]:
        """The reply to send (none without reply_to); every answer is counted either way."""
        if status is None:
            status = int(orjson.loads(body)["status"])
        metrics.COMMANDS.labels(command or self._command_name(message), str(status)).inc()
        if not message.reply_to:
            return []
        return [Outgoing(
            "", message.reply_to, body,
            correlation_id=message.correlation_id or message.message_id,
            headers={STATUS_HEADER: status}, persistent=False,
        )]

    def _command_name(self, message: Incoming) -> str:
        if len(message.body) > self.max_body:
            return "unknown"
        return _peek(message.body)[0] or "unknown"

    def _event_message(self, event: Event) -> Outgoing:
        return Outgoing(self.names.events, "", encode_event(event), message_id=event.id,
                        type=event.type)

    def _event_message_from_outbox(self, event: OutboxEvent) -> Outgoing:
        self._outboxed.add(event.event_id)
        kind = orjson.loads(event.body).get("type")
        return Outgoing(self.names.events, "", event.body, message_id=event.event_id,
                        type=kind if isinstance(kind, str) else None)


def _noted_retry(outcome: _Outcome, message: Incoming) -> _Outcome:
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


def _remembered(command: Command | None) -> bool:
    """Whether an outcome is recorded under its message_id: a body that could not be
    decoded is (its refusal is), a command is as its handler says (a read is not)."""
    return command is None or HANDLERS[type(command)].remembered


def _named_id(command: Command | None) -> str | None:
    """The id a command names (a create names none), for an Access refused event."""
    item_id = getattr(command, "id", None)
    return item_id if isinstance(item_id, str) else None


def _peek(body: bytes) -> tuple[str | None, str | None]:
    """The command and id of a body, when it can be read, for an Access refused event."""
    try:
        data = orjson.loads(body)
    except (orjson.JSONDecodeError, RecursionError):
        return None, None
    if not isinstance(data, dict):
        return None, None
    command, item_id = data.get("command"), data.get("id")
    return (command if command in COMMANDS else None,
            item_id if isinstance(item_id, str) and len(item_id) < 256 else None)
