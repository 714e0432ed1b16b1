"""Item stores behind one interface: memory, SQLite and (later) PostgreSQL."""

from __future__ import annotations

from thelca.errors import ConfigurationError
from thelca.stores.base import (
    BulkItemLoader,
    ItemStore,
    OutboxEvent,
    ProcessedCommand,
    StoreTransaction,
)

__all__ = [
    "BulkItemLoader",
    "ItemStore",
    "OutboxEvent",
    "ProcessedCommand",
    "StoreTransaction",
    "open_store",
]


def open_store(url: str, *, writer: bool = True) -> ItemStore:
    """The store a URL names: `memory:`, `sqlite:///relative.db`, `sqlite:////abs.db`."""
    if url in ("memory:", "memory://"):
        from thelca.stores.memory import MemoryStore

        return MemoryStore()
    if url.startswith("sqlite:///"):
        from thelca.stores.sqlite import SQLiteStore

        path = url.removeprefix("sqlite:///")
        if not path:
            raise ConfigurationError("sqlite store URL needs a path: sqlite:///thelca.db")
        return SQLiteStore(path, writer=writer)
    if url.startswith(("postgresql://", "postgres://")):
        raise ConfigurationError("the PostgreSQL store is not available yet (see issue 7)")
    raise ConfigurationError(
        f"unknown store URL scheme in {url.split(':', 1)[0]!r}: "
        "use sqlite:///PATH, memory: or postgresql://..."
    )
