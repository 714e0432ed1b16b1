"""Round trips to PostgreSQL per command kind and per batch: counted, not timed.

    python benchmarks/pg_roundtrips.py                 # batches of 1 and of 200
    python benchmarks/pg_roundtrips.py --batch 50

The worker's command role runs in this process (no broker) on a PostgreSQL
schema of its own, handed batches as the batch consumer hands them over (the
events of one batch confirmed before the next, so that each batch removes the
previous one's from the outbox), and every wait of the store's connection is
counted: a round trip is a wait in which the client had to read the server's
answer; a statement is a query sent. Timings on a shared machine are noise;
these counts are not. THELCA_TEST_POSTGRES_URL names the database
(default postgresql://postgres@127.0.0.1:5432/test); the schema is dropped
afterwards.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import orjson
import psycopg
from bench.systems import postgres_schema
from psycopg._connection_base import BaseConnection
from psycopg._cursor_base import BaseCursor

from thelca.authority.test_only import TestOnlyAuthority
from thelca.roles.commands import CommandRole
from thelca.roles.messages import Incoming, Outgoing
from thelca.stores.postgres import PostgresStore
from thelca_client.contract import Names, authorization_headers

READABLE = 1  # the bit of a wait's answer that says the server's answer can be read


@dataclass
class Counts:
    round_trips: int = 0
    statements: int = 0


COUNTS = Counts()


def _counted(gen: Generator[Any, Any, Any]) -> Generator[Any, Any, Any]:
    """The generator as it is, noting whether it ever waited for something to read."""
    read = False
    try:
        wanted = next(gen)
        while True:
            ready = yield wanted
            read = read or bool(int(ready or 0) & READABLE)
            wanted = gen.send(ready)
    except StopIteration as done:
        return done.value
    finally:
        COUNTS.round_trips += read


def install_counters() -> None:
    """Count round trips (Connection.wait) and statements (what psycopg sends)."""
    wait = psycopg.Connection.wait
    send = BaseCursor._execute_send
    send_prepared = BaseCursor._send_query_prepared
    command = BaseConnection._exec_command

    def counting_wait(self: Any, gen: Any, *args: Any, **kwargs: Any) -> Any:
        return wait(self, _counted(gen), *args, **kwargs)

    def counting_send(self: Any, *args: Any, **kwargs: Any) -> Any:
        COUNTS.statements += 1
        return send(self, *args, **kwargs)

    def counting_send_prepared(self: Any, *args: Any, **kwargs: Any) -> Any:
        COUNTS.statements += 1
        return send_prepared(self, *args, **kwargs)

    def counting_command(self: Any, *args: Any, **kwargs: Any) -> Any:
        COUNTS.statements += 1
        return command(self, *args, **kwargs)

    psycopg.Connection.wait = counting_wait  # type: ignore[method-assign]
    BaseCursor._execute_send = counting_send  # type: ignore[method-assign]
    BaseCursor._send_query_prepared = counting_send_prepared  # type: ignore[method-assign]
    BaseConnection._exec_command = counting_command  # type: ignore[method-assign]


class Bench:
    """A command role on the store, and the items it made, to read and update."""

    def __init__(self, store: PostgresStore) -> None:
        self.role = CommandRole(store, TestOnlyAuthority(), Names("pg-roundtrips"),
                                max_body=1 << 20)
        self.items: list[dict[str, Any]] = []
        self.step = 0

    def message(self, body: dict[str, Any]) -> Incoming:
        self.step += 1
        return Incoming(orjson.dumps(body), message_id=f"m-{self.step}", reply_to="client",
                        correlation_id=f"c-{self.step}", headers=authorization_headers("bench"))

    def create(self) -> Incoming:
        return self.message({"command": "create", "item": {"properties": {"type": "STORY"}}})

    def read(self) -> Incoming:
        item = self.items[self.step % len(self.items)]
        return self.message({"command": "read", "id": item["id"]})

    def update(self) -> Incoming:
        item = self.items[self.step % len(self.items)]
        return self.message({"command": "update", "id": item["id"],
                             "item": {**item, "properties": {"n": self.step}}})

    def mix(self) -> Incoming:
        """1 create : 1 read : 2 updates, as the pipeline benchmark's mix."""
        return (self.create, self.read, self.update, self.update)[self.step % 4]()

    def run(self, make: Callable[[], Incoming], size: int) -> Counts:
        """One batch of `size` commands (after the previous batch's events were confirmed)."""
        batch = [make() for _ in range(size)]
        before = Counts(COUNTS.round_trips, COUNTS.statements)
        out = self.role.handle(batch)
        counted = Counts(COUNTS.round_trips - before.round_trips,
                         COUNTS.statements - before.statements)
        self.confirm(out)
        return counted

    def confirm(self, out: list[Outgoing]) -> None:
        for message in out:
            reply = orjson.loads(message.body) if not message.exchange else {}
            if reply.get("status") not in (None, 200):
                raise SystemExit(f"a command failed: {reply}")
            if reply.get("item") and reply.get("version") == 1:
                self.items.append(reply["item"])
        self.role.confirmed([m for m in out if m.exchange])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=200, help="the large batch (default 200)")
    args = parser.parse_args()
    install_counters()
    with postgres_schema() as url:
        store = PostgresStore(url)
        try:
            bench = Bench(store)
            for _ in range(3):  # the deployment key, prepared statements, items to update
                bench.run(bench.create, args.batch)
            print(f"{'command':<8} {'batch of 1':>22}   {f'batch of {args.batch}':>22}"
                  f"   {'per command':>22}")
            print(f"{'':<8} {'round trips':>11} {'statements':>10}   {'round trips':>11} "
                  f"{'statements':>10}   {'round trips':>11} {'statements':>10}")
            for name in ("create", "read", "update", "mix"):
                make = getattr(bench, name)
                one = bench.run(make, 1)
                many = bench.run(make, args.batch)
                print(f"{name:<8} {one.round_trips:>11} {one.statements:>10}   "
                      f"{many.round_trips:>11} {many.statements:>10}   "
                      f"{many.round_trips / args.batch:>11.2f} "
                      f"{many.statements / args.batch:>10.2f}")
        finally:
            store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
