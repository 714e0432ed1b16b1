"""How a fold's changed items reach a store: one bulk load, or ordinary transactions;
and its links, through ordinary transactions."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import orjson

from thelca.domain.model import StoredLink
from thelca.restore.fold import Changed, Writer
from thelca.restore.items import item_of
from thelca.stores.base import BulkItemLoader, ItemRow, ItemStore

TRANSACTION_ITEMS = 1000  # per transaction on a store without the bulk load


def bulk_writer(store: BulkItemLoader) -> Writer:
    """Each changed item as one row at its final version, all in one transaction."""

    def write(changed: Changed, versions: dict[str, int], flushed: dict[str, int]) -> None:
        loads, dumps = orjson.loads, orjson.dumps

        def rows() -> Iterator[ItemRow]:
            for item_id in sorted(changed):
                value = loads(changed[item_id])["value"]
                yield (item_id, value["created_at"], value["created_by"],
                       dumps(value.get("properties") or {}), versions[item_id])

        store.load_items(rows())

    return write


def transaction_writer(store: ItemStore) -> Writer:
    """Through the ordinary interface: add at version 1, then replace up to the version."""

    def write(changed: Changed, versions: dict[str, int], flushed: dict[str, int]) -> None:
        pending = list(changed.items())
        for start in range(0, len(pending), TRANSACTION_ITEMS):
            with store.transaction() as tx:
                for item_id, raw in pending[start:start + TRANSACTION_ITEMS]:
                    item = item_of(raw)
                    written = flushed.get(item_id, 0)
                    if written == 0:
                        tx.add_item(item)
                    for version in range(max(2, written + 1), versions[item_id] + 1):
                        tx.replace_item(item, version)

    return write


def write_links(store: ItemStore, links: Iterable[StoredLink]) -> int:
    """Each link added at version 1 and replaced up to its version; how many were written."""
    written = 0
    pending = list(links)
    for start in range(0, len(pending), TRANSACTION_ITEMS):
        with store.transaction() as tx:
            for stored in pending[start:start + TRANSACTION_ITEMS]:
                tx.add_link(stored.link)
                for version in range(2, stored.version + 1):
                    tx.replace_link(stored.link, version)
                written += 1
    return written
