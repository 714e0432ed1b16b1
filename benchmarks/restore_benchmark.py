"""How fast `thelca restore` rebuilds a store, against the floor measured in the same run.

Makes an event log of N events (default 1,000,000) in the live system's format
(each line linked into the hash chain, as the logger writes it, which restore
follows as it goes), 1 create : 1 read : 2 updates (reads and updates of items picked at random
among those created so far), in a temporary directory. Then:

- the floor: read the same file with orjson and fold it into a dict
  (item id -> latest value), in this process;
- `thelca restore --log FILE` as a user runs it, in a fresh directory, so into
  the default SQLite store (`sqlite:///thelca.db`), process start included.

Prints both times and their ratio, checks the restored store (item count and
every version), and exits 1 when restore took more than --target times the
floor (default 2). The target is for the full run: with few events the
fixed cost of starting a process and opening the store (printed too) weighs
more than reading, and a quick run misses it. Example:

    .venv/bin/python benchmarks/restore_benchmark.py              # the full run, under a minute
    .venv/bin/python benchmarks/restore_benchmark.py --events 100000
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

from thelca.audit.chain import Chain

USER = "a-test-only-id-bench"
CREATED, UPDATED, READ = "Item created", "Item updated", "Item read"


def make_log(path: Path, events: int, seed: int = 5) -> dict[str, int]:
    """Write the log; return every item's final version."""
    rng = random.Random(seed)
    ids: list[str] = []
    items: dict[str, dict[str, object]] = {}
    versions: dict[str, int] = {}
    start = datetime(2026, 1, 1, tzinfo=UTC)
    chain = Chain()
    chunk: list[bytes] = []
    with open(path, "wb") as file:
        for n in range(events):
            moment = (start + timedelta(microseconds=250 * n)).isoformat(timespec="microseconds")
            step = n % 4
            if step == 0 or not ids:
                item_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
                ids.append(item_id)
                items[item_id] = {"id": item_id, "created_at": moment, "created_by": USER,
                                  "properties": {"type": "STORY", "title": f"story {n}",
                                                 "points": n % 13}}
                versions[item_id] = 1
                event = _event(moment, CREATED, items[item_id], 1)
            elif step == 1:
                item_id = rng.choice(ids)
                event = _event(moment, READ, item_id, versions[item_id])
            else:
                item_id = rng.choice(ids)
                versions[item_id] += 1
                item = items[item_id]
                item["properties"] = {"type": "STORY", "title": f"story {n}", "points": n % 13,
                                      "status": "IN PROGRESS" if step == 2 else "DONE"}
                event = _event(moment, UPDATED, item, versions[item_id])
            chunk.append(chain.link(orjson.dumps(event) + b"\n"))
            if len(chunk) == 10_000:
                file.write(b"".join(chunk))
                chunk.clear()
        file.write(b"".join(chunk))
    return versions


def _event(moment: str, kind: str, value: object, version: int) -> dict[str, object]:
    return {"time": moment, "type": kind, "user": USER, "value": value,
            "id": str(uuid.uuid4()), "version": version, "command_id": str(uuid.uuid4())}


def floor(path: Path) -> float:
    """Read the file with orjson and fold it into a dict: nothing can restore faster.

    With the cycle collector paused, as restore runs, so that the floor is the
    lowest one can honestly measure.
    """
    gc.collect()
    gc.disable()
    try:
        began = time.perf_counter()
        state: dict[str, object] = {}
        loads = orjson.loads
        with open(path, "rb") as file:
            for line in file:
                event = loads(line)
                if event["type"] in (CREATED, UPDATED):
                    state[event["value"]["id"]] = event["value"]
        elapsed = time.perf_counter() - began
        assert state
        del state
    finally:
        gc.enable()
    return elapsed


def run_restore(path: Path, directory: Path) -> float:
    """`thelca restore --log FILE` in a fresh directory, into the default store."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("THELCA_")}
    thelca = Path(sys.executable).with_name("thelca")
    command = [str(thelca)] if thelca.exists() else [sys.executable, "-m", "thelca"]
    began = time.perf_counter()
    result = subprocess.run([*command, "restore", "--log", str(path)], cwd=directory, env=env,
                            capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - began
    if result.returncode != 0:
        sys.exit(f"thelca restore failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    return elapsed


def start_up(directory: Path, log: Path) -> float:
    """What a restore costs before it reads anything: a log of one line, best of three."""
    one = directory / "one-line.log"
    with open(log, "rb") as source:
        one.write_bytes(source.readline())
    best = float("inf")
    for n in range(3):
        target = directory / f"start-up-{n}"
        target.mkdir()
        best = min(best, run_restore(one, target))
        shutil.rmtree(target)
    return best


def check(database: Path, versions: dict[str, int]) -> None:
    with sqlite3.connect(database) as db:
        stored = dict(db.execute("SELECT id, version FROM items"))
    if stored != versions:
        wrong = sum(1 for k, v in versions.items() if stored.get(k) != v)
        sys.exit(f"the restored store is wrong: {wrong} items differ from the log")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="events in the log")
    parser.add_argument("--target", type=float, default=2.0,
                        help="largest acceptable restore / floor ratio (default 2)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="times each is run; the best counts, as other processes on "
                        "the machine only ever slow a run down (default 2)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="thelca-restore-bench-") as temp:
        directory = Path(temp)
        log = directory / "thelca-events.log"
        began = time.perf_counter()
        versions = make_log(log, args.events)
        size = log.stat().st_size
        print(f"log: {args.events} events, {len(versions)} items, {size / 1e6:.0f} MB, "
              f"made in {time.perf_counter() - began:.1f}s")
        floor_time = restore_time = float("inf")
        for round_ in range(1, args.rounds + 1):
            this_floor = floor(log)  # the first also brings the file into the page cache
            restore_dir = directory / f"restore-{round_}"
            restore_dir.mkdir()
            this_restore = run_restore(log, restore_dir)
            check(restore_dir / "thelca.db", versions)
            shutil.rmtree(restore_dir)
            print(f"round {round_}: floor {this_floor:.2f}s, restore {this_restore:.2f}s")
            floor_time = min(floor_time, this_floor)
            restore_time = min(restore_time, this_restore)
        print(f"floor (orjson + dict fold):  {floor_time:.2f}s "
              f"({args.events / floor_time:,.0f} events/s)")
        print(f"thelca restore (SQLite):     {restore_time:.2f}s "
              f"({args.events / restore_time:,.0f} events/s, process start included)")
        start = start_up(directory, log)
        print(f"  of which starting thelca and opening the store: {start:.2f}s "
              f"(restore of a one-line log)")
        ratio = restore_time / floor_time
        verdict = "met" if ratio <= args.target else "MISSED"
        print(f"ratio restore / floor:       {ratio:.2f} (target {args.target:g}: {verdict})")
    return 0 if ratio <= args.target else 1


if __name__ == "__main__":
    sys.exit(main())
