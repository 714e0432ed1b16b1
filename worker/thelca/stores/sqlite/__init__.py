"""The default item store: one SQLite file, WAL, one writer process.

Durability matches the event log's: synchronous=FULL fsyncs the WAL once per
commit, and the worker commits once per batch of commands (group commit).
A lock file next to the database makes a second writer refuse to start
instead of interleaving with the first.

Searches are answered from indexes. Links: by (source, created_at, id) and
(target, created_at, id). Items: a side table, item_properties, holds one row
per top-level property, (key, canonical JSON of the value, created_at, item id),
under one index in that order, so that the items with one property equal to a
value come in creation order straight from the index; the other keys of a
`where` are each one look-up in the same index, which walks forward through
their range as the first goes (no second index by item: it halved the speed of
a two-key search; an item's rows are found from its properties). A database of
the previous release gets the new tables and indexes, and its items'
properties indexed, when a writer opens it (PRAGMA user_version says which it
is).

The package: store.py opens the file and holds the store's own operations (reads,
the bulk load), transaction.py one transaction's queries, schema.py the tables and
their migrations, rows.py the conversions of rows and of sqlite3's errors.
"""

from __future__ import annotations

from thelca.stores.sqlite.store import SQLiteStore

__all__ = ["SQLiteStore"]
