"""The store stays flat: a long run against a real worker with a deduplication window.

    python benchmarks/store_growth.py                    # 300,000 commands, window 60 s
    python benchmarks/store_growth.py --quick            # 30,000 commands, window 10 s
    python benchmarks/store_growth.py --store postgres   # the same on PostgreSQL
    python benchmarks/store_growth.py --store postgres --vacuum   # vacuumed as autovacuum would

A real `thelca worker` and `thelca logger` run with THELCA_DEDUP_WINDOW set to
the window. The load first creates a few items, then sends updates of them
(each remembered under its message_id, none making the store hold more items),
with a bounded number awaiting their reply. Every few seconds it prints the
commands answered so far, the processed-command records, the outbox's rows and
the store's size on disk (the SQLite file with its WAL; on PostgreSQL
pg_total_relation_size of `processed`, whose pruned rows' space is reused only
once (auto)vacuum has seen them: the run says whether autovacuum is on, and
--vacuum vacuums the table before each sample where it is off). After
the first window the records should stay near rate x window, pruned as fast
as they come: the run exits 1 when a sample taken after the first window (and
a few seconds of slack for the pruning to catch up) holds more than rate x
window x 1.5 records, where rate x window is what the window before that
sample answered (the load's pace varies on a shared machine).
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pika
import psycopg
from bench.load import URL
from bench.processes import delete, start, stop, wait_consumed
from psycopg import sql

PG_URL = os.environ.get("THELCA_TEST_POSTGRES_URL") or "postgresql://postgres@127.0.0.1:5432/test"
HEADERS = {"Authorization": "Bearer growth"}
ITEMS = 100  # the items the updates go round
IN_FLIGHT = 100  # commands awaiting their reply at once
HEADROOM = 1.5  # how many windows' worth of records a sample may hold
SLACK = 5.0  # seconds after the first window before the records are held to it


@dataclass
class Sample:
    seconds: float
    answered: int
    processed: int
    outbox: int
    size: int


class Load:
    """Updates of a few items, at most IN_FLIGHT awaiting their reply, in a thread."""

    def __init__(self, prefix: str) -> None:
        self.queue = f"{prefix}.commands"
        self.answered = 0
        self.failed: dict[int, int] = {}
        self._pending: dict[str, Callable[[dict[str, Any]], None]] = {}
        self._connection = pika.BlockingConnection(pika.URLParameters(URL))
        self._channel = self._connection.channel()
        self._channel.basic_consume("amq.rabbitmq.reply-to", self._on_reply, auto_ack=True)

    def _on_reply(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        on_reply = self._pending.pop(properties.correlation_id)
        reply = orjson.loads(body)
        if reply["status"] != 200:
            self.failed[reply["status"]] = self.failed.get(reply["status"], 0) + 1
        self.answered += 1
        on_reply(reply)

    def _send(self, body: dict[str, Any], on_reply: Callable[[dict[str, Any]], None]) -> None:
        message_id = uuid.uuid4().hex
        self._pending[message_id] = on_reply
        self._channel.basic_publish("", self.queue, orjson.dumps(body), pika.BasicProperties(
            reply_to="amq.rabbitmq.reply-to", correlation_id=message_id,
            message_id=message_id, headers=HEADERS, delivery_mode=2))

    def run(self, commands: int) -> None:
        items: list[dict[str, Any]] = []
        for _ in range(ITEMS):
            self._send({"command": "create", "item": {"properties": {"n": 0}}},
                       lambda reply: items.append(reply["item"]))
        self._wait_below(1)
        sent = ITEMS
        while sent < commands:
            while sent < commands and len(self._pending) < IN_FLIGHT:
                item = items[sent % ITEMS]
                self._send({"command": "update", "id": item["id"],
                            "item": {**item, "properties": {"n": sent}}}, _ignore)
                sent += 1
            self._connection.process_data_events(time_limit=None)
        self._wait_below(1)

    def _wait_below(self, count: int) -> None:
        while len(self._pending) >= count:
            self._connection.process_data_events(time_limit=None)

    def close(self) -> None:
        if self._connection.is_open:
            self._connection.close()


def _ignore(reply: dict[str, Any]) -> None:
    return None


# ---------------------------------------------------------------- the stores


class SQLiteSize:
    def __init__(self, work: Path) -> None:
        self.path = work / "thelca.db"
        self.url = f"sqlite:///{self.path}"

    def sample(self) -> tuple[int, int, int]:
        db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
        try:
            (processed,) = db.execute("SELECT count(*) FROM processed").fetchone()
            (outbox,) = db.execute("SELECT count(*) FROM outbox").fetchone()
        finally:
            db.close()
        wal = Path(f"{self.path}-wal")
        size = self.path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
        return int(processed), int(outbox), size

    def drop(self) -> None:
        return None


class PostgresSize:
    """On PostgreSQL a pruned row's space is reused once (auto)vacuum has seen it: with
    autovacuum off the table's size grows, its rows do not."""

    def __init__(self, vacuum: bool = False) -> None:
        self.vacuum = vacuum  # VACUUM processed before each sample, as autovacuum would
        self.schema = f"growth_{uuid.uuid4().hex[:8]}"
        separator = "&" if "?" in PG_URL else "?"
        self.url = f"{PG_URL}{separator}schema={self.schema}"

    def sample(self) -> tuple[int, int, int]:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))
            if self.vacuum:
                conn.execute("VACUUM processed")
            processed = conn.execute("SELECT count(*) FROM processed").fetchone()
            outbox = conn.execute("SELECT count(*) FROM outbox").fetchone()
            size = conn.execute("SELECT pg_total_relation_size('processed')").fetchone()
        assert processed is not None and outbox is not None and size is not None
        return int(processed[0]), int(outbox[0]), int(size[0])

    def drop(self) -> None:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                sql.Identifier(self.schema)))


# ---------------------------------------------------------------- the run


def run(store: SQLiteSize | PostgresSize, work: Path, commands: int, window: int,
        every: float) -> tuple[list[Sample], Load]:
    prefix = f"growth-{uuid.uuid4().hex[:6]}"
    env = {**os.environ, "THELCA_PREFIX": prefix, "THELCA_AUTHORITY": "test-only",
           "THELCA_STORE": store.url, "THELCA_EVENT_LOG": str(work / "events.log"),
           "THELCA_LOG_LEVEL": "WARNING", "THELCA_AMQP_URL": URL,
           "THELCA_DEDUP_WINDOW": str(window)}
    processes = [start([sys.executable, "-m", "thelca", role], env, work / f"{role}.out")
                 for role in ("worker", "logger")]
    samples: list[Sample] = []
    try:
        wait_consumed(f"{prefix}.commands")
        wait_consumed(f"{prefix}.events.log")
        load = Load(prefix)
        thread = threading.Thread(target=load.run, args=(commands,), daemon=True)
        started = time.monotonic()
        thread.start()
        while thread.is_alive():
            thread.join(timeout=every)
            samples.append(Sample(time.monotonic() - started, load.answered, *store.sample()))
            print(_row(samples[-1]), flush=True)
        load.close()
    finally:
        stop(processes)
        delete(prefix, ["commands", "events.log", "dead", "replay"],
               ["events", "dead", "checkpoints"])
    return samples, load


def _row(sample: Sample) -> str:
    return (f"{sample.seconds:8.1f} s  {sample.answered:>9,} answered  "
            f"{sample.processed:>9,} records  {sample.outbox:>6,} in the outbox  "
            f"{sample.size / 1e6:9.2f} MB")


def verdict(samples: list[Sample], window: int) -> bool:
    """Whether every sample after the first window holds at most rate x window x HEADROOM
    records, rate being that of the window before the sample (the commands it answered):
    the load's own pace varies on a shared machine, and the records follow it."""
    held = [s for s in samples if s.seconds >= window + SLACK]
    last = samples[-1]
    print(f"\n{last.answered:,} commands in {last.seconds:.0f} s "
          f"({last.answered / last.seconds:,.0f}/s, load {os.getloadavg()[0]:.2f})")
    if not held:
        print(f"the run was shorter than the window plus {SLACK:.0f} s: nothing to judge")
        return False
    worst = max(held, key=lambda s: s.processed / _bound(samples, s, window))
    sizes = [s.size for s in held]
    print(f"after the first window: records {min(s.processed for s in held):,} to "
          f"{max(s.processed for s in held):,}; the fullest at {worst.seconds:.0f} s, "
          f"{worst.processed:,} against a bound of {_bound(samples, worst, window):,.0f} "
          f"(the window before it answered {_in_window(samples, worst, window):,}); "
          f"size {min(sizes) / 1e6:.2f} to {max(sizes) / 1e6:.2f} MB")
    ok = worst.processed <= _bound(samples, worst, window)
    print("flat: yes" if ok else "flat: NO, the records outgrow the window")
    return ok


def _in_window(samples: list[Sample], sample: Sample, window: int) -> int:
    """The commands answered in the window before `sample` (from the samples around it)."""
    before = [s for s in samples if s.seconds <= sample.seconds - window]
    return sample.answered - (before[-1].answered if before else 0)


def _bound(samples: list[Sample], sample: Sample, window: int) -> float:
    return max(1.0, _in_window(samples, sample, window) * HEADROOM)


def _autovacuum(store: str) -> str:
    if store != "postgres":
        return ""
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        row = conn.execute("SHOW autovacuum").fetchone()
    return f", autovacuum {row[0] if row else 'unknown'}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--commands", type=int, default=300_000)
    parser.add_argument("--window", type=int, default=60, help="THELCA_DEDUP_WINDOW, seconds")
    parser.add_argument("--every", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--quick", action="store_true",
                        help="30,000 commands, window 10 s, a sample every 2 s")
    parser.add_argument("--vacuum", action="store_true",
                        help="on PostgreSQL, VACUUM processed before each sample, as "
                        "autovacuum does where it is on (PostgreSQL's default); the run "
                        "says whether it is")
    args = parser.parse_args()
    if args.quick:
        args.commands, args.window, args.every = 30_000, 10, 2.0
    with tempfile.TemporaryDirectory(prefix="thelca-growth-") as directory:
        work = Path(directory)
        store = SQLiteSize(work) if args.store == "sqlite" else PostgresSize(args.vacuum)
        print(f"{args.commands:,} commands, window {args.window} s, store {args.store}, "
              f"load {os.getloadavg()[0]:.2f}{_autovacuum(args.store)}"
              f"{', VACUUM before each sample' if args.vacuum else ''}")
        try:
            samples, load = run(store, work, args.commands, args.window, args.every)
        finally:
            store.drop()
    if load.failed:
        print(f"replies other than 200: {load.failed}")
        return 1
    return 0 if verdict(samples, args.window) else 1


if __name__ == "__main__":
    sys.exit(main())
