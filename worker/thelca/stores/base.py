"""The item store interface that every backend implements.

A store keeps four things, always changed together in one transaction:
the items with their versions, the links between items with theirs, the
commands already processed (with the reply they got, so that a redelivery
gets it again; each kept for the deduplication window, then pruned), and the
outbox of events not yet confirmed by the broker.
Beside them it keeps the deployment key, a random secret that every worker of
the store shares.

Searches (items by their properties, links by their items) come in creation
order, `created_at` then `id`, and every backend answers them from an index,
so that a search costs about a read whatever the size of the store.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar, runtime_checkable

from thelca.domain.model import Item, Link, StoredItem, StoredLink
from thelca_client.contract import JSON, LinkEnd

T = TypeVar("T")

DEPLOYMENT_KEY_BYTES = 32
# How long a processed-command record answers its message_id by default (seconds): 7 days,
# as the longest duplicate-detection windows of managed brokers (THELCA_DEDUP_WINDOW).
DEFAULT_DEDUP_WINDOW = 7 * 24 * 3600


@dataclass(frozen=True)
class ProcessedCommand:
    """A command that took effect (or was refused after authentication) and its reply.

    `fingerprint` is the command's (thelca.roles.fingerprints): a command re-sent
    under the message_id with another fingerprint is a different command, not a
    redelivery. Records kept by releases before it have None.

    `created_at` is when the worker made the record (seconds since the epoch, its
    clock): once it is older than the deduplication window the record is pruned
    (thelca.roles.commands). Records of releases before it count as made when a
    worker of this one first opened the store.
    """

    message_id: str
    user_id: str
    reply: bytes
    event_id: str | None
    fingerprint: str | None = None
    created_at: float = field(default_factory=time.time)


@dataclass(frozen=True)
class OutboxEvent:
    """An event kept until the broker confirms it, as the bytes that are published."""

    event_id: str
    body: bytes


@dataclass(frozen=True)
class Found(Generic[T]):
    """A page of search results in creation order, and whether more match after them."""

    results: list[T]
    more: bool


class StoreTransaction(Protocol):
    """What one command may do to the store, all of it committed or none."""

    def get_item(self, item_id: str) -> StoredItem | None:
        """The item, its row locked until the transaction ends where other writers share
        the store (PostgreSQL)."""
        ...

    def prefetch_items(self, item_ids: list[str]) -> None:
        """Say that get_item will be asked for these (a store may read and lock them all at
        once). get_item's answers stay what they would be."""
        ...

    def add_item(self, item: Item) -> StoredItem:
        """Insert a new item at version 1."""
        ...

    def replace_item(self, item: Item, version: int) -> StoredItem:
        """Store item as `version`; raise ConcurrentUpdate unless the stored one is version-1."""
        ...

    def has_item(self, item_id: str) -> bool:
        """Whether an item has this id; unlike get_item it locks nothing (items are never
        deleted, so the answer cannot go stale)."""
        ...

    def search_items(self, where: JSON, *, after: str | None, limit: int) -> Found[Item] | None:
        """The items whose properties hold every key of `where` with an equal JSON value
        (numbers by value, true and 1 not equal), in creation order, at most `limit`, after
        the item `after`; None when no item has the id `after`."""
        ...

    def get_link(self, link_id: str) -> StoredLink | None: ...

    def add_link(self, link: Link) -> StoredLink:
        """Insert a new link at version 1; raise ConcurrentUpdate if its id is taken."""
        ...

    def replace_link(self, link: Link, version: int) -> StoredLink:
        """Store link as `version`; raise ConcurrentUpdate unless the stored one is version-1."""
        ...

    def delete_link(self, link_id: str, version: int) -> None:
        """Remove the link; raise ConcurrentUpdate unless it is stored at `version`."""
        ...

    def search_links(
        self, end: LinkEnd, item_id: str, *, after: str | None, limit: int
    ) -> Found[Link] | None:
        """The links whose `end` (source, target, or either) is item_id, in creation order,
        at most `limit`, after the link `after`; None when no link has the id `after`."""
        ...

    def get_processed(self, message_id: str) -> ProcessedCommand | None: ...

    def prefetch_processed(self, message_ids: list[str]) -> None:
        """Say that get_processed will be asked for these: a store whose every read is a
        round trip reads them at once. get_processed's answers stay what they would be."""
        ...

    def add_processed(self, processed: ProcessedCommand) -> None:
        """Record a command; raise ConcurrentUpdate if its message_id is recorded already."""
        ...

    def forget_processed(self, message_id: str, *, before: float) -> None:
        """Remove message_id's record if it was made before `before` (it has expired);
        a later one stays (another worker may just have made it)."""
        ...

    def prune_processed(self, *, before: float, limit: int) -> int:
        """Remove the records made before `before`, oldest first, at most `limit` of them
        (so that one call costs a bounded time); how many were removed."""
        ...

    def add_outbox(self, event: OutboxEvent) -> None:
        """Keep an event until the broker confirms it; an id already there is kept as it is."""
        ...

    def get_outbox(self, event_id: str) -> OutboxEvent | None: ...

    def remove_outbox(self, event_ids: list[str]) -> None: ...

    def savepoint(self) -> AbstractContextManager[None]:
        """Undo everything done inside the block if it raises (and re-raise)."""
        ...


class ItemStore(Protocol):
    """Where the worker keeps items, processed commands and the outbox; one per backend."""

    url: str

    @property
    def keeps_nul(self) -> bool:
        """Whether ids, user ids and message_ids may contain NUL (U+0000), as properties
        always may. PostgreSQL text cannot hold it: the worker refuses such a user id, and
        such a message_id for a command that is recorded under it (400, before serving)."""
        ...

    def transaction(self, *, deferred: bool = False) -> AbstractContextManager[StoreTransaction]:
        """Commit on normal exit, roll back if the block raises.

        `deferred`: the store may hold back the writes made outside a savepoint and send
        them together later (before a savepoint, a search, the commit), so that a write's
        StoreError may come from any later call or from the end of the block. It is for a
        caller that then rolls back and runs the whole block again (the command role);
        reads by key and searches see the transaction's own writes either way."""
        ...

    def pending_outbox(self, limit: int = 1000) -> list[OutboxEvent]:
        """Events committed but not yet confirmed by the broker, oldest first."""
        ...

    def items(self) -> Iterator[StoredItem]:
        """Every item, ordered by id."""
        ...

    def count_items(self) -> int: ...

    def links(self) -> Iterator[StoredLink]:
        """Every link, ordered by id."""
        ...

    def count_links(self) -> int: ...

    def oldest_processed(self) -> float | None:
        """When the oldest processed-command record was made; None when there is none."""
        ...

    def ping(self) -> None:
        """Raise unless the store answers."""
        ...

    def deployment_key(self) -> bytes:
        """This store's random 32-byte key, the same for every worker that uses the store:
        created on first use, atomically (of two workers asking at once, both get the one
        that was kept), never changed afterwards, not removed by clear(). Tokens enter
        event ids only through a keyed hash under it."""
        ...

    def clear(self) -> None:
        """Remove every item, link, processed command and outbox event: an empty store again
        (the deployment key stays)."""
        ...

    def close(self) -> None: ...


# (id, created_at, created_by, properties as compact UTF-8 JSON, version): an item as
# restore hands it to a bulk load, already encoded, so that nothing is built twice.
ItemRow = tuple[str, str, str, bytes, int]


@runtime_checkable
class BulkItemLoader(Protocol):
    """An optional fast path for restore; a backend without it is restored through
    ordinary transactions (add at version 1, then replace up to the version)."""

    def load_items(self, rows: Iterable[ItemRow]) -> None:
        """Store each row's item at its version as given, replacing any item with that id,
        in one transaction. Restore gives the rows in id order and has already checked
        the versions against the log."""
        ...
