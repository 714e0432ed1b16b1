"""The worker's role: from a delivered command to a reply and an event.

For each command, in the contract's order: a reply_to naming one of
thelca's own queues (not executed at all: to the dead letters), properties
that cannot be used as sent (400), size (413), token (401), a user id the
store cannot keep (400), the idempotency record (a different command under a
used message_id: 409), then the service (400, 404, 403, 409) through the
command's handler (thelca.roles.handlers). Event ids derive from what makes a
delivery itself (thelca.roles.fingerprints), so that only a redelivery of the
same message repeats one. Everything a batch changes — items, the
processed-command records with their replies, the outbox of events — is
committed in one store transaction, each command inside its own savepoint,
before anything is published; whatever fails while one command's outcome is
built costs that command alone (a 500), never its batch. The plumbing acks
the batch only once the broker has confirmed every event (replies go out on
a connection of their own), and the outbox keeps each event until then, so a
crash at any point can neither lose an event nor apply a command twice.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, replace

import orjson

from thelca import metrics
from thelca.authority.base import Authority, Principal
from thelca.domain import model
from thelca.domain.model import Origin
from thelca.domain.service import ItemService
from thelca.errors import AuthorityUnavailable, CommandRefused, ConcurrentUpdate, StoreUnavailable
from thelca.logtext import shown
from thelca.roles import fingerprints
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
DIFFERENT_COMMAND = "message_id already used for a different command"


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
        self._key: bytes | None = None  # the store's deployment key, read once

    # ------------------------------------------------------------ BatchHandler

    def recover(self) -> list[Outgoing]:
        return [self._event_message_from_outbox(event) for event in self.store.pending_outbox()]

    def handle(self, batch: list[Incoming]) -> list[Outgoing]:
        if self._key is None:  # in a transaction of its own, before the batch's
            self._key = self.store.deployment_key()
        confirmed, self._confirmed_event_ids = self._confirmed_event_ids, []
        try:
            with self.store.transaction() as tx:
                tx.remove_outbox(confirmed)
                return [out for message in batch for out in self._guarded(tx, message)]
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
        client that times out retries with the same message_id. The outbox holds
        every event until it is confirmed, so the store is asked only about one
        this handler does not know there: a refusal while the database restarts
        must not send commands that took effect back to the queue, where each
        return counts against its delivery limit.
        """
        events = [m for m in published if m.exchange == self.names.events and m.message_id
                  and m.message_id not in self._outboxed]
        if not events:
            return True
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

    def _guarded(self, tx: StoreTransaction, message: Incoming) -> list[Outgoing]:
        """One command's reply and event; whatever fails in building them costs this
        command alone (a 500 and a dead letter), never its batch.

        Only an unavailable store or Authority fails the batch, to be tried again.
        What a command wrote is inside its own savepoint, undone when it raised.
        """
        try:
            return self._handle_one(tx, message)
        except (StoreUnavailable, AuthorityUnavailable):
            raise
        except Exception:
            return self._poison_or_drop(message)

    def _handle_one(self, tx: StoreTransaction, message: Incoming) -> list[Outgoing]:
        refused = self._refused_up_front(message)
        if refused is not None:
            return refused
        # Without a message_id a command cannot be idempotent; it is still served,
        # under an id of its own, and the worker's log says so.
        command_id = message.message_id or f"generated-{uuid.uuid4()}"
        if not message.message_id:
            log.warning("a command without message_id is served without idempotency "
                        "(generated %s)", command_id)
        fingerprint = fingerprints.fingerprint(message.body)
        assert self._key is not None  # read by handle()
        origin = Origin(command_id, fingerprints.id_seed(self._key, command_id, fingerprint,
                                                         message.headers))
        try:
            principal = self.authority.authenticate(bearer_token(message.headers))
        except (CommandRefused, ContractError) as refused:  # both are 401s here
            return self._refused_before_auth(message, origin, str(refused))
        except AuthorityUnavailable:
            raise
        except Exception:  # a token the Authority's library chokes on: this message only
            return self._poison(message, None)
        if "\x00" in principal.user_id and not self.store.keeps_nul:
            # Neither the item's created_by nor the record of the command could be kept;
            # refused before anything is written, so not remembered either.
            return self._reply(message, Reply(400, error=NUL_USER_ID))
        return self._in_savepoint(tx, message, principal, origin, fingerprint)

    def _refused_up_front(self, message: Incoming) -> list[Outgoing] | None:
        """What is refused before the token is even read, neither remembered nor audited:
        a reply_to of thelca's own, properties that cannot be used, a body over the limit."""
        if self.names.owns(message.reply_to):
            return self._hijacked(message)
        if _unreadable(message):
            return self._refuse_unreadable(message)
        if len(message.body) > self.max_body:
            return self._reply(message, Reply(
                413, error=f"the body is larger than the limit of {self.max_body} bytes"))
        return None

    def _in_savepoint(
        self, tx: StoreTransaction, message: Incoming, principal: Principal, origin: Origin,
        fingerprint: str,
    ) -> list[Outgoing]:
        """The authenticated command in a savepoint of its own, run again if another
        writer won a race for its rows."""
        for attempt in range(1, ATTEMPTS + 1):
            try:
                with tx.savepoint():
                    return self._authenticated(tx, message, principal, origin, fingerprint)
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
        self, tx: StoreTransaction, message: Incoming, principal: Principal, origin: Origin,
        fingerprint: str,
    ) -> list[Outgoing]:
        """Everything after the token check, undone as a whole if it raises."""
        if message.message_id:
            prior = tx.get_processed(message.message_id)
            if prior is not None:
                return self._repeat(tx, message, principal, prior, fingerprint)
        outcome = _noted_retry(self._serve(tx, principal, message, origin), message)
        if message.message_id and _remembered(outcome.command):
            self._remember(tx, message.message_id, outcome, fingerprint)
        command = outcome.command.name if outcome.command else None
        out = self._reply(message, outcome.reply, command)
        if outcome.event is not None:
            out.append(self._event_message(outcome.event))
        return out

    def _serve(
        self, tx: StoreTransaction, principal: Principal, message: Incoming, origin: Origin
    ) -> _Outcome:
        command: Command | None = None
        try:
            command = decode_command(message.body)
            handler = HANDLERS[type(command)]
            served = handler.handle(Context(self.service, tx, principal, origin), command)
        except (CommandRefused, ContractError) as refused:
            return self._refusal(refused, principal, command, origin)
        return _Outcome(served.reply, served.event, principal.user_id, command)

    def _refusal(
        self,
        refused: CommandRefused | ContractError,
        principal: Principal,
        command: Command | None,
        origin: Origin,
    ) -> _Outcome:
        event = None
        if refused.status == 403:
            event = model.access_refused(
                command.name if command else None, _named_id(command),
                403, user=principal.user_id, time=model.utc_now(), origin=origin)
        return _Outcome(Reply(refused.status, error=str(refused)), event,
                        principal.user_id, command)

    def _refused_before_auth(
        self, message: Incoming, origin: Origin, why: str
    ) -> list[Outgoing]:
        command, item_id = _peek(message.body)
        event = model.access_refused(command, item_id, 401, user=None, time=model.utc_now(),
                                     origin=origin)
        out = self._reply(message, Reply(401, error=why))
        out.append(self._event_message(event))
        return out

    def _repeat(
        self, tx: StoreTransaction, message: Incoming, principal: Principal,
        prior: ProcessedCommand, fingerprint: str,
    ) -> list[Outgoing]:
        """A message_id seen before: the same command gets the same reply again, and nothing
        changes; another command under it is refused, as a reused idempotency key is."""
        if prior.user_id != principal.user_id:
            return self._reply(message, Reply(
                409, error=f"message_id {message.message_id} was already used by another user"))
        if prior.fingerprint is not None and prior.fingerprint != fingerprint:
            return self._reply(message, Reply(409, error=DIFFERENT_COMMAND))
        out = self._reply_bytes(message, prior.reply)
        pending = tx.get_outbox(prior.event_id) if prior.event_id else None
        if pending is not None:  # not yet confirmed: publish again, same id
            out.append(self._event_message_from_outbox(pending))
        return out

    def _remember(
        self, tx: StoreTransaction, message_id: str, outcome: _Outcome, fingerprint: str
    ) -> None:
        event = outcome.event
        tx.add_processed(ProcessedCommand(
            message_id, outcome.user or "", encode_reply(outcome.reply),
            event.id if event else None, fingerprint))
        if event is not None:
            tx.add_outbox(OutboxEvent(event.id, encode_event(event)))
            self._outboxed.add(event.id)

    def _poison(self, message: Incoming, principal: Principal | None) -> list[Outgoing]:
        """An unexpected failure: answer 500, keep the command in the dead letters."""
        error_id = uuid.uuid4().hex[:12]
        log.exception("command %s failed unexpectedly (error id %s); dead-lettered",
                      shown(message.message_id), error_id)
        out = self._reply(message, Reply(
            500, error=f"internal error; the worker's log has it under error id {error_id}"))
        out.append(dead_letter(message, self.names.dead, f"exception (error id {error_id})",
                               user=principal.user_id if principal else None))
        metrics.DEAD_LETTERS.labels("worker").inc()
        return out

    def _hijacked(self, message: Incoming) -> list[Outgoing]:
        """A reply_to that names one of thelca's own queues (its log, its commands, its dead
        letters...): not executed and nothing published there, so that no client can write
        into thelca through a reply; kept in the dead letters, without its token."""
        reason = (f"reply_to names thelca's own queue {shown(message.reply_to)}: replies go "
                  "to clients, never into thelca; not executed")
        log.warning("a command (message_id %s) went to %s: %s", shown(message.message_id),
                    self.names.dead, reason)
        metrics.DEAD_LETTERS.labels("worker").inc()
        return [dead_letter(message, self.names.dead, reason)]

    def _poison_or_drop(self, message: Incoming) -> list[Outgoing]:
        """A 500 and a dead letter; if even those cannot be built, the command is dropped
        (acked unanswered) with an error line, so that it cannot stop the worker."""
        try:
            return self._poison(message, None)
        except Exception:
            log.exception("a command could not even be dead-lettered; dropped")
            metrics.COMMANDS.labels("unknown", "500").inc()
            return []

    def _refuse_unreadable(self, message: Incoming) -> list[Outgoing]:
        """Properties that cannot be used as sent (a message_id that is not UTF-8, a reply_to
        that no reply can reach): refused first, like a body over the limit, so neither
        remembered nor an event. Answered 400 when the reply_to can be used, else kept
        once in the dead letters (without the token) for the operator."""
        why = "; ".join(f"the {name} property is {what}"
                        for name, what in sorted(_unreadable(message).items()))
        log.warning("a command was refused: %s", why)
        if "reply_to" in message.unreadable:
            metrics.COMMANDS.labels(self._command_name(message), "400").inc()
            out: list[Outgoing] = []
        else:
            out = self._reply(message, Reply(400, error=why))
        if not out:  # nobody to answer
            out.append(dead_letter(message, self.names.dead, f"refused: {why}"))
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


def _unreadable(message: Incoming) -> dict[str, str]:
    """The properties a command's reply depends on that cannot be used as sent, and why."""
    return {name: why for name, why in message.unreadable.items()
            if name in ("message_id", "correlation_id", "reply_to")}


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
