"""An item store in a dict: for tests and for trying thelca; it forgets on exit.

Its searches look at every item (or link): it is for small stores. SQLite and
PostgreSQL answer them from indexes.
"""

from __future__ import annotations

import copy
import heapq
import secrets
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import orjson

from thelca.domain.model import Item, Link, StoredItem, StoredLink
from thelca.errors import ConcurrentUpdate
from thelca.stores.base import (
    DEPLOYMENT_KEY_BYTES,
    Found,
    ItemRow,
    OutboxEvent,
    ProcessedCommand,
)
from thelca.stores.matching import canonical, matches
from thelca_client.contract import JSON, LinkEnd

_MISSING: Any = object()


class MemoryStore:
    """Items, links, processed commands and the outbox in dicts, under one lock."""

    url = "memory:"
    keeps_nul = True

    def __init__(self) -> None:
        self._items: dict[str, StoredItem] = {}
        self._links: dict[str, StoredLink] = {}
        self._processed: dict[str, ProcessedCommand] = {}
        # (created_at, message_id) of every record, oldest first; an entry whose record
        # is gone or was made again (a rollback, forget_processed) is skipped when met.
        self._by_age: list[tuple[float, str]] = []
        self._outbox: dict[str, OutboxEvent] = {}  # dicts keep insertion order: oldest first
        self._key: bytes | None = None
        self._lock = threading.RLock()

    @contextmanager
    def transaction(self, *, deferred: bool = False) -> Iterator[_MemoryTransaction]:
        # Every write is made at once (deferred allows holding them back, never requires it).
        with self._lock:
            tx = _MemoryTransaction(self)
            try:
                yield tx
            except BaseException:
                tx.rollback_to(0)
                raise

    def pending_outbox(self, limit: int = 1000) -> list[OutboxEvent]:
        with self._lock:
            return list(self._outbox.values())[:limit]

    def items(self) -> Iterator[StoredItem]:
        with self._lock:
            snapshot = sorted(self._items.values(), key=lambda s: s.item.id)
        yield from (_copy(stored) for stored in snapshot)

    def count_items(self) -> int:
        return len(self._items)

    def links(self) -> Iterator[StoredLink]:
        with self._lock:
            snapshot = sorted(self._links.values(), key=lambda s: s.link.id)
        yield from (_copy_link(stored) for stored in snapshot)

    def count_links(self) -> int:
        return len(self._links)

    def oldest_processed(self) -> float | None:
        with self._lock:
            return min((p.created_at for p in self._processed.values()), default=None)

    def ping(self) -> None:
        return None

    def deployment_key(self) -> bytes:
        with self._lock:
            if self._key is None:
                self._key = secrets.token_bytes(DEPLOYMENT_KEY_BYTES)
            return self._key

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._links.clear()
            self._processed.clear()
            self._by_age.clear()
            self._outbox.clear()

    def _keep_again(self, record: ProcessedCommand) -> None:
        self._processed[record.message_id] = record
        heapq.heappush(self._by_age, (record.created_at, record.message_id))

    def load_items(self, rows: Iterable[ItemRow]) -> None:
        with self._lock:
            for item_id, created_at, created_by, properties, version in rows:
                item = Item(item_id, created_at, created_by, orjson.loads(properties))
                self._items[item_id] = StoredItem(item, version)

    def close(self) -> None:
        return None


class _MemoryTransaction:
    """Changes apply at once and are undone from a log on rollback."""

    def __init__(self, store: MemoryStore) -> None:
        self._store = store
        self._undo: list[Callable[[], None]] = []

    def _set(self, table: dict[str, Any], key: str, value: Any) -> None:
        old = table.get(key, _MISSING)
        self._undo.append(partial(_restore, table, key, old))
        table[key] = value

    def rollback_to(self, mark: int) -> None:
        while len(self._undo) > mark:
            self._undo.pop()()

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        mark = len(self._undo)
        try:
            yield
        except BaseException:
            self.rollback_to(mark)
            raise

    def get_item(self, item_id: str) -> StoredItem | None:
        stored = self._store._items.get(item_id)
        return None if stored is None else _copy(stored)

    def add_item(self, item: Item) -> StoredItem:
        if item.id in self._store._items:
            raise ConcurrentUpdate(f"item {item.id} exists already")
        stored = StoredItem(item, 1)
        self._set(self._store._items, item.id, _copy(stored))
        return stored

    def replace_item(self, item: Item, version: int) -> StoredItem:
        current = self._store._items.get(item.id)
        if current is None or current.version != version - 1:
            raise ConcurrentUpdate(f"item {item.id} changed since it was read")
        stored = StoredItem(item, version)
        self._set(self._store._items, item.id, _copy(stored))
        return stored

    def has_item(self, item_id: str) -> bool:
        return item_id in self._store._items

    def search_items(self, where: JSON, *, after: str | None, limit: int) -> Found[Item] | None:
        items = self._store._items
        if after is not None and after not in items:
            return None
        wanted = {key: canonical(value) for key, value in where.items()}
        found = [s.item for s in items.values() if matches(s.item.properties, wanted)]
        start = None if after is None else _position(items[after].item)
        return _page(found, _position, start, limit, _copy_item)

    def get_link(self, link_id: str) -> StoredLink | None:
        stored = self._store._links.get(link_id)
        return None if stored is None else _copy_link(stored)

    def add_link(self, link: Link) -> StoredLink:
        if link.id in self._store._links:
            raise ConcurrentUpdate(f"link {link.id} exists already")
        stored = StoredLink(link, 1)
        self._set(self._store._links, link.id, _copy_link(stored))
        return stored

    def replace_link(self, link: Link, version: int) -> StoredLink:
        current = self._store._links.get(link.id)
        if current is None or current.version != version - 1:
            raise ConcurrentUpdate(f"link {link.id} changed since it was read")
        stored = StoredLink(link, version)
        self._set(self._store._links, link.id, _copy_link(stored))
        return stored

    def delete_link(self, link_id: str, version: int) -> None:
        links = self._store._links
        current = links.get(link_id)
        if current is None or current.version != version:
            raise ConcurrentUpdate(f"link {link_id} changed since it was read")
        self._undo.append(partial(_restore, links, link_id, current))
        del links[link_id]

    def search_links(
        self, end: LinkEnd, item_id: str, *, after: str | None, limit: int
    ) -> Found[Link] | None:
        links = self._store._links
        if after is not None and after not in links:
            return None
        found = [s.link for s in links.values()
                 if (end != "target" and s.link.source == item_id)
                 or (end != "source" and s.link.target == item_id)]
        start = None if after is None else _link_position(links[after].link)
        return _page(found, _link_position, start, limit, _copy_one_link)

    def prefetch_processed(self, message_ids: list[str]) -> None:
        return None  # a read here costs no round trip

    def prefetch_items(self, item_ids: list[str]) -> None:
        return None

    def get_processed(self, message_id: str) -> ProcessedCommand | None:
        return self._store._processed.get(message_id)

    def add_processed(self, processed: ProcessedCommand) -> None:
        if processed.message_id in self._store._processed:
            raise ConcurrentUpdate(f"message_id {processed.message_id} is recorded already")
        self._set(self._store._processed, processed.message_id, processed)
        heapq.heappush(self._store._by_age, (processed.created_at, processed.message_id))

    def forget_processed(self, message_id: str, *, before: float) -> None:
        record = self._store._processed.get(message_id)
        if record is not None and record.created_at < before:
            self._remove_processed(record)

    def prune_processed(self, *, before: float, limit: int) -> int:
        by_age, records = self._store._by_age, self._store._processed
        removed = 0
        while by_age and removed < limit and by_age[0][0] < before:
            created_at, message_id = heapq.heappop(by_age)
            record = records.get(message_id)
            if record is not None and record.created_at == created_at:
                self._remove_processed(record)
                removed += 1
        return removed

    def _remove_processed(self, record: ProcessedCommand) -> None:
        """Remove a record; undone, it is back in the table and in the age order."""
        del self._store._processed[record.message_id]
        self._undo.append(partial(self._store._keep_again, record))

    def add_outbox(self, event: OutboxEvent) -> None:
        if event.event_id not in self._store._outbox:
            self._set(self._store._outbox, event.event_id, event)

    def get_outbox(self, event_id: str) -> OutboxEvent | None:
        return self._store._outbox.get(event_id)

    def remove_outbox(self, event_ids: list[str]) -> None:
        outbox = self._store._outbox
        if not any(event_id in outbox for event_id in event_ids):
            return
        # Undo restores the whole outbox: putting entries back one by one would
        # move them to the end and change the order in which they are republished.
        before = dict(outbox)
        self._undo.append(partial(_replace_all, outbox, before))
        for event_id in event_ids:
            outbox.pop(event_id, None)


def _copy(stored: StoredItem) -> StoredItem:
    return StoredItem(_copy_item(stored.item), stored.version)


def _copy_item(item: Item) -> Item:
    return Item(item.id, item.created_at, item.created_by, copy.deepcopy(item.properties))


def _copy_link(stored: StoredLink) -> StoredLink:
    return StoredLink(_copy_one_link(stored.link), stored.version)


def _copy_one_link(link: Link) -> Link:
    return Link(link.id, link.created_at, link.created_by, link.source, link.target,
                copy.deepcopy(link.properties))


def _position(item: Item) -> tuple[str, str]:
    return item.created_at, item.id


def _link_position(link: Link) -> tuple[str, str]:
    return link.created_at, link.id


def _page(
    found: list[Any],
    position: Callable[[Any], tuple[str, str]],
    start: tuple[str, str] | None,
    limit: int,
    copied: Callable[[Any], Any],
) -> Found[Any]:
    """The page of `found` after `start`, in creation order: at most limit, and whether
    more follow."""
    ordered = sorted((x for x in found if start is None or position(x) > start), key=position)
    return Found([copied(x) for x in ordered[:limit]], len(ordered) > limit)


def _replace_all(table: dict[str, Any], contents: dict[str, Any]) -> None:
    table.clear()
    table.update(contents)


def _restore(table: dict[str, Any], key: str, old: Any) -> None:
    if old is _MISSING:
        table.pop(key, None)
    else:
        table[key] = old
