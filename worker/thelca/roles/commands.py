"""The worker's role: from a delivered command to a reply and an event.

For each command, in the contract's order: a reply_to naming one of
thelca's own queues (not executed at all: to the dead letters), properties
that cannot be used as sent (400), size (413), token (401), a message_id the
store cannot record for a command that is recorded (400), a user id the
store cannot keep (400), the idempotency record (a different command under a
used message_id: 409), then the service (400, 404, 403, 409) through the
command's handler (thelca.roles.handlers). Event ids derive from what makes a
delivery itself (thelca.roles.fingerprints), so that only a redelivery of the
same message repeats one. The idempotency record (thelca.roles.records)
answers for the deduplication window only, and older ones are pruned a
bounded number per batch (thelca.roles.dedup). Everything a batch changes —
items, the processed-command records with their replies, the outbox of
events — is committed in one store transaction before anything is
published; whatever fails while one command's outcome is built costs that
command alone (a 500), never its batch. For that each command has a
savepoint of its own — but only when one needs it: a batch runs first
without savepoints, in a deferred transaction (on PostgreSQL its writes go
in a few round trips for the whole batch: thelca.stores.postgres.deferred);
if any command fails there, or a held write is refused when sent, that run
is rolled back, nothing of it published or counted, and the batch runs
again with a savepoint per command, as it always did. The plumbing acks the
batch only once the broker has confirmed every event (replies go out on a
connection of their own), and the outbox keeps each event until then, so a
crash at any point can neither lose an event nor apply a command twice.

This module is the flow of a batch and of one command; what the service
makes of a command is in thelca.roles.outcomes, the refusals and poison in
.refusals, the replies and event messages in .answers.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable

from thelca.authority.base import Authority, Principal
from thelca.domain.model import Origin
from thelca.domain.service import ItemService
from thelca.errors import (
    AuthorityUnavailable,
    CommandRefused,
    ConcurrentUpdate,
    StoreError,
    StoreUnavailable,
)
from thelca.roles import fingerprints
from thelca.roles.answers import Answers, named
from thelca.roles.dedup import DedupWindow
from thelca.roles.fingerprints import Received
from thelca.roles.messages import Incoming, Outgoing
from thelca.roles.outbox import OutboxBook
from thelca.roles.outcomes import noted_retry, remembered, serve
from thelca.roles.records import remember, repeat
from thelca.roles.refusals import Refusals
from thelca.stores.base import (
    DEFAULT_DEDUP_WINDOW,
    ItemStore,
    OutboxEvent,
    StoreTransaction,
)
from thelca_client.contract import (
    ContractError,
    Names,
    Reply,
    bearer_token,
    encode_event,
    encode_reply,
)

log = logging.getLogger(__name__)

ITEM_COMMANDS = ("read", "update")  # the commands whose "id" names an item
ATTEMPTS = 3  # a concurrent writer (PostgreSQL, many workers) may win a race
NUL_USER_ID = ("the user id contains a NUL character (\\u0000), which this store cannot keep "
               "outside properties")


class _Redo(Exception):
    """A command failed in a batch's first run, which has no savepoints: run it again."""


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
        dedup_window: float = DEFAULT_DEDUP_WINDOW,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.authority = authority
        self.names = names
        self.max_body = max_body
        self.service = service or ItemService(authority)
        self._outbox = OutboxBook()  # which published events the outbox holds
        self._key: bytes | None = None  # the store's deployment key, read once
        self._answers = Answers(names, max_body)  # replies and event messages
        self._refusals = Refusals(self._answers, keeps_nul=store.keeps_nul)
        self.window = DedupWindow(dedup_window, clock)  # and the pruning of older records

    # ------------------------------------------------------------ BatchHandler

    def recover(self) -> list[Outgoing]:
        return [self._event_message_from_outbox(event) for event in self.store.pending_outbox()]

    def handle(self, batch: list[Incoming]) -> list[Outgoing]:
        if self._key is None:  # in a transaction of its own, before the batch's
            self._key = self.store.deployment_key()
        confirmed = self._outbox.take_confirmed(len(batch))
        try:
            try:
                return self._run(batch, confirmed, deferred=True)
            except _Redo:
                return self._run(batch, confirmed, deferred=False)
        except BaseException:
            self._outbox.give_back(confirmed)
            raise

    def _run(self, batch: list[Incoming], confirmed: list[str], *, deferred: bool
             ) -> list[Outgoing]:
        """The batch in one transaction: deferred and without savepoints (raising _Redo
        when anything failed), or with a savepoint per command."""
        tally = self._answers.new_tally()
        try:
            with self.store.transaction(deferred=deferred) as tx:
                tx.remove_outbox(confirmed)
                pruned = self.window.prune(tx, len(batch))
                # Each body decoded once, for the read-ahead, its fingerprint and its
                # command (anew in each run: a handler may keep what it was given).
                commands = [Received(message, self.max_body) for message in batch]
                _read_ahead(tx, commands)
                out = [out for received in commands
                       for out in self._guarded(tx, received, deferred)]
        except StoreError as error:
            if not deferred or isinstance(error, StoreUnavailable):
                raise
            raise _Redo from error  # a held write refused when it was sent
        tally.apply()
        self._outbox.hold(tally.outboxed)
        self.window.count(pruned)
        return out

    def confirmed(self, published: list[Outgoing]) -> None:
        # Only events the outbox holds need removing: reads and refusals never enter it.
        for message in published:
            if message.message_id:
                self._outbox.confirm(message.message_id)

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
                  and m.message_id not in self._outbox]
        if not events:
            return True
        with self.store.transaction() as tx:
            for message in events:
                if message.message_id and tx.get_outbox(message.message_id) is None:
                    tx.add_outbox(OutboxEvent(message.message_id, message.body))
        self._outbox.hold(m.message_id for m in events if m.message_id)
        return True

    def tidy(self) -> None:
        """Remove confirmed events from the outbox, and expired records from the store, when
        no batch came to do it."""
        if self._outbox.has_confirmed or self.window.prune_due():
            self.handle([])

    # ------------------------------------------------------------ one command

    def _guarded(self, tx: StoreTransaction, received: Received, deferred: bool = False
                 ) -> list[Outgoing]:
        """One command's reply and event; whatever fails in building them costs this
        command alone (a 500 and a dead letter), never its batch.

        Only an unavailable store or Authority fails the batch, to be tried again.
        What a command wrote is inside its own savepoint, undone when it raised.
        """
        try:
            return self._handle_one(tx, received, deferred)
        except (StoreUnavailable, AuthorityUnavailable, _Redo):
            raise
        except Exception:
            return self._refusals.poison_or_drop(received.message)

    def _handle_one(self, tx: StoreTransaction, received: Received, deferred: bool
                    ) -> list[Outgoing]:
        """One command, its body decoded already."""
        message = received.message
        refused = self._refusals.up_front(received)
        if refused is not None:
            return refused
        # Without a message_id a command cannot be idempotent; it is still served,
        # under an id of its own, and the worker's log says so.
        command_id = message.message_id or f"generated-{uuid.uuid4()}"
        if not message.message_id:
            log.warning("a command without message_id is served without idempotency "
                        "(generated %s)", command_id)
        fingerprint = received.fingerprint()
        assert self._key is not None  # read by handle()
        seed = fingerprints.id_seed(self._key, command_id, fingerprint, message.headers)
        origin = Origin(command_id, self.window.seed(seed, self.window.clock()))
        try:
            principal = self.authority.authenticate(bearer_token(message.headers))
        except (CommandRefused, ContractError) as refused:  # both are 401s here
            return self._refusals.before_auth(received, origin, str(refused))
        except AuthorityUnavailable:
            raise
        except Exception:  # a token the Authority's library chokes on: this message only
            return self._refusals.poison(message, None)
        unrecordable = self._refusals.unrecordable(received)
        if unrecordable is not None:
            return unrecordable
        if "\x00" in principal.user_id and not self.store.keeps_nul:
            # Neither the item's created_by nor the record of the command could be kept;
            # refused before anything is written, so not remembered either.
            return self._answers.reply(message, Reply(400, error=NUL_USER_ID))
        if deferred:
            return self._without_savepoint(tx, received, principal, origin, fingerprint)
        return self._in_savepoint(tx, received, principal, origin, fingerprint)

    def _without_savepoint(
        self, tx: StoreTransaction, received: Received, principal: Principal, origin: Origin,
        fingerprint: str,
    ) -> list[Outgoing]:
        """The authenticated command in a batch's first run: whatever fails here would have
        rolled its savepoint back, so the whole batch runs again, with savepoints."""
        try:
            return self._authenticated(tx, received, principal, origin, fingerprint)
        except (StoreUnavailable, AuthorityUnavailable):
            raise
        except Exception as error:
            raise _Redo from error

    def _in_savepoint(
        self, tx: StoreTransaction, received: Received, principal: Principal, origin: Origin,
        fingerprint: str,
    ) -> list[Outgoing]:
        """The authenticated command in a savepoint of its own, run again if another
        writer won a race for its rows."""
        for attempt in range(1, ATTEMPTS + 1):
            try:
                with tx.savepoint():
                    return self._authenticated(tx, received, principal, origin, fingerprint)
            except (StoreUnavailable, AuthorityUnavailable):
                raise
            except ConcurrentUpdate:
                # Another writer got there first (PostgreSQL, many workers): the
                # savepoint undid our part; run the command again on fresh state.
                if attempt < ATTEMPTS:
                    continue
                return self._refusals.poison(received.message, principal)
            except Exception:
                return self._refusals.poison(received.message, principal)
        raise AssertionError("unreachable")

    def _authenticated(
        self, tx: StoreTransaction, received: Received, principal: Principal, origin: Origin,
        fingerprint: str,
    ) -> list[Outgoing]:
        """Everything after the token check, undone as a whole if it raises."""
        message = received.message
        now = self.window.clock()
        if message.message_id:
            prior = tx.get_processed(message.message_id)
            # A record past the deduplication window answers no more: a new command.
            if prior is not None and not self.window.forgot_expired(tx, prior, now):
                return repeat(self._answers, tx, message, principal=principal, prior=prior,
                              fingerprint=fingerprint,
                              republish=self._unconfirmed_from_outbox)
        outcome = noted_retry(serve(self.service, tx, principal, received, origin), message)
        # Encoded once: the same bytes are recorded, kept in the outbox and sent.
        reply_body = encode_reply(outcome.reply)
        event_body = encode_event(outcome.event) if outcome.event is not None else None
        if message.message_id and remembered(outcome.command):
            remember(self._answers, tx, message.message_id, outcome=outcome,
                     fingerprint=fingerprint, now=now, reply_body=reply_body,
                     event_body=event_body)
        command = outcome.command.name if outcome.command else None
        out = self._answers.reply_bytes(message, reply_body, outcome.reply.status, command)
        if outcome.event is not None:
            out.append(self._answers.event(outcome.event, event_body))
        return out

    # ------------------------------------------------------------ messages

    def _unconfirmed_from_outbox(self, event: OutboxEvent) -> Outgoing | None:
        """A repeat's event, unless the broker confirmed it already (it lingers in the
        outbox until enough confirmed events leave together)."""
        if self._outbox.was_confirmed(event.event_id):
            return None
        return self._event_message_from_outbox(event)

    def _event_message_from_outbox(self, event: OutboxEvent) -> Outgoing:
        self._outbox.hold([event.event_id])
        return self._answers.outbox_event(event)


def _read_ahead(tx: StoreTransaction, commands: list[Received]) -> None:
    """Tell the store what the batch will ask for: its records and the items it names
    (on PostgreSQL one statement each, instead of one per command). A body too large to
    be read names nothing."""
    messages = [received.message for received in commands]
    tx.prefetch_processed([m.message_id for m in messages
                           if m.message_id and isinstance(m.message_id, str)])
    items = (named(received.value) for received in commands)
    tx.prefetch_items([item_id for command, item_id in items
                       if command in ITEM_COMMANDS and item_id is not None])
