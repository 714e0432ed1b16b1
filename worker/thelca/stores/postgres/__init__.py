"""The PostgreSQL item store: many worker processes on one database.

`postgresql://user@host:5432/dbname?schema=thelca` (any other libpq parameter
may follow; a password is better kept in PGPASSWORD or ~/.pgpass). The schema,
`thelca` unless `?schema=` names another, and its tables are created if
missing.

How many writers stay correct:

- READ COMMITTED, set explicitly (whatever the server's default): every
  statement sees what other workers committed before it, so a command that
  lost a race and is retried inside its savepoint reads the winner's state.
  REPEATABLE READ would show the retry the same old snapshot and fail it again.
- `get_item` locks the row (SELECT ... FOR UPDATE): a second worker reading
  the same item waits until the first commits and then reads the newer
  version, so updates of one item queue up instead of failing; `replace_item`
  still writes only `WHERE version = expected` and raises ConcurrentUpdate
  when it finds another, so no update is ever lost.
- `processed.message_id` is the primary key and is inserted with ON CONFLICT
  DO NOTHING: of two workers recording one message_id at once, the second
  waits for the first and then gets ConcurrentUpdate; the handler rolls its
  savepoint back (its item change with it) and retries, and the retry finds the
  first worker's record and answers with its reply.
- A deadlock between two batches (each holds an item the other wants) cannot
  be cured by retrying one command: the batch would wait for the same lock
  again. It raises StoreUnavailable, which rolls the whole batch back and has
  it retried; the other batch goes on.
- A deferred transaction (the command role's first run of a batch, without
  savepoints: deferred.py, held.py) holds its writes back and sends them as
  one statement (a WITH part per kind; one row as values, more as binary
  arrays through unnest), pipelined with the COMMIT (pipelined.py).
  The same checks hold: get_item still locks its row when it reads it, an
  update is sent with the version it was read at and must find it, a new item
  or record must be inserted (ON CONFLICT DO NOTHING, counted in PostgreSQL by
  thelca_check_written, which fails the transaction before its COMMIT): any
  shortfall is a ConcurrentUpdate, and the role runs the batch again with
  savepoints. The batch's processed records are read in one statement
  (prefetch_processed), sent with its read of its items and the BEGIN; one
  that another worker keeps meanwhile is found when ours is inserted.
- Outbox rows are removed with SKIP LOCKED: two workers that both published a
  pending event (every worker republishes the outbox when it starts) both
  remove it without waiting for each other. The body of an event id is the
  same whoever publishes it, so removing it after any confirm is right.

Properties are stored as `json`, not `jsonb`: jsonb cannot hold `\\u0000` in a
string, which is valid JSON and which thelca keeps; `json` keeps the text as
written and is still readable with PostgreSQL's JSON operators.

Search: beside `properties`, each item has `search`, the same properties as
jsonb with every string mapped one to one onto one without NUL
(thelca.stores.matching.jsonb_safe), under a GIN index (jsonb_path_ops): a
`where` is looked up by containment (`search @> where`), and each key then
checked for equality (`search -> key = value`), since containment also takes
{"tags": ["a", "b"]} for {"tags": ["a"]}. Creation order is (created_at, id)
in byte order (COLLATE "C"), from an index when `where` is empty. Links have
indexes on (source, created_at, id), (target, created_at, id) and (created_at,
id). A schema of the previous release gets the column, its values and the
indexes when the first writer opens it, under the schema lock: stop the
previous release's workers first, since an item they write afterwards has no
`search` and no search finds it.

The package: store.py holds the connection and the store's own operations (reads,
the bulk load), transaction.py one transaction's queries, deferred.py a deferred
transaction's held writes (their statements in held.py), schema.py the tables and
their migrations, rows.py the conversions of rows and of psycopg's errors, urls.py
the store URL's schema parameter and its redaction.
"""

from __future__ import annotations

from thelca.stores.postgres.store import PostgresStore
from thelca.stores.postgres.urls import DEFAULT_SCHEMA, redacted, split_schema

__all__ = ["DEFAULT_SCHEMA", "PostgresStore", "redacted", "split_schema"]
