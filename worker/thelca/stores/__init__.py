"""Item stores behind one interface: memory, SQLite and PostgreSQL."""

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
    "many_writers",
    "open_store",
]

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def open_store(url: str, *, writer: bool = True) -> ItemStore:
    """The store a URL names: `memory:`, `sqlite:///relative.db`, `sqlite:////abs.db`,
    `postgresql://user@host:5432/dbname?schema=thelca`."""
    if url in ("memory:", "memory://"):
        from thelca.stores.memory import MemoryStore

        return MemoryStore()
    if url.startswith("sqlite:///"):
        from thelca.stores.sqlite import SQLiteStore

        path = url.removeprefix("sqlite:///")
        if not path:
            raise ConfigurationError("sqlite store URL needs a path: sqlite:///thelca.db")
        return SQLiteStore(path, writer=writer)
    if url.startswith(POSTGRES_SCHEMES):
        return _open_postgres(url, writer=writer)
    raise ConfigurationError(
        f"unknown store URL scheme in {url.split(':', 1)[0]!r}: "
        "use sqlite:///PATH, memory: or postgresql://..."
    )


def many_writers(url: str) -> bool:
    """Whether several worker processes may share the store a URL names."""
    return url.startswith(POSTGRES_SCHEMES)


def _open_postgres(url: str, *, writer: bool) -> ItemStore:
    try:
        from thelca.stores.postgres import PostgresStore, split_schema
    except ImportError as error:
        raise ConfigurationError(
            f"the PostgreSQL store needs psycopg 3 ({error}): pip install 'psycopg[binary]'"
        ) from None
    try:
        split_schema(url)
    except ValueError as error:
        raise ConfigurationError(str(error)) from None
    return PostgresStore(url, writer=writer)
