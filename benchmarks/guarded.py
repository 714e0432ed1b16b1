"""The guarded floor: the floor's work with thelca's guarantees, and none of thelca's code.

What the guarantees alone cost a reply one command at a time, so that the
ladder can tell the price of the guarantees from the price of thelca. The
worker does what benchmarks/floor.py does, plus exactly what thelca keeps:

- the commands come from a durable quorum queue declared with the arguments
  thelca gives its own (dead letters at least once, reject-publish, a
  delivery limit), persistent;
- a command's item, its processed-command record (keyed by message_id, which
  answers a duplicate) and its event in an outbox are written in one
  transaction: SQLite in WAL mode with synchronous=FULL (an fsync per
  commit), or PostgreSQL (BEGIN with the record's read, then the writes
  pipelined with COMMIT: two round trips, as thelca's);
- the reply goes out as soon as the commit returns, then the event, persistent,
  to a durable fanout exchange bound to a quorum queue, under publisher
  confirms; the command is acked once the event is confirmed; confirmed events
  leave the outbox a hundred at a time;
- the logger appends each batch of events, fsyncs, then acks (floor.py's
  logger, on the quorum queue).

It keeps no metrics, no hash chain, no checks beyond the token's prefix; it
is a measuring stick, not a way to run anything. One command at a time only:
its blocking confirms make each event wait for its own (see the field notes).

Run as `python guarded.py worker PREFIX STORE [--no-event]` (STORE a file
path, or a PostgreSQL URL with a schema=NAME query; --no-event publishes no
event, to show what the event costs the reply: a measurement, not a
guarantee kept) or `python guarded.py logger PREFIX FILE`; each stops on SIGINT.
"""

from __future__ import annotations

import contextlib
import sqlite3
import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import floor
import orjson
import pika

URL = floor.URL
OUTBOX_REMOVAL = 100  # confirmed events leave the outbox this many at a time, as thelca's
TABLES = ("CREATE TABLE IF NOT EXISTS items (id TEXT PRIMARY KEY, body TEXT NOT NULL)",
          "CREATE TABLE IF NOT EXISTS processed (message_id TEXT PRIMARY KEY, reply TEXT)",
          "CREATE TABLE IF NOT EXISTS outbox (id TEXT PRIMARY KEY, body TEXT NOT NULL)")
QUORUM = {"x-queue-type": "quorum"}

# A store's one transaction: (message_id, item, reply, event) -> the recorded reply of an
# earlier command under that message_id, or None once the item, record and event are in.
Transaction = Callable[[str, tuple[str, str], str, tuple[str, str]], str | None]
Removal = Callable[[list[str]], None]


def declare(channel: Any, prefix: str) -> None:
    dead = {"x-dead-letter-exchange": f"{prefix}.dead",
            "x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}
    channel.exchange_declare(f"{prefix}.dead", exchange_type="fanout", durable=True)
    channel.exchange_declare(f"{prefix}.events", exchange_type="fanout", durable=True)
    channel.queue_declare(f"{prefix}.commands", durable=True,
                          arguments={**QUORUM, **dead, "x-delivery-limit": 20})
    channel.queue_declare(f"{prefix}.events.log", durable=True,
                          arguments={**QUORUM, **dead, "x-delivery-limit": 1000})
    channel.queue_bind(f"{prefix}.events.log", f"{prefix}.events")


def sqlite_store(path: str) -> tuple[Transaction, Removal]:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    for table in TABLES:
        db.execute(table)

    def transaction(message_id: str, item: tuple[str, str], reply: str,
                    event: tuple[str, str]) -> str | None:
        db.execute("BEGIN IMMEDIATE")
        found = db.execute("SELECT reply FROM processed WHERE message_id = ?",
                           (message_id,)).fetchone()
        if found is None:
            db.execute("INSERT INTO items VALUES (?, ?)", item)
            db.execute("INSERT INTO processed VALUES (?, ?)", (message_id, reply))
            db.execute("INSERT INTO outbox VALUES (?, ?)", event)
        db.execute("COMMIT")
        return None if found is None else str(found[0])

    def removal(event_ids: list[str]) -> None:
        db.execute("BEGIN IMMEDIATE")
        db.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in event_ids])
        db.execute("COMMIT")

    return transaction, removal


def postgres_store(url: str) -> tuple[Transaction, Removal]:
    import psycopg

    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    schema = query.pop("schema")
    conn = psycopg.connect(urlunsplit(parts._replace(query=urlencode(query))), autocommit=True)
    conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    conn.execute(f'SET search_path TO "{schema}"')
    for table in TABLES:
        conn.execute(table)
    conn.autocommit = False

    def transaction(message_id: str, item: tuple[str, str], reply: str,
                    event: tuple[str, str]) -> str | None:
        with conn.pipeline():
            found = conn.execute("SELECT reply FROM processed WHERE message_id = %s",
                                 (message_id,), prepare=True).fetchone()  # BEGIN, 1st trip
            if found is None:
                conn.execute("INSERT INTO items VALUES (%s, %s)", item, prepare=True)
                conn.execute("INSERT INTO processed VALUES (%s, %s)", (message_id, reply),
                             prepare=True)
                conn.execute("INSERT INTO outbox VALUES (%s, %s)", event, prepare=True)
            conn.commit()  # the writes and COMMIT: the 2nd trip
        return None if found is None else str(found[0])

    def removal(event_ids: list[str]) -> None:
        with conn.transaction():
            conn.execute("DELETE FROM outbox WHERE id = ANY(%s)", (event_ids,))

    return transaction, removal


def worker(prefix: str, store: str, events_on: bool = True) -> None:
    transaction, removal = (postgres_store(store) if store.startswith("postgresql:")
                            else sqlite_store(store))
    connection = pika.BlockingConnection(pika.URLParameters(URL))
    channel = connection.channel()
    declare(channel, prefix)
    channel.basic_qos(prefetch_count=200)
    events = connection.channel()
    events.confirm_delivery()  # each event's publish returns once the broker confirmed it
    confirmed: list[str] = []

    def on_message(ch: Any, method: Any, properties: Any, body: bytes) -> None:
        command: dict[str, Any] = orjson.loads(body)
        token = (properties.headers or {}).get("Authorization", "")[7:]
        user, now = f"a-test-only-id-{token}", datetime.now(UTC).isoformat()
        item_id = str(uuid.uuid4())
        item = {"id": item_id, "created_at": now, "created_by": user,
                "properties": command.get("item", {}).get("properties") or {}}
        reply = orjson.dumps({"status": 200, "item": item, "version": 1}).decode()
        event_id = str(uuid.uuid4())
        event = orjson.dumps({"time": now, "type": "Item created", "user": user,
                              "value": item, "id": event_id})
        earlier = transaction(properties.message_id, (item_id, orjson.dumps(item).decode()),
                              reply, (event_id, event.decode()))
        if properties.reply_to:
            ch.basic_publish("", properties.reply_to, (earlier or reply).encode(),
                             pika.BasicProperties(correlation_id=properties.correlation_id,
                                                  headers={"status": 200}))
        if earlier is None and events_on:
            events.basic_publish(f"{prefix}.events", "", event,
                                 pika.BasicProperties(type="Item created", delivery_mode=2,
                                                      message_id=event_id))
            confirmed.append(event_id)
        ch.basic_ack(method.delivery_tag)
        if len(confirmed) >= OUTBOX_REMOVAL:
            removal(confirmed)
            confirmed.clear()

    channel.basic_consume(f"{prefix}.commands", on_message)
    with contextlib.suppress(KeyboardInterrupt):
        channel.start_consuming()


if __name__ == "__main__":
    if sys.argv[1] == "worker":
        worker(sys.argv[2], sys.argv[3], events_on="--no-event" not in sys.argv[4:])
    else:
        floor.logger(sys.argv[2], sys.argv[3], declared_by=declare)
